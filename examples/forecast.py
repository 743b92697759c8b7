"""Long-horizon forecasts of real series: an S-MNN forecaster against the usual baselines.

Data (offline, shipped inside ``statsmodels``; ``_real_data.py``):

* **CO2**: weekly Mauna Loa CO2 1958-2001 (2,284 weeks): a 208-week (4-year) forecast from
  a 104-week window, the paper's SST setup;
* **El Nino**: monthly Nino 1+2 SST 1950-2010 (732 months): a 48-month forecast from a
  60-month window.

Split. The final ``test`` samples (CO2: 416 weeks, 1994-2001; El Nino: 96 months,
2003-2010) are held out. Forecasts start at rolling origins inside it, every ``stride``
samples (CO2: 26 weeks, El Nino: 6 months), as long as the whole horizon is inside the
record (9 origins each); every method sees only the data before its origin, and the
trained parts of every model (the S-MNN encoder, the climatology, the SARIMAX
parameters) see only the data before the test period.

Missing weeks (59 in CO2). Inputs that must be complete (the S-MNN and ETS windows,
persistence, seasonal naive) use the series **linearly interpolated** over the gaps;
SARIMAX takes the gaps as missing (its Kalman filter skips them); the S-MNN training loss
and every reported error are taken **at observed samples only** (missing targets are
masked out, never interpolated).

S-MNN forecaster (trained through ``bandsolve_torch.smnn_solve``). An MLP encoder reads the
window (minus its mean, divided by the training series' detrended standard deviation),
the calendar phase of its last sample and, for El Nino, the window mean (SST has a fixed
climate; CO2's level leaves the training range, so its model sees only the shape), and
predicts the damped second-order ODE ``u'' + c1 u' + c0 u = r(t)`` (``D = 1``, ``O = 3``,
``E = 1``; time in years, step one sample) with ``c0, c1 > 0`` and the right-hand side
``r = c0 m + c1 m' + m''`` of a mean path ``m(t) = a0 + a1 t + sum_k alpha_k cos(2 pi k
tau) + beta_k sin(2 pi k tau)`` (``tau`` calendar years; ``k <= 3`` for CO2, ``<= 2``
for El Nino): ``m`` is a particular solution, and the solve, over the last ``n_init``
window samples (initial values, CO2 10 weeks, El Nino 3 months) plus the horizon,
relaxes the observed state onto it at the learned damping (for El Nino ``a1 = 0``: no
trend is extrapolated). Adam (learning rate 1e-2, cosine decay), 64 random training
windows per iteration, masked mean squared error of the forecast. Early stopping: the
last ``test`` samples of the training period are a validation block (training windows
end before it), and the encoder state with the smallest validation error, checked every
25 iterations, is kept.

Baselines on the same origins and samples: persistence (last value), seasonal naive (the
value one year before, 52 weeks / 12 months), training climatology (mean by week of year
/ month over the training period), statsmodels ``ExponentialSmoothing`` (additive trend
and season, period 52 / 12, refitted at every origin on all data before it) and
``SARIMAX`` (CO2: ARIMA(1,1,1) with drift and 3 annual Fourier pairs as regressors, the
usual model for weekly seasonality; El Nino: SARIMA(1,0,1)(0,1,1)12), fitted once on the
training period and refiltered at every origin with those parameters.

Errors: RMSE and MAE per horizon band (first quarter, years 1-4) over all origins, in the
series' unit.

    python examples/forecast.py [--quick] [--dataset co2|elnino|both] [--json PATH]
                                [--plot PATH] [--iterations N] [--seed S]

With both datasets ``--plot docs/forecast.png`` writes ``docs/forecast_co2.png`` and
``docs/forecast_elnino.png`` (with one, the path given). ``--quick``: CO2 only, 3
origins, 100 iterations, no SARIMAX (its fit alone takes 10-50 s), 20-60 s. ``--json``
holds, per dataset, ``rmse`` / ``mae`` (method -> list over ``bands``), ``bands``,
``origins``, ``best_iteration`` and ``validation`` (early stopping), ``train_seconds``
(S-MNN), ``fit_seconds`` (per statsmodels method) and ``losses``.
"""

import math
import time
import warnings
from dataclasses import dataclass

import numpy as np

from _common import parse_args, progress, pyplot, save_figure, write_json
from _real_data import interpolate, load_co2, load_elnino


@dataclass(frozen=True)
class Setup:
    key: str
    load: object
    window: int
    horizon: int
    n_init: int
    harmonics: int
    test: int
    stride: int
    level_feature: bool
    trend: bool


SETUPS = {
    "co2": Setup("co2", load_co2, window=104, horizon=208, n_init=10, harmonics=3,
                 test=416, stride=26, level_feature=False, trend=True),
    "elnino": Setup("elnino", load_elnino, window=60, horizon=48, n_init=3, harmonics=3,
                    test=96, stride=6, level_feature=True, trend=False),
}
METHODS = ("smnn", "persistence", "seasonal_naive", "climatology", "ets", "sarimax")


def bands(setup, per_year):
    """``[(label, first, stop)]`` lead-time bands (sample offsets into the horizon)."""
    year = int(round(per_year))
    out = [("first quarter", 0, year // 4)]
    out += [(f"year {y + 1}", y * year, min((y + 1) * year, setup.horizon))
            for y in range(math.ceil(setup.horizon / year))]
    return out


# ------------------------------------------------------------------------------ model

class Forecaster:
    """The S-MNN forecaster of the module docstring.

    ``Forecaster(setup, per_year, scale, level=(mean, std))``; :meth:`__call__` maps
    windows ``(B, W)`` (raw units, complete), the calendar years of their last sample
    ``(B,)`` and a horizon to forecasts ``(B, horizon)`` in raw units.
    """

    def __init__(self, setup, per_year, scale, level, seed=0, hidden=32):
        import torch

        self.setup, self.per_year, self.scale, self.level = setup, per_year, scale, level
        torch.manual_seed(seed)
        n_in = setup.window + 2 + int(setup.level_feature)
        n_out = 4 + 2 * setup.harmonics  # c0, c1, a0, a1, alpha_k, beta_k
        self.net = torch.nn.Sequential(
            torch.nn.Linear(n_in, hidden), torch.nn.Tanh(),
            torch.nn.Linear(hidden, hidden), torch.nn.Tanh(),
            torch.nn.Linear(hidden, n_out)).double()
        with torch.no_grad():  # start from the mean path 0 and moderate dynamics
            self.net[-1].weight.mul_(0.1)
            self.net[-1].bias.zero_()

    def parameters(self):
        return self.net.parameters()

    def ode(self, window, last_year, n_steps):
        """The S-MNN inputs ``(coefficients (B,1,1,1,3), rhs (B,T,1), init (B,n_init,1,1),
        steps (B,1))`` for ``n_steps = T`` (normalised units) and the window means."""
        import torch

        setup, K = self.setup, self.setup.harmonics
        centre = window.mean(dim=1, keepdim=True)
        shape = (window - centre) / self.scale
        phase = 2 * math.pi * (last_year % 1.0)
        features = [shape, torch.sin(phase)[:, None], torch.cos(phase)[:, None]]
        if setup.level_feature:
            features.append((centre - self.level[0]) / self.level[1])
        z = self.net(torch.cat(features, dim=1))
        c0 = (2 * math.pi) ** 2 * torch.exp(z[:, 0])        # natural period ~1 year at start
        c1 = torch.nn.functional.softplus(z[:, 1] + 2.0)     # damping (1/year)
        a0, a1 = z[:, 2:3], z[:, 3:4] * float(setup.trend)
        alpha, beta = z[:, 4:4 + K], z[:, 4 + K:]
        h = 1.0 / self.per_year
        t_np = (np.arange(n_steps) - (setup.n_init - 1)) * h                  # (T,)
        t = torch.from_numpy(t_np)[None, :]
        # the calendar basis does not depend on the parameters: built once, in NumPy
        tau = last_year.detach().numpy()[:, None] + t_np[None, :]            # (B, T)
        m, dm = a0 + a1 * t, a1.expand(-1, n_steps)
        ddm = torch.zeros_like(m)
        for k in range(1, K + 1):
            w = 2 * math.pi * k
            cos = torch.from_numpy(np.cos(w * tau))
            sin = torch.from_numpy(np.sin(w * tau))
            ak, bk = alpha[:, k - 1:k], beta[:, k - 1:k]
            m = m + ak * cos + bk * sin
            dm = dm + w * (-ak * sin + bk * cos)
            ddm = ddm - w * w * (ak * cos + bk * sin)
        rhs = (c0[:, None] * m + c1[:, None] * dm + ddm)[:, :, None]
        coefficients = torch.stack([c0, c1, torch.ones_like(c0)], dim=-1)[:, None, None, None]
        init = shape[:, -setup.n_init:, None, None]
        steps = torch.full((window.shape[0], 1), h, dtype=z.dtype)
        return coefficients, rhs, init, steps, centre

    def __call__(self, window, last_year, horizon=None, solve=None):
        """Forecasts ``(B, horizon)`` in raw units; ``solve`` defaults to
        ``bandsolve_torch.smnn_solve`` (the scaling study passes a dense one)."""
        import bandsolve_torch

        horizon = self.setup.horizon if horizon is None else horizon
        n_steps = self.setup.n_init + horizon
        coefficients, rhs, init, steps, centre = self.ode(window, last_year, n_steps)
        solve = solve or bandsolve_torch.smnn_solve
        u = solve(coefficients, rhs, init, steps, n_steps=n_steps)
        return centre + self.scale * u[:, self.setup.n_init:, 0, 0]


def detrended_std(values):
    """Standard deviation of ``values`` (no NaN) about their least-squares line."""
    x = np.arange(values.size)
    return float(np.std(values - np.polyval(np.polyfit(x, values, 1), x)))


def _batch(setup, series, filled, starts):
    """Tensors ``(window (B, W), last_year (B,), target (B, H), observed (B, H))`` of the
    windows starting at ``starts``; missing targets are zero and unobserved."""
    import torch

    index = starts[:, None] + np.arange(setup.window + setup.horizon)[None, :]
    target = series.values[index[:, setup.window:]]
    return (torch.from_numpy(filled[index[:, :setup.window]]),
            torch.from_numpy(series.years[starts + setup.window - 1]),
            torch.from_numpy(np.nan_to_num(target)), torch.from_numpy(~np.isnan(target)))


def masked_mse(model, window, last_year, target, observed):
    error = (model(window, last_year) - target) / model.scale
    return (error[observed] ** 2).mean()


def train(setup, series, filled, train_end, iterations, seed=0, batch=64, lr=1e-2,
          check_every=25):
    """Fit a :class:`Forecaster` on the data before ``train_end`` with early stopping.

    The last ``setup.test`` samples before ``train_end`` are a validation block: training
    windows end before it, validation forecasts (origins every ``stride / 2`` samples)
    lie inside it, and the encoder state with the smallest validation error (checked
    every ``check_every`` iterations) is kept. Returns the model, the training losses and
    ``{"best_iteration", "validation"}``.
    """
    import copy

    import torch

    past = filled[:train_end]
    model = Forecaster(setup, series.per_year, detrended_std(past),
                       (float(past.mean()), float(past.std())), seed)
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, iterations)
    rng = np.random.default_rng(seed)
    fit_end = train_end - setup.test
    last_start = fit_end - setup.window - setup.horizon
    if last_start < 0:
        raise ValueError(f"{series.name}: too few samples before the validation block")
    origins = np.arange(fit_end, train_end - setup.horizon + 1, max(1, setup.stride // 2))
    validation = _batch(setup, series, filled, origins - setup.window)
    losses, checks = [], []
    best = (float("inf"), -1, None)
    for iteration in range(iterations):
        starts = rng.integers(0, last_start + 1, batch)
        optimizer.zero_grad()
        loss = masked_mse(model, *_batch(setup, series, filled, starts))
        loss.backward()
        optimizer.step()
        schedule.step()
        losses.append(loss.item())
        if (iteration + 1) % check_every == 0 or iteration == iterations - 1:
            with torch.no_grad():
                score = masked_mse(model, *validation).item()
            checks.append((iteration + 1, score))
            if score < best[0]:
                best = (score, iteration + 1, copy.deepcopy(model.net.state_dict()))
        if iteration % 100 == 0 or iteration == iterations - 1:
            progress(f"  iteration {iteration:4d}  training MSE {loss.item():.4f}, "
                     f"validation MSE {checks[-1][1] if checks else float('nan'):.4f} "
                     f"(normalised)")
    model.net.load_state_dict(best[2])
    return model, losses, dict(best_iteration=best[1], validation=checks)


# -------------------------------------------------------------------------- baselines

def fourier(years, pairs):
    """``(len(years), 2*pairs)`` annual Fourier regressors."""
    return np.column_stack([f(2 * math.pi * k * years) for k in range(1, pairs + 1)
                            for f in (np.sin, np.cos)])


def season_index(series):
    per = int(round(series.per_year))
    return np.floor((series.years % 1.0) * per).astype(int) % per


def sarimax_fitted(setup, series, train_end):
    """SARIMAX results fitted on the training period (``apply`` refilters at an origin)."""
    from statsmodels.tsa.statespace.sarimax import SARIMAX

    if setup.key == "co2":
        exog = fourier(series.years, 3)
        model = SARIMAX(series.values[:train_end], exog=exog[:train_end], order=(1, 1, 1),
                        trend="c")
    else:
        exog = None
        model = SARIMAX(series.values[:train_end], order=(1, 0, 1),
                        seasonal_order=(0, 1, 1, 12))
    return model.fit(disp=False), exog


def baseline_forecasts(setup, series, filled, origin, train_end, climatology, sarimax):
    """``{method: (horizon,)}`` for every baseline at ``origin``; ``sarimax`` is
    ``(results, exog)`` or None, and the ETS fit time is returned too."""
    from statsmodels.tsa.holtwinters import ExponentialSmoothing

    H, per = setup.horizon, int(round(series.per_year))
    lead = np.arange(H)
    out = {"persistence": np.full(H, filled[origin - 1]),
           "seasonal_naive": filled[origin + lead - per * (lead // per + 1)],
           "climatology": climatology[season_index(series)[origin:origin + H]]}
    started = time.perf_counter()
    ets = ExponentialSmoothing(filled[:origin], trend="add", seasonal="add",
                               seasonal_periods=per, initialization_method="estimated").fit()
    out["ets"] = ets.forecast(H)
    ets_seconds = time.perf_counter() - started
    if sarimax is not None:
        results, exog = sarimax
        if exog is None:
            refiltered = results.apply(series.values[:origin])
            out["sarimax"] = refiltered.forecast(H)
        else:
            refiltered = results.apply(series.values[:origin], exog=exog[:origin])
            out["sarimax"] = refiltered.forecast(H, exog=exog[origin:origin + H])
    return out, ets_seconds


# ------------------------------------------------------------------------------- run

def run_dataset(setup, quick, iterations, seed):
    import torch

    series = setup.load()
    filled = interpolate(series.values)
    n = series.values.size
    train_end = n - setup.test
    origins = list(range(train_end, n - setup.horizon + 1, setup.stride))
    if quick:
        origins = origins[::max(1, len(origins) // 3)][:3]
    n_missing = int(np.isnan(series.values).sum())
    progress(f"{series.name}: {n} samples ({n_missing} missing: inputs interpolated, "
             f"missing targets masked), training before {series.years[train_end]:.1f}, "
             f"{len(origins)} origins, horizon {setup.horizon}")

    started = time.perf_counter()
    model, losses, stopping = train(setup, series, filled, train_end, iterations, seed)
    train_seconds = time.perf_counter() - started
    progress(f"  S-MNN trained in {train_seconds:.1f} s ({iterations} iterations; kept "
             f"iteration {stopping['best_iteration']}, the best on validation)")

    season = season_index(series)
    climatology = np.array([np.nanmean(series.values[:train_end][season[:train_end] == s])
                            for s in range(int(round(series.per_year)))])
    fit_seconds = {"ets": 0.0}
    sarimax = None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # statsmodels' convergence chatter
        if not quick:
            started = time.perf_counter()
            sarimax = sarimax_fitted(setup, series, train_end)
            fit_seconds["sarimax"] = time.perf_counter() - started
            progress(f"  SARIMAX fitted in {fit_seconds['sarimax']:.1f} s")
        forecasts = {m: [] for m in METHODS if m != "sarimax" or sarimax is not None}
        with torch.no_grad():
            window = torch.from_numpy(np.stack([filled[o - setup.window:o] for o in origins]))
            last_year = torch.from_numpy(series.years[np.array(origins) - 1])
            smnn = model(window, last_year).numpy()
        for i, origin in enumerate(origins):
            out, ets_seconds = baseline_forecasts(setup, series, filled, origin, train_end,
                                                  climatology, sarimax)
            fit_seconds["ets"] += ets_seconds
            out["smnn"] = smnn[i]
            for method in forecasts:
                forecasts[method].append(out[method])
    forecasts = {m: np.stack(v) for m, v in forecasts.items()}          # (origins, H)
    truth = np.stack([series.values[o:o + setup.horizon] for o in origins])
    observed = ~np.isnan(truth)
    rmse, mae = {}, {}
    band_list = bands(setup, series.per_year)
    for method, values in forecasts.items():
        error = values - truth
        rmse[method], mae[method] = [], []
        for _, first, stop in band_list:
            e = error[:, first:stop][observed[:, first:stop]]
            rmse[method].append(float(np.sqrt(np.mean(e**2))))
            mae[method].append(float(np.mean(np.abs(e))))
    print_table(series, band_list, rmse, mae)
    print(f"S-MNN training {train_seconds:.1f} s; statsmodels fits "
          + ", ".join(f"{k} {v:.1f} s" for k, v in fit_seconds.items()), flush=True)
    return dict(name=series.name, unit=series.unit, n_samples=n, n_missing=n_missing,
                window=setup.window, horizon=setup.horizon, origins=origins,
                origin_years=series.years[origins], train_end=train_end,
                bands=[b[0] for b in band_list], rmse=rmse, mae=mae,
                iterations=iterations, train_seconds=train_seconds,
                fit_seconds=fit_seconds, losses=losses[::10],
                best_iteration=stopping["best_iteration"],
                validation=stopping["validation"]), (series, forecasts, truth,
                                                                origins)


def print_table(series, band_list, rmse, mae):
    labels = [b[0] for b in band_list]
    print(f"\n{series.name}: RMSE / MAE ({series.unit}) by lead time")
    print(f"{'method':15s} " + " ".join(f"{label:>15s}" for label in labels))
    for method in rmse:
        cells = " ".join(f"{r:7.3f}/{a:<7.3f}" for r, a in zip(rmse[method], mae[method]))
        print(f"{method:15s} {cells}")


def plot(series, forecasts, truth, origins, setup, path):
    plt = pyplot()
    fig, (ax_ts, ax_err) = plt.subplots(1, 2, figsize=(14, 4.2),
                                        gridspec_kw=dict(width_ratios=[2, 1]))
    start = origins[0] - setup.window
    ax_ts.plot(series.years[start:], series.values[start:], color="0.4", lw=0.8,
               label="data")
    colors = dict(smnn="C0", persistence="C7", seasonal_naive="C2", climatology="C8",
                  ets="C1", sarimax="C3")
    pick = [0, len(origins) - 1] if len(origins) > 1 else [0]
    for k, i in enumerate(pick):
        years = series.years[origins[i]:origins[i] + setup.horizon]
        for method in ("smnn", "ets", "sarimax", "seasonal_naive"):
            if method in forecasts:
                ax_ts.plot(years, forecasts[method][i], color=colors[method], lw=1.2,
                           label=method if k == 0 else None)
        ax_ts.axvline(series.years[origins[i]], color="k", ls=":", lw=0.8)
    ax_ts.set_xlabel("year (dotted: forecast origins)")
    ax_ts.set_ylabel(series.unit)
    ax_ts.legend(fontsize=8, ncol=3)
    ax_ts.set_title(f"{series.name}: forecasts from the first and last origin", fontsize=10)
    lead = np.arange(1, setup.horizon + 1)
    for method, values in forecasts.items():
        err = values - truth
        curve = np.sqrt(np.nanmean(err**2, axis=0))
        ax_err.plot(lead, curve, color=colors[method], lw=1, label=method)
    ax_err.set_yscale("log")
    ax_err.set_xlabel("lead time (samples)")
    ax_err.set_ylabel(f"RMSE over {len(origins)} origins ({series.unit})")
    ax_err.legend(fontsize=7)
    fig.tight_layout()
    save_figure(fig, path)


def main(argv=None):
    def extra(parser):
        parser.add_argument("--dataset", choices=("co2", "elnino", "both"),
                            help="default both (quick: co2)")
        parser.add_argument("--iterations", type=int, help="Adam iterations (default 600; "
                                                           "quick 100)")
        parser.add_argument("--seed", type=int, default=0)

    args = parse_args(__doc__.splitlines()[0], argv, extra)
    import torch

    torch.set_num_threads(1)
    started = time.perf_counter()
    dataset = args.dataset or ("co2" if args.quick else "both")
    keys = ["co2", "elnino"] if dataset == "both" else [dataset]
    iterations = args.iterations or (100 if args.quick else 600)
    metrics = {}
    for key in keys:
        metrics[key], drawn = run_dataset(SETUPS[key], args.quick, iterations, args.seed)
        if args.plot and len(keys) == 1:
            plot(*drawn, SETUPS[key], args.plot)
        elif args.plot:
            stem = args.plot[:-4] if args.plot.endswith(".png") else args.plot
            plot(*drawn, SETUPS[key], f"{stem}_{key}.png")
    seconds = time.perf_counter() - started
    print(f"{seconds:.1f} s", flush=True)
    write_json(args.json, dict(datasets=metrics, quick=args.quick, seconds=seconds))
    return metrics


if __name__ == "__main__":
    main()

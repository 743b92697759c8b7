"""Sea-surface temperature: a 4-year (208-week) forecast from an S-MNN layer through the PyTorch
adapter.

Data: NOAA's OI SST V2 weekly file (``sst.wkmean.1990-present.nc``; ``--data PATH``,
``$OISST_PATH`` or ``data/`` at the repository root; optional ``--mask lsmask.nc``; never
downloaded), averaged over ``--coarsen`` x ``--coarsen`` cells (default 4: 45 x 90). When
the file is absent, a **SYNTHETIC surrogate** (``_sst_data.synthetic_sst``: seasonal
cycle in opposite phase between the hemispheres, a 3-7-year tropical oscillation, a
trend, AR(1) noise) on an 18 x 36 grid stands in, and every output says so. Values are
z-scored with the mean and standard deviation of the ocean cells in the training weeks;
land is masked out.

Model (per ocean cell, in the style of the paper's pipeline): an encoder (an MLP) reads
the observed window of the last ``W = 104`` weeks and the calendar phase of its last week,
and predicts

* ODE coefficients: ``u'' + c1 u' + c0 u = r(t)`` (``D = 1``, ``O = 3``, ``E = 1``), with
  ``c0, c1 > 0`` constant over the sequence;
* the right-hand side ``r(t)``, parametrised as ``c0 m + c1 m' + m''`` for a mean path
  ``m(t) = a0 + a1 t + sum_{k=1,2} alpha_k cos(2 pi k tau) + beta_k sin(2 pi k tau)``
  (``tau`` the calendar time in years): ``m`` is then a particular solution and the
  initial values relax to it at the learned damping;
* the step size (time in years, ``h = exp(0.2 tanh(z)) / 52.18``).

The solve (``bandsolve_torch.smnn_solve``) runs over ``T = 10 + 208`` steps with the last
10 observed weeks as initial values (``init`` ``(10, 1, 1)``); ``u[10:]`` is the forecast.
The loss is the mean squared error of the forecast (Adam, learning rate 1e-2 with cosine
decay, 256 windows per iteration); training windows (random cells and
start weeks) end before the test period, the last 208 weeks, which is forecast for every
ocean cell from the 104 weeks before it. Baselines measured on the same cells: the
training-period climatology by week of year, and persistence of the last observed week.

    python examples/sst.py [--quick] [--json PATH] [--plot PATH] [--data FILE]
                           [--mask FILE] [--coarsen K] [--iterations N]

``--quick``: the surrogate on a 9 x 18 grid, 800 weeks, 150 iterations. Measured on a 2-core
machine shared with other jobs (load average 2.5-3): ``--quick`` 55-70 s; the default run
(surrogate, 18 x 36 grid, 1,727 weeks, 600 iterations) 60-72 s once the kernels are
compiled, 2.4 minutes on its first run.
``--json`` holds ``synthetic``, ``rmse`` / ``rmse_celsius`` per method (``smnn``,
``climatology``, ``persistence``) over the whole 208 weeks, ``rmse_by_year_celsius`` (4
values each), ``nmse`` (mean squared error over the variance of the truth), ``losses``,
``n_cells``, ``n_weeks`` and ``seconds``.
"""

import math
import os
import time

import numpy as np

from _common import parse_args, progress, pyplot, save_figure, write_json
from _sst_data import WEEKS_PER_YEAR, default_path, load_oisst, normalise, synthetic_sst

WINDOW, N_INIT, HORIZON = 104, 10, 208
HARMONICS = 2
N_OUTPUTS = 3 + 2 + 2 * HARMONICS  # c0, c1, step, a0, a1, alpha_k, beta_k


def make_encoder(seed=0, hidden=64):
    import torch

    torch.manual_seed(seed)
    net = torch.nn.Sequential(
        torch.nn.Linear(WINDOW + 2, hidden), torch.nn.Tanh(),
        torch.nn.Linear(hidden, hidden), torch.nn.Tanh(),
        torch.nn.Linear(hidden, N_OUTPUTS)).double()
    with torch.no_grad():  # start from the identity-like mean path 0 and moderate dynamics
        net[-1].weight.mul_(0.1)
        net[-1].bias.zero_()
    return net


def forecast(encoder, window, phase, horizon=HORIZON):
    """The S-MNN forecast.

    window ``(B, W)`` normalised values, phase ``(B,)`` calendar time (years, mod 1) of the
    window's last week. Returns ``u`` ``(B, 10 + horizon)`` (the first 10 steps fit the
    initial values) and the ODE parameters ``(c0, c1, h)`` ``(B,)`` each.
    """
    import torch

    import bandsolve_torch

    B = window.shape[0]
    features = torch.cat([window, torch.sin(2 * math.pi * phase)[:, None],
                          torch.cos(2 * math.pi * phase)[:, None]], dim=1)
    z = encoder(features)
    c0 = (2 * math.pi) ** 2 * torch.exp(z[:, 0])       # natural period ~1 year initially
    c1 = torch.nn.functional.softplus(z[:, 1] + 2.0)  # damping
    h = torch.exp(0.2 * torch.tanh(z[:, 2])) / WEEKS_PER_YEAR
    a0, a1 = z[:, 3], z[:, 4]
    alpha, beta = z[:, 5:5 + HARMONICS], z[:, 5 + HARMONICS:]
    T = N_INIT + horizon
    t = (torch.arange(T, dtype=z.dtype) - (N_INIT - 1))[None, :] * h[:, None]  # (B, T)
    tau = phase[:, None] + t
    m, dm, ddm = a0[:, None] + a1[:, None] * t, a1[:, None].expand(B, T), torch.zeros_like(t)
    for k in range(1, HARMONICS + 1):
        w = 2 * math.pi * k
        cos, sin = torch.cos(w * tau), torch.sin(w * tau)
        ak, bk = alpha[:, k - 1:k], beta[:, k - 1:k]
        m = m + ak * cos + bk * sin
        dm = dm + w * (-ak * sin + bk * cos)
        ddm = ddm - w * w * (ak * cos + bk * sin)
    rhs = (c0[:, None] * m + c1[:, None] * dm + ddm)[:, :, None]          # (B, T, 1)
    coefficients = torch.stack([c0, c1, torch.ones_like(c0)], dim=-1)     # (B, 3)
    coefficients = coefficients[:, None, None, None, :]                   # (B, 1, 1, 1, 3)
    init = window[:, -N_INIT:, None, None]                                # (B, 10, 1, 1)
    u = bandsolve_torch.smnn_solve(coefficients, rhs, init, h[:, None], n_steps=T)
    return u[:, :, 0, 0], (c0, c1, h)


def cell_series(values, ocean):
    """``(n_cells, T)`` series of the ocean cells and their ``(iy, ix)`` indices."""
    iy, ix = np.nonzero(ocean)
    return values[:, iy, ix].T.copy(), np.stack([iy, ix], axis=1)


def train(series, phase_of_week, train_end, iterations, batch=256, seed=0, lr=1e-2):
    """Fit the encoder on windows whose targets end before ``train_end``."""
    import torch

    rng = np.random.default_rng(seed)
    encoder = make_encoder(seed)
    optimizer = torch.optim.Adam(encoder.parameters(), lr=lr)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, iterations)
    n_cells = series.shape[0]
    last_start = train_end - WINDOW - HORIZON
    if last_start < 0:
        raise ValueError(f"too few weeks ({series.shape[1]}) for a {WINDOW}-week window, a "
                         f"{HORIZON}-week training target and a {HORIZON}-week test period")
    losses = []
    for iteration in range(iterations):
        cells = rng.integers(0, n_cells, batch)
        starts = rng.integers(0, last_start + 1, batch)
        index = starts[:, None] + np.arange(WINDOW + HORIZON)[None, :]
        chunk = torch.from_numpy(series[cells[:, None], index])
        window, target = chunk[:, :WINDOW], chunk[:, WINDOW:]
        phase = torch.from_numpy(phase_of_week[starts + WINDOW - 1])
        optimizer.zero_grad()
        u, _ = forecast(encoder, window, phase)
        loss = torch.mean((u[:, N_INIT:] - target) ** 2)
        loss.backward()
        optimizer.step()
        schedule.step()
        losses.append(loss.item())
        if iteration % 50 == 0 or iteration == iterations - 1:
            progress(f"iteration {iteration:4d}  training MSE {loss.item():.4f}")
    return encoder, losses


def main(argv=None):
    def extra(parser):
        parser.add_argument("--data", help="the OI SST V2 weekly NetCDF file")
        parser.add_argument("--mask", help="optional lsmask.nc (1 ocean, 0 land)")
        parser.add_argument("--coarsen", type=int, default=4,
                            help="average KxK cells of the real file (default 4)")
        parser.add_argument("--iterations", type=int, help="Adam iterations (default 600)")

    args = parse_args(__doc__.splitlines()[0], argv, extra)
    import torch

    started = time.perf_counter()
    path = args.data or default_path()
    if args.data and not os.path.exists(args.data):
        raise SystemExit(f"--data {args.data}: no such file")
    if os.path.exists(path):
        progress(f"reading {path} (coarsen {args.coarsen})")
        data = load_oisst(path, args.mask, coarsen=args.coarsen)
        synthetic = False
        label = "NOAA OI SST V2 weekly"
    else:
        shape = dict(n_weeks=800, n_lat=9, n_lon=18) if args.quick else {}
        data = synthetic_sst(**shape)
        synthetic = True
        label = "SYNTHETIC surrogate (not NOAA data)"
        progress(f"{path} not found: using the SYNTHETIC surrogate {data['sst'].shape}")
    n_weeks = data["sst"].shape[0]
    test_start = n_weeks - HORIZON
    values, mean, std = normalise(data["sst"], data["ocean"], slice(0, test_start))
    series, cells = cell_series(values, data["ocean"])
    # calendar phase (years mod 1) of each week: from the file's time axis (days since
    # its epoch, as in NOAA's files), or the surrogate's week count
    if synthetic:
        phase_of_week = (np.arange(n_weeks) / WEEKS_PER_YEAR) % 1.0
    else:
        phase_of_week = (np.asarray(data["time"], dtype=np.float64) / 365.2425) % 1.0
    iterations = args.iterations or (150 if args.quick else 600)
    progress(f"{label}: {n_weeks} weeks, {series.shape[0]} ocean cells; training "
             f"{iterations} iterations, test = the last {HORIZON} weeks")
    encoder, losses = train(series, phase_of_week, test_start, iterations)

    with torch.no_grad():
        window = torch.from_numpy(series[:, test_start - WINDOW:test_start])
        phase = torch.from_numpy(np.full(series.shape[0], phase_of_week[test_start - 1]))
        u, (c0, c1, h) = forecast(encoder, window, phase)
        prediction = u[:, N_INIT:].numpy()
    truth = series[:, test_start:]
    # climatology by week of year over the training weeks; persistence of the last week
    week_bin = np.floor(phase_of_week * 52).astype(int) % 52
    train_bins = week_bin[:test_start]
    climatology = np.stack([series[:, :test_start][:, train_bins == b].mean(axis=1)
                            for b in range(52)], axis=1)[:, week_bin[test_start:]]
    persistence = np.repeat(series[:, test_start - 1:test_start], HORIZON, axis=1)
    forecasts = dict(smnn=prediction, climatology=climatology, persistence=persistence)
    rmse = {k: float(np.sqrt(np.mean((v - truth) ** 2))) for k, v in forecasts.items()}
    by_year = {k: [float(np.sqrt(np.mean((v - truth)[:, y * 52:(y + 1) * 52] ** 2)))
                   for y in range(HORIZON // 52)] for k, v in forecasts.items()}
    by_week = {k: np.sqrt(np.mean((v - truth) ** 2, axis=0)) for k, v in forecasts.items()}
    variance = float(np.var(truth))
    seconds = time.perf_counter() - started
    print(f"\n{label}: 208-week forecast of {series.shape[0]} ocean cells")
    print(f"{'method':12s} {'RMSE (z)':>9s} {'RMSE (C)':>9s} {'NMSE':>7s}   RMSE by year (C)")
    for k in forecasts:
        years = " ".join(f"{v * std:5.2f}" for v in by_year[k])
        print(f"{k:12s} {rmse[k]:9.4f} {rmse[k] * std:9.3f} {rmse[k] ** 2 / variance:7.4f}"
              f"   {years}")
    print(f"learned ODE: c0 median {np.median(c0.numpy()):.1f} /yr^2, c1 median "
          f"{np.median(c1.numpy()):.2f} /yr, step median {np.median(h.numpy()) * 52.18:.3f} "
          f"weeks")
    print(f"{seconds:.1f} s", flush=True)
    write_json(args.json, dict(
        synthetic=synthetic, data=label, n_weeks=n_weeks, n_cells=series.shape[0],
        horizon=HORIZON, window=WINDOW, iterations=iterations, rmse=rmse,
        rmse_celsius={k: v * std for k, v in rmse.items()},
        rmse_by_year_celsius={k: [x * std for x in v] for k, v in by_year.items()},
        nmse={k: v**2 / variance for k, v in rmse.items()}, normalisation=[mean, std],
        losses=losses[::10], seconds=seconds))
    if args.plot:
        plot(series, test_start, forecasts, by_week, std, mean, cells, data, label, args.plot)


def plot(series, test_start, forecasts, by_week, std, mean, cells, data, label, path):
    plt = pyplot()
    fig = plt.figure(figsize=(13, 7))
    grid = fig.add_gridspec(2, 2)
    ax_err = fig.add_subplot(grid[0, 0])
    weeks = np.arange(1, HORIZON + 1)
    for (name, curve), color in zip(by_week.items(), ("C0", "C2", "C7")):
        ax_err.plot(weeks, curve * std, color=color, label=name)
    ax_err.set_xlabel("lead time (weeks)")
    ax_err.set_ylabel("RMSE over ocean cells (C)")
    # headroom above the curves for a one-row legend that hides none of them
    ax_err.set_ylim(0, 1.3 * max(curve.max() for curve in by_week.values()) * std)
    ax_err.legend(fontsize=8, ncol=3, loc="upper center")
    ax_err.set_title("forecast error against lead time", fontsize=10)
    ax_map = fig.add_subplot(grid[0, 1])
    err = np.full(data["ocean"].shape, np.nan)
    err[cells[:, 0], cells[:, 1]] = np.sqrt(np.mean(
        (forecasts["smnn"] - series[:, test_start:]) ** 2, axis=1)) * std
    image = ax_map.pcolormesh(data["lon"], data["lat"], err, shading="nearest", cmap="viridis")
    fig.colorbar(image, ax=ax_map, label="S-MNN RMSE (C)")
    ax_map.set_title("S-MNN 208-week forecast error per cell", fontsize=10)
    ax_map.set_xlabel("longitude")
    ax_map.set_ylabel("latitude")
    ax_ts = fig.add_subplot(grid[1, :])
    # two cells: the most northern and the most southern ocean cells with a seasonal cycle
    picks = [int(np.argmax(cells[:, 0])), int(np.argmin(cells[:, 0]))]
    start = max(test_start - 3 * 52, 0)
    x = np.arange(start, series.shape[1])
    for pick, color, grey in zip(picks, ("C0", "C1"), ("0.4", "0.7")):
        lat = data["lat"][cells[pick, 0]]
        ax_ts.plot(x, series[pick, start:] * std + mean, color=grey, lw=0.8,
                   label=f"data, lat {lat:.0f}")
        ax_ts.plot(np.arange(test_start, series.shape[1]),
                   forecasts["smnn"][pick] * std + mean, color=color, lw=1.5,
                   label=f"S-MNN forecast, lat {lat:.0f}")
    ax_ts.axvline(test_start, color="k", ls=":", lw=1)
    ax_ts.set_xlabel("week (dotted line: start of the forecast)")
    ax_ts.set_ylabel("SST (C)")
    ax_ts.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))  # off the curves
    fig.suptitle(f"{label}: S-MNN 4-year forecast", fontsize=11)
    fig.tight_layout()
    save_figure(fig, path)


if __name__ == "__main__":
    main()

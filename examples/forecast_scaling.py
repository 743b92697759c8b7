"""The CO2 forecaster's training step against sequence length: bandsolve vs MNN-dense.

The S-MNN paper's Figure 5 on real data. One training step of ``forecast.py``'s CO2
forecaster (encoder, ODE, solve, masked squared error, backward, Adam step) on a batch
of ``B`` windows of the Mauna Loa series, where the solve covers ``T`` weeks (10 initial
weeks plus a ``T - 10``-week horizon; targets past the end of the record are masked, so
the longest, ``T = 2284``, is the length of the whole record). The solve is either

* **bandsolve**: ``bandsolve_torch.smnn_solve`` (block-banded, O(T) time and memory), or
* **MNN-dense**: the original MNN formulation of ``bandsolve.baselines`` (one slack
  shared by every smoothness row, central rows, no row weights) as a dense ``(B, N, N)``
  float64 normal matrix (``N = 3 T + 1``) built in torch, with ``torch.linalg.cholesky``
  / ``cholesky_solve`` and torch autograd through them. The constant rows (initial
  values, smoothness) come from ``mnn_dense_rows``; the equation rows' blocks
  ``c c^T`` and ``c r`` are added in torch so the gradient reaches the encoder.

The same central smoothness rows are on for bandsolve (``central_smoothness=True``), so the
two minimise the same sum of squares apart from the slack. Each method runs in its own
child process (``--quick``: one child runs both) on one thread over increasing ``T``;
"peak memory" is the growth of the resident set during one step
(``/proc/self/clear_refs`` resets the high-water mark; large blocks are mmapped so freed
memory returns): a lower bound of the true peak. Time is the best of 3 steps after an
untimed warm-up step at the same length (a dense step over 1 s is timed once; the
dense constant rows' normal matrix, built in the warm-up, is cached per length). The
dense method stops when its peak, extrapolated as ``N^2`` from the last measured
length, would exceed the budget (default 4 GiB).

    python examples/forecast_scaling.py [--quick] [--json PATH] [--plot PATH]
                                        [--batch B] [--budget-gib G] [--lengths ...]

``--quick``: T = 52, 104, 208, 416, batch 4, budget 0.05 GiB (the dense method stops
inside the run). ``--json`` holds ``rows`` (``T``, ``bandsolve_seconds``,
``bandsolve_peak_bytes``, ``dense_seconds``, ``dense_peak_bytes``, ``dense_status``).
"""

import json
import os
import subprocess
import sys
import time

import numpy as np

from _common import parse_args, progress, pyplot, save_figure, write_json

FULL_LENGTHS = (52, 104, 208, 416, 832, 1727, 2284)
QUICK_LENGTHS = (52, 104, 208, 416)
GIB = 2.0**30


def dense_solve_factory():
    """A ``solve(coefficients, rhs, init, steps, n_steps)`` with ``smnn_solve``'s shapes
    (coefficients ``(B, 1, 1, 1, 3)``, rhs ``(B, T, 1)``, init ``(B, Ti, 1, 1)``, steps
    ``(B, 1)``, the step shared by the batch) by the MNN-dense formulation; the constant
    rows' normal matrix is cached per ``(T, Ti, h)``."""
    import torch

    from bandsolve.baselines import mnn_dense_rows

    cache = {}

    def solve(coefficients, rhs, init, steps, n_steps):
        B, T, Ti = coefficients.shape[0], n_steps, init.shape[1]
        h = float(steps[0, 0])
        key = (T, Ti, h)
        if key not in cache:
            # rows with zero equation coefficients: initial values and smoothness only
            A0, _ = mnn_dense_rows(np.zeros((T, 1, 1, 3)), np.zeros((T, 1)),
                                   np.zeros((Ti, 1, 1)), np.full(T - 1, h))
            # A0^T beta0 is linear in init: the init rows have unit entries at u[t, 0]
            cache.clear()
            cache[key] = torch.from_numpy((A0.T @ A0).toarray())
        normal0 = cache[key]
        N = normal0.shape[0]
        c = coefficients[:, 0, 0, 0, :]                                   # (B, 3)
        block = c[:, :, None] * c[:, None, :]                             # (B, 3, 3)
        eye = torch.eye(T, dtype=c.dtype)
        equations = torch.einsum("ts,bij->btisj", eye, block).reshape(B, 3 * T, 3 * T)
        normal = normal0 + torch.nn.functional.pad(equations, (0, 1, 0, 1))
        right = torch.nn.functional.pad((c[:, None, :] * rhs).reshape(B, 3 * T), (0, 1))
        init_part = torch.zeros(B, T, 3, dtype=c.dtype)
        init_part[:, :Ti, 0] = init[:, :, 0, 0].detach()
        right = right + torch.nn.functional.pad(init_part.reshape(B, 3 * T), (0, 1))
        lower = torch.linalg.cholesky(normal)
        x = torch.cholesky_solve(right[:, :, None], lower)
        return x[:, :N - 1, 0].reshape(B, T, 1, 3)

    return solve


def _rss_bytes(field):
    with open("/proc/self/status") as handle:
        for line in handle:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    return 0


def _reset_peak():
    try:
        with open("/proc/self/clear_refs", "w") as handle:
            handle.write("5")
        return True
    except OSError:
        return False


def _child(methods, lengths, batch, budget, seed=0):
    """Child-process body: for each of ``methods`` (comma-separated) one JSON line per
    length."""
    for method in methods.split(","):
        _measure_in_process(method, lengths, batch, budget, seed)


def _measure_in_process(method, lengths, batch, budget, seed):
    import gc

    import torch

    from _real_data import interpolate, load_co2
    from forecast import SETUPS, Forecaster, detrended_std

    torch.set_num_threads(1)
    setup = SETUPS["co2"]
    series = load_co2()
    filled = interpolate(series.values)
    model = Forecaster(setup, series.per_year, detrended_std(filled[:1868]),
                       (0.0, 1.0), seed)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    rng = np.random.default_rng(seed)
    if method == "bandsolve":
        import bandsolve_torch

        def solve(coefficients, rhs, init, steps, n_steps):
            # central rows on, as in the dense formulation: the same sum of squares
            return bandsolve_torch.smnn_solve(coefficients, rhs, init, steps, n_steps=n_steps,
                                              central_smoothness=True)
    else:
        solve = dense_solve_factory()
    n = series.values.size
    last = None
    for T in lengths:
        horizon = T - setup.n_init
        if method == "dense" and last is not None:
            predicted = last[1] * ((3 * T + 1) / last[0]) ** 2
            if predicted > budget:
                print(json.dumps(dict(method=method, T=T, status="over budget",
                                      predicted_bytes=predicted)), flush=True)
                continue
        origins = rng.integers(setup.window, n - 52, batch)
        index = origins[:, None] + np.arange(horizon)[None, :]
        padded = np.concatenate([series.values, np.full(T, np.nan)])
        target = padded[index]
        observed = torch.from_numpy(~np.isnan(target))
        target = torch.from_numpy(np.nan_to_num(target))
        window = torch.from_numpy(np.stack([filled[o - setup.window:o] for o in origins]))
        last_year = torch.from_numpy(series.years[origins - 1])

        def step():
            optimizer.zero_grad()
            u = model(window, last_year, horizon, solve=solve)
            loss = (((u - target) / model.scale)[observed] ** 2).mean()
            loss.backward()
            optimizer.step()
            return loss.item()

        step()  # warm-up: compiled kernels of this size, the dense constant rows
        gc.collect()
        before = _rss_bytes("VmRSS")
        reset = _reset_peak()
        start = time.perf_counter()
        step()
        seconds = time.perf_counter() - start
        peak = max(_rss_bytes("VmHWM") - before, 0) if reset else None
        if not (method == "dense" and seconds > 1.0):
            for _ in range(2):
                start = time.perf_counter()
                step()
                seconds = min(seconds, time.perf_counter() - start)
        if method == "dense" and peak:
            last = (3 * T + 1, peak)
        print(json.dumps(dict(method=method, T=T, status="ok", seconds=seconds,
                              peak_bytes=peak)), flush=True)


def measure(methods, lengths, batch, budget):
    """Run :func:`_child` for ``methods`` (comma-separated) in one fresh process;
    ``{method: {T: row}}``."""
    code = ("import sys; sys.path.insert(0, sys.argv[1]); import forecast_scaling as s; "
            "s._child(sys.argv[2], [int(t) for t in sys.argv[3].split(',')], "
            "int(sys.argv[4]), float(sys.argv[5]))")
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="131072")
    env.update({name: "1" for name in ("NUMBA_NUM_THREADS", "OMP_NUM_THREADS",
                                       "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")})
    here = os.path.dirname(os.path.abspath(__file__))
    process = subprocess.Popen(
        [sys.executable, "-c", code, here, methods, ",".join(map(str, lengths)), str(batch),
         str(budget)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    rows = {method: {} for method in methods.split(",")}
    for line in process.stdout:
        row = json.loads(line)
        method = row["method"]
        rows[method][row["T"]] = row
        if row["status"] == "ok":
            memory = "n/a" if row["peak_bytes"] is None else f"{row['peak_bytes'] / 2**20:.1f}"
            progress(f"{method:9s} T={row['T']:5d}  {row['seconds']:8.4f} s/step  peak +"
                     f"{memory} MiB")
        else:
            progress(f"{method:9s} T={row['T']:5d}  stopped: predicted peak "
                     f"{row['predicted_bytes'] / GIB:.2f} GiB > {budget / GIB:.2f} GiB")
    stderr = process.stderr.read()
    if process.wait() != 0:
        raise RuntimeError(f"the {methods} measurements failed:\n{stderr[-3000:]}")
    return rows


def main(argv=None):
    def extra(parser):
        parser.add_argument("--batch", type=int, help="windows per step (default 8; quick 4)")
        parser.add_argument("--budget-gib", type=float,
                            help="dense memory budget in GiB (default 4; quick 0.05)")
        parser.add_argument("--lengths", help="comma-separated sequence lengths")

    args = parse_args(__doc__.splitlines()[0], argv, extra)
    lengths = (tuple(int(t) for t in args.lengths.split(",")) if args.lengths
               else QUICK_LENGTHS if args.quick else FULL_LENGTHS)
    batch = args.batch or (4 if args.quick else 8)
    budget = (args.budget_gib if args.budget_gib is not None
              else 0.05 if args.quick else 4.0) * GIB
    progress(f"CO2 forecaster training step, batch {batch}, lengths {list(lengths)}, "
             f"dense budget {budget / GIB:.2f} GiB, 1 thread")
    started = time.perf_counter()
    if args.quick:  # one process for both (start-up dominates a quick run)
        measured = measure("bandsolve,dense", lengths, batch, budget)
    else:  # a fresh process each, so that one method's memory cannot hide the other's
        measured = {**measure("bandsolve", lengths, batch, budget),
                    **measure("dense", lengths, batch, budget)}
    band, dense = measured["bandsolve"], measured["dense"]
    rows = []
    for T in lengths:
        b, d = band[T], dense[T]
        rows.append(dict(T=T, bandsolve_seconds=b["seconds"],
                         bandsolve_peak_bytes=b["peak_bytes"],
                         dense_seconds=d.get("seconds"), dense_peak_bytes=d.get("peak_bytes"),
                         dense_status=d["status"],
                         dense_predicted_bytes=d.get("predicted_bytes")))
    print(f"\n{'T':>6} {'bandsolve s':>12} {'MiB':>8} {'dense s':>10} {'MiB':>8} "
          f"{'dense/band':>11}")
    for r in rows:
        mib = (lambda x: "n/a" if x is None else f"{x / 2**20:.1f}")
        if r["dense_status"] == "ok":
            dense_cols = (f"{r['dense_seconds']:10.4f} {mib(r['dense_peak_bytes']):>8} "
                          f"{r['dense_seconds'] / r['bandsolve_seconds']:11.1f}")
        else:
            dense_cols = (f"{'over budget':>10} {'':>8} (predicted "
                          f"{r['dense_predicted_bytes'] / GIB:.1f} GiB)")
        print(f"{r['T']:6d} {r['bandsolve_seconds']:12.4f} "
              f"{mib(r['bandsolve_peak_bytes']):>8} {dense_cols}")
    seconds = time.perf_counter() - started
    print(f"{seconds:.1f} s", flush=True)
    write_json(args.json, dict(rows=rows, batch=batch, budget_bytes=budget,
                               lengths=list(lengths), seconds=seconds))
    if args.plot:
        plot(rows, batch, budget, args.plot)


def plot(rows, batch, budget, path):
    plt = pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    T = np.array([r["T"] for r in rows])
    for ax, key, label in zip(axes, ("seconds", "peak_bytes"),
                              ("seconds per training step", "peak memory increase (MiB)")):
        for prefix, name, color in (("bandsolve", "bandsolve (S-MNN)", "C0"),
                                    ("dense", "MNN-dense", "C3")):
            values = np.array([np.nan if r[f"{prefix}_{key}"] is None else r[f"{prefix}_{key}"]
                               for r in rows], dtype=float)
            if key == "peak_bytes":
                values = values / 2**20
            ok = ~np.isnan(values)
            ax.loglog(T[ok], values[ok], "o-", color=color, label=name)
        ax.set_xlabel("sequence length T (weeks)")
        ax.set_ylabel(label)
        ax.grid(True, which="both", alpha=0.3)
    axes[1].axhline(budget / 2**20, color="0.4", ls="--", lw=1,
                    label=f"dense budget {budget / GIB:.2g} GiB")
    for ax in axes:
        ax.legend(fontsize=8)
    fig.suptitle(f"CO2 forecaster, one training step, batch {batch}, float64, 1 CPU thread",
                 fontsize=10)
    fig.tight_layout()
    save_figure(fig, path)


if __name__ == "__main__":
    main()

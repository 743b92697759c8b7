"""Scaling study: runtime and peak memory of one forward+backward pass against sequence length.

The S-MNN paper's Figure 5 compares its solver with the original MNN's dense solver on the
weekly sea-surface-temperature sequence lengths. This script measures, at a fixed batch,

* **bandsolve**: ``bandsolve_torch.smnn_solve`` (the PyTorch adapter over the Numba CPU
  core) forward, then ``loss.backward()`` (the VJP reuses the forward factorisation);
* **MNN-dense**: the original MNN formulation of ``bandsolve.baselines`` (the rows of
  ``mnn_dense_rows``: one slack shared by all smoothness rows, central rows), its dense
  normal matrices ``A^T A`` for the whole batch stacked in one ``(B, N, N)`` float64
  tensor (``N = T*D*O + 1``, the way a framework holds them on a GPU), a dense Cholesky
  factorisation and solve (``torch.linalg.cholesky`` / ``cholesky_solve``), and the
  backward pass by **torch autograd through the dense factorisation and solve** (to the
  normal matrix and right-hand side). The timed region includes building the normal
  matrices from the rows.

Problem (the SST model's layer): a second-order ODE (``D = 1``, ``O = 3``, ``E = 1``),
time-varying random damped-oscillator coefficients, 10 initial steps of the value
(``init`` ``(10, 1, 1)``), unit steps, central smoothness on for bandsolve too (the
baseline always has it), float64, batch ``B`` (default 8).

Each method runs in its own child process over increasing ``T``; before each measured
call the kernel's peak-RSS mark is reset (``/proc/self/clear_refs``), so "peak memory" is
the increase of the resident set during one forward+backward (Linux; large allocations
are kept mmapped so that freed memory returns to the system), or the peak traced by
``tracemalloc`` (NumPy allocations) if that is larger: both are lower bounds. Time is
the best of several repeats (``bandsolve.apps.bench.best_time``, at least 5 and up to 0.5-3 s
of runs) after an untimed warm-up call of the same size (JIT compilation excluded); a
dense run longer than 1 s is timed once. Both methods run on ``--threads`` threads
(default 1, for Numba, torch and the BLAS alike: on a shared machine, threads waiting
for a busy core would time the scheduler). The dense baseline stops when its predicted
peak, extrapolated as ``N^2`` from its largest measured length, exceeds the memory
budget (default 4 GiB); it is not run past it.

    python examples/scaling.py [--quick] [--json PATH] [--plot PATH] [--batch B]
                               [--budget-gib G] [--lengths 52,104,...]

``--quick``: lengths 52, 104, 208, 416, batch 4 and a 0.1 GiB budget (the dense baseline
stops inside the run), about 20 s. ``--json`` holds ``rows`` (one per length: ``T``,
``bandsolve_seconds``, ``bandsolve_peak_bytes``, ``dense_seconds``,
``dense_peak_bytes``, ``dense_status``), ``batch``, ``budget_bytes`` and the setup.
"""

import json
import os
import subprocess
import sys
import time

import numpy as np

from _common import parse_args, progress, pyplot, save_figure, write_json

FULL_LENGTHS = (52, 104, 208, 416, 832, 1727)
QUICK_LENGTHS = (52, 104, 208, 416)
N_INIT = 10
GIB = 2.0**30


def problem(batch, n_steps, seed=0):
    """NumPy float64 ``(coefficients (B, T, 1, 1, 3), rhs (B, T, 1), init (B, 10, 1, 1),
    steps (B, T-1))``: u'' + a(t) u' + b(t) u = r(t), a in [0.1, 0.5], b in [0.5, 2]."""
    rng = np.random.default_rng(seed)
    T = n_steps
    coefficients = np.empty((batch, T, 1, 1, 3))
    coefficients[..., 0] = rng.uniform(0.5, 2.0, (batch, T, 1, 1))
    coefficients[..., 1] = rng.uniform(0.1, 0.5, (batch, T, 1, 1))
    coefficients[..., 2] = 1.0
    rhs = rng.standard_normal((batch, T, 1))
    init = rng.standard_normal((batch, N_INIT, 1, 1))
    steps = np.full((batch, T - 1), 1.0)
    return coefficients, rhs, init, steps


def bandsolve_pass(args, ubar):
    """One forward+backward through ``bandsolve_torch.smnn_solve``; ``args`` are tensors."""
    import bandsolve_torch

    leaves = [a.detach().requires_grad_(True) for a in args]
    u = bandsolve_torch.smnn_solve(*leaves, central_smoothness=True)
    (u * ubar).sum().backward()
    return leaves[0].grad


def dense_pass(numpy_args, ubar):
    """One forward+backward of the MNN-dense baseline (see the module docstring)."""
    import torch

    from bandsolve.baselines import mnn_dense_rows

    coefficients, rhs, init, steps = numpy_args
    B, T = coefficients.shape[:2]
    n = coefficients.shape[-2] * coefficients.shape[-1]
    N = T * n + 1
    normal = torch.empty((B, N, N), dtype=torch.float64)
    right = torch.empty((B, N, 1), dtype=torch.float64)
    for i in range(B):
        A, beta = mnn_dense_rows(coefficients[i], rhs[i], init[i], steps[i])
        AT = A.T.tocsr()
        normal[i] = torch.from_numpy((AT @ A).toarray())
        right[i, :, 0] = torch.from_numpy(AT @ beta)
    normal.requires_grad_(True)
    right.requires_grad_(True)
    lower = torch.linalg.cholesky(normal)
    x = torch.cholesky_solve(right, lower)
    u = x[:, :-1, 0].reshape(B, T, *coefficients.shape[-2:])
    (u * ubar).sum().backward()
    return normal.grad


def _child(method, lengths, batch, budget, repeat):
    """Child-process body: measure ``method`` at each length; one JSON line per length."""
    import gc
    import tracemalloc

    import torch

    from bandsolve.apps.bench import (_current_rss, _peak_rss_since_reset, _reset_peak_rss,
                                 best_time)

    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    last = None  # (N, peak bytes) of the largest measured dense run
    for T in lengths:
        numpy_args = problem(batch, T)
        ubar = torch.from_numpy(np.random.default_rng(1).standard_normal((batch, T, 1, 3)))
        if method == "bandsolve":
            args = [torch.from_numpy(a) for a in numpy_args]

            def run():
                return bandsolve_pass(args, ubar)
        else:
            N = T * 3 + 1
            if last is not None:
                predicted = last[1] * (N / last[0]) ** 2
                if predicted > budget:
                    print(json.dumps(dict(T=T, status="over budget", seconds=None,
                                          peak_bytes=None, predicted_bytes=predicted)),
                          flush=True)
                    continue

            def run():
                return dense_pass(numpy_args, ubar)
        if method == "bandsolve" or last is None:
            run()  # warm-up: compiles or loads the kernels this size uses
        gc.collect()
        reset = _reset_peak_rss()
        before = _current_rss()
        tracemalloc.start()
        start = time.perf_counter()
        result = run()
        seconds = time.perf_counter() - start
        traced = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        rss = max(_peak_rss_since_reset() - before, 0) if reset else 0
        # both are lower bounds of the true peak: the resident set misses allocations
        # served from memory the process already held, tracemalloc misses torch's own
        peak = max(rss, traced)
        del result
        gc.collect()
        # the traced call's time counts only for long dense runs (a few large allocations
        # make tracemalloc's overhead negligible there); shorter runs are timed again,
        # untraced, best of several (the machine may be shared)
        best = seconds if method == "dense" and seconds > 1.0 else min(
            seconds if method == "dense" else float("inf"),
            best_time(run, repeat=repeat, min_seconds=0.5, max_seconds=3.0))
        if method == "dense" and peak is not None:
            last = (T * 3 + 1, peak)
        print(json.dumps(dict(T=T, status="ok", seconds=best, peak_bytes=peak)), flush=True)


def measure(method, lengths, batch, budget, threads=1, repeat=5):
    """Run :func:`_child` for ``method`` in a fresh process; a dict ``T -> row``."""
    code = ("import sys; sys.path.insert(0, sys.argv[1]); import scaling; "
            "scaling._child(sys.argv[2], [int(t) for t in sys.argv[3].split(',')], "
            "int(sys.argv[4]), float(sys.argv[5]), int(sys.argv[6]))")
    # keep large arrays mmapped so that memory freed after one length returns to the
    # system and cannot hide the next length's peak
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="131072")
    # the same number of threads for both methods (Numba's prange, torch, the BLAS)
    env.update({name: str(threads) for name in (
        "NUMBA_NUM_THREADS", "OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")})
    here = os.path.dirname(os.path.abspath(__file__))
    process = subprocess.Popen(
        [sys.executable, "-c", code, here, method, ",".join(map(str, lengths)), str(batch),
         str(budget), str(repeat)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True, env=env)
    rows = {}
    for line in process.stdout:
        row = json.loads(line)
        rows[row["T"]] = row
        if row["status"] == "ok":
            memory = ("n/a" if row["peak_bytes"] is None
                      else f"{row['peak_bytes'] / 2**20:9.1f} MiB")
            progress(f"{method:9s} T={row['T']:5d}  {row['seconds']:9.4f} s  peak +{memory}")
        else:
            progress(f"{method:9s} T={row['T']:5d}  stopped: predicted peak "
                     f"{row['predicted_bytes'] / GIB:.2f} GiB > budget {budget / GIB:.2f} GiB")
    stderr = process.stderr.read()
    if process.wait() != 0:
        raise RuntimeError(f"the {method} measurements failed:\n{stderr[-3000:]}")
    return rows


def main(argv=None):
    def extra(parser):
        parser.add_argument("--batch", type=int, help="batch size (default 8; quick 4)")
        parser.add_argument("--budget-gib", type=float,
                            help="memory budget of the dense baseline in GiB "
                                 "(default 4; quick 0.1)")
        parser.add_argument("--lengths", help="comma-separated sequence lengths")
        parser.add_argument("--threads", type=int, default=1,
                            help="threads for both methods (default 1: comparable on a "
                                 "shared machine)")

    args = parse_args(__doc__.splitlines()[0], argv, extra)
    lengths = (tuple(int(t) for t in args.lengths.split(",")) if args.lengths
               else QUICK_LENGTHS if args.quick else FULL_LENGTHS)
    batch = args.batch or (4 if args.quick else 8)
    budget = (args.budget_gib if args.budget_gib is not None
              else 0.1 if args.quick else 4.0) * GIB
    progress(f"one forward+backward, batch {batch}, D=1 O=3 E=1, float64, lengths "
             f"{list(lengths)}, dense budget {budget / GIB:.2f} GiB, {args.threads} thread(s)")
    started = time.perf_counter()
    band = measure("bandsolve", lengths, batch, budget, args.threads)
    dense = measure("dense", lengths, batch, budget, args.threads)
    rows = []
    for T in lengths:
        b, d = band[T], dense[T]
        rows.append(dict(T=T, bandsolve_seconds=b["seconds"],
                         bandsolve_peak_bytes=b["peak_bytes"],
                         dense_seconds=d["seconds"], dense_peak_bytes=d["peak_bytes"],
                         dense_status=d["status"],
                         dense_predicted_bytes=d.get("predicted_bytes")))
    print(f"\n{'T':>6} {'bandsolve s':>12} {'peak MiB':>9} {'dense s':>10} {'peak MiB':>9}"
          f" {'dense/band time':>16}")
    for r in rows:
        mib = (lambda x: "n/a" if x is None else f"{x / 2**20:.1f}")
        if r["dense_status"] == "ok":
            dense_cols = (f"{r['dense_seconds']:10.4f} {mib(r['dense_peak_bytes']):>9} "
                          f"{r['dense_seconds'] / r['bandsolve_seconds']:16.0f}")
        else:
            predicted = f"(predicted {r['dense_predicted_bytes'] / GIB:.1f} GiB)"
            dense_cols = f"{'over budget':>10} {'>budget':>9} {predicted:>16}"
        print(f"{r['T']:6d} {r['bandsolve_seconds']:12.5f} {mib(r['bandsolve_peak_bytes']):>9} "
              f"{dense_cols}")
    seconds = time.perf_counter() - started
    print(f"{seconds:.1f} s", flush=True)
    write_json(args.json, dict(rows=rows, batch=batch, budget_bytes=budget,
                               lengths=list(lengths), threads=args.threads, n_dims=1,
                               n_orders=3, n_init=N_INIT,
                               dtype="float64", seconds=seconds))
    if args.plot:
        plot(rows, batch, budget, args.threads, args.plot)


def plot(rows, batch, budget, threads, path):
    plt = pyplot()
    fig, (ax_t, ax_m) = plt.subplots(1, 2, figsize=(11, 4))
    T = np.array([r["T"] for r in rows])
    ok = np.array([r["dense_status"] == "ok" for r in rows])
    series = [("bandsolve (S-MNN)", "bandsolve", "C0", np.ones_like(ok)),
              ("MNN-dense", "dense", "C3", ok)]
    for ax, key, label in ((ax_t, "seconds", "seconds (forward + backward)"),
                           (ax_m, "peak_bytes", "peak memory increase (MiB)")):
        for name, prefix, color, mask in series:
            values = np.array([np.nan if r[f"{prefix}_{key}"] is None
                               else r[f"{prefix}_{key}"] for r in rows], dtype=float)
            if key == "peak_bytes":
                values = values / 2**20
            ax.loglog(T[mask], values[mask], "o-", color=color, label=name)
        if (~ok).any():
            ax.axvline(T[~ok].min(), color="C3", ls=":", lw=1)
            ax.text(T[~ok].min(), ax.get_ylim()[0], " dense over budget", color="C3",
                    fontsize=8, va="bottom", rotation=90)
        ax.set_xlabel("sequence length T (weeks)")
        ax.set_ylabel(label)
        ax.grid(True, which="both", alpha=0.3)
    ax_m.axhline(budget / 2**20, color="0.4", ls="--", lw=1,
                 label=f"budget {budget / GIB:.2g} GiB")
    ax_t.legend(fontsize=8)
    ax_m.legend(fontsize=8)
    fig.suptitle(f"one forward+backward, batch {batch}, 2nd-order ODE (D=1, O=3), float64, "
                 f"CPU, {threads} thread(s)",
                 fontsize=10)
    fig.tight_layout()
    save_figure(fig, path)


if __name__ == "__main__":
    main()

"""``bandsolve bench``: the CPU speed targets (README, Speed), measured as ratios in one run.

Every number goes through the public API (``smnn_solve``, ``smnn_solve_vjp``,
``smnn_factor``, ``smnn_normal_equations``), so the instrument keeps working while the
kernels change. Baselines are measured in the same run, on the same machine:

* **LAPACK**: ``scipy.linalg.solveh_banded`` (``?pbtrf`` + ``?pbtrs``) on one system of
  the already assembled normal equations (assembly excluded), converted to LAPACK lower
  band storage with the narrowest band that holds the matrix (see :func:`lapack_band`),
  on fresh copies with ``overwrite_*=True, check_finite=False``: the strongest fair
  version of this baseline.
* **dense**: Cholesky of the same matrix as a dense ``(T n, T n)`` array
  (``scipy.linalg.cho_factor`` + ``cho_solve``), the original MNN's cost class; only
  where ``T n <= 3000``.

``bandsolve``'s forward time includes assembly, validation and the output array.
Timings are the best of several runs (the machine is shared; the minimum is the least
disturbed run), the two sides of each ratio taking turns so that both see the same
stretch of time, after an untimed call of the same size (JIT compilation excluded).
Problems are :func:`bandsolve.problems.coupled_oscillators` with ``D = O = E = 3``
(block size ``n = 9``).

Peak memory
    *Target 4* runs ``B=1, T=10^6`` in a fresh Python process and reports the peak
    resident-set increase during the solve (inputs already allocated) against the byte
    size of the factor (``smnn_factor(...).lower.nbytes``); the peak of NumPy-traced
    allocations (``tracemalloc``) is reported beside it. *The plot* uses the traced peak
    during the call, plus, for the baselines, their input matrix and right-hand side
    (the S-MNN solve builds its matrix inside the call, the baselines receive theirs);
    its bandsolve point at ``T = 10^6`` comes from the fresh process of target 4.

Flop count (used for GFLOP/s), per system and block row, ``n`` block size, ``p`` block
bandwidth (1, or 2 with central smoothness), ``E`` equations, in multiply-adds (one
multiply-add = 2 flops):

* assembly of ``C_t^T C_t`` (lower triangle) and of ``C_t^T r_t``: ``E n (n+1)/2 + E n``
* block Cholesky: ``(p (p-1)/2 + p + 1/6) n^3`` (``p(p-1)/2`` off-diagonal block
  products, ``p`` triangular solves and ``p`` Gram updates of ``n^3/2`` each, one
  ``n x n`` Cholesky ``n^3/6``)
* forward and backward substitution: ``2 (p + 1/2) n^2``

Lower-order terms (smoothness entries, O(n) per row) are left out.
"""

import argparse
import dataclasses
import gc
import importlib.util
import json
import os
import platform
import subprocess
import sys
import time
import tracemalloc

import numpy as np
import scipy.linalg

import bandsolve

from ..cpu.lanes.solve import release_scratch
from ..problems import coupled_oscillators
from .timing import best_time, best_times

N_DIMS, N_ORDERS, N_EQUATIONS = 3, 3, 3
BLOCK_SIZE = N_DIMS * N_ORDERS


@dataclasses.dataclass(frozen=True)
class Sizes:
    """Problem sizes of one ``bandsolve bench`` run (the defaults are the issue's)."""

    batch: int = 64               # targets 1, 3, 5: B x t_batch
    t_batch: int = 1000
    t_short: int = 10_000         # target 4a: t_long / t_short
    t_long: int = 100_000         # target 2 and 4a
    t_huge: int = 1_000_000       # target 4b: peak memory, B=1
    plot_steps: tuple = (100, 300, 1000, 3000, 10_000, 30_000, 100_000, 1_000_000)
    dense_steps: tuple = (50, 100, 200, 333)  # dense solve only where T n <= 3000
    dense_max_unknowns: int = 3000
    gemm_size: int = 2000
    pair_seconds: float = 2.0     # each target's interleaved pair runs at least this long


DEFAULT_SIZES = Sizes()
# For tests and smoke runs only: every code path, numbers meaningless.
QUICK_SIZES = Sizes(batch=4, t_batch=60, t_short=200, t_long=2000, t_huge=30_000,
                    plot_steps=(20, 60, 200, 2000), dense_steps=(20, 60),
                    dense_max_unknowns=600, gemm_size=200, pair_seconds=0.05)


# ----------------------------------------------------------------------------- baselines

def lapack_band(matrix, index=0, tight=True):
    """One system of a :class:`~bandsolve.BlockBanded` in LAPACK lower band storage.

    ``matrix.blocks`` ``(..., T, p+1, n, n)`` holds ``M[t, t-j]`` at ``[..., t, j]``; the
    result ``ab`` ``(kd+1, T*n)`` holds ``M[i, k]`` at ``ab[i - k, k]`` for
    ``0 <= i - k <= kd`` (the layout of ``scipy.linalg.solveh_banded(..., lower=True)``;
    cells past the end of the matrix are zero). Global index ``i = t*n + a``.

    ``index`` is the flat index of the system in the batch. With ``tight=True``, ``kd`` is
    the largest ``i - k`` of a non-zero entry (a Cholesky factor keeps the band of its
    matrix, so LAPACK does exactly the needed work: ``kd = n + O - 1`` for S-MNN without
    central smoothness, whose off-diagonal blocks couple only equal state dimensions);
    otherwise the block band ``kd = (p+1) n - 1``. Vectorised over ``T``: one strided
    copy per block entry ``(j, a, c)``. Returns ``(ab, kd)``.
    """
    blocks = np.asarray(matrix.blocks).reshape((-1,) + matrix.blocks.shape[-4:])[index]
    T, width, n, _ = blocks.shape
    offsets = []  # (j, a, c, i - k) of every stored entry of the lower triangle
    for j in range(min(width, T)):
        for a in range(n):
            for c in range(n):
                if j > 0 or a >= c:
                    offsets.append((j, a, c, j * n + a - c))
    if tight:
        used = [np.any(blocks[j:, j, a, c] != 0) for j, a, c, _ in offsets]
        kd = max(d for (_, _, _, d), nonzero in zip(offsets, used) if nonzero)
    else:
        kd = width * n - 1
    # Fortran order: LAPACK's layout, so solveh_banded(overwrite_ab=True) works in place
    ab = np.zeros((kd + 1, T * n), dtype=blocks.dtype, order="F")
    for j, a, c, d in offsets:
        if d <= kd:
            # column k = (t-j)*n + c for t = j..T-1: stride n starting at c
            ab[d, c:c + (T - j) * n:n] = blocks[j:, j, a, c]
    return ab, kd


def lapack_solve(ab, b):
    """``scipy.linalg.solveh_banded`` in its fastest form; ``ab`` and ``b`` are consumed
    (in place when ``ab`` is Fortran-ordered, as :func:`lapack_band` makes it)."""
    return scipy.linalg.solveh_banded(ab, b, lower=True, overwrite_ab=True,
                                      overwrite_b=True, check_finite=False)


def dense_solve(dense, b):
    """Dense Cholesky solve of symmetric ``dense x = b``; ``dense`` and ``b`` are consumed.

    A C-ordered ``dense`` is passed as its transpose (the same symmetric matrix, Fortran
    ordered), so LAPACK factors it in place instead of copying it first.
    """
    if dense.flags.c_contiguous and not dense.flags.f_contiguous:
        dense = dense.T
    factor = scipy.linalg.cho_factor(dense, lower=True, overwrite_a=True, check_finite=False)
    return scipy.linalg.cho_solve(factor, b, overwrite_b=True, check_finite=False)


# ----------------------------------------------------------------------------- measuring

def traced_peak(fn, prepare=None):
    """Peak bytes allocated through Python/NumPy during ``fn(*prepare())`` (tracemalloc).

    Memory that Numba allocates inside compiled code is not traced; :func:`_memory_child`
    measures the resident set as well.
    """
    args = prepare() if prepare is not None else ()
    gc.collect()
    tracemalloc.start()
    try:
        result = fn(*args)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    del result, args
    return peak


def block_algorithm_flops(n_steps, block_size=BLOCK_SIZE, bandwidth=1,
                          n_equations=N_EQUATIONS, batch=1):
    """Flops of one forward solve (assembly, block Cholesky, two substitutions); see the
    module docstring for the formula."""
    n, p, E = block_size, bandwidth, n_equations
    multiply_adds = (E * n * (n + 1) / 2 + E * n
                     + (p * (p - 1) / 2 + p + 1 / 6) * n**3
                     + 2 * (p + 0.5) * n**2)
    return 2.0 * multiply_adds * n_steps * batch


_GEMM_CODE = """
import sys, time, numpy as np
n = int(sys.argv[1])
rng = np.random.default_rng(0)
a, b = rng.standard_normal((n, n)), rng.standard_normal((n, n))
a @ b
times = []
for _ in range(3):
    t0 = time.perf_counter(); a @ b; times.append(time.perf_counter() - t0)
print(2.0 * n**3 / min(times) / 1e9)
"""

_THREAD_VARIABLES = ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS",
                     "BLIS_NUM_THREADS", "VECLIB_MAXIMUM_THREADS")


def gemm_rate(size, threads=None):
    """dgemm GFLOP/s of a ``size x size`` float64 matmul (NumPy's BLAS), best of 3, in a
    fresh process; ``threads=1`` pins the BLAS to one thread through its environment
    variables (``None``: the BLAS default)."""
    env = dict(os.environ)
    if threads is not None:
        env.update({name: str(threads) for name in _THREAD_VARIABLES})
    out = subprocess.run([sys.executable, "-c", _GEMM_CODE, str(size)], env=env,
                         capture_output=True, text=True, check=True)
    return float(out.stdout.strip().splitlines()[-1])


def _current_rss():
    """Resident set size of this process in bytes (Linux ``/proc``; 0 elsewhere)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:
        return 0


def _peak_rss():
    """Peak resident set size of this process so far, in bytes."""
    import resource

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024


def _reset_peak_rss():
    """Reset the kernel's peak-RSS mark (Linux >= 4.0); False where not possible."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _peak_rss_since_reset():
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return _peak_rss()


def _memory_child():
    """Child-process body of :func:`measure_huge`: argv ``T``; prints one JSON line."""
    n_steps = int(sys.argv[1])
    args = problem(1, n_steps)
    # a first, untimed call of the same size compiles or loads every kernel it uses (the
    # kernels may choose their path by size); the second call is measured
    bandsolve.smnn_solve(*args)
    # the lane kernels keep their scratch for the next call: free it, so that the
    # measured call's own allocations are seen
    release_scratch()
    gc.collect()
    reset = _reset_peak_rss()
    before = _current_rss()
    tracemalloc.start()
    start = time.perf_counter()
    u = bandsolve.smnn_solve(*args)
    seconds = time.perf_counter() - start
    traced = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    peak = _peak_rss_since_reset() if reset else _peak_rss()
    del u
    coefficients, _, init, steps = args
    factor = bandsolve.smnn_factor(coefficients, steps,
                                   init_shape=(init.shape[-3], init.shape[-1]))
    print(json.dumps(dict(seconds=seconds, rss_increase=max(peak - before, 0),
                          traced_peak=traced, factor_bytes=int(factor.lower.nbytes),
                          rss_before=before)))


def measure_huge(n_steps):
    """Time and peak memory of one ``B=1`` forward solve at ``T = n_steps`` in a fresh
    process (so that earlier allocations cannot hide or inflate its peak)."""
    code = "from bandsolve.apps.bench import _memory_child; _memory_child()"
    # glibc raises its mmap threshold after large frees (up to 32 MiB), after which the
    # warm-up call's freed memory could stay resident and hide the measured call's peak;
    # a fixed threshold keeps large arrays mmapped and returned to the system on free
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="131072")
    out = subprocess.run([sys.executable, "-c", code, str(n_steps)], capture_output=True,
                         text=True, env=env)
    if out.returncode != 0:
        raise RuntimeError(f"the T={n_steps} memory run failed:\n{out.stderr[-2000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


# ----------------------------------------------------------------------------- workloads

def problem(batch, n_steps, dtype=np.float64, seed=0):
    """The benchmark problem: coupled oscillators with ``D = O = E = 3``."""
    return coupled_oscillators(batch, n_steps, n_dims=N_DIMS, n_orders=N_ORDERS,
                               n_equations=N_EQUATIONS, dtype=dtype, seed=seed)


def forward(args):
    return bandsolve.smnn_solve(*args)


def forward_backward(args, ubar):
    u, vjp = bandsolve.smnn_solve_vjp(*args)
    return u, vjp(ubar)


def lapack_system(args, tight=True):
    """``(ab, b, kd)`` of the first system of ``args`` (see :func:`lapack_band`)."""
    matrix, b = bandsolve.smnn_normal_equations(*args)
    ab, kd = lapack_band(matrix, 0, tight=tight)
    return ab, b.reshape(-1, b.shape[-2] * b.shape[-1])[0].copy(), kd


def warm_up():
    """Compile (or load from Numba's cache) every kernel used, in both dtypes."""
    for dtype in (np.float64, np.float32):
        args = problem(2, 8, dtype)
        u = forward(args)
        forward_backward(args, np.ones_like(u))
        ab, b, _ = lapack_system(args)
        lapack_solve(ab, b)


# ----------------------------------------------------------------------------- the run

TARGETS = (
    # id, description, limit as text, test on the measured ratio
    ("1", "forward B={batch},T={t_batch} / (B x LAPACK one system)", "<= 0.1",
     lambda r: r <= 0.1),
    ("2", "forward B=1,T={t_long} / LAPACK", "<= 0.5", lambda r: r <= 0.5),
    ("3", "forward+backward / forward (B={batch},T={t_batch})", "<= 2.5", lambda r: r <= 2.5),
    ("4a", "time T={t_long} / time T={t_short} (B=1)", "8 to 12.5",
     lambda r: 8.0 <= r <= 12.5),
    ("4b", "peak memory / factor bytes (B=1,T={t_huge})", "< 2", lambda r: r < 2.0),
    ("5", "float64 time / float32 time (B={batch},T={t_batch})", ">= 1.6",
     lambda r: r >= 1.6),
)


class Measurements:
    """The timings behind the targets, measured per target, as interleaved pairs.

    ``ratio(id)`` measures the two sides of target ``id`` in alternation
    (:func:`best_times`), so each ratio comes from one stretch of time on a shared
    machine; the asv suite tracks one target at a time, :func:`run` all of them.
    ``times[id]`` keeps the pair (seconds) behind each ratio.
    """

    def __init__(self, sizes=DEFAULT_SIZES, repeat=5):
        self.sizes = sizes
        self.repeat = repeat
        self.times = {}
        self.huge = None
        self.lapack_kd = None
        self._problems = {}

    def _problem(self, batch, n_steps, dtype=np.float64):
        key = (batch, n_steps, np.dtype(dtype).name)
        if key not in self._problems:
            self._problems[key] = problem(batch, n_steps, dtype)
        return self._problems[key]

    def forward(self, batch, n_steps, dtype=np.float64):
        args = self._problem(batch, n_steps, dtype)
        return (lambda: forward(args), None)

    def forward_backward(self, batch, n_steps):
        args = self._problem(batch, n_steps)
        ubar = np.random.default_rng(1).standard_normal(forward(args).shape)
        return (lambda: forward_backward(args, ubar), None)

    def lapack(self, batch, n_steps, tight=True):
        """LAPACK on the first system of the ``(batch, n_steps)`` problem."""
        ab, b, kd = lapack_system(self._problem(batch, n_steps), tight=tight)
        if tight:
            self.lapack_kd = kd
        return (lapack_solve, lambda: (ab.copy(order="F"), b.copy()))

    def pair(self, target, first, second):
        """Time two calls interleaved; record and return their best times."""
        times = best_times([first, second], self.repeat, self.sizes.pair_seconds)
        self.times[target] = times
        return times

    def ratio(self, target):
        """The measured ratio of target ``target`` (``"1"`` ... ``"5"``, ``"4a"``, ``"4b"``)."""
        s = self.sizes
        if target == "1":
            a, b = self.pair(target, self.forward(s.batch, s.t_batch),
                             self.lapack(s.batch, s.t_batch))
            return a / (s.batch * b)
        if target == "2":
            a, b = self.pair(target, self.forward(1, s.t_long), self.lapack(1, s.t_long))
            return a / b
        if target == "3":
            a, b = self.pair(target, self.forward_backward(s.batch, s.t_batch),
                             self.forward(s.batch, s.t_batch))
            return a / b
        if target == "4a":
            a, b = self.pair(target, self.forward(1, s.t_long), self.forward(1, s.t_short))
            return a / b
        if target == "4b":
            if self.huge is None:
                self.huge = measure_huge(s.t_huge)
            self.times[target] = [self.huge["seconds"]]
            return self.huge["rss_increase"] / self.huge["factor_bytes"]
        if target == "5":
            a, b = self.pair(target, self.forward(s.batch, s.t_batch),
                             self.forward(s.batch, s.t_batch, np.float32))
            return a / b
        raise ValueError(f"unknown target {target!r}; known: {[row[0] for row in TARGETS]}")

    def release(self):
        """Drop the cached problems (keep the numbers)."""
        self._problems.clear()


# what the two times behind each target's ratio are (for the report)
_PAIR_LABELS = {
    "1": ("forward B={batch} T={t_batch}", "LAPACK one system T={t_batch}"),
    "2": ("forward B=1 T={t_long}", "LAPACK T={t_long}"),
    "3": ("forward+backward B={batch} T={t_batch}", "forward"),
    "4a": ("forward B=1 T={t_long}", "forward B=1 T={t_short}"),
    "4b": ("forward B=1 T={t_huge} (2nd call, fresh process)",),
    "5": ("forward B={batch} T={t_batch} float64", "float32"),
}


def _log(verbose, message):
    if verbose:
        print(message, file=sys.stderr, flush=True)


def run(sizes=DEFAULT_SIZES, repeat=5, verbose=True):
    """Measure everything; returns a JSON-ready dict (see :func:`main`)."""
    import numba

    s = sizes
    _log(verbose, "compiling kernels (first run only, ~30-60 s; later runs load them from "
                  "Numba's disk cache in about a second; not timed) ...")
    started = time.perf_counter()
    warm_up()
    _log(verbose, f"kernels ready ({time.perf_counter() - started:.1f} s)")
    m = Measurements(s, repeat)
    _log(verbose, f"targets: B={s.batch}, T={s.t_batch}; B=1, T={s.t_short} and "
                  f"T={s.t_long}; B=1, T={s.t_huge} in a fresh process")
    ratios = {key: m.ratio(key) for key, *_ in TARGETS}
    block_band = best_time(*m.lapack(s.batch, s.t_batch, tight=False), repeat=repeat)
    m.release()
    fields = dataclasses.asdict(s)
    targets = [dict(id=key, target=text.format(**fields), measured=ratios[key], limit=limit,
                    passed=bool(check(ratios[key])), seconds=m.times[key],
                    timed=[label.format(**fields) for label in _PAIR_LABELS[key]])
               for key, text, limit, check in TARGETS]

    _log(verbose, "dgemm rate (NumPy BLAS, 1 thread and default threads)")
    t = m.times
    rates = dict(
        dgemm_1_thread=gemm_rate(s.gemm_size, threads=1),
        dgemm_default_threads=gemm_rate(s.gemm_size),
        forward_batch=block_algorithm_flops(s.t_batch, batch=s.batch) / t["1"][0] / 1e9,
        forward_t_long=block_algorithm_flops(s.t_long) / t["2"][0] / 1e9,
        lapack_t_long_same_flops=block_algorithm_flops(s.t_long) / t["2"][1] / 1e9,
    )

    _log(verbose, "scaling in T (B=1): bandsolve, LAPACK, dense")
    scaling = measure_scaling(s, repeat, m.huge)

    return dict(
        sizes=fields,
        problem=dict(n_dims=N_DIMS, n_orders=N_ORDERS, n_equations=N_EQUATIONS,
                     block_size=BLOCK_SIZE, dtype="float64", lapack_kd=int(m.lapack_kd),
                     lapack_kd_block_band=2 * BLOCK_SIZE - 1),
        machine=dict(platform=platform.platform(), processor=platform.processor(),
                     cpu_count=os.cpu_count(), numba_threads=numba.get_num_threads(),
                     python=platform.python_version(), numpy=np.__version__,
                     scipy=scipy.__version__, numba=numba.__version__,
                     bandsolve=bandsolve.__version__),
        repeat=repeat,
        targets=targets,
        lapack_block_band_seconds=block_band,
        memory_huge=m.huge,
        gflops=rates,
        flops_per_step=block_algorithm_flops(1),
        scaling=scaling,
    )


def measure_scaling(s, repeat, huge):
    """Time and peak memory against T (B=1, float64) for the three solvers."""
    rows = dict(T=[], bandsolve_seconds=[], bandsolve_bytes=[], lapack_seconds=[],
                lapack_bytes=[], dense_T=[], dense_seconds=[], dense_bytes=[])
    for n_steps in s.plot_steps:
        rows["T"].append(n_steps)
        if n_steps == s.t_huge:  # measured in the fresh process already
            seconds, peak = huge["seconds"], huge["traced_peak"]
        else:
            seconds, peak = _scaling_bandsolve(n_steps, repeat)
        rows["bandsolve_seconds"].append(seconds)
        rows["bandsolve_bytes"].append(peak)
        seconds, peak = _scaling_lapack(n_steps, repeat)
        rows["lapack_seconds"].append(seconds)
        rows["lapack_bytes"].append(peak)
        gc.collect()
    for n_steps in s.dense_steps:
        if n_steps * BLOCK_SIZE <= s.dense_max_unknowns:
            seconds, peak = _scaling_dense(n_steps, repeat)
            rows["dense_T"].append(n_steps)
            rows["dense_seconds"].append(seconds)
            rows["dense_bytes"].append(peak)
    return rows


def _scaling_bandsolve(n_steps, repeat):
    args = problem(1, n_steps)
    return (best_time(lambda: forward(args), repeat=repeat),
            traced_peak(lambda: forward(args)))


def _scaling_lapack(n_steps, repeat):
    ab, b, _ = lapack_system(problem(1, n_steps))
    fresh = lambda: (ab.copy(order="F"), b.copy())  # noqa: E731 (LAPACK consumes them)
    return (best_time(lapack_solve, fresh, repeat=repeat),
            ab.nbytes + b.nbytes + traced_peak(lapack_solve, fresh))


def _scaling_dense(n_steps, repeat):
    matrix, b = bandsolve.smnn_normal_equations(*problem(1, n_steps))
    dense, b = matrix.to_dense()[0], b.reshape(-1)
    fresh = lambda: (dense.copy(), b.copy())  # noqa: E731 (the solve consumes them)
    return (best_time(dense_solve, fresh, repeat=repeat),
            dense.nbytes + b.nbytes + traced_peak(dense_solve, fresh))


# ----------------------------------------------------------------------------- report

def format_report(results):
    """The human-readable report: the targets table, then the raw numbers."""
    p, m, g = results["problem"], results["machine"], results["gflops"]
    s = results["sizes"]
    lines = [
        f"bandsolve bench: float64 unless noted; D={p['n_dims']}, O={p['n_orders']}, "
        f"E={p['n_equations']} (n={p['block_size']}); {m['cpu_count']} CPUs, "
        f"{m['numba_threads']} Numba threads; best of >= {results['repeat']} runs",
        "",
    ]
    width = max(len(row["target"]) for row in results["targets"]) + 2
    lines.append(f"{'':3}{'target':<{width}}{'measured':>9}   {'limit':<11}result")
    for row in results["targets"]:
        lines.append(f"{row['id']:<3}{row['target']:<{width}}{row['measured']:>9.3f}   "
                     f"{row['limit']:<11}{'pass' if row['passed'] else 'FAIL'}")
    lines += [
        "",
        f"LAPACK = scipy.linalg.solveh_banded, one system, assembly excluded, band "
        f"kd={p['lapack_kd']} (block band kd={p['lapack_kd_block_band']}: "
        f"{results['lapack_block_band_seconds'] * 1e3:.3f} ms at T={s['t_batch']})",
        "",
        "seconds behind each ratio (best runs; the two sides of a ratio interleaved)",
    ]
    for row in results["targets"]:
        timed = ";  ".join(f"{label} {seconds:.5f}"
                           for label, seconds in zip(row["timed"], row["seconds"]))
        lines.append(f"  {row['id']:<3}{timed}")
    h = results["memory_huge"]
    lines += [
        "",
        f"memory B=1 T={s['t_huge']}: factor {h['factor_bytes'] / 2**20:.1f} MiB, peak RSS "
        f"increase {h['rss_increase'] / 2**20:.1f} MiB, traced NumPy peak "
        f"{h['traced_peak'] / 2**20:.1f} MiB",
        "",
        f"GFLOP/s (block algorithm's flops, {results['flops_per_step']:.0f} per step and "
        f"system; see bandsolve/apps/bench.py)",
        f"  bandsolve forward B={s['batch']} T={s['t_batch']}: {g['forward_batch']:.2f}   "
        f"B=1 T={s['t_long']}: {g['forward_t_long']:.2f}   "
        f"(LAPACK on the same count: {g['lapack_t_long_same_flops']:.2f})",
        f"  dgemm {s['gemm_size']}x{s['gemm_size']}: {g['dgemm_1_thread']:.1f} on 1 thread, "
        f"{g['dgemm_default_threads']:.1f} with the BLAS default threads",
    ]
    return "\n".join(lines)


def plot(results, path):
    """Time and peak memory against T (log-log) for bandsolve, LAPACK and dense."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sc = results["scaling"]
    fig, (ax_time, ax_mem) = plt.subplots(1, 2, figsize=(11, 4.2))
    series = [("bandsolve smnn_solve (incl. assembly)", sc["T"], "bandsolve", "o-"),
              ("LAPACK solveh_banded", sc["T"], "lapack", "s-"),
              ("dense Cholesky", sc["dense_T"], "dense", "^-")]
    for label, steps, key, style in series:
        if steps:
            ax_time.loglog(steps, sc[f"{key}_seconds"], style, label=label)
            ax_mem.loglog(steps, np.asarray(sc[f"{key}_bytes"]) / 2**20, style, label=label)
    ax_time.set(xlabel="T (time steps)", ylabel="seconds (best run)",
                title="time, B=1, float64, n=9")
    ax_mem.set(xlabel="T (time steps)", ylabel="MiB", title="peak memory of the solve")
    for ax in (ax_time, ax_mem):
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
    m = results["machine"]
    fig.suptitle(f"bandsolve bench: {m['cpu_count']} CPUs, {m['numba_threads']} Numba threads; "
                 "baselines exclude assembly", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _check_writable_parent(parser, option, path):
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        parser.error(f"{option} {path}: the folder {folder} does not exist")
    if not os.access(folder, os.W_OK):
        parser.error(f"{option} {path}: the folder {folder} is not writable")


def main(argv=None):
    """``bandsolve bench [--quick] [--json PATH] [--plot PATH | --no-plot] [--repeat N]
    [--strict]``. Returns the exit status (with ``--strict``: 1 if a target fails)."""
    parser = argparse.ArgumentParser(
        prog="bandsolve bench",
        description="Measure the CPU speed targets (README, Speed) as ratios against LAPACK "
                    "and "
                    "a dense solve, in one run; print the table and plot time and peak "
                    "memory against T.")
    parser.add_argument("--quick", action="store_true",
                        help="tiny sizes, seconds instead of a minute (for tests; the "
                             "ratios then say nothing about the targets)")
    parser.add_argument("--json", metavar="PATH", help="also write all numbers as JSON")
    parser.add_argument("--plot", metavar="PATH",
                        help="also write a PNG of time and memory against T to PATH "
                             "(needs matplotlib; default: no plot)")
    parser.add_argument("--no-plot", action="store_true",
                        help="do not write the PNG (the default; overrides --plot)")
    parser.add_argument("--repeat", type=int, default=5,
                        help="runs per timing; the best is kept (default: %(default)s)")
    parser.add_argument("--strict", action="store_true",
                        help="exit with status 1 when a target is not met")
    args = parser.parse_args(argv)
    if args.repeat < 1:
        parser.error("--repeat must be at least 1")
    if args.no_plot:
        args.plot = None
    # check what the outputs need before minutes of measuring, not after
    if args.plot:
        if importlib.util.find_spec("matplotlib") is None:
            parser.error("--plot needs matplotlib, which is not installed: "
                         "pip install matplotlib (or the [bench] extra), or drop --plot")
        _check_writable_parent(parser, "--plot", args.plot)
    if args.json:
        _check_writable_parent(parser, "--json", args.json)

    results = run(QUICK_SIZES if args.quick else DEFAULT_SIZES, repeat=args.repeat)
    results["quick"] = bool(args.quick)
    print(format_report(results))
    if args.quick:
        print("\n(--quick: reduced sizes; the ratios say nothing about the targets)")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)
        print(f"\nwrote {args.json}")
    if args.plot:
        plot(results, args.plot)
        print(f"wrote {args.plot}")
    failed = [row["id"] for row in results["targets"] if not row["passed"]]
    return 1 if (args.strict and failed) else 0


if __name__ == "__main__":
    sys.exit(main())

"""Shared grid, memory budget and problem set-up of the asv suite.

Grid: T in {10^2 .. 10^6}, B in {1, 64, 1024}, block size n = D*O in {3, 9, 15} (O = 3,
D = E = n/3), both smoothness modes, float32 and float64. Problems are
:func:`bandsolve.problems.coupled_oscillators` (well posed in float32 at any T).
Combinations whose arrays exceed :data:`MEMORY_BUDGET` and ``T = 10^6`` with ``B > 1``
are skipped: ``setup`` raises ``NotImplementedError`` before allocating, which asv records
as "n/a". JIT compilation happens in ``setup`` (:func:`warm_once`: one untimed call of
the benchmarked workload, at its size), never in a timing.

``peakmem_*``: asv reports the peak resident set of the whole benchmark process. Each
``setup`` ends with :func:`reset_peak_memory`, so on Linux the number is what ``setup``
leaves allocated (the problem, the process with NumPy/SciPy/Numba loaded) plus the peak of
the benchmarked call, without the transient peak of building the problem (for the
baselines: assembling the block-banded matrix before converting it). Elsewhere it
includes that transient peak.
"""

import os

import numpy as np

from bandsolve.problems import coupled_oscillators

# BANDSOLVE_ASV_SMOKE=1 shrinks the grid to seconds, for the test that runs the whole
# suite through asv (tests/test_benchmarks.py); it changes sizes only, never the code run.
SMOKE = os.environ.get("BANDSOLVE_ASV_SMOKE") == "1"

T_VALUES = [100, 100_000] if SMOKE else [100, 1_000, 10_000, 100_000, 1_000_000]
B_VALUES = [1] if SMOKE else [1, 64, 1024]
N_VALUES = [3] if SMOKE else [3, 9, 15]
CENTRAL_VALUES = [False] if SMOKE else [False, True]
DTYPE_VALUES = ["float64"] if SMOKE else ["float32", "float64"]

N_ORDERS = 3
# bytes of the arrays one benchmark holds at its peak (smoke: T = 10^5 is over budget, so
# the skip path runs too)
MEMORY_BUDGET = 2**20 if SMOKE else 3 * 2**30
DENSE_MAX_UNKNOWNS = 3000  # the dense solve is O((T n)^3) time, O((T n)^2) memory


def problem_bytes(B, T, n, central, dtype, copies_of_solution=2):
    """Bytes held at the peak of a solve: inputs, the factor ``(B, T, p+1, n, n)`` and
    ``copies_of_solution`` arrays ``(B, T, n)`` (right-hand side/solution, gradients...)."""
    E = n // N_ORDERS
    p = 2 if central else 1
    per_step = E * n + E + 1 + (p + 1) * n * n + copies_of_solution * n
    return B * T * per_step * np.dtype(dtype).itemsize


def skip_if_too_big(B, T, n, central, dtype, copies_of_solution=2):
    """``NotImplementedError`` (asv: skipped) outside the grid's memory budget."""
    if T >= 1_000_000 and B > 1:
        raise NotImplementedError("T = 10^6 is benchmarked for B = 1 only")
    needed = problem_bytes(B, T, n, central, dtype, copies_of_solution)
    if needed > MEMORY_BUDGET:
        raise NotImplementedError(
            f"needs ~{needed / 2**30:.1f} GiB > budget {MEMORY_BUDGET / 2**30:.0f} GiB")


_cache = {}  # at most one entry per kind: asv re-runs setup before every timed call


def cached(kind, key, build):
    """``build()``, kept until a different ``key`` of the same ``kind`` is asked for."""
    entry = _cache.get(kind)
    if entry is None or entry[0] != key:
        _cache.pop(kind, None)  # free the old arrays before building the new ones
        _cache[kind] = (key, build())
    return _cache[kind][1]


def make_problem(B, T, n, dtype):
    """``(coefficients, rhs, init, steps)`` with batch ``(B,)``, ``D = E = n/3``, ``O = 3``.

    Cached (one problem), because asv re-runs ``setup`` before each timed call; bandsolve
    never writes its inputs, so sharing the arrays is safe.
    """
    D = n // N_ORDERS
    return cached("problem", (B, T, n, np.dtype(dtype).name), lambda: coupled_oscillators(
        B, T, n_dims=D, n_orders=N_ORDERS, n_equations=D, dtype=np.dtype(dtype), seed=0))


_warmed = set()


def warm_once(key, call):
    """Run ``call()`` untimed the first time ``key`` is seen in this process: a call of
    the very size to be timed, because the kernels may choose their path by size, so a
    small warm-up could leave a path uncompiled."""
    if key not in _warmed:
        call()
        _warmed.add(key)


def reset_peak_memory():
    """Reset the kernel's peak-RSS mark (Linux >= 4.0: ``/proc/self/clear_refs``), which
    ``getrusage``'s ``ru_maxrss``, read by asv's ``peakmem_``, follows. No-op elsewhere."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass

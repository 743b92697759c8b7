"""Parallel-in-time solver on the device: one thread per (system, interior).

The algorithm and its helpers are those of ``bandsolve/kernels/partitioned.py`` (compiled from
the same source; read its docstring for the mathematics). This module only launches them:

========================  ==================  =========================================
kernel                    threads             work
========================  ==================  =========================================
assemble_kernel           (system, t)         block row ``t`` of ``M`` (fully parallel)
factor_chunks_kernel      (system, interior)  interior Cholesky + Schur contributions
factor_reduced            system              separators' Schur complement (P-1 rows)
solve_chunks_kernel       (rhs, interior)     ``M_I^{-1} b_I``
solve_separators          rhs                 separators (P-1 rows, sequential)
correct_chunks            (rhs, interior)     interiors from the separators
sequential_*              block per system    the retry (below)
========================  ==================  =========================================

Storage (per system, ordinary layout): ``lower (Bl, T, p+1, n, n)``, ``reduced
(Bl, max(P-1, 1), 2, pn, pn)``; the interiors' rows hold their factors, the separator
rows keep ``M``.

Accuracy: the interior and separator pivots get the sequential kernels' relative test
(``L_kk^2 > CHOLESKY_PIVOT_TOL * M_kk``, ``kernels/partitioned.py::weak_chunk_pivot`` /
``weak_separator_pivot``). A system that fails it, or whose refinement does not
converge with its partitioned factor (``mark_unconverged_kernel``, after a solve), is
refactored in the same storage by the sequential block kernels, including their row-QR
fallback, and is solved by them from then on (``sequential[s]``: ``PARTITIONED``,
``PENDING``, ``SEQUENTIAL``). This is decided on the device without synchronising:
every system gets a launch of the retry kernels, which return at once for the others.
Such a system costs what it would with ``algorithm="block"`` (``T`` sequential steps
on one thread block, and the QR sweep if that takes it).
"""

import math

import numba
from numba import cuda

from ..kernels.assembly import assemble_block_row
from ..kernels.banded import CHOLESKY_PIVOT_TOL
from ..kernels.partitioned import (
    correct_chunk,
    factor_chunk,
    factor_reduced,
    solve_chunk,
    solve_separators,
    weak_chunk_pivot,
    weak_separator_pivot,
)
from . import config
from ._runtime import device_function
from .arrays import source_row
from .block import factor_system, solve_system
from .refine import FAILED, RETRY, fallback

_assemble_block_row = device_function(assemble_block_row)
_factor_chunk = device_function(factor_chunk)
_factor_reduced = device_function(factor_reduced)
_solve_chunk = device_function(solve_chunk)
_solve_separators = device_function(solve_separators)
_correct_chunk = device_function(correct_chunk)
_source_row = device_function(source_row)
_weak_chunk_pivot = device_function(weak_chunk_pivot)
_weak_separator_pivot = device_function(weak_separator_pivot)
_fallback = device_function(fallback)

# sequential[s] of a system: solved by the partitioned factor, or refactored by the
# sequential (block) kernels into the same storage, or about to be
PARTITIONED = 0
SEQUENTIAL = 1
PENDING = 2

_SCRATCH = 2 * config.MAX_ORDERS


@cuda.jit
def assemble_kernel(coefficients, steps, shape, c_strides, h_strides, n_orders, n_init_steps,
                    n_init_orders, we2, wi2, ws2, central, lower, scale):
    """Block row ``t`` of system ``s`` into lower ``(Bl, T, p+1, n, n)``, one thread each;
    scale ``(Bl, T, n)`` receives ``sqrt(M_kk)`` (for the refinement's convergence
    measure: the factor no longer gives it, its separator rows keep ``M``)."""
    k = cuda.grid(1)
    n_steps = lower.shape[1]
    if k >= lower.shape[0] * n_steps:
        return
    s = k // n_steps
    t = k % n_steps
    rows = cuda.local.array((_SCRATCH, _SCRATCH), numba.float64)
    drows = cuda.local.array((_SCRATCH, _SCRATCH), numba.float64)
    c = coefficients[_source_row(s, shape, c_strides)]
    h = steps[_source_row(s, shape, h_strides)]
    _assemble_block_row(c, h, t, n_steps, n_orders, n_init_steps, n_init_orders, we2, wi2,
                        ws2, central, lower[s, t], rows, drows)
    for a in range(scale.shape[2]):
        diagonal = lower[s, t, 0, a, a]
        scale[s, t, a] = math.sqrt(diagonal) if diagonal > 0.0 else 0.0


@cuda.jit
def factor_chunks_kernel(lower, work, n_chunks, chunk, schur, chunk_status):
    """Interior ``c`` of system ``s`` (thread ``s * P + c``); schur ``(Bl, P, 3, pn, pn)``,
    chunk_status ``(Bl, P)``, work ``(Bl, T, n)``."""
    k = cuda.grid(1)
    if k >= lower.shape[0] * n_chunks:
        return
    s = k // n_chunks
    c = k % n_chunks
    status = _factor_chunk(lower[s], work[s], c, n_chunks, chunk, schur[s, c])
    if status == 0:
        status = _weak_chunk_pivot(lower[s], c, n_chunks, chunk, CHOLESKY_PIVOT_TOL)
    chunk_status[s, c] = status


@cuda.jit
def factor_reduced_kernel(lower, schur, chunk_status, n_chunks, chunk, reduced, info):
    """Separators of system ``s = thread``; info ``(Bl,)`` gets 0 or ``t + 1`` (also for
    a pivot that fails the relative test, in an interior or a separator)."""
    s = cuda.grid(1)
    if s >= lower.shape[0]:
        return
    status = _factor_reduced(lower[s], schur[s], chunk_status[s], n_chunks, chunk, reduced[s])
    if status == 0:
        status = _weak_separator_pivot(lower[s], reduced[s], n_chunks, chunk,
                                       CHOLESKY_PIVOT_TOL)
    info[s] = status


@cuda.jit
def solve_chunks_kernel(lower, info, sequential, shape, l_strides, skip, x, n_chunks, chunk):
    """``x[i][I_c] <- M_{I_c}^{-1} x[i][I_c]`` (thread ``i * P + c``); x ``(B, T, n)``.
    Right-hand sides with ``skip[i] != 0`` (``(B,)``) or whose factor is sequential
    (``sequential_solve_kernel``) are left alone."""
    k = cuda.grid(1)
    if k >= x.shape[0] * n_chunks:
        return
    i = k // n_chunks
    s = _source_row(i, shape, l_strides)
    if info[s] == 0 and skip[i] == 0 and sequential[s] == PARTITIONED:
        _solve_chunk(lower[s], x[i], k % n_chunks, n_chunks, chunk)


@cuda.jit
def solve_separators_kernel(lower, reduced, info, sequential, shape, l_strides, skip, x, xs,
                            n_chunks, chunk):
    """Separator unknowns of right-hand side ``i = thread``; xs ``(B, max(P-1,1), pn)``.
    A failed factor gives NaN in the whole of ``x[i]``."""
    i = cuda.grid(1)
    if i >= x.shape[0]:
        return
    s = _source_row(i, shape, l_strides)
    if sequential[s] != PARTITIONED:
        return
    if info[s] != 0:
        v = x[i]
        for t in range(v.shape[0]):
            for a in range(v.shape[1]):
                v[t, a] = math.nan
        return
    if skip[i] == 0:
        _solve_separators(lower[s], reduced[s], x[i], xs[i], n_chunks, chunk)


@cuda.jit
def correct_chunks_kernel(lower, info, sequential, shape, l_strides, skip, x, work, n_chunks,
                          chunk):
    """Interior ``c`` of right-hand side ``i`` from its separators; work ``(B, T, n)``."""
    k = cuda.grid(1)
    if k >= x.shape[0] * n_chunks:
        return
    i = k // n_chunks
    s = _source_row(i, shape, l_strides)
    if info[s] == 0 and skip[i] == 0 and sequential[s] == PARTITIONED:
        _correct_chunk(lower[s], x[i], work[i], k % n_chunks, n_chunks, chunk)


# ----------------------------------------------------------------------------- retry

@cuda.jit
def mark_failed_kernel(info, sequential):
    """``sequential[s] = PENDING`` for a system whose partitioned factorisation failed
    (``info[s] != 0``: a pivot not positive or failing the relative test), else
    ``PARTITIONED``; thread ``s``."""
    s = cuda.grid(1)
    if s < info.shape[0]:
        sequential[s] = PENDING if info[s] != 0 else PARTITIONED


@cuda.jit
def mark_unconverged_kernel(state, shape, l_strides, info, sequential):
    """Right-hand side ``i = thread`` whose refinement failed with a partitioned factor
    that had passed the pivot tests: ``state[i] = RETRY``, and its factor becomes
    ``PENDING`` (refactored sequentially; several right-hand sides may share it)."""
    i = cuda.grid(1)
    if i >= state.shape[0] or state[i] != FAILED:
        return
    s = _source_row(i, shape, l_strides)
    if info[s] == 0 and sequential[s] != SEQUENTIAL:
        state[i] = RETRY
        sequential[s] = PENDING


@cuda.jit
def sequential_factor_kernel(coefficients, steps, shape, c_strides, h_strides, n_orders,
                             n_init_steps, n_init_orders, we2, wi2, ws2, central, sequential,
                             lower, info):
    """``block.factor_kernel`` for the ``PENDING`` systems only (a thread block each; the
    others return at once), into the same storage lower ``(Bl, T, p+1, n, n)``."""
    s = cuda.blockIdx.x
    if sequential[s] != PENDING:
        return
    tid = cuda.threadIdx.x
    rows = cuda.shared.array((_SCRATCH, _SCRATCH), numba.float64)
    drows = cuda.shared.array((_SCRATCH, _SCRATCH), numba.float64)
    status = factor_system(coefficients[_source_row(s, shape, c_strides)],
                           steps[_source_row(s, shape, h_strides)], lower[s], n_orders,
                           n_init_steps, n_init_orders, we2, wi2, ws2, central, rows, drows,
                           tid, cuda.blockDim.x)
    if tid == 0:
        info[s] = status


@cuda.jit
def sequential_fallback_kernel(coefficients, steps, shape, c_strides, h_strides, n_orders,
                               n_init_steps, n_init_orders, we, wi, ws, central, first,
                               sequential, lower, work, colsq, info):
    """``refine.block_fallback_kernel`` (the row-QR fallback of a weak or failed
    Cholesky factor) for the ``PENDING`` systems only; then they become ``SEQUENTIAL``."""
    k = cuda.grid(1)
    s = first + k
    if k >= work.shape[0] or s >= info.shape[0] or sequential[s] != PENDING:
        return
    rows = cuda.local.array((_SCRATCH, _SCRATCH), numba.float64)
    drows = cuda.local.array((_SCRATCH, _SCRATCH), numba.float64)
    info[s] = _fallback(coefficients[_source_row(s, shape, c_strides)],
                        steps[_source_row(s, shape, h_strides)], n_orders, n_init_steps,
                        n_init_orders, we, wi, ws, central, lower[s], work[k], colsq[k],
                        rows, drows, info[s])
    sequential[s] = SEQUENTIAL


@cuda.jit
def sequential_solve_kernel(lower, info, sequential, shape, l_strides, skip, x):
    """``block.solve_kernel`` for the right-hand sides whose factor is ``SEQUENTIAL``."""
    i = cuda.blockIdx.x
    s = _source_row(i, shape, l_strides)
    if sequential[s] != SEQUENTIAL:
        return
    tid = cuda.threadIdx.x
    n_threads = cuda.blockDim.x
    v = x[i]
    if info[s] != 0:
        for t in range(v.shape[0]):
            for a in range(tid, v.shape[1], n_threads):
                v[t, a] = math.nan
        return
    if skip[i] != 0:
        return
    solve_system(lower[s], v, tid, n_threads)

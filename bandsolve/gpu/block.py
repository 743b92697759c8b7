"""One cooperating thread block per system: the kernel shape for larger blocks.

The recurrences are those of ``kernels/banded.py``, from the same row helpers; within a
block row, thread ``k`` of the block owns the rows ``i = k, k + nthreads, ...`` of every
``n x n`` block. Row ``i`` of an
off-diagonal block of ``L`` depends only on row ``i`` of the same block row and on earlier
block rows, so those updates need no barrier; the diagonal update and the Cholesky of the
diagonal block read other threads' rows and are separated by barriers. The short
sequential pieces (smoothness rows, triangular solves of a vector) run on thread 0 with the
core's helpers, compiled from the same source.

Storage: the ordinary per-system layout ``lower[s, t, j] == L_s[t, t-j]``, shape
``(Bl, T, p+1, n, n)`` (a thread block reads one system's contiguous band: coalesced).
"""

import math

import numba
from numba import cuda

from ..kernels.assembly import add_smoothness_block_row, equation_row
from ..kernels.banded import diagonal_update_rows, offdiagonal_block_rows
from ..kernels.blocks import (cholesky_column_rows, cholesky_pivot, is_valid_pivot, solve_lower,
                              solve_lower_transpose)
from . import config
from ._runtime import device_function
from .arrays import source_row

_add_smoothness_block_row = device_function(add_smoothness_block_row)
_solve_lower = device_function(solve_lower)
_solve_lower_transpose = device_function(solve_lower_transpose)
_equation_row = device_function(equation_row)
_cholesky_pivot = device_function(cholesky_pivot)
_cholesky_column_rows = device_function(cholesky_column_rows)
_is_valid_pivot = device_function(is_valid_pivot)
_source_row = device_function(source_row)
_offdiagonal_block_rows = device_function(offdiagonal_block_rows)
_diagonal_update_rows = device_function(diagonal_update_rows)

_SCRATCH = 2 * config.MAX_ORDERS


# ----------------------------------------------------------------------------- pieces

@cuda.jit(device=True)
def cholesky_cooperative(a, tid, n_threads):
    """``kernels/blocks.py::cholesky_in_place`` of ``a`` ``(n, n)`` by the whole block,
    from the same column helpers (thread ``tid`` takes every ``n_threads``-th row of a
    column); returns 0 or ``j + 1`` for a bad pivot (the same value in every thread)."""
    n = a.shape[0]
    for j in range(n):
        pivot = _cholesky_pivot(a, j)  # every thread, from the finished columns < j
        if not _is_valid_pivot(pivot):
            return j + 1
        diag = math.sqrt(pivot)
        _cholesky_column_rows(a, j, diag, tid, n_threads)
        cuda.syncthreads()  # everyone has read a[j, j] and finished column j
        if tid == 0:
            a[j, j] = diag
            for i in range(j):
                a[i, j] = 0.0
        cuda.syncthreads()
    return 0


@cuda.jit(device=True)
def factor_system(c, h, system, n_orders, n_init_steps, n_init_orders, we2, wi2, ws2, central,
                  rows, drows, tid, n_threads):
    """Assemble and factor one system, lower ``(T, p+1, n, n)``, by the whole thread
    block (rows/drows: shared scratch); returns 0 or ``t + 1`` for the first block row
    whose pivot was not positive (the same value in every thread)."""
    n_steps = system.shape[0]
    n = system.shape[2]
    for t in range(n_steps):
        row = system[t]
        for i in range(tid, n, n_threads):
            _equation_row(c, t, i, n_orders, n_init_steps, n_init_orders, we2, wi2, row)
        cuda.syncthreads()
        if tid == 0:
            _add_smoothness_block_row(h, t, n_steps, n_orders, ws2, central, row, rows, drows)
        cuda.syncthreads()
        _offdiagonal_block_rows(system, t, tid, n_threads)  # rows independent: no barrier
        cuda.syncthreads()  # the diagonal update reads other threads' rows
        _diagonal_update_rows(system, t, tid, n_threads)
        cuda.syncthreads()
        if cholesky_cooperative(row[0], tid, n_threads) != 0:
            return t + 1
    return 0


@cuda.jit(device=True)
def solve_system(system, v, tid, n_threads):
    """``v <- M^{-1} v`` for one factor ``(T, p+1, n, n)`` and v ``(T, n)``, by the whole
    thread block."""
    n_steps = v.shape[0]
    n = v.shape[1]
    p = system.shape[1] - 1
    for t in range(n_steps):  # v <- L^{-1} v
        for a in range(tid, n, n_threads):
            value = v[t, a]
            for j in range(1, (p if p < t else t) + 1):
                block = system[t, j]
                for b in range(n):
                    value -= block[a, b] * v[t - j, b]
            v[t, a] = value
        cuda.syncthreads()
        if tid == 0:
            _solve_lower(system[t, 0], v[t])
        cuda.syncthreads()
    for t in range(n_steps - 1, -1, -1):  # v <- L^{-T} v
        for a in range(tid, n, n_threads):
            value = v[t, a]
            for j in range(1, (p if p < n_steps - 1 - t else n_steps - 1 - t) + 1):
                block = system[t + j, j]
                for b in range(n):
                    value -= block[b, a] * v[t + j, b]
            v[t, a] = value
        cuda.syncthreads()
        if tid == 0:
            _solve_lower_transpose(system[t, 0], v[t])
        cuda.syncthreads()


# ----------------------------------------------------------------------------- kernels

@cuda.jit
def factor_kernel(coefficients, steps, shape, c_strides, h_strides, n_orders, n_init_steps,
                  n_init_orders, we2, wi2, ws2, central, lower, info):
    """Assemble and factor system ``s = block index``; arguments as in
    ``thread.factor_kernel`` but lower ``(Bl, T, p+1, n, n)``."""
    s = cuda.blockIdx.x
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
def solve_kernel(lower, info, shape, l_strides, skip, x):
    """``x[i] <- M^{-1} x[i]`` for right-hand side ``i = block index``; x ``(B, T, n)``,
    lower ``(Bl, T, p+1, n, n)``. A failed factor gives NaN; ``skip`` as in
    ``thread.solve_kernel``."""
    i = cuda.blockIdx.x
    tid = cuda.threadIdx.x
    n_threads = cuda.blockDim.x
    s = _source_row(i, shape, l_strides)
    v = x[i]
    if info[s] != 0:
        for t in range(v.shape[0]):
            for a in range(tid, v.shape[1], n_threads):
                v[t, a] = math.nan
        return
    if skip[i] != 0:  # the same for every thread of the block: no barrier is left waiting
        return
    solve_system(lower[s], v, tid, n_threads)

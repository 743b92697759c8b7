"""One cooperating thread block per system: the kernel shape for larger blocks.

The recurrences are those of ``kernels/banded.py``; within a block row, thread ``k`` of the
block owns the rows ``i = k, k + nthreads, ...`` of every ``n x n`` block. Row ``i`` of an
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

from ..kernels.blocks import solve_lower, solve_lower_transpose
from ..cpu.smnn import _time_index, add_smoothness_block_row
from . import config
from ._runtime import device_function
from .arrays import source_row

_add_smoothness_block_row = device_function(add_smoothness_block_row)
_solve_lower = device_function(solve_lower)
_solve_lower_transpose = device_function(solve_lower_transpose)
_time_index_d = device_function(_time_index)
_source_row = device_function(source_row)

_SCRATCH = 2 * config.MAX_ORDERS


# ----------------------------------------------------------------------------- row pieces

def equation_row(coefficients, t, i, n_orders, n_init_steps, n_init_orders, we2, wi2, row):
    """Row ``i`` of block row ``t`` before smoothness: zero in every block, then
    ``we^2 (C_t^T C_t)[i, :] + wi^2`` on a pinned diagonal entry (cf.
    ``cpu/smnn.py::_add_equations_and_init``, which writes the whole block)."""
    n = row.shape[1]
    for j in range(row.shape[0]):
        for b in range(n):
            row[j, i, b] = 0.0
    c = coefficients[_time_index_d(t, coefficients.shape[0])]
    for b in range(n):
        value = 0.0
        for e in range(c.shape[0]):
            value += c[e, i] * c[e, b]
        row[0, i, b] = we2 * value
    if t < n_init_steps and i % n_orders < n_init_orders:
        row[0, i, i] += wi2


def offdiagonal_row(lower, t, i):
    """Row ``i`` of ``L[t, t-j]``, ``j = reach..1`` (``kernels/banded.py::factor_block_row``
    restricted to one row: ``subtract_product_nt`` then ``right_solve_lower_transpose``)."""
    p = lower.shape[1] - 1
    n = lower.shape[2]
    reach = min(p, t)
    for j in range(reach, 0, -1):
        block = lower[t, j]
        for k in range(j + 1, reach + 1):
            g = lower[t, k]
            h = lower[t - j, k - j]
            for col in range(n):
                value = block[i, col]
                for m in range(n):
                    value -= g[i, m] * h[col, m]
                block[i, col] = value
        diag = lower[t - j, 0]
        for col in range(n):
            value = block[i, col]
            for m in range(col):
                value -= diag[col, m] * block[i, m]
            block[i, col] = value / diag[col, col]


def diagonal_update_row(lower, t, i):
    """Row ``i`` (lower triangle) of ``M[t, t] - sum_j L[t, t-j] L[t, t-j]^T``."""
    p = lower.shape[1] - 1
    n = lower.shape[2]
    diagonal = lower[t, 0]
    for j in range(1, min(p, t) + 1):
        g = lower[t, j]
        for col in range(i + 1):
            value = diagonal[i, col]
            for m in range(n):
                value -= g[i, m] * g[col, m]
            diagonal[i, col] = value


_equation_row = device_function(equation_row)
_offdiagonal_row = device_function(offdiagonal_row)
_diagonal_update_row = device_function(diagonal_update_row)


@cuda.jit(device=True)
def cholesky_cooperative(a, tid, n_threads):
    """Right-looking Cholesky of the lower triangle of ``a`` ``(n, n)`` by the whole
    block; returns 0 or ``j + 1`` for a pivot that is not positive and finite (the same
    value in every thread). The strict upper triangle is zeroed, as in
    ``kernels/blocks.py::cholesky_in_place``."""
    n = a.shape[0]
    for j in range(n):
        pivot = a[j, j]
        cuda.syncthreads()  # everyone has read the pivot before it is overwritten
        if not (pivot > 0.0 and pivot < math.inf):
            return j + 1
        diag = math.sqrt(pivot)
        for i in range(j + tid, n, n_threads):
            if i == j:
                a[j, j] = diag
            else:
                a[i, j] = a[i, j] / diag
        cuda.syncthreads()
        for i in range(j + 1 + tid, n, n_threads):
            lij = a[i, j]
            for k in range(j + 1, i + 1):
                a[i, k] -= lij * a[k, j]
        cuda.syncthreads()
    for i in range(tid, n, n_threads):
        for k in range(i + 1, n):
            a[i, k] = 0.0
    cuda.syncthreads()
    return 0


# ----------------------------------------------------------------------------- kernels

@cuda.jit
def factor_kernel(coefficients, steps, shape, c_strides, h_strides, n_orders, n_init_steps,
                  n_init_orders, we2, wi2, ws2, central, lower, info):
    """Assemble and factor system ``s = block index``; arguments as in
    ``thread.factor_kernel`` but lower ``(Bl, T, p+1, n, n)``."""
    s = cuda.blockIdx.x
    tid = cuda.threadIdx.x
    n_threads = cuda.blockDim.x
    rows = cuda.shared.array((_SCRATCH, _SCRATCH), numba.float64)
    drows = cuda.shared.array((_SCRATCH, _SCRATCH), numba.float64)
    system = lower[s]
    c = coefficients[_source_row(s, shape, c_strides)]
    h = steps[_source_row(s, shape, h_strides)]
    n_steps = system.shape[0]
    n = system.shape[2]
    if tid == 0:
        info[s] = 0
    for t in range(n_steps):
        row = system[t]
        for i in range(tid, n, n_threads):
            _equation_row(c, t, i, n_orders, n_init_steps, n_init_orders, we2, wi2, row)
        cuda.syncthreads()
        if tid == 0:
            _add_smoothness_block_row(h, t, n_steps, n_orders, ws2, central, row, rows, drows)
        cuda.syncthreads()
        for i in range(tid, n, n_threads):
            _offdiagonal_row(system, t, i)
        cuda.syncthreads()
        for i in range(tid, n, n_threads):
            _diagonal_update_row(system, t, i)
        cuda.syncthreads()
        status = cholesky_cooperative(row[0], tid, n_threads)
        if status != 0:
            if tid == 0:
                info[s] = t + 1
            return


@cuda.jit
def solve_kernel(lower, info, shape, l_strides, x):
    """``x[i] <- M^{-1} x[i]`` for right-hand side ``i = block index``; x ``(B, T, n)``,
    lower ``(Bl, T, p+1, n, n)``. A failed factor gives NaN."""
    i = cuda.blockIdx.x
    tid = cuda.threadIdx.x
    n_threads = cuda.blockDim.x
    s = _source_row(i, shape, l_strides)
    v = x[i]
    n_steps = v.shape[0]
    n = v.shape[1]
    if info[s] != 0:
        for t in range(n_steps):
            for a in range(tid, n, n_threads):
                v[t, a] = math.nan
        return
    system = lower[s]
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

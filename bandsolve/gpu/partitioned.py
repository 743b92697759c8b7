"""Parallel-in-time solver on the device: one thread per (system, interior).

The algorithm and its helpers are those of ``bandsolve/kernels/partitioned.py`` (compiled from
the same source; read its docstring for the mathematics). This module only launches them:

====================  ======================  =========================================
kernel                threads                 work
====================  ======================  =========================================
assemble_kernel       (system, t)             block row ``t`` of ``M`` (fully parallel)
factor_chunks_kernel  (system, interior)      interior Cholesky + Schur contributions
factor_reduced        system                  separators' Schur complement (P-1 rows)
solve_chunks_kernel   (rhs, interior)         ``M_I^{-1} b_I``
solve_separators      rhs                     separators (P-1 rows, sequential)
correct_chunks        (rhs, interior)         interiors from the separators
====================  ======================  =========================================

Storage (per system, ordinary layout): ``lower (Bl, T, p+1, n, n)``, ``reduced
(Bl, max(P-1, 1), 2, pn, pn)``; the interiors' rows hold their factors, the separator
rows keep ``M``.
"""

import math

import numba
from numba import cuda

from ..kernels.assembly import assemble_block_row
from ..kernels.partitioned import (
    correct_chunk,
    factor_chunk,
    factor_reduced,
    solve_chunk,
    solve_separators,
)
from . import config
from ._runtime import device_function
from .arrays import source_row

_assemble_block_row = device_function(assemble_block_row)
_factor_chunk = device_function(factor_chunk)
_factor_reduced = device_function(factor_reduced)
_solve_chunk = device_function(solve_chunk)
_solve_separators = device_function(solve_separators)
_correct_chunk = device_function(correct_chunk)
_source_row = device_function(source_row)

_SCRATCH = 2 * config.MAX_ORDERS


@cuda.jit
def assemble_kernel(coefficients, steps, shape, c_strides, h_strides, n_orders, n_init_steps,
                    n_init_orders, we2, wi2, ws2, central, lower):
    """Block row ``t`` of system ``s`` into lower ``(Bl, T, p+1, n, n)``, one thread each."""
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


@cuda.jit
def factor_chunks_kernel(lower, work, n_chunks, chunk, schur, chunk_status):
    """Interior ``c`` of system ``s`` (thread ``s * P + c``); schur ``(Bl, P, 3, pn, pn)``,
    chunk_status ``(Bl, P)``, work ``(Bl, T, n)``."""
    k = cuda.grid(1)
    if k >= lower.shape[0] * n_chunks:
        return
    s = k // n_chunks
    c = k % n_chunks
    chunk_status[s, c] = _factor_chunk(lower[s], work[s], c, n_chunks, chunk, schur[s, c])


@cuda.jit
def factor_reduced_kernel(lower, schur, chunk_status, n_chunks, chunk, reduced, info):
    """Separators of system ``s = thread``; info ``(Bl,)`` gets 0 or ``t + 1``."""
    s = cuda.grid(1)
    if s >= lower.shape[0]:
        return
    info[s] = _factor_reduced(lower[s], schur[s], chunk_status[s], n_chunks, chunk,
                              reduced[s])


@cuda.jit
def solve_chunks_kernel(lower, info, shape, l_strides, x, n_chunks, chunk):
    """``x[i][I_c] <- M_{I_c}^{-1} x[i][I_c]`` (thread ``i * P + c``); x ``(B, T, n)``."""
    k = cuda.grid(1)
    if k >= x.shape[0] * n_chunks:
        return
    i = k // n_chunks
    s = _source_row(i, shape, l_strides)
    if info[s] == 0:
        _solve_chunk(lower[s], x[i], k % n_chunks, n_chunks, chunk)


@cuda.jit
def solve_separators_kernel(lower, reduced, info, shape, l_strides, x, xs, n_chunks, chunk):
    """Separator unknowns of right-hand side ``i = thread``; xs ``(B, max(P-1,1), pn)``.
    A failed factor gives NaN in the whole of ``x[i]``."""
    i = cuda.grid(1)
    if i >= x.shape[0]:
        return
    s = _source_row(i, shape, l_strides)
    if info[s] != 0:
        v = x[i]
        for t in range(v.shape[0]):
            for a in range(v.shape[1]):
                v[t, a] = math.nan
        return
    _solve_separators(lower[s], reduced[s], x[i], xs[i], n_chunks, chunk)


@cuda.jit
def correct_chunks_kernel(lower, info, shape, l_strides, x, work, n_chunks, chunk):
    """Interior ``c`` of right-hand side ``i`` from its separators; work ``(B, T, n)``."""
    k = cuda.grid(1)
    if k >= x.shape[0] * n_chunks:
        return
    i = k // n_chunks
    s = _source_row(i, shape, l_strides)
    if info[s] == 0:
        _correct_chunk(lower[s], x[i], work[i], k % n_chunks, n_chunks, chunk)

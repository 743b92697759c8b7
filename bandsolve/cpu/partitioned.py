"""Parallel-in-time block Cholesky on the CPU: one ``prange`` iteration per chunk.

The method and its helpers are those of :mod:`bandsolve.kernels.partitioned`; these
kernels are the host reference of the GPU solver and a candidate CPU path for a batch of
one.
"""

import numba
import numpy as np

from .._jit import jit_kernel
from ..kernels.partitioned import (
    n_chunks_for,
    factor_chunk,
    factor_reduced,
    solve_chunk,
    solve_separators,
    correct_chunk,
)


# ----------------------------------------------------------------------------- CPU kernels

@jit_kernel
def partitioned_factor_kernel(lower, work, n_chunks, chunk, schur, chunk_status, reduced,
                              info):
    """Factor every system of lower ``(B, T, p+1, n, n)`` (holding ``M``) by interiors.

    work ``(B, T, n)``, schur ``(B, P, 3, pn, pn)``, chunk_status ``(B, P)`` int64,
    reduced ``(B, max(P-1, 1), 2, pn, pn)``; info ``(B,)`` gets 0 or ``t + 1``.
    """
    n_systems = lower.shape[0]
    for k in numba.prange(n_systems * n_chunks):
        b = k // n_chunks
        c = k % n_chunks
        chunk_status[b, c] = factor_chunk(lower[b], work[b], c, n_chunks, chunk, schur[b, c])
    for b in numba.prange(n_systems):
        info[b] = factor_reduced(lower[b], schur[b], chunk_status[b], n_chunks, chunk,
                                 reduced[b])


@jit_kernel
def partitioned_solve_kernel(lower, reduced, lhs_index, v, work, vs, n_chunks, chunk):
    """Solve in place for v ``(B, T, n)``; lhs_index ``(B,)`` picks each right-hand
    side's factor; work ``(B, T, n)``, vs ``(B, max(P-1, 1), pn)`` scratch."""
    n_rhs = v.shape[0]
    for k in numba.prange(n_rhs * n_chunks):
        i = k // n_chunks
        solve_chunk(lower[lhs_index[i]], v[i], k % n_chunks, n_chunks, chunk)
    for i in numba.prange(n_rhs):
        solve_separators(lower[lhs_index[i]], reduced[lhs_index[i]], v[i], vs[i], n_chunks,
                         chunk)
    for k in numba.prange(n_rhs * n_chunks):
        i = k // n_chunks
        correct_chunk(lower[lhs_index[i]], v[i], work[i], k % n_chunks, n_chunks, chunk)


def partitioned_cholesky_solve(blocks, b, chunk):
    """Reference driver: solve ``M x = b`` by the partitioned method on the host.

    blocks ``(B, T, p+1, n, n)`` lower block storage of ``M`` (not modified), b ``(B, T, n)``,
    chunk the interior length ``m >= p``. Returns ``(x, info)``; ``info`` ``(B,)`` as in
    :func:`partitioned_factor_kernel` (``x`` is meaningless where it is non-zero).
    """
    lower = np.array(blocks, order="C", copy=True)
    n_systems, n_steps, width, n, _ = lower.shape
    p = width - 1
    if chunk < max(p, 1):
        raise ValueError(f"chunk must be >= max(bandwidth, 1) = {max(p, 1)}; got {chunk}")
    n_chunks = n_chunks_for(n_steps, p, chunk)
    pn = max(p * n, 1)
    work = np.zeros((n_systems, n_steps, n), dtype=lower.dtype)
    schur = np.zeros((n_systems, n_chunks, 3, pn, pn), dtype=lower.dtype)
    chunk_status = np.zeros((n_systems, n_chunks), dtype=np.int64)
    reduced = np.zeros((n_systems, max(n_chunks - 1, 1), 2, pn, pn), dtype=lower.dtype)
    info = np.zeros(n_systems, dtype=np.int64)
    partitioned_factor_kernel(lower, work, n_chunks, chunk, schur, chunk_status, reduced, info)
    x = np.array(b, dtype=lower.dtype, order="C", copy=True)
    vs = np.zeros((n_systems, max(n_chunks - 1, 1), pn), dtype=lower.dtype)
    partitioned_solve_kernel(lower, reduced, np.arange(n_systems, dtype=np.int64), x, work, vs,
                             n_chunks, chunk)
    return x, info

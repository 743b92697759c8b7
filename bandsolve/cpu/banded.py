"""CPU kernels of :mod:`bandsolve.banded`: factor and solve every system of a batch, in
parallel over the batch (``prange``), with the per-system helpers of
:mod:`bandsolve.kernels.banded`."""

import numba

from .._jit import jit_kernel
from ..kernels.banded import backward_substitute, factor_block_row, forward_substitute


@jit_kernel
def factor_kernel(lower, info):
    """Factor every system in place. lower ``(B, T, p+1, n, n)``; info ``(B,)`` int64 gets
    0 on success or ``t + 1`` for the first block row ``t`` whose pivot failed."""
    for b in numba.prange(lower.shape[0]):
        info[b] = 0
        for t in range(lower.shape[1]):
            if factor_block_row(lower[b], t) != 0:
                info[b] = t + 1
                break


@jit_kernel
def solve_kernel(lower, lhs_index, v):
    """Solve ``M x = v`` in place for every right-hand side.

    lower ``(Bl, T, p+1, n, n)`` factors; lhs_index ``(B,)`` picks the factor of each
    right-hand side; v ``(B, T, n)`` is overwritten with the solution.
    """
    for i in numba.prange(v.shape[0]):
        factor = lower[lhs_index[i]]
        forward_substitute(factor, v[i])
        backward_substitute(factor, v[i])

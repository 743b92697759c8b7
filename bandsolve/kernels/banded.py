"""Block Cholesky factorisation and substitutions for lower block-banded storage, one
system at a time (compiled for the CPU and CUDA kernels alike).

Storage (see ``bandsolve.banded``): ``lower[t, j]`` is the ``(n, n)`` block at block row
``t``, block column ``t - j``, for ``j = 0..p``. The factor ``L`` (``M = L L^T``) has the
same band and overwrites ``M`` block row by block row::

    L[t, t-j] = (M[t, t-j] - sum_{k=j+1..p} L[t, t-k] L[t-j, t-k]^T) L[t-j, t-j]^{-T}
    L[t, t]   = chol(M[t, t] - sum_{j=1..p} L[t, t-j] L[t, t-j]^T)

Cost per block row: about ``(p + p^2/2 + 1/3) n^3`` multiply-adds; linear in ``T``.
"""

from .._jit import jit_helper
from .blocks import (
    cholesky_in_place,
    right_solve_lower_transpose,
    solve_lower,
    solve_lower_transpose,
    subtract_gram_lower,
    subtract_matvec,
    subtract_matvec_transpose,
    subtract_product_nt,
)


@jit_helper
def factor_block_row(lower, t):
    """Factor block row ``t`` of ``lower`` ``(T, p+1, n, n)`` in place.

    Block rows ``< t`` must already hold ``L``; row ``t`` holds ``M``'s row on entry.
    Returns 0, or ``i + 1`` when the ``i``-th pivot of the diagonal block is not positive.
    """
    p = lower.shape[1] - 1
    reach = min(p, t)
    for j in range(reach, 0, -1):  # farthest block first: nearer ones need it
        block = lower[t, j]
        for k in range(j + 1, reach + 1):
            subtract_product_nt(block, lower[t, k], lower[t - j, k - j])
        right_solve_lower_transpose(block, lower[t - j, 0])
    diagonal = lower[t, 0]
    for j in range(1, reach + 1):
        subtract_gram_lower(diagonal, lower[t, j])
    return cholesky_in_place(diagonal)


@jit_helper
def forward_substitute_step(lower, v, t):
    """Step ``t`` of ``v <- L^{-1} v`` (steps ``< t`` done): lower ``(T, p+1, n, n)``,
    v ``(T, n)``."""
    p = lower.shape[1] - 1
    for j in range(1, min(p, t) + 1):
        subtract_matvec(v[t], lower[t, j], v[t - j])
    solve_lower(lower[t, 0], v[t])


@jit_helper
def forward_substitute(lower, v):
    """``v <- L^{-1} v`` for one system: lower ``(T, p+1, n, n)``, v ``(T, n)``."""
    for t in range(v.shape[0]):
        forward_substitute_step(lower, v, t)


@jit_helper
def backward_substitute(lower, v):
    """``v <- L^{-T} v`` for one system: lower ``(T, p+1, n, n)``, v ``(T, n)``."""
    p = lower.shape[1] - 1
    n_steps = v.shape[0]
    for t in range(n_steps - 1, -1, -1):
        for j in range(1, min(p, n_steps - 1 - t) + 1):
            subtract_matvec_transpose(v[t], lower[t + j, j], v[t + j])
        solve_lower_transpose(lower[t, 0], v[t])

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
    solve_lower,
    solve_lower_transpose,
    subtract_matvec,
    subtract_matvec_transpose,
)

# A Cholesky pivot (squared) this small relative to M's diagonal entry: the factor's
# error eps*cond(M) is no longer small enough for refinement; use the row QR factor.
CHOLESKY_PIVOT_TOL = 1e-10


@jit_helper
def offdiagonal_block_rows(lower, t, first, stride):
    """The off-diagonal blocks ``L[t, t-j]``, ``j = reach..1``, of block row ``t``, for
    the rows ``i = first, first + stride, ...`` of each block.

    Row ``i`` of these blocks depends only on row ``i`` of the same block row and on
    earlier block rows, so the threads of a CUDA block can each take some rows without a
    barrier (``first = 0, stride = 1``: every row).
    """
    p = lower.shape[1] - 1
    n = lower.shape[2]
    reach = min(p, t)
    for j in range(reach, 0, -1):  # farthest block first: nearer ones need it
        block = lower[t, j]
        for k in range(j + 1, reach + 1):  # block -= L[t, t-k] L[t-j, t-k]^T
            g = lower[t, k]
            h = lower[t - j, k - j]
            for i in range(first, n, stride):
                for col in range(n):
                    value = block[i, col]
                    for m in range(n):
                        value -= g[i, m] * h[col, m]
                    block[i, col] = value
        diag = lower[t - j, 0]  # block <- block L[t-j, t-j]^{-T}
        for col in range(n):
            # one division per column, not per entry: the division is the slow part
            inverse = 1.0 / diag[col, col]
            for i in range(first, n, stride):
                value = block[i, col]
                for m in range(col):
                    value -= diag[col, m] * block[i, m]
                block[i, col] = value * inverse


@jit_helper
def diagonal_update_rows(lower, t, first, stride):
    """``M[t, t] - sum_j L[t, t-j] L[t, t-j]^T`` on the lower triangle of rows
    ``i = first, first + stride, ...`` of the diagonal block."""
    p = lower.shape[1] - 1
    n = lower.shape[2]
    diagonal = lower[t, 0]
    for j in range(1, min(p, t) + 1):
        g = lower[t, j]
        for i in range(first, n, stride):
            for col in range(i + 1):
                value = diagonal[i, col]
                for m in range(n):
                    value -= g[i, m] * g[col, m]
                diagonal[i, col] = value


@jit_helper
def factor_block_row(lower, t):
    """Factor block row ``t`` of ``lower`` ``(T, p+1, n, n)`` in place.

    Block rows ``< t`` must already hold ``L``; row ``t`` holds ``M``'s row on entry.
    Returns 0, or ``i + 1`` when the ``i``-th pivot of the diagonal block is not positive.
    """
    offdiagonal_block_rows(lower, t, 0, 1)
    diagonal_update_rows(lower, t, 0, 1)
    return cholesky_in_place(lower[t, 0])


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


@jit_helper
def weak_pivot_step(lower, tol):
    """0, or ``t + 1`` for the first block row of the factor ``L`` in lower
    ``(T, p+1, n, n)`` with a pivot ``L_kk^2 <= tol * M_kk``; ``M_kk`` is recomputed from
    ``L`` (``M = L L^T``: the squared norm of row ``k`` of block row ``t``). A pivot that
    small has lost the digits refinement needs (the host tests the same while factoring,
    ``bandsolve/cpu/accurate.py``)."""
    for t in range(lower.shape[0]):
        for k in range(lower.shape[2]):
            pivot = lower[t, 0, k, k]
            if not (pivot * pivot > tol * diagonal_of_product(lower, t, k)):
                return t + 1
    return 0


@jit_helper
def diagonal_of_product(lower, t, k):
    """``M_kk`` of block row ``t`` from the factor: ``(L L^T)_kk``, the squared norm of
    row ``k`` of block row ``t`` of lower ``(T, p+1, n, n)``."""
    total = 0.0
    for j in range(min(lower.shape[1] - 1, t) + 1):
        for m in range(lower.shape[2]):
            total += lower[t, j, k, m] * lower[t, j, k, m]
    return total

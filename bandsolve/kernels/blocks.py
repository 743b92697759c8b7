"""Dense block helpers for ``n x n`` blocks (``n = D*O`` is small: 1 to ~30).

Plain loops so that Numba compiles them for any float dtype and the CUDA backend can
compile the same source (``.py_func``). Only the lower triangle of a Cholesky factor is
meaningful; these helpers never read its strict upper triangle.
"""

import math

from .._jit import jit_helper


@jit_helper
def cholesky_in_place(a):
    """Overwrite the lower triangle of SPD ``a`` ``(n, n)`` with its Cholesky factor.

    Returns 0 on success, or ``i + 1`` when pivot ``i`` is not positive or not finite
    (a NaN pivot fails ``> 0``, so NaN is caught here too). The strict upper triangle is
    set to zero so the block can be read as a full matrix.
    """
    n = a.shape[0]
    for j in range(n):
        pivot = a[j, j]
        for k in range(j):
            pivot -= a[j, k] * a[j, k]
        if not (pivot > 0.0 and pivot < float("inf")):
            return j + 1
        diag = math.sqrt(pivot)
        a[j, j] = diag
        for i in range(j + 1, n):
            value = a[i, j]
            for k in range(j):
                value -= a[i, k] * a[j, k]
            a[i, j] = value / diag
        for i in range(j):
            a[i, j] = 0.0
    return 0


@jit_helper
def subtract_product_nt(x, g, h):
    """``x -= g @ h.T`` for ``(n, n)`` blocks."""
    n = x.shape[0]
    for i in range(n):
        for j in range(n):
            value = x[i, j]  # accumulate in the block's own dtype
            for k in range(n):
                value -= g[i, k] * h[j, k]
            x[i, j] = value


@jit_helper
def subtract_gram_lower(x, g):
    """``x -= g @ g.T`` on the lower triangle of ``x`` (the upper triangle is not touched)."""
    n = x.shape[0]
    for i in range(n):
        for j in range(i + 1):
            value = x[i, j]
            for k in range(n):
                value -= g[i, k] * g[j, k]
            x[i, j] = value


@jit_helper
def right_solve_lower_transpose(x, l):
    """``x <- x @ inv(l).T`` for lower-triangular ``l``: each row of ``x`` solves ``l y = x_r``."""
    n = x.shape[0]
    for i in range(n):
        # one division per column instead of per entry: the division is the slow part
        inverse = 1.0 / l[i, i]  # float64 (CUDA has no np.reciprocal); the product rounds once
        for r in range(n):
            value = x[r, i]
            for k in range(i):
                value -= l[i, k] * x[r, k]
            x[r, i] = value * inverse


@jit_helper
def solve_lower(l, v):
    """``v <- inv(l) @ v`` for lower-triangular ``l`` ``(n, n)`` and vector ``v`` ``(n,)``."""
    n = v.shape[0]
    for i in range(n):
        value = v[i]
        for k in range(i):
            value -= l[i, k] * v[k]
        v[i] = value / l[i, i]


@jit_helper
def solve_lower_transpose(l, v):
    """``v <- inv(l).T @ v`` for lower-triangular ``l`` ``(n, n)`` and vector ``v`` ``(n,)``."""
    n = v.shape[0]
    for i in range(n - 1, -1, -1):
        value = v[i]
        for k in range(i + 1, n):
            value -= l[k, i] * v[k]
        v[i] = value / l[i, i]


@jit_helper
def subtract_matvec(v, a, w):
    """``v -= a @ w``."""
    n = v.shape[0]
    for i in range(n):
        value = v[i]
        for k in range(a.shape[1]):
            value -= a[i, k] * w[k]
        v[i] = value


@jit_helper
def subtract_matvec_transpose(v, a, w):
    """``v -= a.T @ w``."""
    n = v.shape[0]
    for k in range(a.shape[0]):
        wk = w[k]
        for i in range(n):
            v[i] -= a[k, i] * wk


"""Dense block helpers for ``n x n`` blocks (``n = D*O`` is small: 1 to ~30).

Plain loops so that Numba compiles them for any float dtype and the CUDA backend can
compile the same source (``.py_func``). Only the lower triangle of a Cholesky factor is
meaningful; these helpers never read its strict upper triangle.
"""

import math

from .._jit import jit_helper


@jit_helper
def cholesky_pivot(a, j):
    """Pivot ``j`` of the left-looking Cholesky: ``a[j, j] - sum_{k<j} L[j, k]^2``, with
    columns ``< j`` of ``a`` ``(n, n)`` already holding ``L``."""
    pivot = a[j, j]
    for k in range(j):
        pivot -= a[j, k] * a[j, k]
    return pivot


@jit_helper
def cholesky_column_rows(a, j, diag, first, stride):
    """``L[i, j] = (a[i, j] - sum_{k<j} L[i, k] L[j, k]) / diag`` for the rows
    ``i = j + 1 + first, ... (step stride)``: one thread's share of column ``j``
    (``first = 0, stride = 1`` for the whole column)."""
    for i in range(j + 1 + first, a.shape[0], stride):
        value = a[i, j]
        for k in range(j):
            value -= a[i, k] * a[j, k]
        a[i, j] = value / diag


@jit_helper
def is_valid_pivot(pivot):
    """Positive and finite (a NaN pivot fails ``> 0``, so NaN is caught too)."""
    return pivot > 0.0 and pivot < math.inf


@jit_helper
def cholesky_in_place(a):
    """Overwrite the lower triangle of SPD ``a`` ``(n, n)`` with its Cholesky factor.

    Returns 0 on success, or ``i + 1`` when pivot ``i`` is not positive or not finite.
    The strict upper triangle is set to zero so the block can be read as a full matrix.
    """
    n = a.shape[0]
    for j in range(n):
        pivot = cholesky_pivot(a, j)
        if not is_valid_pivot(pivot):
            return j + 1
        diag = math.sqrt(pivot)
        a[j, j] = diag
        cholesky_column_rows(a, j, diag, 0, 1)
        for i in range(j):
            a[i, j] = 0.0
    return 0


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


"""Block helpers vectorised across systems ("lanes"): the CPU's fast layout.

One ``n x n`` block of ``W`` systems is stored as ``(n, n, W)`` with the system index
innermost, so every scalar operation of the block algorithms in ``blocks.py`` becomes a
contiguous loop over ``W`` systems that LLVM turns into SIMD instructions (8 float64 or
16 float32 per AVX-512 register). The algorithms are exactly those of ``blocks.py`` and
``factor.py``; only the loop nest differs. Batches are cut into groups of ``W`` systems::

    lower[g, t, j, a, b, w] == L_{g*W + w}[t, t - j][a, b]      shape (G, T, p+1, n, n, W)

Lanes past the end of the batch (padding) hold well-posed copies of a real system and
are ignored.
"""

import math

import numba
import numpy as np

from .._jit import jit_helper, jit_kernel


@jit_helper
def cholesky_lanes(a, pivots):
    """Lower Cholesky of ``a`` ``(n, n, W)`` in place, lane by lane.

    ``pivots`` ``(n, W)`` receives the pivots before the square root, so the caller can
    find a failed lane (pivot not positive or not finite). A failed pivot is replaced by
    1 so the lane stays finite; its result is discarded by the caller.
    """
    n, lanes = a.shape[0], a.shape[2]
    for j in range(n):
        for k in range(j):
            for w in range(lanes):
                a[j, j, w] -= a[j, k, w] * a[j, k, w]
        for w in range(lanes):
            pivot = a[j, j, w]
            pivots[j, w] = pivot
            a[j, j, w] = math.sqrt(pivot) if pivot > 0.0 and pivot < math.inf else 1.0
        for i in range(j + 1, n):
            for k in range(j):
                for w in range(lanes):
                    a[i, j, w] -= a[i, k, w] * a[j, k, w]
            for w in range(lanes):
                a[i, j, w] /= a[j, j, w]
        for i in range(j):
            for w in range(lanes):
                a[i, j, w] = 0.0


@jit_helper
def subtract_product_nt_lanes(x, g, h):
    """``x -= g @ h.T`` per lane, ``(n, n, W)`` blocks."""
    n, lanes = x.shape[0], x.shape[2]
    for i in range(n):
        for j in range(n):
            for k in range(n):
                for w in range(lanes):
                    x[i, j, w] -= g[i, k, w] * h[j, k, w]


@jit_helper
def subtract_gram_lower_lanes(x, g):
    """``x -= g @ g.T`` on the lower triangle, per lane."""
    n, lanes = x.shape[0], x.shape[2]
    for i in range(n):
        for j in range(i + 1):
            for k in range(n):
                for w in range(lanes):
                    x[i, j, w] -= g[i, k, w] * g[j, k, w]


@jit_helper
def right_solve_lower_transpose_lanes(x, l):
    """``x <- x @ inv(l).T`` per lane (``l`` lower triangular)."""
    n, lanes = x.shape[0], x.shape[2]
    for r in range(n):
        for i in range(n):
            for k in range(i):
                for w in range(lanes):
                    x[r, i, w] -= l[i, k, w] * x[r, k, w]
            for w in range(lanes):
                x[r, i, w] /= l[i, i, w]


@jit_helper
def solve_lower_lanes(l, v):
    """``v <- inv(l) @ v`` per lane; v ``(n, W)``."""
    n, lanes = v.shape[0], v.shape[1]
    for i in range(n):
        for k in range(i):
            for w in range(lanes):
                v[i, w] -= l[i, k, w] * v[k, w]
        for w in range(lanes):
            v[i, w] /= l[i, i, w]


@jit_helper
def solve_lower_transpose_lanes(l, v):
    """``v <- inv(l).T @ v`` per lane; v ``(n, W)``."""
    n, lanes = v.shape[0], v.shape[1]
    for i in range(n - 1, -1, -1):
        for k in range(i + 1, n):
            for w in range(lanes):
                v[i, w] -= l[k, i, w] * v[k, w]
        for w in range(lanes):
            v[i, w] /= l[i, i, w]


@jit_helper
def subtract_matvec_lanes(v, a, u):
    """``v -= a @ u`` per lane."""
    n, lanes = v.shape[0], v.shape[1]
    for i in range(n):
        for k in range(a.shape[1]):
            for w in range(lanes):
                v[i, w] -= a[i, k, w] * u[k, w]


@jit_helper
def subtract_matvec_transpose_lanes(v, a, u):
    """``v -= a.T @ u`` per lane."""
    n, lanes = v.shape[0], v.shape[1]
    for k in range(a.shape[0]):
        for i in range(n):
            for w in range(lanes):
                v[i, w] -= a[k, i, w] * u[k, w]


@jit_helper
def factor_block_row_lanes(lower, t, pivots, info):
    """Factor block row ``t`` of one lane group ``lower`` ``(T, p+1, n, n, W)`` in place
    (same recurrence as ``factor.factor_block_row``). ``info`` ``(W,)`` gets ``t + 1`` for
    lanes whose first failure is here; ``pivots`` ``(n, W)`` is scratch."""
    p = lower.shape[1] - 1
    reach = min(p, t)
    for j in range(reach, 0, -1):
        block = lower[t, j]
        for k in range(j + 1, reach + 1):
            subtract_product_nt_lanes(block, lower[t, k], lower[t - j, k - j])
        right_solve_lower_transpose_lanes(block, lower[t - j, 0])
    diagonal = lower[t, 0]
    for j in range(1, reach + 1):
        subtract_gram_lower_lanes(diagonal, lower[t, j])
    cholesky_lanes(diagonal, pivots)
    for w in range(info.shape[0]):
        if info[w] == 0:
            for i in range(pivots.shape[0]):
                if not (pivots[i, w] > 0.0 and pivots[i, w] < math.inf):
                    info[w] = t + 1
                    break


@jit_helper
def substitute_lanes(lower, v):
    """``v <- M^{-1} v`` for one lane group: lower ``(T, p+1, n, n, W)``, v ``(T, n, W)``."""
    p = lower.shape[1] - 1
    n_steps = v.shape[0]
    for t in range(n_steps):
        for j in range(1, min(p, t) + 1):
            subtract_matvec_lanes(v[t], lower[t, j], v[t - j])
        solve_lower_lanes(lower[t, 0], v[t])
    for t in range(n_steps - 1, -1, -1):
        for j in range(1, min(p, n_steps - 1 - t) + 1):
            subtract_matvec_transpose_lanes(v[t], lower[t + j, j], v[t + j])
        solve_lower_transpose_lanes(lower[t, 0], v[t])


@jit_kernel
def factor_lanes_kernel(lower, info):
    """Factor every lane group in place: lower ``(G, T, p+1, n, n, W)``; info ``(G, W)``
    gets 0 or ``t + 1`` (first failed block row)."""
    n, lanes = lower.shape[3], lower.shape[5]
    for g in numba.prange(lower.shape[0]):
        pivots = np.empty((n, lanes), dtype=lower.dtype)
        info[g] = 0
        for t in range(lower.shape[1]):
            factor_block_row_lanes(lower[g], t, pivots, info[g])


@jit_kernel
def solve_lanes_kernel(lower, v):
    """Solve in place for right-hand sides laid out like their factors:
    lower ``(G, T, p+1, n, n, W)``, v ``(G, T, n, W)``."""
    for g in numba.prange(lower.shape[0]):
        substitute_lanes(lower[g], v[g])


@jit_kernel
def solve_gathered_kernel(lower, lhs_index, v):
    """Solve in place for right-hand sides with any factor map, one system at a time
    (strided reads of the lane layout): lower ``(G, T, p+1, n, n, W)``, lhs_index ``(B,)``,
    v ``(B, T, n)``."""
    lanes = lower.shape[5]
    p = lower.shape[2] - 1
    n_steps, n = v.shape[1], v.shape[2]
    for i in numba.prange(v.shape[0]):
        g, w = divmod(lhs_index[i], lanes)
        x = v[i]
        factor = lower[g]
        for t in range(n_steps):
            for j in range(1, min(p, t) + 1):
                for a in range(n):
                    value = x[t, a]
                    for b in range(n):
                        value -= factor[t, j, a, b, w] * x[t - j, b]
                    x[t, a] = value
            for a in range(n):
                value = x[t, a]
                for b in range(a):
                    value -= factor[t, 0, a, b, w] * x[t, b]
                x[t, a] = value / factor[t, 0, a, a, w]
        for t in range(n_steps - 1, -1, -1):
            for j in range(1, min(p, n_steps - 1 - t) + 1):
                for b in range(n):
                    value = x[t + j, b]
                    for a in range(n):
                        x[t, a] -= factor[t + j, j, b, a, w] * value
            for a in range(n - 1, -1, -1):
                value = x[t, a]
                for b in range(a + 1, n):
                    value -= factor[t, 0, b, a, w] * x[t, b]
                x[t, a] = value / factor[t, 0, a, a, w]


def lane_width(n_systems, dtype, n_threads):
    """Systems per lane group: enough groups to keep every thread busy, at most one SIMD
    register's worth (8 float64 / 16 float32 with AVX-512; more would only add padding)."""
    widest = 16 if np.dtype(dtype) == np.float32 else 8
    per_thread = -(-n_systems // max(n_threads, 1))
    width = 1
    while width < per_thread and width < widest:
        width *= 2
    return width


def to_lanes(array, width):
    """``(B, ...)`` -> ``(G, ..., W)`` with ``G = ceil(B / W)``; padding lanes repeat the
    last system (well-posed, ignored)."""
    n_systems = array.shape[0]
    groups = -(-n_systems // width)
    index = np.minimum(np.arange(groups * width), n_systems - 1)
    padded = array[index].reshape((groups, width) + array.shape[1:])
    return np.ascontiguousarray(np.moveaxis(padded, 1, -1))


def from_lanes(array, n_systems):
    """Inverse of :func:`to_lanes`: ``(G, ..., W)`` -> ``(B, ...)``."""
    moved = np.moveaxis(array, -1, 1)
    flat = moved.reshape((-1,) + moved.shape[2:])
    return flat[:n_systems]

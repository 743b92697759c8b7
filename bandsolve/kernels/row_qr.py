"""The factor ``L`` of ``M = A^T A`` from an orthogonal sweep over the rows of ``A``.

Used where the Cholesky factor of ``M`` is not trustworthy (``cond(M) = cond(A)^2`` too
close to ``1/eps``): Householder reflections applied to the residual rows themselves, one
time step at a time, give the triangular ``R`` of a QR factorisation of ``A`` (block upper
banded, ``R^T R = M``) with errors of order ``eps * cond(A)`` instead of
``eps * cond(A)^2``. It is stored as ``L = R^T`` in the usual lower block band
(``lower[t, j] = L[t, t-j] = R[t-j, t]^T``), so every substitution routine works on it.

Sweep at step ``t`` (columns: the ``p+1`` blocks ``x_t .. x_{t+p}``)::

    W = [ carry        ]   p*n rows: what earlier rows left on x_t .. x_{t+p-1}
        [ equations t  ]   we * c[t]            on x_t
        [ initial t    ]   wi at pinned entries on x_t
        [ Taylor t,t+1 ]   ws * rows(h[t])      on x_t, x_{t+1}
        [ central t    ]   ws * (alpha, beta, -alpha) on x_t, x_{t+1}, x_{t+2}

Householder QR of ``W``: its first ``n`` rows are block row ``t`` of ``R``; the
triangle left on ``x_{t+1} .. x_{t+p}`` is the next carry. Cost per step about
``2 m ((p+1) n)^2`` flops for ``m`` rows: several times a Cholesky step, which is why it is
the fallback, not the default.
"""

import math

from .._jit import jit_helper, jit_routine
from ..formulation import central_weights, n_taylor_orders, taylor_rows
from .assembly import time_index


# |R_kk| this small relative to the norm of its column of A: rank deficient to working
# precision (a genuine cond(A) up to ~1e11 stays well above it).
QR_PIVOT_TOL = 1e-13


@jit_helper
def row_qr_work_rows(n_equations, n_dims, n_orders, central):
    """Rows of the work matrix ``W`` (see the module docstring), at least its columns."""
    n = n_dims * n_orders
    p = 2 if central else 1
    n_k = n_taylor_orders(n_orders, central)
    rows = p * n + n_equations + n + 2 * n_k * n_dims + (n_dims if central else 0)
    return max(rows, (p + 1) * n)


@jit_routine
def row_qr_factor(coefficients, steps, n_orders, n_init_steps, n_init_orders, we, wi, ws,
                  central, tol, lower, work, colsq, rows, drows):
    """Write ``L = R^T`` of one system's rows into lower ``(T, p+1, n, n)``.

    coefficients ``(Tc, E, n)``, steps ``(Th,)``; unsquared weights; work
    ``(row_qr_work_rows(...), (p+1)*n)`` and colsq ``((p+1)*n,)`` scratch; rows/drows
    ``(2*K, 2*O)`` scratch. Returns 0, or ``t + 1`` for the first step whose pivot
    ``|R_kk|`` is at most ``tol`` times the norm of its column of ``A`` (rank deficient
    to working precision).
    """
    n_steps = lower.shape[0]
    p = lower.shape[1] - 1
    n = lower.shape[2]
    n_dims = n // n_orders
    n_k = n_taylor_orders(n_orders, central)
    n_h = steps.shape[0]
    n_rows = work.shape[0]
    width = work.shape[1]
    for i in range(n_rows):
        for j in range(width):
            work[i, j] = 0.0
    for j in range(width):
        colsq[j] = 0.0
    last_h = -1.0
    for t in range(n_steps):
        # rows 0 .. p*n-1 hold the carry (zero at t = 0); clear the rest
        for i in range(p * n, n_rows):
            for j in range(width):
                work[i, j] = 0.0
        m = p * n
        c = coefficients[time_index(t, coefficients.shape[0])]
        for e in range(c.shape[0]):
            for a in range(n):
                value = we * c[e, a]
                work[m, a] = value
                colsq[a] += value * value
            m += 1
        if t < n_init_steps:
            for d in range(n_dims):
                for o in range(n_init_orders):
                    work[m, d * n_orders + o] = wi
                    colsq[d * n_orders + o] += wi * wi
                    m += 1
        if t < n_steps - 1:
            h = steps[time_index(t, n_h)]
            if h != last_h:
                taylor_rows(h, n_orders, n_k, rows, drows)
                last_h = h
            for d in range(n_dims):
                base = d * n_orders
                for q in range(2 * n_k):
                    for o in range(n_orders):
                        first = ws * rows[q, o]
                        second = ws * rows[q, n_orders + o]
                        work[m, base + o] = first
                        work[m, n + base + o] = second
                        colsq[base + o] += first * first
                        colsq[n + base + o] += second * second
                    m += 1
        if central and t < n_steps - 2:
            s = steps[time_index(t, n_h)] + steps[time_index(t + 1, n_h)]
            alpha, beta, _, _ = central_weights(s, n_orders)
            for d in range(n_dims):
                lo = d * n_orders + n_orders - 2
                hi = d * n_orders + n_orders - 1
                work[m, lo] = ws * alpha
                work[m, n + hi] = ws * beta
                work[m, 2 * n + lo] = -ws * alpha
                colsq[lo] += (ws * alpha) ** 2
                colsq[n + hi] += (ws * beta) ** 2
                colsq[2 * n + lo] += (ws * alpha) ** 2
                m += 1
        n_cols = (min(p, n_steps - 1 - t) + 1) * n
        m = max(m, n_cols)
        # Householder QR of work[:m, :n_cols]
        for k in range(n_cols):
            norm2 = 0.0
            for i in range(k, m):
                norm2 += work[i, k] * work[i, k]
            norm = math.sqrt(norm2)
            if norm == 0.0:
                continue
            alpha_k = -norm if work[k, k] >= 0.0 else norm
            v0 = work[k, k] - alpha_k
            # v = (v0, work[k+1:m, k]); v.v = norm2 - work[k,k]^2 + v0^2 = -2 alpha_k v0
            vv = -2.0 * alpha_k * v0
            work[k, k] = alpha_k
            if vv == 0.0:
                continue
            for j in range(k + 1, n_cols):
                dot = v0 * work[k, j]
                for i in range(k + 1, m):
                    dot += work[i, k] * work[i, j]
                scale = 2.0 * dot / vv
                work[k, j] -= scale * v0
                for i in range(k + 1, m):
                    work[i, j] -= scale * work[i, k]
            for i in range(k + 1, m):
                work[i, k] = 0.0
        # block row t of R, made positive on its diagonal, into lower
        for k in range(n):
            if not (abs(work[k, k]) > tol * math.sqrt(colsq[k])):
                return t + 1
            if work[k, k] < 0.0:
                for j in range(k, n_cols):
                    work[k, j] = -work[k, j]
        for j in range(n_cols // n):
            for a in range(n):
                for b in range(n):
                    # lower[t + j, j] = R[t, t + j]^T; the diagonal block's upper part is 0
                    value = work[b, j * n + a] if (j > 0 or a >= b) else 0.0
                    lower[t + j, j, a, b] = value
        # the next carry: R's triangle on x_{t+1} .. x_{t+p}; shift the column norms
        for i in range(p * n):
            for j in range(width):
                src_i = i + n
                src_j = j + n
                if src_j < n_cols and src_i < n_cols:
                    work[i, j] = work[src_i, src_j]
                else:
                    work[i, j] = 0.0
        for j in range(width):
            colsq[j] = colsq[j + n] if j + n < width else 0.0
    return 0

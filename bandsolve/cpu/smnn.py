"""S-MNN kernels: normal-equation assembly (fused with the factorisation), right-hand
side and gradient pieces. The rows themselves come from ``bandsolve.formulation``.

``assemble_block_row`` is the portable reference (no scratch beyond the Taylor rows; the
CUDA backend compiles it too). The CPU sweep uses ``assemble_block_row_cached``, which
builds the same matrix but keeps the smoothness Gram matrices of the last two step sizes:
they depend on the step size alone, so on a uniform grid they are computed once.

Canonical flattened inputs (the core reshapes once, at the boundary):

- coefficients ``(Bl, Tc, E, n)`` with ``Tc`` in ``{1, T}`` (step length 1 broadcasts)
- steps ``(Bl, Th)`` with ``Th`` in ``{1, T-1}`` (``Th = 0`` when ``T = 1``)
- rhs ``(Br, Tr, E)``, init ``(Bg, Ti, D, Oi)``
- ``*_index`` ``(B,)`` int64 maps each system of the full batch to its row of an input.
"""

import numba
import numpy as np

from .._jit import jit_helper, jit_kernel
from ..formulation import central_weights, n_taylor_orders, taylor_rows
from ..kernels.banded import backward_substitute, factor_block_row, forward_substitute_step


@jit_helper
def _time_index(t, length):
    """Index into an input whose time axis is ``length`` long (1 broadcasts)."""
    return t if length > 1 else 0


@jit_helper
def _add_taylor_gram(block, rows, n_k, n_orders, n_dims, ws2, row_half, col_half):
    """``block += ws2 * sum_rows a[row_half] a[col_half]^T`` on every ``d``'s diagonal
    sub-block; ``*_half`` 0 selects ``u[t]``, 1 selects ``u[t+1]`` of the pair."""
    for i in range(n_orders):
        for j in range(n_orders):
            value = 0.0
            for r in range(2 * n_k):
                value += rows[r, row_half * n_orders + i] * rows[r, col_half * n_orders + j]
            value *= ws2
            for d in range(n_dims):
                block[d * n_orders + i, d * n_orders + j] += value


@jit_helper
def _add_equations_and_init(coefficients, t, n_orders, n_init_steps, n_init_orders,
                            we2, wi2, diagonal):
    """``diagonal = we^2 C_t^T C_t + wi^2 [pinned entries]`` (written in full, symmetric;
    ``diagonal`` must be zero on entry). Accumulates in the data's dtype."""
    n = diagonal.shape[0]
    c = coefficients[_time_index(t, coefficients.shape[0])]
    for a in range(n):
        for b in range(a + 1):
            for e in range(c.shape[0]):
                diagonal[a, b] += we2 * (c[e, a] * c[e, b])
            diagonal[b, a] = diagonal[a, b]
    if t < n_init_steps:
        for d in range(n // n_orders):
            for o in range(n_init_orders):
                diagonal[d * n_orders + o, d * n_orders + o] += wi2


@jit_helper
def add_smoothness_block_row(steps, t, n_steps, n_orders, ws2, central, row, rows, drows):
    """Add the smoothness rows' contribution to block row ``t`` (``row`` ``(p+1, n, n)``).

    steps ``(Th,)``; ``rows``/``drows`` are scratch ``(2*n_k, 2*O)``.
    """
    n = row.shape[1]
    n_dims = n // n_orders
    n_k = n_taylor_orders(n_orders, central)
    n_h = steps.shape[0]
    if t >= 1:  # pair (t-1, t): u[t] is the second half
        taylor_rows(steps[_time_index(t - 1, n_h)], n_orders, n_k, rows, drows)
        _add_taylor_gram(row[0], rows, n_k, n_orders, n_dims, ws2, 1, 1)
        _add_taylor_gram(row[1], rows, n_k, n_orders, n_dims, ws2, 1, 0)
    if t < n_steps - 1:  # pair (t, t+1): u[t] is the first half
        taylor_rows(steps[_time_index(t, n_h)], n_orders, n_k, rows, drows)
        _add_taylor_gram(row[0], rows, n_k, n_orders, n_dims, ws2, 0, 0)
    if central:
        add_central_block_row(steps, t, n_steps, n_orders, ws2, row)


@jit_helper
def add_central_block_row(steps, t, n_steps, n_orders, ws2, row):
    """Add the central rows' contribution to block row ``t`` (``row`` ``(p+1, n, n)``,
    ``p = 2``); steps ``(Th,)``."""
    n_dims = row.shape[1] // n_orders
    n_h = steps.shape[0]
    # the central row of triple (t0, t0+1, t0+2) touches u[t0+q] at order O-2 (q = 0, 2)
    # or O-1 (q = 1); block row t sees the triples with t0 = t - q
    for q in range(3):
        t0 = t - q
        if t0 < 0 or t0 > n_steps - 3:
            continue
        s = steps[_time_index(t0, n_h)] + steps[_time_index(t0 + 1, n_h)]
        alpha, beta, _, _ = central_weights(s, n_orders)
        for q2 in range(q + 1):  # column block t0 + q2 = t - (q - q2)
            value = ws2 * _central_entry(q, alpha, beta) * _central_entry(q2, alpha, beta)
            for d in range(n_dims):
                row[q - q2, d * n_orders + _central_order(q, n_orders),
                    d * n_orders + _central_order(q2, n_orders)] += value


@jit_helper
def _central_entry(q, alpha, beta):
    """Coefficient of the central row on ``u[t0 + q]``."""
    if q == 0:
        return alpha
    if q == 1:
        return beta
    return -alpha


@jit_helper
def _central_order(q, n_orders):
    """Derivative order that the central row reads at ``u[t0 + q]``."""
    return n_orders - 1 if q == 1 else n_orders - 2


@jit_helper
def assemble_block_row(coefficients, steps, t, n_steps, n_orders, n_init_steps,
                       n_init_orders, we2, wi2, ws2, central, row, rows, drows):
    """Write block row ``t`` of ``M`` (lower band) into ``row`` ``(p+1, n, n)``.

    coefficients ``(Tc, E, n)`` and steps ``(Th,)`` of one system; ``rows``/``drows``
    are scratch ``(2*n_k, 2*O)``. The diagonal block is written in full (symmetric).
    """
    row[:] = 0.0
    _add_equations_and_init(coefficients, t, n_orders, n_init_steps, n_init_orders,
                            we2, wi2, row[0])
    add_smoothness_block_row(steps, t, n_steps, n_orders, ws2, central, row, rows, drows)


@jit_kernel
def assemble_kernel(coefficients, steps, n_orders, n_init_steps, n_init_orders,
                    we2, wi2, ws2, central, blocks):
    """Normal matrix only: blocks ``(Bl, T, p+1, n, n)`` lower block-banded storage."""
    n_steps = blocks.shape[1]
    n_k = n_taylor_orders(n_orders, central)
    for b in numba.prange(blocks.shape[0]):
        rows = np.empty((2 * n_k, 2 * n_orders), dtype=blocks.dtype)
        drows = np.empty_like(rows)
        for t in range(n_steps):
            assemble_block_row(coefficients[b], steps[b], t, n_steps, n_orders, n_init_steps,
                      n_init_orders, we2, wi2, ws2, central, blocks[b, t], rows, drows)


# ----------------------------------------------------------------------------- cached assembly (CPU sweep)

@jit_helper
def taylor_pair_gram(h, n_orders, n_k, ws2, rows, drows, gram):
    """``gram`` ``(2O, 2O)`` ``= ws2 * sum_r a_r a_r^T`` over the Taylor rows of step ``h``
    (first ``O`` indices: ``u[t, d, :]``, last ``O``: ``u[t+1, d, :]``, any ``d``)."""
    taylor_rows(h, n_orders, n_k, rows, drows)
    for i in range(2 * n_orders):
        for j in range(2 * n_orders):
            value = 0.0
            for r in range(2 * n_k):
                value += rows[r, i] * rows[r, j]
            gram[i, j] = ws2 * value


@jit_helper
def _cached_pair_gram(steps, t, n_orders, n_k, ws2, rows, drows, grams, gram_steps):
    """Slot ``t % 2`` of ``grams`` ``(2, 2O, 2O)`` holds the Gram matrix of pair
    ``(t, t+1)`` afterwards; recomputed only if its step size differs from the cached one
    (``gram_steps`` ``(2,)``, NaN initially), so a uniform grid computes it once."""
    slot = t % 2
    h = steps[_time_index(t, steps.shape[0])]
    if h != gram_steps[slot]:
        taylor_pair_gram(h, n_orders, n_k, ws2, rows, drows, grams[slot])
        gram_steps[slot] = h


@jit_helper
def assemble_block_row_cached(coefficients, steps, t, n_steps, n_orders, n_init_steps,
                              n_init_orders, we2, wi2, ws2, central, row, grams, gram_steps,
                              rows, drows):
    """Block row ``t`` of ``M`` into ``row`` ``(p+1, n, n)``: the same matrix as
    :func:`assemble_block_row`, with the pair Gram matrices cached across ``t``
    (grams ``(2, 2O, 2O)``, gram_steps ``(2,)`` NaN-initialised by the caller)."""
    n_dims = row.shape[1] // n_orders
    n_k = n_taylor_orders(n_orders, central)
    row[:] = 0.0
    _add_equations_and_init(coefficients, t, n_orders, n_init_steps, n_init_orders,
                            we2, wi2, row[0])
    if t < n_steps - 1:
        _cached_pair_gram(steps, t, n_orders, n_k, ws2, rows, drows, grams, gram_steps)
    for d in range(n_dims):
        base = d * n_orders
        for i in range(n_orders):
            for j in range(n_orders):
                if t < n_steps - 1:  # pair (t, t+1): u[t] is the first half
                    row[0, base + i, base + j] += grams[t % 2, i, j]
                if t >= 1:  # pair (t-1, t), cached at the previous step
                    before = grams[(t - 1) % 2]
                    row[0, base + i, base + j] += before[n_orders + i, n_orders + j]
                    row[1, base + i, base + j] += before[n_orders + i, j]
    if central:
        add_central_block_row(steps, t, n_steps, n_orders, ws2, row)


# ----------------------------------------------------------------------------- fused kernels

@jit_helper
def _factor_system(coefficients, steps, rhs, init, n_orders, n_init_steps, n_init_orders,
                   we2, wi2, ws2, central, lower, z):
    """Assemble and factor one system block row by block row (each row built while hot).

    lower ``(T, p+1, n, n)``. If z ``(T, n)`` is non-empty, also assemble the right-hand
    side from rhs ``(Tr, E)`` and init ``(Ti, D, Oi)`` and forward-substitute it in the
    same sweep (``z = L^{-1} b``), saving a pass over the factor. Returns 0 or ``t + 1``
    for the first failed block row.
    """
    n_k = n_taylor_orders(n_orders, central)
    rows = np.empty((2 * n_k, 2 * n_orders), dtype=np.float64)
    drows = np.empty_like(rows)
    grams = np.empty((2, 2 * n_orders, 2 * n_orders), dtype=lower.dtype)
    gram_steps = np.full(2, np.nan, dtype=steps.dtype)
    n_steps = lower.shape[0]
    with_rhs = z.shape[0] > 0
    for t in range(n_steps):
        assemble_block_row_cached(coefficients, steps, t, n_steps, n_orders, n_init_steps,
                                  n_init_orders, we2, wi2, ws2, central, lower[t], grams,
                                  gram_steps, rows, drows)
        if factor_block_row(lower, t) != 0:
            return t + 1
        if with_rhs:
            _assemble_rhs_step(coefficients, rhs, init, t, n_orders, we2, wi2, z[t])
            forward_substitute_step(lower, z, t)
    return 0


@jit_kernel
def assemble_and_factor_kernel(coefficients, steps, n_orders, n_init_steps, n_init_orders,
                               we2, wi2, ws2, central, lower, info):
    """Fused assembly + block Cholesky: lower ``(Bl, T, p+1, n, n)`` receives ``L``;
    info ``(Bl,)`` gets 0 or ``t + 1``."""
    no_rhs = np.empty((0, 0), dtype=lower.dtype)
    no_init = np.empty((0, 0, 0), dtype=lower.dtype)
    for b in numba.prange(lower.shape[0]):
        info[b] = _factor_system(coefficients[b], steps[b], no_rhs, no_init, n_orders,
                                 n_init_steps, n_init_orders, we2, wi2, ws2, central,
                                 lower[b], no_rhs)


@jit_helper
def _assemble_rhs_step(coefficients, rhs, init, t, n_orders, we2, wi2, out):
    """``b_t = we^2 C_t^T r_t + wi^2 g_t`` into out ``(n,)``: coefficients ``(Tc, E, n)``,
    rhs ``(Tr, E)``, init ``(Ti, D, Oi)``."""
    c = coefficients[_time_index(t, coefficients.shape[0])]
    r = rhs[_time_index(t, rhs.shape[0])]
    for a in range(out.shape[0]):
        out[a] = 0.0
        for e in range(c.shape[0]):
            out[a] += we2 * (c[e, a] * r[e])
    if t < init.shape[0]:
        for d in range(init.shape[1]):
            for o in range(init.shape[2]):
                out[d * n_orders + o] += wi2 * init[t, d, o]


@jit_kernel
def assemble_rhs_kernel(coefficients, lhs_index, rhs, rhs_index, init, init_index,
                        n_orders, we2, wi2, out):
    """Right-hand side ``b = we^2 C_t^T r_t + wi^2 g`` into out ``(B, T, n)``."""
    for i in numba.prange(out.shape[0]):
        for t in range(out.shape[1]):
            _assemble_rhs_step(coefficients[lhs_index[i]], rhs[rhs_index[i]],
                               init[init_index[i]], t, n_orders, we2, wi2, out[i, t])


@jit_kernel
def factor_and_solve_kernel(coefficients, steps, rhs, rhs_index, init, init_index, n_orders,
                            n_init_steps, n_init_orders, we2, wi2, ws2, central, lower, info,
                            x):
    """Assemble, factor and solve system ``b`` with right-hand side ``b`` in one pass
    (forward substitution inside the factor sweep, backward right after it), for a
    left-hand-side batch equal to the full batch. x ``(B, T, n)`` receives the solution
    (garbage where info is non-zero)."""
    for b in numba.prange(lower.shape[0]):
        info[b] = _factor_system(coefficients[b], steps[b], rhs[rhs_index[b]],
                                 init[init_index[b]], n_orders, n_init_steps, n_init_orders,
                                 we2, wi2, ws2, central, lower[b], x[b])
        if info[b] == 0:
            backward_substitute(lower[b], x[b])


# ----------------------------------------------------------------------------- gradients

@jit_helper
def taylor_step_term(h, x, y, t, n_orders, n_k, rows, drows):
    """``sum_rows (dA x)(A y) + (dA y)(A x)`` over the Taylor rows of pair ``(t, t+1)``
    (all ``d``); ``dA`` is the derivative in ``h``. x, y ``(T, n)``; rows/drows scratch
    ``(2*n_k, 2*O)``. The GPU backend compiles this same source."""
    n_dims = x.shape[1] // n_orders
    taylor_rows(h, n_orders, n_k, rows, drows)
    total = 0.0
    for d in range(n_dims):
        for r in range(2 * n_k):
            ax = 0.0
            ay = 0.0
            dax = 0.0
            day = 0.0
            for half in range(2):
                for o in range(n_orders):
                    col = half * n_orders + o
                    xv = x[t + half, d * n_orders + o]
                    yv = y[t + half, d * n_orders + o]
                    ax += rows[r, col] * xv
                    ay += rows[r, col] * yv
                    dax += drows[r, col] * xv
                    day += drows[r, col] * yv
            total += dax * ay + day * ax
    return total


@jit_helper
def central_step_term(s, x, y, t0, n_orders):
    """The same sum over the central rows of triple ``(t0, t0+1, t0+2)``, derivative in
    ``s = h[t0] + h[t0+1]``."""
    n_dims = x.shape[1] // n_orders
    alpha, beta, dalpha, dbeta = central_weights(s, n_orders)
    total = 0.0
    for d in range(n_dims):
        lo = d * n_orders + n_orders - 2
        hi = d * n_orders + n_orders - 1
        dx = x[t0, lo] - x[t0 + 2, lo]
        dy = y[t0, lo] - y[t0 + 2, lo]
        ax = alpha * dx + beta * x[t0 + 1, hi]
        ay = alpha * dy + beta * y[t0 + 1, hi]
        dax = dalpha * dx + dbeta * x[t0 + 1, hi]
        day = dalpha * dy + dbeta * y[t0 + 1, hi]
        total += dax * ay + day * ax
    return total


@jit_kernel
def gradient_kernel(coefficients, steps, lhs_index, rhs, rhs_index, x, y, n_orders,
                    we2, ws2, central, coefficients_bar, rhs_bar, steps_bar):
    """Gradients of ``<ubar, x>`` given ``x = M^{-1} b`` and ``y = M^{-1} ubar``.

    Row form (``docs/design.md``, section 1): for residual ``res = A x - beta``,
    ``dL/dtheta = -y^T dA^T res - (A y)^T dA x + (A y)^T dbeta``. Outputs, per system of
    the full batch (zeroed here, summed over time where an input's time axis is 1):
    coefficients_bar ``(B, Tc, E, n)``, rhs_bar ``(B, Tr, E)``, steps_bar ``(B, Th)``.
    """
    n_systems, n_steps, n = x.shape
    n_k = n_taylor_orders(n_orders, central)
    for i in numba.prange(n_systems):
        c_all = coefficients[lhs_index[i]]
        h = steps[lhs_index[i]]
        r_all = rhs[rhs_index[i]]
        xi, yi = x[i], y[i]
        coefficients_bar[i] = 0.0
        rhs_bar[i] = 0.0
        steps_bar[i] = 0.0
        # equation rows: we*(C x - r), dbeta/dr = we
        for t in range(n_steps):
            tc = _time_index(t, c_all.shape[0])
            tr = _time_index(t, r_all.shape[0])
            for e in range(c_all.shape[1]):
                cx = 0.0
                cy = 0.0
                for a in range(n):
                    cx += c_all[tc, e, a] * xi[t, a]
                    cy += c_all[tc, e, a] * yi[t, a]
                residual = cx - r_all[tr, e]
                rhs_bar[i, tr, e] += we2 * cy
                for a in range(n):
                    coefficients_bar[i, tc, e, a] -= we2 * (yi[t, a] * residual + cy * xi[t, a])
        # Taylor rows of pair (t, t+1): zero beta, entries depend on h[t]
        rows = np.empty((2 * n_k, 2 * n_orders), dtype=x.dtype)
        drows = np.empty_like(rows)
        for t in range(n_steps - 1):
            th = _time_index(t, h.shape[0])
            total = taylor_step_term(h[th], xi, yi, t, n_orders, n_k, rows, drows)
            steps_bar[i, th] -= ws2 * total
        if central:
            for t in range(n_steps - 2):
                th0 = _time_index(t, h.shape[0])
                th1 = _time_index(t + 1, h.shape[0])
                total = central_step_term(h[th0] + h[th1], xi, yi, t, n_orders)
                # s = h[t] + h[t+1]: ds/dh[t] = ds/dh[t+1] = 1
                steps_bar[i, th0] -= ws2 * total
                steps_bar[i, th1] -= ws2 * total

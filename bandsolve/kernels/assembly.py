"""S-MNN normal equations ``M = A^T A``, ``b = A^T beta`` block row by block row.

The rows themselves come from ``bandsolve.formulation``; this module adds up their
products for one time step ``t`` of one system. Block row ``t`` of ``M`` is stored as in
``bandsolve.banded``: ``row[j] = M[t, t-j]``, ``row`` ``(p+1, n, n)``, the diagonal block
written in full (symmetric).

Accumulation precision, one rule for every helper here and in the kernels that call
them: sums start from the literal ``0.0``, i.e. they are float64, and the drivers hand the
kernels float64 arrays whatever the user's dtype (float32 is converted at the boundary
and the result converted back). So the matrix that ``smnn_normal_equations`` returns is,
up to that final rounding, the one that is factored.

``assemble_block_row`` is the portable form (no scratch beyond the Taylor rows; the CUDA
backend compiles it). The CPU sweep uses ``assemble_block_row_cached``, which builds the
same matrix but keeps the smoothness Gram matrices of the last two step sizes: they depend
on the step size alone, so on a uniform grid they are computed once.

One system's inputs: coefficients ``(Tc, E, n)`` with ``Tc`` in ``{1, T}`` (length 1
broadcasts over time), steps ``(Th,)`` with ``Th`` in ``{1, T-1}``, rhs ``(Tr, E)``,
init ``(Ti, D, Oi)``.
"""

from .._jit import jit_helper
from ..formulation import central_weights, n_taylor_orders, taylor_rows


@jit_helper
def time_index(t, length):
    """Index into an input whose time axis is ``length`` long (1 broadcasts)."""
    return t if length > 1 else 0


@jit_helper
def is_pinned(t, k, n_orders, n_init_steps, n_init_orders):
    """Whether unknown ``k`` of step ``t`` carries an initial-value row."""
    return t < n_init_steps and k % n_orders < n_init_orders


# ----------------------------------------------------------------------------- equations

@jit_helper
def equation_row(coefficients, t, i, n_orders, n_init_steps, n_init_orders, we2, wi2, row):
    """Row ``i`` of block row ``t`` from the equation and initial-value rows alone.

    Zeroes row ``i`` of every block of ``row`` ``(p+1, n, n)`` and writes
    ``we^2 (C_t^T C_t)[i, :]`` (plus ``wi^2`` on a pinned diagonal entry) into the
    diagonal block. Row by row so that the threads of a CUDA block can share the work;
    the products commute exactly, so the diagonal block comes out exactly symmetric.
    """
    n = row.shape[1]
    for j in range(row.shape[0]):
        for b in range(n):
            row[j, i, b] = 0.0
    c = coefficients[time_index(t, coefficients.shape[0])]
    for b in range(n):
        value = 0.0
        for e in range(c.shape[0]):
            value += c[e, i] * c[e, b]
        row[0, i, b] = we2 * value
    if is_pinned(t, i, n_orders, n_init_steps, n_init_orders):
        row[0, i, i] += wi2


@jit_helper
def equation_block_row(coefficients, t, n_orders, n_init_steps, n_init_orders, we2, wi2,
                       row):
    """Block row ``t`` from the equation and initial-value rows (every row of ``row``)."""
    for i in range(row.shape[1]):
        equation_row(coefficients, t, i, n_orders, n_init_steps, n_init_orders, we2, wi2,
                     row)


@jit_helper
def rhs_step(coefficients, rhs, init, t, n_orders, n_init_steps, n_init_orders, we2, wi2,
             out):
    """``out = b_t = we^2 C_t^T r_t + wi^2 g_t`` ``(n,)``; init ``(Ti, D, Oi)`` is read
    for ``t < n_init_steps`` and orders ``o < n_init_orders`` only."""
    n = out.shape[0]
    c = coefficients[time_index(t, coefficients.shape[0])]
    r = rhs[time_index(t, rhs.shape[0])]
    for a in range(n):
        value = 0.0
        for e in range(c.shape[0]):
            value += c[e, a] * r[e]
        out[a] = we2 * value
    if t < n_init_steps:
        for d in range(n // n_orders):
            for o in range(n_init_orders):
                out[d * n_orders + o] += wi2 * init[t, d, o]


# ----------------------------------------------------------------------------- smoothness

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
def add_smoothness_block_row(steps, t, n_steps, n_orders, ws2, central, row, rows, drows):
    """Add the smoothness rows' contribution to block row ``t`` (``row`` ``(p+1, n, n)``).

    steps ``(Th,)``; ``rows``/``drows`` are scratch ``(2*n_k, 2*O)``.
    """
    n = row.shape[1]
    n_dims = n // n_orders
    n_k = n_taylor_orders(n_orders, central)
    n_h = steps.shape[0]
    if t >= 1:  # pair (t-1, t): u[t] is the second half
        taylor_rows(steps[time_index(t - 1, n_h)], n_orders, n_k, rows, drows)
        _add_taylor_gram(row[0], rows, n_k, n_orders, n_dims, ws2, 1, 1)
        _add_taylor_gram(row[1], rows, n_k, n_orders, n_dims, ws2, 1, 0)
    if t < n_steps - 1:  # pair (t, t+1): u[t] is the first half
        taylor_rows(steps[time_index(t, n_h)], n_orders, n_k, rows, drows)
        _add_taylor_gram(row[0], rows, n_k, n_orders, n_dims, ws2, 0, 0)
    if central:
        add_central_block_row(steps, t, n_steps, n_orders, ws2, row)


@jit_helper
def central_entry(q, alpha, beta):
    """Coefficient of the central row of triple ``(t0, t0+1, t0+2)`` on ``u[t0 + q]``."""
    if q == 0:
        return alpha
    if q == 1:
        return beta
    return -alpha


@jit_helper
def central_order(q, n_orders):
    """Derivative order that the central row reads at ``u[t0 + q]``."""
    return n_orders - 1 if q == 1 else n_orders - 2


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
        s = steps[time_index(t0, n_h)] + steps[time_index(t0 + 1, n_h)]
        alpha, beta, _, _ = central_weights(s, n_orders)
        for q2 in range(q + 1):  # column block t0 + q2 = t - (q - q2)
            value = ws2 * central_entry(q, alpha, beta) * central_entry(q2, alpha, beta)
            for d in range(n_dims):
                row[q - q2, d * n_orders + central_order(q, n_orders),
                    d * n_orders + central_order(q2, n_orders)] += value


@jit_helper
def assemble_block_row(coefficients, steps, t, n_steps, n_orders, n_init_steps,
                       n_init_orders, we2, wi2, ws2, central, row, rows, drows):
    """Write block row ``t`` of ``M`` into ``row`` ``(p+1, n, n)``.

    coefficients ``(Tc, E, n)`` and steps ``(Th,)`` of one system; ``rows``/``drows``
    are scratch ``(2*n_k, 2*O)``.
    """
    equation_block_row(coefficients, t, n_orders, n_init_steps, n_init_orders, we2, wi2, row)
    add_smoothness_block_row(steps, t, n_steps, n_orders, ws2, central, row, rows, drows)


# ----------------------------------------------------------------------------- cached (CPU)

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
    h = steps[time_index(t, steps.shape[0])]
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
    equation_block_row(coefficients, t, n_orders, n_init_steps, n_init_orders, we2, wi2, row)
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


# ----------------------------------------------------------------------------- row products

@jit_helper
def taylor_row_dot(rows, q, x, t, base, n_orders):
    """``a . x`` for Taylor row ``q`` of pair ``(t, t+1)`` and state dimension ``d``
    (``base = d*O``): rows ``(2*K, 2*O)`` from ``taylor_rows``, x ``(T, n)``."""
    value = 0.0
    for o in range(n_orders):
        value += rows[q, o] * x[t, base + o] + rows[q, n_orders + o] * x[t + 1, base + o]
    return value


@jit_helper
def central_row_dot(alpha, beta, x, t0, base, n_orders):
    """``a . x`` for the central row of triple ``(t0, t0+1, t0+2)``, dimension ``d``."""
    lo = base + central_order(0, n_orders)
    hi = base + central_order(1, n_orders)
    return alpha * (x[t0, lo] - x[t0 + 2, lo]) + beta * x[t0 + 1, hi]

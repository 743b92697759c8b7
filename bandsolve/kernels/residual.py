"""The least-squares residual pushed through the rows: ``g += A^T (beta - A x)``.

Refinement (corrected semi-normal equations) needs ``A^T (beta - A x)`` formed from the
residual rows themselves, never as ``b - M x``: with the assembled ``M`` the product
``M x`` carries rounding of size ``eps |A|^2 |x|``, which is what squares the condition
number; row by row, each residual ``a_r . x - beta_r`` is formed first and is small.

``A`` and ``beta`` are the weighted rows of ``bandsolve.formulation``; only squared
weights appear (``A^T A`` and ``A^T beta`` carry ``w^2``). Work: O(T (E n + D K O)).
"""

import math

from .._jit import jit_helper, jit_routine
from ..formulation import central_weights, n_taylor_orders, taylor_rows
from .assembly import central_entry, central_order, central_row_dot, taylor_row_dot, time_index


# A refinement correction still above this, relative to the solution, when refinement
# stops: not converged (the host's acceptance of a stagnating correction, the device's
# divergence test).
ACCEPT_CORRECTION = 1e-3
# The Cholesky route is abandoned when its first correction is larger than this (the
# contraction ~ eps*cond(A)^2 would need many steps) or after this many steps.
CHOLESKY_FIRST_CORRECTION = 1e-4
CHOLESKY_MAX_STEPS = 4


@jit_helper
def _subtract_step_rows(coefficients, rhs, init, x, t, n_orders, n_init_steps,
                        n_init_orders, we2, wi2, with_beta, out):
    """``out += [A^T (beta - A x)]_t`` ``(n,)`` over the rows that touch step ``t`` only:
    its equations and its initial values."""
    n = x.shape[1]
    c = coefficients[time_index(t, coefficients.shape[0])]
    r = rhs[time_index(t, rhs.shape[0])]
    for e in range(c.shape[0]):
        res = 0.0
        for a in range(n):
            res += c[e, a] * x[t, a]
        if with_beta:
            res -= r[e]
        res *= we2
        for a in range(n):
            out[a] -= c[e, a] * res
    if t < n_init_steps:
        for d in range(n // n_orders):
            for o in range(n_init_orders):
                k = d * n_orders + o
                res = x[t, k]
                if with_beta:
                    res -= init[t, d, o]
                out[k] -= wi2 * res


@jit_routine
def add_residual_product(coefficients, steps, rhs, init, x, n_orders, n_init_steps,
                         n_init_orders, we2, wi2, ws2, central, with_beta, g, rows, drows):
    """``g += A^T (beta - A x)`` for one system (``beta = 0`` when ``with_beta`` is false).

    coefficients ``(Tc, E, n)``, steps ``(Th,)``, rhs ``(Tr, E)``, init ``(Ti', D, Oi')``
    (read only when ``with_beta``), x and g ``(T, n)``; ``rows``/``drows`` scratch
    ``(2*K, 2*O)``. ``n_init_steps``/``n_init_orders`` say which entries carry initial
    rows (the left-hand side's ``init_shape``).
    """
    n_steps, n = x.shape
    n_dims = n // n_orders
    n_k = n_taylor_orders(n_orders, central)
    n_h = steps.shape[0]
    last_h = -1.0
    for t in range(n_steps):
        _subtract_step_rows(coefficients, rhs, init, x, t, n_orders, n_init_steps,
                            n_init_orders, we2, wi2, with_beta, g[t])
        if t < n_steps - 1:
            h = steps[time_index(t, n_h)]
            if h != last_h:
                taylor_rows(h, n_orders, n_k, rows, drows)
                last_h = h
            for d in range(n_dims):
                base = d * n_orders
                for q in range(2 * n_k):
                    res = ws2 * taylor_row_dot(rows, q, x, t, base, n_orders)
                    for o in range(n_orders):
                        g[t, base + o] -= rows[q, o] * res
                        g[t + 1, base + o] -= rows[q, n_orders + o] * res
        if central and t < n_steps - 2:
            s = steps[time_index(t, n_h)] + steps[time_index(t + 1, n_h)]
            alpha, beta, _, _ = central_weights(s, n_orders)
            lo = n_orders - 2
            hi = n_orders - 1
            for d in range(n_dims):
                base = d * n_orders
                res = ws2 * central_row_dot(alpha, beta, x, t, base, n_orders)
                g[t, base + lo] -= alpha * res
                g[t + 1, base + hi] -= beta * res
                g[t + 2, base + lo] += alpha * res


@jit_helper
def residual_step(coefficients, steps, rhs, init, x, t, n_orders, n_init_steps,
                  n_init_orders, we2, wi2, ws2, central, with_beta, out, rows, drows):
    """``out = [A^T (beta - A x)]_t`` ``(n,)``, the rows that touch step ``t`` gathered
    (equations and initial values of ``t``, Taylor pairs ``(t, t+1)`` and ``(t-1, t)``,
    central triples starting at ``t``, ``t-1``, ``t-2``), so that one CUDA thread per
    step can write its own entries. Same result as :func:`add_residual_product` (which
    scatters each row's terms) on a zeroed ``g``; arguments as there (``beta = 0``
    without ``with_beta``: ``out = -[A^T A x]_t``).
    """
    n_steps, n = x.shape
    n_dims = n // n_orders
    n_k = n_taylor_orders(n_orders, central)
    n_h = steps.shape[0]
    for a in range(n):
        out[a] = 0.0
    _subtract_step_rows(coefficients, rhs, init, x, t, n_orders, n_init_steps, n_init_orders,
                        we2, wi2, with_beta, out)
    for half in range(2):  # pair (t, t+1): u[t] is its first half; (t-1, t): its second
        t0 = t - half
        if t0 < 0 or t0 > n_steps - 2:
            continue
        taylor_rows(steps[time_index(t0, n_h)], n_orders, n_k, rows, drows)
        for d in range(n_dims):
            base = d * n_orders
            for q in range(2 * n_k):
                res = ws2 * taylor_row_dot(rows, q, x, t0, base, n_orders)
                for o in range(n_orders):
                    out[base + o] -= rows[q, half * n_orders + o] * res
    if central:
        for q in range(3):  # the triple starting at t0 = t - q reads u[t] as its u[t0+q]
            t0 = t - q
            if t0 < 0 or t0 > n_steps - 3:
                continue
            s = steps[time_index(t0, n_h)] + steps[time_index(t0 + 1, n_h)]
            alpha, beta, _, _ = central_weights(s, n_orders)
            entry = central_entry(q, alpha, beta)
            for d in range(n_dims):
                base = d * n_orders
                res = ws2 * central_row_dot(alpha, beta, x, t0, base, n_orders)
                out[base + central_order(q, n_orders)] -= entry * res


# ----------------------------------------------------------------------------- convergence
# The relative size of a refinement correction, per derivative order, in two levels so
# that a CUDA kernel can split the time axis: partial maxima over a span of steps, merged
# over the spans, then one decision. The host takes all steps as one span.

# An order whose solution is this small, measured as its contribution to the rows
# (|x_k| times the norm of its column of A), relative to the largest order's, is
# rounding noise to the rows: its own relative correction says nothing.
INVISIBLE_ORDER = 1e-10


@jit_helper
def correction_record_size(n_orders):
    """Length of a partial record: ``max|g_o|, max|x_o|, max|x_o| * scale_o`` per order,
    then a flag (1.0: some entry of x or g was not finite)."""
    return 3 * n_orders + 1


@jit_helper
def clear_correction_record(record):
    for q in range(record.shape[0]):
        record[q] = 0.0


@jit_helper
def add_correction_span(x, g, scale, n_orders, first, stop, record):
    """Fold steps ``first .. stop-1`` of x, g, scale ``(T, n)`` (unknown ``k`` is order
    ``k % n_orders``; scale ``sqrt(M_kk)``) into ``record`` (see
    :func:`correction_record_size`)."""
    n = x.shape[1]
    flag = 3 * n_orders
    for t in range(first, stop):
        for k in range(n):
            o = k % n_orders
            gk = abs(g[t, k])
            xk = abs(x[t, k])
            if not (gk < math.inf and xk < math.inf):  # NaN as well
                record[flag] = 1.0
                continue
            record[3 * o] = max(record[3 * o], gk)
            record[3 * o + 1] = max(record[3 * o + 1], xk)
            record[3 * o + 2] = max(record[3 * o + 2], xk * scale[t, k])


@jit_helper
def merge_correction_records(record, other):
    """``record <- max(record, other)`` entrywise (both records of the same system)."""
    for q in range(record.shape[0]):
        record[q] = max(record[q], other[q])


@jit_helper
def relative_correction_of(record, n_orders):
    """``max_o max|g_o| / max|x_o|`` over the derivative orders ``o`` that are visible to
    the rows (``max|x_o| * scale_o > INVISIBLE_ORDER`` times the largest order's); inf if
    an entry was not finite. The refinement's convergence measure, on both backends."""
    if record[3 * n_orders] != 0.0:
        return math.inf
    seen = 0.0
    for o in range(n_orders):
        seen = max(seen, record[3 * o + 2])
    worst = 0.0
    for o in range(n_orders):
        if record[3 * o] > 0.0 and record[3 * o + 2] > INVISIBLE_ORDER * seen:
            worst = max(worst, record[3 * o] / record[3 * o + 1])
    if not (worst < math.inf):
        return math.inf
    return worst


@jit_helper
def relative_correction(x, g, scale, n_orders, record):
    """:func:`relative_correction_of` one system's x, g, scale ``(T, n)`` in one span;
    record ``(correction_record_size(n_orders),)`` scratch."""
    clear_correction_record(record)
    add_correction_span(x, g, scale, n_orders, 0, x.shape[0], record)
    return relative_correction_of(record, n_orders)


# Refinement state of one lane (system) of the lane kernels (``kernels/codegen.py``)
RUNNING, CONVERGED, FAILED = 0, 1, 2
_EPS = 2.0 ** -52  # float64 machine epsilon: a squared correction below it is rounding


@jit_helper
def lane_relative_correction(stats, w, width, n_orders):
    """:func:`relative_correction_of` for lane ``w`` of the lane kernels' convergence
    maxima ``stats`` (flat, entry ``j`` of lane ``w`` at ``j * width + w``: ``max|g_o|``
    for ``j = o``, ``max|x_o|`` for ``j = O + o``, ``max|x_o| * scale_o`` for ``j = 2 O
    + o``, and at ``j = 3 O`` 1.0 while every entry was finite)."""
    if stats[3 * n_orders * width + w] != 1.0:
        return math.inf
    seen = 0.0
    for o in range(n_orders):
        seen = max(seen, stats[(2 * n_orders + o) * width + w])
    worst = 0.0
    for o in range(n_orders):
        g_max = stats[o * width + w]
        if g_max > 0.0 and stats[(2 * n_orders + o) * width + w] > INVISIBLE_ORDER * seen:
            worst = max(worst, g_max / stats[(n_orders + o) * width + w])
    if not (worst < math.inf):
        return math.inf
    return worst


@jit_helper
def lane_refinement_step(stats, w, width, n_orders, step, max_steps, first_limit, status,
                         previous):
    """The host's stopping rule (``bandsolve.cpu.accurate.refine``) after refinement step
    ``step`` (0-based, of at most ``max_steps``) of lane ``w``: ``status[w]`` (``(W,)``)
    becomes ``CONVERGED``, ``FAILED`` or stays ``RUNNING``; ``previous[w]`` keeps the last
    correction. The lane's correction has been added to its solution already."""
    if status[w] != RUNNING:
        return
    correction = lane_relative_correction(stats, w, width, n_orders)
    if correction == math.inf or (step == 0 and correction > first_limit):
        status[w] = FAILED
        return
    rate = correction if step == 0 else correction / previous[w]
    previous[w] = correction
    if rate * correction <= _EPS:
        status[w] = CONVERGED
    elif step > 0 and rate > 0.5 and correction <= ACCEPT_CORRECTION:
        # stagnation at the rounding floor (~eps * cond(A))
        status[w] = CONVERGED
    elif step == max_steps - 1:
        status[w] = CONVERGED if correction <= ACCEPT_CORRECTION else FAILED

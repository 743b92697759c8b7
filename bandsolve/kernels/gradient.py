"""Per-step pieces of the S-MNN gradient (the VJP of ``x = M^{-1} A^T beta``).

Row form (``docs/math.md``, "The backward pass"): with ``x`` the solution, ``y = M^{-1} ubar`` and
residual ``res = A x - beta``,
``dL/dtheta = -y^T dA^T res - (A y)^T dA x + (A y)^T dbeta``.
Each helper evaluates one group of rows (equations of step ``t``, Taylor rows of pair
``(t, t+1)``, central rows of triple ``(t0, t0+1, t0+2)``); the CPU kernel loops over the
steps of a system, the CUDA kernel runs one thread per step. Accumulation as in
:mod:`.assembly` (float64).
"""

from .._jit import jit_helper
from ..formulation import central_weights, taylor_rows
from .assembly import central_row_dot, taylor_row_dot


@jit_helper
def add_equation_step_gradient(c, r, x_t, y_t, we2, c_bar, r_bar):
    """Add step ``t``'s equation-row terms: ``c_bar`` ``(E, n)`` ``-= we^2 (y res^T ...)``
    and ``r_bar`` ``(E,)`` ``+= we^2 C y``, for c ``(E, n)``, r ``(E,)``, x_t/y_t ``(n,)``.

    Equation row ``e``: ``we (c_e . x - r_e)``, so ``dbeta/dr_e = we``.
    """
    n = x_t.shape[0]
    for e in range(c.shape[0]):
        cx = 0.0
        cy = 0.0
        for a in range(n):
            cx += c[e, a] * x_t[a]
            cy += c[e, a] * y_t[a]
        residual = cx - r[e]
        r_bar[e] += we2 * cy
        for a in range(n):
            c_bar[e, a] -= we2 * (y_t[a] * residual + cy * x_t[a])


@jit_helper
def taylor_step_term(h, x, y, t, n_orders, n_k, rows, drows):
    """``sum_rows (dA x)(A y) + (dA y)(A x)`` over the Taylor rows of pair ``(t, t+1)``
    (all ``d``); ``dA`` is the derivative in ``h``. x, y ``(T, n)``; rows/drows scratch
    ``(2*n_k, 2*O)``. The step's gradient is ``-ws^2`` times this."""
    n_dims = x.shape[1] // n_orders
    taylor_rows(h, n_orders, n_k, rows, drows)
    total = 0.0
    for d in range(n_dims):
        base = d * n_orders
        for q in range(2 * n_k):
            ax = taylor_row_dot(rows, q, x, t, base, n_orders)
            ay = taylor_row_dot(rows, q, y, t, base, n_orders)
            dax = taylor_row_dot(drows, q, x, t, base, n_orders)
            day = taylor_row_dot(drows, q, y, t, base, n_orders)
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
        base = d * n_orders
        ax = central_row_dot(alpha, beta, x, t0, base, n_orders)
        ay = central_row_dot(alpha, beta, y, t0, base, n_orders)
        dax = central_row_dot(dalpha, dbeta, x, t0, base, n_orders)
        day = central_row_dot(dalpha, dbeta, y, t0, base, n_orders)
        total += dax * ay + day * ax
    return total

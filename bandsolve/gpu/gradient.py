"""Right-hand side assembly and gradient pieces: one thread per (system, time step).

Both are independent across time steps, so they use the whole GPU whatever the batch. The
gradient pieces are written per step into arrays of the full batch and full length
``(B, T, ...)``; ``arrays.reduce_to`` then sums them over broadcast axes (batch and time).
The rows are those of ``bandsolve.formulation``; the row form of the gradient is the one of
``cpu/smnn.py::gradient_kernel`` (``docs/design.md``, section 1):
``dL/dtheta = -y^T dA^T res - (A y)^T dA x + (A y)^T dbeta``.
"""

import numba
from numba import cuda

from ..cpu.smnn import _time_index, central_step_term, taylor_step_term
from ..formulation import n_taylor_orders
from . import config
from ._runtime import device_function
from .arrays import source_row

_source_row = device_function(source_row)
_time_index_d = device_function(_time_index)
_n_taylor_orders = device_function(n_taylor_orders)
_taylor_step_term = device_function(taylor_step_term)
_central_step_term = device_function(central_step_term)

_SCRATCH = 2 * config.MAX_ORDERS


def rhs_step(coefficients, rhs, init, t, n_orders, n_init_steps, n_init_orders, we2, wi2,
             out):
    """``out = we^2 C_t^T r_t + wi^2 g_t`` for one step: coefficients ``(Tc, E, n)``, rhs
    ``(Tr, E)``, init ``(Ti, D, Oi)``, out ``(n,)``."""
    n = out.shape[0]
    c = coefficients[_time_index_d(t, coefficients.shape[0])]
    r = rhs[_time_index_d(t, rhs.shape[0])]
    for a in range(n):
        value = 0.0
        for e in range(c.shape[0]):
            value += c[e, a] * r[e]
        out[a] = we2 * value
    if t < n_init_steps:
        for d in range(n // n_orders):
            for o in range(n_init_orders):
                out[d * n_orders + o] += wi2 * init[t, d, o]


def gradient_step(coefficients, steps, rhs, x, y, t, n_orders, n_init_steps, n_init_orders,
                  we2, wi2, ws2, central, rows, drows, coefficients_bar, rhs_bar, steps_bar,
                  init_bar):
    """Gradient pieces of step ``t`` of one system (written, not accumulated).

    coefficients ``(Tc, E, n)``, steps ``(Th,)``, rhs ``(Tr, E)``, x/y ``(T, n)``;
    outputs: coefficients_bar ``(E, n)`` and rhs_bar ``(E,)`` of step ``t``, steps_bar
    ``(T-1,)`` (entry ``t`` if ``t < T-1``), init_bar ``(Ti, D*Oi)`` (row ``t`` if ``t < Ti``).
    """
    n_steps = x.shape[0]
    n = x.shape[1]
    c = coefficients[_time_index_d(t, coefficients.shape[0])]
    r = rhs[_time_index_d(t, rhs.shape[0])]
    for e in range(c.shape[0]):  # equation rows: we*(C x - r), dbeta/dr = we
        cx = 0.0
        cy = 0.0
        for a in range(n):
            cx += c[e, a] * x[t, a]
            cy += c[e, a] * y[t, a]
        residual = cx - r[e]
        rhs_bar[e] = we2 * cy
        for a in range(n):
            coefficients_bar[e, a] = -we2 * (y[t, a] * residual + cy * x[t, a])
    if t < n_steps - 1:  # h[t] enters pair (t, t+1) and the triples t0 = t-1, t
        n_h = steps.shape[0]
        n_k = _n_taylor_orders(n_orders, central)
        total = _taylor_step_term(steps[_time_index_d(t, n_h)], x, y, t, n_orders, n_k, rows,
                                 drows)
        if central:
            for t0 in range(t - 1, t + 1):
                if t0 >= 0 and t0 <= n_steps - 3:
                    s = steps[_time_index_d(t0, n_h)] + steps[_time_index_d(t0 + 1, n_h)]
                    total += _central_step_term(s, x, y, t0, n_orders)
        steps_bar[t] = -ws2 * total
    if t < n_init_steps:  # initial-value rows: wi*(u - g), dbeta/dg = wi
        n_dims = n // n_orders
        for d in range(n_dims):
            for o in range(n_init_orders):
                init_bar[t, d * n_init_orders + o] = wi2 * y[t, d * n_orders + o]


_rhs_step = device_function(rhs_step)
_gradient_step = device_function(gradient_step)


@cuda.jit
def rhs_kernel(coefficients, rhs, init, shape, c_strides, r_strides, g_strides, n_orders,
               n_init_steps, n_init_orders, we2, wi2, x):
    """``x[i, t] = b_t`` of system ``i`` of the full batch (thread ``i * T + t``).

    coefficients ``(Bc, Tc, E, n)``, rhs ``(Br, Tr, E)``, init ``(Bg, Ti, D, Oi)`` with
    index maps from the full batch; x ``(B, T, n)``."""
    k = cuda.grid(1)
    n_steps = x.shape[1]
    if k >= x.shape[0] * n_steps:
        return
    i = k // n_steps
    t = k % n_steps
    _rhs_step(coefficients[_source_row(i, shape, c_strides)],
              rhs[_source_row(i, shape, r_strides)],
              init[_source_row(i, shape, g_strides)],
              t, n_orders, n_init_steps, n_init_orders, we2, wi2, x[i, t])


@cuda.jit
def gradient_kernel(coefficients, steps, rhs, shape, c_strides, h_strides, r_strides, x, y,
                    n_orders, n_init_steps, n_init_orders, we2, wi2, ws2, central,
                    coefficients_bar, rhs_bar, steps_bar, init_bar):
    """Per-step gradient pieces (thread ``i * T + t``) into full arrays:
    coefficients_bar ``(B, T, E, n)``, rhs_bar ``(B, T, E)``, steps_bar ``(B, max(T-1,1))``,
    init_bar ``(B, max(Ti,1), D*Oi or 1)``; x, y ``(B, T, n)``."""
    k = cuda.grid(1)
    n_steps = x.shape[1]
    if k >= x.shape[0] * n_steps:
        return
    i = k // n_steps
    t = k % n_steps
    rows = cuda.local.array((_SCRATCH, _SCRATCH), numba.float64)
    drows = cuda.local.array((_SCRATCH, _SCRATCH), numba.float64)
    _gradient_step(coefficients[_source_row(i, shape, c_strides)],
                   steps[_source_row(i, shape, h_strides)],
                   rhs[_source_row(i, shape, r_strides)],
                   x[i], y[i], t, n_orders, n_init_steps, n_init_orders, we2, wi2, ws2,
                   central, rows, drows, coefficients_bar[i, t], rhs_bar[i, t], steps_bar[i],
                   init_bar[i])

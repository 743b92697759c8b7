"""Right-hand side assembly and gradient pieces: one thread per (system, time step).

Both are independent across time steps, so they use the whole GPU whatever the batch. The
gradient pieces are written per step into arrays of the full batch and full length
``(B, T, ...)``; ``arrays.reduce_to`` then sums them over broadcast axes (batch and time).
The per-step pieces are the shared helpers of ``kernels/assembly.py`` and
``kernels/gradient.py`` (the CPU kernels loop over the same ones).
"""

import numba
from numba import cuda

from ..formulation import n_taylor_orders
from ..kernels.assembly import rhs_step, time_index
from ..kernels.gradient import add_equation_step_gradient, central_step_term, taylor_step_term
from . import config
from ._runtime import device_function
from .arrays import source_row

_source_row = device_function(source_row)

_SCRATCH = 2 * config.MAX_ORDERS


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
    for e in range(rhs_bar.shape[0]):
        rhs_bar[e] = 0.0
        for a in range(n):
            coefficients_bar[e, a] = 0.0
    add_equation_step_gradient(coefficients[time_index(t, coefficients.shape[0])],
                               rhs[time_index(t, rhs.shape[0])], x[t], y[t], we2,
                               coefficients_bar, rhs_bar)
    if t < n_steps - 1:  # h[t] enters pair (t, t+1) and the triples t0 = t-1, t
        n_h = steps.shape[0]
        n_k = n_taylor_orders(n_orders, central)
        total = taylor_step_term(steps[time_index(t, n_h)], x, y, t, n_orders, n_k, rows,
                                 drows)
        if central:
            for t0 in range(t - 1, t + 1):
                if t0 >= 0 and t0 <= n_steps - 3:
                    s = steps[time_index(t0, n_h)] + steps[time_index(t0 + 1, n_h)]
                    total += central_step_term(s, x, y, t0, n_orders)
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

"""Refinement on the device: ``x += M^{-1} A^T (beta - A x)`` (corrected semi-normal
equations), with the residual formed from the rows, one thread per (system, time step).

The normal equations square the condition number: a float64 Cholesky solve of ``M`` has
a relative error of about ``eps * cond(A)^2``. Each refinement step multiplies that error
by about the same factor, down to the floor ``eps * cond(A)`` of the row residual
(``kernels/residual.py::residual_step``, the gathered form of the host's residual). The
driver runs a fixed number of steps (``REFINE_STEPS``) without synchronising; the host
path, which may synchronise, stops on convergence and falls back to a QR factor of the
rows when refinement does not converge.
"""

import numba
from numba import cuda

from ..kernels.residual import residual_step
from . import config
from ._runtime import device_function
from .arrays import source_row

# Steps after the first solve: from eps*cond(A)^2 to the eps*cond(A) floor for
# cond(A) up to ~1e6 (1e-4 -> 1e-8 -> 1e-12); beyond that the host path is the accurate one.
REFINE_STEPS = 2

_source_row = device_function(source_row)
_residual_step = device_function(residual_step)

_SCRATCH = 2 * config.MAX_ORDERS


@cuda.jit
def residual_kernel(coefficients, steps, rhs, init, shape, c_strides, h_strides, r_strides,
                    g_strides, n_orders, n_init_steps, n_init_orders, we2, wi2, ws2, central,
                    x, g):
    """``g[i, t] = [A_i^T (beta_i - A_i x_i)]_t`` (thread ``i * T + t``); x, g ``(B, T, n)``,
    inputs as in ``gradient.rhs_kernel`` plus steps ``(Bh, Th)``."""
    k = cuda.grid(1)
    n_steps = x.shape[1]
    if k >= x.shape[0] * n_steps:
        return
    i = k // n_steps
    t = k % n_steps
    rows = cuda.local.array((_SCRATCH, _SCRATCH), numba.float64)
    drows = cuda.local.array((_SCRATCH, _SCRATCH), numba.float64)
    _residual_step(coefficients[_source_row(i, shape, c_strides)],
                   steps[_source_row(i, shape, h_strides)],
                   rhs[_source_row(i, shape, r_strides)],
                   init[_source_row(i, shape, g_strides)],
                   x[i], t, n_orders, n_init_steps, n_init_orders, we2, wi2, ws2, central,
                   g[i, t], rows, drows)


@cuda.jit
def add_kernel(x, g):
    """``x += g`` for flat ``(N,)`` arrays."""
    k = cuda.grid(1)
    if k < x.shape[0]:
        x[k] += g[k]

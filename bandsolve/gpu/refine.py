"""Accuracy on the device: the row-QR fallback for factors that cannot be trusted, and
refinement ``x += M^{-1} A^T (beta - A x)`` (corrected semi-normal equations) with the
residual formed from the rows, one thread per (system, time step).

Fallback (``thread_fallback_kernel`` / ``block_fallback_kernel``, one thread per system,
right after the Cholesky kernels, no synchronisation): a system whose Cholesky failed, or
whose factor has a pivot with ``L_kk^2 <= CHOLESKY_PIVOT_TOL * M_kk``, is refactored by
the Householder QR sweep over its rows (``kernels/row_qr.py``, the host's fallback too),
whose ``L = R^T`` has errors of order ``eps * cond(A)`` instead of ``eps * cond(A)^2``; its
status becomes that sweep's (0, or ``t + 1`` where the rows are rank deficient to working
precision).

The normal equations square the condition number: a float64 Cholesky solve of ``M`` has
a relative error of about ``eps * cond(A)^2``. Each refinement step multiplies that error
by about the same factor, down to the floor ``eps * cond(A)`` of the row residual
(``kernels/residual.py::residual_step``, the gathered form of the host's residual). The
driver runs a fixed number of steps (``REFINE_STEPS``) without synchronising; the host
path, which may synchronise, stops on convergence and falls back to a QR factor of the
rows when refinement does not converge.
"""

import math

import numba
from numba import cuda

from ..kernels.banded import CHOLESKY_PIVOT_TOL, weak_pivot_step
from ..kernels.residual import residual_step
from ..kernels.row_qr import QR_PIVOT_TOL, row_qr_factor, row_qr_work_rows
from . import config
from ._runtime import device_function
from .arrays import source_row

# Steps after the first solve: from eps*cond(A)^2 to the eps*cond(A) floor for
# cond(A) up to ~1e6 (1e-4 -> 1e-8 -> 1e-12); beyond that the host path is the accurate one.
REFINE_STEPS = 2

_source_row = device_function(source_row)
_residual_step = device_function(residual_step)

_SCRATCH = 2 * config.MAX_ORDERS

# Scratch of the QR sweep: at most this many float64 (256 MiB); larger batches are swept
# in several launches over slices of the systems.
QR_SCRATCH_ELEMENTS = 2**25


def qr_scratch_shape(n_systems, n_equations, n_dims, n_orders, central):
    """``(systems per launch, work rows, work columns)`` of the QR fallback's scratch."""
    rows = row_qr_work_rows(n_equations, n_dims, n_orders, central)
    width = ((2 if central else 1) + 1) * n_dims * n_orders
    return max(1, min(n_systems, QR_SCRATCH_ELEMENTS // (rows * width))), rows, width


def fallback(coefficients, steps, n_orders, n_init_steps, n_init_orders, we, wi, ws,
             central, system, work, colsq, rows, drows, status):
    """The status of one system after the accuracy checks, refactoring ``system``
    ``(T, p+1, n, n)`` by the row QR sweep when its Cholesky factor failed or is weak."""
    if status == 0 and weak_pivot_step(system, CHOLESKY_PIVOT_TOL) == 0:
        return 0
    return row_qr_factor(coefficients, steps, n_orders, n_init_steps, n_init_orders, we, wi,
                         ws, central, QR_PIVOT_TOL, system, work, colsq, rows, drows)


_fallback = device_function(fallback)


@cuda.jit
def thread_fallback_kernel(coefficients, steps, shape, c_strides, h_strides, n_orders,
                           n_init_steps, n_init_orders, we, wi, ws, central, first, lower,
                           work, colsq, info):
    """:func:`fallback` for system ``s = first + thread`` of the thread kernels' factor
    ``(T, p+1, n, n, Bl)``; work ``(S, rows, width)``, colsq ``(S, width)`` for the ``S``
    systems of this launch; unsquared weights."""
    k = cuda.grid(1)
    s = first + k
    if k >= work.shape[0] or s >= info.shape[0]:
        return
    rows = cuda.local.array((_SCRATCH, _SCRATCH), numba.float64)
    drows = cuda.local.array((_SCRATCH, _SCRATCH), numba.float64)
    info[s] = _fallback(coefficients[_source_row(s, shape, c_strides)],
                        steps[_source_row(s, shape, h_strides)], n_orders, n_init_steps,
                        n_init_orders, we, wi, ws, central, lower[:, :, :, :, s], work[k],
                        colsq[k], rows, drows, info[s])


@cuda.jit
def block_fallback_kernel(coefficients, steps, shape, c_strides, h_strides, n_orders,
                          n_init_steps, n_init_orders, we, wi, ws, central, first, lower,
                          work, colsq, info):
    """The same for the per-system layout ``(Bl, T, p+1, n, n)``."""
    k = cuda.grid(1)
    s = first + k
    if k >= work.shape[0] or s >= info.shape[0]:
        return
    rows = cuda.local.array((_SCRATCH, _SCRATCH), numba.float64)
    drows = cuda.local.array((_SCRATCH, _SCRATCH), numba.float64)
    info[s] = _fallback(coefficients[_source_row(s, shape, c_strides)],
                        steps[_source_row(s, shape, h_strides)], n_orders, n_init_steps,
                        n_init_orders, we, wi, ws, central, lower[s], work[k], colsq[k],
                        rows, drows, info[s])


@cuda.jit
def residual_kernel(coefficients, steps, rhs, init, shape, c_strides, h_strides, r_strides,
                    g_strides, n_orders, n_init_steps, n_init_orders, we2, wi2, ws2, central,
                    with_beta, x, extra, g):
    """``g[i, t] = [A_i^T (beta_i - A_i x_i)]_t`` (thread ``i * T + t``); x, g ``(B, T, n)``,
    inputs as in ``gradient.rhs_kernel`` plus steps ``(Bh, Th)``. Without ``with_beta``:
    ``g = extra - M x``, the plain system ``M x = extra`` (``(B, T, n)``) of the VJP."""
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
                   with_beta, g[i, t], rows, drows)
    if not with_beta:
        for a in range(g.shape[2]):
            g[i, t, a] += extra[i, t, a]


@cuda.jit
def divergence_kernel(x, correction, shape, l_strides, limit, info):
    """Per right-hand side ``i = thread``: if ``max|correction[i]| > limit * max|x[i]|``
    (or either is not finite), ``x[i]`` becomes NaN and its factor's ``info`` ``-1``: the
    refinement did not converge (``limit``: ``kernels.residual.ACCEPT_CORRECTION``), and a
    solution that may be wrong in every digit is not returned.
    x, correction ``(B, T, n)``; ``info`` of the factors, index map as the solves'."""
    i = cuda.grid(1)
    if i >= x.shape[0]:
        return
    x_max = 0.0
    c_max = 0.0
    for t in range(x.shape[1]):
        for a in range(x.shape[2]):
            x_max = max(x_max, abs(x[i, t, a]))
            c_max = max(c_max, abs(correction[i, t, a]))
    if not (c_max <= limit * x_max):  # NaN fails too
        for t in range(x.shape[1]):
            for a in range(x.shape[2]):
                x[i, t, a] = math.nan
        info[_source_row(i, shape, l_strides)] = -1


@cuda.jit
def add_kernel(x, g):
    """``x += g`` for flat ``(N,)`` arrays."""
    k = cuda.grid(1)
    if k < x.shape[0]:
        x[k] += g[k]

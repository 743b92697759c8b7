"""Accurate S-MNN solves on the CPU: Cholesky of ``M`` with a relative pivot test,
corrected semi-normal-equation refinement with residuals formed from the rows, and an
orthogonal (row QR) factor where the Cholesky factor cannot be trusted.

Per system (one ``prange`` iteration each):

1. assemble and factor ``M = L L^T`` block row by block row; a pivot below
   ``CHOLESKY_PIVOT_TOL`` times the diagonal of ``M`` it came from sends the system to 3;
2. ``x = M^{-1} b``, then refinement ``x += M^{-1} A^T (beta - A x)`` (residual from the
   rows, :mod:`bandsolve.kernels.residual`) until the correction stops shrinking; one
   that does not converge quickly sends the system to 3;
3. ``L = R^T`` from Householder QR of the rows (:mod:`bandsolve.kernels.row_qr`), a pivot
   test ``|R_kk| > QR_PIVOT_TOL * |a_k|`` (else: rank deficient, status ``t + 1``), and
   the same refinement (status ``-1`` when it does not converge).

Everything runs in float64 (float32 inputs are converted by the driver).
"""

import math

import numba
import numpy as np

from .._jit import jit_helper, jit_kernel, jit_routine
from ..formulation import n_taylor_orders
from ..kernels.assembly import assemble_block_row_cached, rhs_step
from ..kernels.residual import (ACCEPT_CORRECTION, CHOLESKY_FIRST_CORRECTION,
                                CHOLESKY_MAX_STEPS, add_residual_product,
                                correction_record_size, relative_correction)
from ..kernels.row_qr import QR_PIVOT_TOL, row_qr_factor, row_qr_work_rows
from ..kernels.banded import (CHOLESKY_PIVOT_TOL, backward_substitute, diagonal_of_product,
                              factor_block_row, forward_substitute, forward_substitute_step)

# Refinement: corrections this small relative to the solution are rounding noise.
EPS = np.finfo(np.float64).eps
QR_MAX_STEPS = 12

CONVERGED = 0
NOT_CONVERGED = 1


@jit_helper
def _column_norms(lower, scale):
    """``scale[t, k] = sqrt(M_kk)``, the norm of unknown k's column of the rows, from the
    factor (``M = L L^T``): lower ``(T, p+1, n, n)``, scale ``(T, n)``."""
    for t in range(lower.shape[0]):
        for k in range(lower.shape[2]):
            scale[t, k] = math.sqrt(diagonal_of_product(lower, t, k))


@jit_helper
def _relative_correction(x, g, scale, n_orders):
    """``max_o max|g_o| / max|x_o|`` over derivative orders ``o`` (x, g, scale
    ``(T, n)``), leaving out orders invisible to the rows: the definition shared with the
    device, ``kernels/residual.py::relative_correction`` (``INVISIBLE_ORDER``)."""
    return relative_correction(x, g, scale, n_orders,
                               np.empty(correction_record_size(n_orders)))


@jit_routine
def refine(coefficients, steps, rhs, init, n_orders, n_init_steps, n_init_orders,
           we2, wi2, ws2, central, with_beta, extra, lower, x, g, scale, rows, drows,
           max_steps, first_limit):
    """Corrected semi-normal equations: ``x += M^{-1} (extra + A^T (beta - A x))``.

    ``with_beta``: the least-squares solve (``extra`` unused); otherwise the plain system
    ``M x = extra`` (the VJP's second solve). Stops when the predicted next correction is
    below rounding, or when corrections below ``ACCEPT_CORRECTION`` stagnate (the
    rounding floor); NOT_CONVERGED if after ``max_steps`` the last correction is still
    above it, or when the first one is above ``first_limit``. scale ``(T, n)``:
    ``sqrt(M_kk)`` (:func:`_column_norms`, or kept by the factor sweep).
    """
    previous = math.inf
    for step in range(max_steps):
        for t in range(g.shape[0]):
            for k in range(g.shape[1]):
                g[t, k] = 0.0 if with_beta else extra[t, k]
        add_residual_product(coefficients, steps, rhs, init, x, n_orders, n_init_steps,
                             n_init_orders, we2, wi2, ws2, central, with_beta, g, rows,
                             drows)
        forward_substitute(lower, g)
        backward_substitute(lower, g)
        correction = _relative_correction(x, g, scale, n_orders)
        if correction == math.inf:
            return NOT_CONVERGED
        for t in range(g.shape[0]):
            for k in range(g.shape[1]):
                x[t, k] += g[t, k]
        if step == 0 and correction > first_limit:
            return NOT_CONVERGED
        rate = correction if step == 0 else correction / previous
        if rate * correction <= EPS:
            return CONVERGED
        # stagnation at the rounding floor (~eps*cond(A)); larger corrections may still
        # shrink after a transient (the iteration matrix is not normal), so keep going
        if step > 0 and rate > 0.5 and correction <= ACCEPT_CORRECTION:
            return CONVERGED
        previous = correction
    return CONVERGED if correction <= ACCEPT_CORRECTION else NOT_CONVERGED


@jit_routine
def cholesky_factor(coefficients, steps, rhs, init, n_orders, n_init_steps, n_init_orders,
                    we2, wi2, ws2, central, lower, x, scale, rows, drows):
    """Assemble and factor one system; returns 0, or ``t + 1`` for the first block row
    whose pivot is not above ``CHOLESKY_PIVOT_TOL`` times its diagonal entry of ``M``.

    If x ``(T, n)`` is non-empty, also assembles ``b`` from rhs ``(Tr, E)`` and init
    ``(Ti, D, Oi)`` and forward-substitutes it in the same sweep (``x = L^{-1} b``), so the
    factor is read once less (the long sequences are memory bound). scale ``(T, n)`` (or
    empty) receives ``sqrt(M_kk)`` for :func:`refine`, saving it another pass."""
    n_steps = lower.shape[0]
    n = lower.shape[2]
    diagonal = np.empty(n)
    grams = np.empty((2, 2 * n_orders, 2 * n_orders))
    gram_steps = np.full(2, np.nan)
    for t in range(n_steps):
        assemble_block_row_cached(coefficients, steps, t, n_steps, n_orders, n_init_steps,
                                  n_init_orders, we2, wi2, ws2, central, lower[t], grams,
                                  gram_steps, rows, drows)
        for k in range(n):
            diagonal[k] = lower[t, 0, k, k]
            if scale.shape[0] > 0:
                scale[t, k] = math.sqrt(diagonal[k]) if diagonal[k] > 0.0 else 0.0
        if factor_block_row(lower, t) != 0:
            return t + 1
        for k in range(n):
            pivot = lower[t, 0, k, k]
            if not (pivot * pivot > CHOLESKY_PIVOT_TOL * diagonal[k]):
                return t + 1
        if x.shape[0] > 0:
            rhs_step(coefficients, rhs, init, t, n_orders, init.shape[0], init.shape[2],
                     we2, wi2, x[t])
            forward_substitute_step(lower, x, t)
    return 0


@jit_routine
def solve_with_factor(coefficients, rhs, init, n_orders, we2, wi2, lower, x):
    """``x = M^{-1} b`` with the factor in ``lower`` (no refinement)."""
    for t in range(x.shape[0]):
        rhs_step(coefficients, rhs, init, t, n_orders, init.shape[0], init.shape[2], we2, wi2,
                 x[t])
    forward_substitute(lower, x)
    backward_substitute(lower, x)


@jit_routine
def qr_factor(coefficients, steps, n_orders, n_init_steps, n_init_orders, we2, wi2, ws2,
              central, lower, rows, drows):
    """The row QR factor of one system into lower (its own scratch); status as
    :func:`bandsolve.kernels.row_qr.row_qr_factor`."""
    n = lower.shape[2]
    width = lower.shape[1] * n
    work = np.empty((row_qr_work_rows(coefficients.shape[1], n // n_orders, n_orders,
                                      central), width))
    colsq = np.empty(width)
    return row_qr_factor(coefficients, steps, n_orders, n_init_steps, n_init_orders,
                         math.sqrt(we2), math.sqrt(wi2), math.sqrt(ws2), central,
                         QR_PIVOT_TOL, lower, work, colsq, rows, drows)


@jit_helper
def _fill_nan(x):
    for t in range(x.shape[0]):
        for k in range(x.shape[1]):
            x[t, k] = np.nan


@jit_kernel
def accurate_factor_solve_kernel(coefficients, steps, rhs, rhs_index, init, init_index,
                                 n_orders, n_init_steps, n_init_orders, we2, wi2, ws2,
                                 central, lower, info, x):
    """Factor and solve every system accurately (left-hand-side batch = full batch).

    coefficients ``(B, Tc, E, n)``, steps ``(B, Th)``, rhs ``(Br, Tr, E)``, init
    ``(Bg, Ti, D, Oi)`` with their index maps ``(B,)``; lower ``(B, T, p+1, n, n)``
    receives the factor used (Cholesky or row QR), x ``(B, T, n)`` the solution (NaN for
    failed systems), info ``(B,)``: 0, ``t + 1`` (rank deficient at step t) or ``-1``
    (refinement did not converge).
    """
    n_steps = lower.shape[1]
    n = lower.shape[3]
    n_k = n_taylor_orders(n_orders, central)
    for b in numba.prange(lower.shape[0]):
        rows = np.empty((2 * n_k, 2 * n_orders))
        drows = np.empty_like(rows)
        g = np.empty((n_steps, n))
        scale = np.empty((n_steps, n))
        c, h = coefficients[b], steps[b]
        r, gi = rhs[rhs_index[b]], init[init_index[b]]
        status = cholesky_factor(c, h, r, gi, n_orders, n_init_steps, n_init_orders, we2,
                                 wi2, ws2, central, lower[b], x[b], scale, rows, drows)
        if status == 0:
            backward_substitute(lower[b], x[b])  # forward substitution was in the sweep
            status = refine(c, h, r, gi, n_orders, n_init_steps, n_init_orders, we2, wi2,
                            ws2, central, True, g, lower[b], x[b], g, scale, rows, drows,
                            CHOLESKY_MAX_STEPS, CHOLESKY_FIRST_CORRECTION)
        if status != 0:
            status = qr_factor(c, h, n_orders, n_init_steps, n_init_orders, we2, wi2, ws2,
                               central, lower[b], rows, drows)
            if status == 0:
                solve_with_factor(c, r, gi, n_orders, we2, wi2, lower[b], x[b])
                _column_norms(lower[b], scale)
                if refine(c, h, r, gi, n_orders, n_init_steps, n_init_orders, we2, wi2,
                          ws2, central, True, g, lower[b], x[b], g, scale, rows, drows,
                          QR_MAX_STEPS, math.inf) != CONVERGED:
                    status = -1
        info[b] = status
        if status != 0:
            _fill_nan(x[b])


@jit_kernel
def accurate_factor_kernel(coefficients, steps, n_orders, n_init_steps, n_init_orders,
                           we2, wi2, ws2, central, lower, info):
    """Factor every left-hand side: Cholesky with the relative pivot test, row QR where
    it fails. info ``(Bl,)``: 0 or ``t + 1`` (rank deficient at step t)."""
    n_k = n_taylor_orders(n_orders, central)
    no_rhs = np.empty((0, 0))
    no_init = np.empty((0, 0, 0))
    for b in numba.prange(lower.shape[0]):
        rows = np.empty((2 * n_k, 2 * n_orders))
        drows = np.empty_like(rows)
        status = cholesky_factor(coefficients[b], steps[b], no_rhs, no_init, n_orders,
                                 n_init_steps, n_init_orders, we2, wi2, ws2, central,
                                 lower[b], no_rhs, no_rhs, rows, drows)
        if status != 0:
            status = qr_factor(coefficients[b], steps[b], n_orders, n_init_steps,
                               n_init_orders, we2, wi2, ws2, central, lower[b], rows, drows)
        info[b] = status


@jit_kernel
def qr_factor_kernel(coefficients, steps, n_orders, n_init_steps, n_init_orders, we2, wi2,
                     ws2, central, lower, which, info):
    """Row QR factors for the left-hand sides listed in which ``(k,)``; info ``(k,)``."""
    n_k = n_taylor_orders(n_orders, central)
    for i in numba.prange(which.shape[0]):
        b = which[i]
        rows = np.empty((2 * n_k, 2 * n_orders))
        drows = np.empty_like(rows)
        info[i] = qr_factor(coefficients[b], steps[b], n_orders, n_init_steps,
                            n_init_orders, we2, wi2, ws2, central, lower[b], rows, drows)


@jit_kernel
def refined_solve_kernel(coefficients, steps, lhs_index, rhs, rhs_index, init, init_index,
                         n_orders, n_init_steps, n_init_orders, we2, wi2, ws2, central,
                         with_beta, extra, lower, x, info):
    """Solve every right-hand side with its left-hand side's factor and refine.

    with_beta: the least-squares problem of (rhs, init), x ``(B, T, n)`` overwritten with
    the solution; otherwise ``M y = extra`` ``(B, T, n)`` (x receives y; x may be extra
    itself, solved in place). info ``(B,)``:
    0 or -1 (refinement did not converge; x is then NaN, or extra again for the plain
    system).
    """
    n_steps = x.shape[1]
    n = x.shape[2]
    n_k = n_taylor_orders(n_orders, central)
    for i in numba.prange(x.shape[0]):
        rows = np.empty((2 * n_k, 2 * n_orders))
        drows = np.empty_like(rows)
        g = np.empty((n_steps, n))
        lb = lhs_index[i]
        c, h = coefficients[lb], steps[lb]
        r, gi = rhs[rhs_index[i]], init[init_index[i]]
        # the plain system's right-hand side, kept: x may be the same array as extra
        target = np.empty((n_steps, n) if not with_beta else (1, 1))
        if with_beta:
            solve_with_factor(c, r, gi, n_orders, we2, wi2, lower[lb], x[i])
        else:
            for t in range(n_steps):
                for k in range(n):
                    target[t, k] = extra[i, t, k]
                    x[i, t, k] = target[t, k]
            forward_substitute(lower[lb], x[i])
            backward_substitute(lower[lb], x[i])
        scale = np.empty((n_steps, n))
        _column_norms(lower[lb], scale)
        status = refine(c, h, r, gi, n_orders, n_init_steps, n_init_orders, we2, wi2, ws2,
                        central, with_beta, target, lower[lb], x[i], g, scale, rows, drows,
                        QR_MAX_STEPS, math.inf)
        info[i] = 0 if status == CONVERGED else -1
        if info[i] != 0:
            if with_beta:
                _fill_nan(x[i])
            else:  # give the right-hand side back, for a retry with another factor
                for t in range(n_steps):
                    for k in range(n):
                        x[i, t, k] = target[t, k]

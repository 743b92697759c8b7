"""S-MNN CPU kernels: normal-equation assembly (fused with the factorisation),
right-hand side and gradient, one ``prange`` iteration per system. The per-step pieces
they loop over are the portable helpers of :mod:`bandsolve.kernels.assembly` and
:mod:`bandsolve.kernels.gradient` (the CUDA kernels compile the same ones).

Canonical flattened inputs (the driver reshapes once, at the boundary):

- coefficients ``(Bl, Tc, E, n)`` with ``Tc`` in ``{1, T}`` (step length 1 broadcasts)
- steps ``(Bl, Th)`` with ``Th`` in ``{1, T-1}`` (``Th = 0`` when ``T = 1``)
- rhs ``(Br, Tr, E)``, init ``(Bg, Ti, D, Oi)``
- ``*_index`` ``(B,)`` int64 maps each system of the full batch to its row of an input.
"""

import numba
import numpy as np

from .._jit import jit_helper, jit_kernel
from ..formulation import n_taylor_orders
from ..kernels.assembly import (assemble_block_row, assemble_block_row_cached, rhs_step,
                                time_index)
from ..kernels.banded import backward_substitute, factor_block_row, forward_substitute_step
from ..kernels.gradient import add_equation_step_gradient, central_step_term, taylor_step_term


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
            rhs_step(coefficients, rhs, init, t, n_orders, init.shape[0], init.shape[2],
                     we2, wi2, z[t])
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


@jit_kernel
def assemble_rhs_kernel(coefficients, lhs_index, rhs, rhs_index, init, init_index,
                        n_orders, we2, wi2, out):
    """Right-hand side ``b = we^2 C_t^T r_t + wi^2 g`` into out ``(B, T, n)``."""
    for i in numba.prange(out.shape[0]):
        for t in range(out.shape[1]):
            gi = init[init_index[i]]
            rhs_step(coefficients[lhs_index[i]], rhs[rhs_index[i]], gi, t, n_orders,
                     gi.shape[0], gi.shape[2], we2, wi2, out[i, t])


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

@jit_kernel
def gradient_kernel(coefficients, steps, lhs_index, rhs, rhs_index, x, y, n_orders,
                    we2, ws2, central, coefficients_bar, rhs_bar, steps_bar):
    """Gradients of ``<ubar, x>`` given ``x = M^{-1} b`` and ``y = M^{-1} ubar``.

    Row form (``docs/math.md``, "The backward pass"): for residual ``res = A x - beta``,
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
        for t in range(n_steps):
            tc = time_index(t, c_all.shape[0])
            tr = time_index(t, r_all.shape[0])
            add_equation_step_gradient(c_all[tc], r_all[tr], xi[t], yi[t], we2,
                                       coefficients_bar[i, tc], rhs_bar[i, tr])
        # Taylor rows of pair (t, t+1): zero beta, entries depend on h[t]
        rows = np.empty((2 * n_k, 2 * n_orders), dtype=x.dtype)
        drows = np.empty_like(rows)
        for t in range(n_steps - 1):
            th = time_index(t, h.shape[0])
            total = taylor_step_term(h[th], xi, yi, t, n_orders, n_k, rows, drows)
            steps_bar[i, th] -= ws2 * total
        if central:
            for t in range(n_steps - 2):
                th0 = time_index(t, h.shape[0])
                th1 = time_index(t + 1, h.shape[0])
                total = central_step_term(h[th0] + h[th1], xi, yi, t, n_orders)
                # s = h[t] + h[t+1]: ds/dh[t] = ds/dh[t+1] = 1
                steps_bar[i, th0] -= ws2 * total
                steps_bar[i, th1] -= ws2 * total

"""Portable kernel helpers against the dense residual rows of ``tests/helpers.py``.

The residual ``A^T (beta - A x)`` drives refinement on both backends: the host forms it
row by row (scatter, ``add_residual_product``), the device one step at a time (gather,
``residual_step``, one CUDA thread per step). Both must equal the dense product built
from the independently written rows, to rounding: entries are sums of a few products of
O(1) numbers, so ``1e-12`` relative to the largest entry is ample.
"""

import numpy as np
import pytest

from bandsolve.formulation import n_taylor_orders
from bandsolve.kernels.residual import add_residual_product, residual_step
from helpers import make_problem, residual_rows

WEIGHTS = dict(we=1.3, wi=0.7, ws=1.9)


def _flat(c, r, g, h, T):
    E, D, O = c.shape[-3:]
    return (np.ascontiguousarray(c.reshape(c.shape[0], E, D * O)), np.ascontiguousarray(h),
            np.ascontiguousarray(r), np.ascontiguousarray(g))


@pytest.mark.parametrize("central", [False, True])
@pytest.mark.parametrize("T, Ti, Oi, broadcast", [(7, 1, 2, False), (6, 2, 1, True),
                                                  (3, 0, 0, False), (1, 1, 3, False)])
def test_residual_gather_and_scatter_match_dense_rows(central, T, Ti, Oi, broadcast):
    O = 3
    c, r, g, h = make_problem(5, T=T, E=2, D=2, O=O, Ti=Ti, Oi=Oi)
    if broadcast:  # time-constant coefficients and steps broadcast along time
        c, h = c[:1].copy(), h[:1].copy()
    x = np.random.default_rng(3).standard_normal((T, 2 * O))
    we, wi, ws = WEIGHTS["we"], WEIGHTS["wi"], WEIGHTS["ws"]
    c_full = np.broadcast_to(c, (T,) + c.shape[1:])
    h_full = np.broadcast_to(h, (max(T - 1, 0),)) if h.size else h
    A, beta = residual_rows(c_full, r, g, h_full, we=we, wi=wi, ws=ws, central=central)
    A = A.toarray()
    expected = (A.T @ (beta - A @ x.reshape(-1))).reshape(T, 2 * O)
    cf, hf, rf, gf = _flat(c, r, g, h, T)
    if hf.size == 0:
        hf = np.ones(1)
    n_k = n_taylor_orders(O, central)
    rows = np.empty((2 * n_k, 2 * O))
    drows = np.empty_like(rows)
    scattered = np.zeros((T, 2 * O))
    add_residual_product(cf, hf, rf, gf, x, O, Ti, Oi, we * we, wi * wi, ws * ws, central,
                         True, scattered, rows, drows)
    gathered = np.empty((T, 2 * O))
    for t in range(T):
        residual_step(cf, hf, rf, gf, x, t, O, Ti, Oi, we * we, wi * wi, ws * ws, central,
                      True, gathered[t], rows, drows)
    scale = np.abs(expected).max()
    assert np.abs(scattered - expected).max() <= 1e-12 * scale
    assert np.abs(gathered - expected).max() <= 1e-12 * scale
    # without beta: -A^T A x, the plain system's residual (the VJP's y = M^{-1} ubar)
    expected = -(A.T @ (A @ x.reshape(-1))).reshape(T, 2 * O)
    for t in range(T):
        residual_step(cf, hf, rf, gf, x, t, O, Ti, Oi, we * we, wi * wi, ws * ws, central,
                      False, gathered[t], rows, drows)
    assert np.abs(gathered - expected).max() <= 1e-12 * np.abs(expected).max()

"""Portable kernel helpers against the dense residual rows of ``tests/helpers.py``.

The residual ``A^T (beta - A x)`` drives refinement on both backends: the host forms it
row by row (scatter, ``add_residual_product``), the device one step at a time (gather,
``residual_step``, one CUDA thread per step). Both must equal the dense product built
from the independently written rows, to rounding: entries are sums of a few products of
O(1) numbers, so ``1e-12`` relative to the largest entry is ample.
"""

import numba
import numpy as np
import pytest

from bandsolve.formulation import n_taylor_orders
from bandsolve.kernels.residual import (
    INVISIBLE_ORDER,
    add_correction_span,
    add_residual_product,
    clear_correction_record,
    correction_record_size,
    merge_correction_records,
    relative_correction,
    relative_correction_of,
    residual_step,
)
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


# ----------------------------------------------------------------------------- convergence

def _numpy_relative_correction(x, g, scale, n_orders):
    """The refinement's measure written out in NumPy: per derivative order ``o``,
    ``max|g_o| / max|x_o|``, over the orders whose ``max |x_o| * scale_o`` exceeds
    ``INVISIBLE_ORDER`` times the largest order's; inf if anything is not finite."""
    if not (np.all(np.isfinite(x)) and np.all(np.isfinite(g))):
        return np.inf
    seen = [np.max(np.abs(x[:, o::n_orders]) * scale[:, o::n_orders]) for o in range(n_orders)]
    worst = 0.0
    for o in range(n_orders):
        gmax = np.max(np.abs(g[:, o::n_orders]))
        if gmax > 0 and seen[o] > INVISIBLE_ORDER * max(seen):
            worst = max(worst, gmax / np.max(np.abs(x[:, o::n_orders])))
    return worst


@pytest.mark.parametrize("case", ["random", "invisible", "nan", "inf"])
def test_relative_correction_in_one_span_and_in_several(case):
    """The one definition both backends use (kernels/residual.py): the host folds all T
    steps as one span, the device folds spans in parallel and merges their records; both
    must give the NumPy formula exactly (maxima and one division: no rounding apart)."""
    T, D, O = 11, 2, 3
    rng = np.random.default_rng(7)
    x = rng.standard_normal((T, D * O))
    g = 1e-6 * rng.standard_normal((T, D * O))
    scale = rng.uniform(0.5, 2.0, (T, D * O))
    if case == "invisible":  # order 2 contributes 1e-12 of the rows: left out
        x[:, 2::O] *= 1e-12
        g[:, 2::O] = 1.0
    elif case == "nan":
        g[4, 1] = np.nan
    elif case == "inf":
        x[9, 0] = np.inf
    expected = _numpy_relative_correction(x, g, scale, O)
    record = np.empty(correction_record_size(O))
    assert relative_correction(x, g, scale, O, record) == expected
    total = np.empty_like(record)
    clear_correction_record(total)
    for first in range(0, T, 4):  # spans 0-3, 4-7, 8-10
        clear_correction_record(record)
        add_correction_span(x, g, scale, O, first, min(first + 4, T), record)
        merge_correction_records(total, record)
    assert relative_correction_of(total, O) == expected
    if case == "invisible":
        assert expected < 1e-3  # order 2's huge relative correction was ignored


@pytest.mark.parametrize("bad", [None, np.nan, np.inf, -np.inf])
@pytest.mark.parametrize("where", [0, 3 * (1 << 17) + 5, -1])
def test_threaded_input_passes_match_numpy(bad, where):
    """The threaded finiteness test and the temporary-free max |x| (large inputs:
    ``finite._threaded``) against NumPy, with the bad value in the first, a middle and the
    last chunk."""
    from bandsolve.kernels import finite

    flat = np.random.default_rng(1).standard_normal(8 * finite.CHUNK + 12345)
    flat[7] = -9.5  # the largest magnitude, far from the bad value
    assert finite._threaded(flat) or numba.get_num_threads() == 1
    assert finite.max_abs(flat) == np.max(np.abs(flat)) == 9.5
    if bad is not None:
        flat[where] = bad
    assert finite.all_finite_any_size(flat) == bool(np.all(np.isfinite(flat)))

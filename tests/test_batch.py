"""Batching: a batched call equals a loop over single systems, and NumPy broadcasting of
every input's batch axes equals the call on explicitly broadcast inputs."""

import numpy as np
import pytest

import bandsolve

from helpers import (
    assert_normwise_close,
    checked_cond,
    make_problem,
    oracle_solve,
    solve_rtol,
)

DTYPES = [np.float64, np.float32]


def _explicit(problem, batch, T):
    """Copies of the inputs broadcast to the full batch shape (step axes unchanged)."""
    c, r, g, h = problem
    return (
        np.broadcast_to(c, batch + c.shape[-4:]).copy(),
        np.broadcast_to(r, batch + r.shape[-2:]).copy(),
        np.broadcast_to(g, batch + g.shape[-3:]).copy(),
        np.broadcast_to(h, batch + h.shape[-1:]).copy(),
    )


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("central", [False, True])
@pytest.mark.parametrize("batch", [(3,), (2, 3)], ids=str)
def test_batched_equals_loop(batch, central, dtype):
    T, D, O = 5, 2, 3
    problem = make_problem(100, batch=batch, T=T, E=2, D=D, O=O, Ti=1, Oi=2, dtype=dtype)
    kw = dict(central_smoothness=central, weight_smooth=1.3)
    u = bandsolve.smnn_solve(*problem, **kw)
    assert u.shape == batch + (T, D, O) and u.dtype == np.dtype(dtype)
    u_ref, cond = oracle_solve(*problem, **kw)
    rtol = solve_rtol(dtype, checked_cond(cond))
    for idx in np.ndindex(batch):
        u_single = bandsolve.smnn_solve(*(a[idx] for a in problem), **kw)
        assert u_single.shape == (T, D, O)
        assert_normwise_close(u[idx], u_single, rtol, 0)
    assert_normwise_close(u, u_ref, rtol, len(batch))


# (coefficients, rhs, init, steps) batch shapes
BROADCASTS = [
    ((1, 3), (4, 3), (4, 1), ()),
    ((3,), (2, 1), (), (2, 3)),
    ((), (5,), (), ()),
    ((), (), (4,), (1,)),
    ((2, 1, 1), (3, 1), (1, 2), (2, 3, 2)),
    ((1,), (1,), (1,), (1,)),
]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("central", [False, True])
@pytest.mark.parametrize("batches", BROADCASTS, ids=str)
def test_batch_broadcasting_equals_explicit(batches, central, dtype):
    cb, rb, ib, sb = batches
    T, D, O = 4, 2, 3
    problem = make_problem(
        101, T=T, E=2, D=D, O=O, Ti=1, Oi=2, dtype=dtype,
        coef_batch=cb, rhs_batch=rb, init_batch=ib, steps_batch=sb,
    )
    batch = np.broadcast_shapes(cb, rb, ib, sb)
    kw = dict(central_smoothness=central)
    u = bandsolve.smnn_solve(*problem, **kw)
    assert u.shape == batch + (T, D, O)
    explicit = _explicit(problem, batch, T)
    u_explicit = bandsolve.smnn_solve(*explicit, **kw)
    u_ref, cond = oracle_solve(*problem, **kw)
    rtol = solve_rtol(dtype, checked_cond(cond))
    assert_normwise_close(u, u_explicit, rtol, len(batch))
    assert_normwise_close(u, u_ref, rtol, len(batch))


@pytest.mark.parametrize("dtype", DTYPES)
def test_batch_and_step_broadcasting_together(dtype):
    """Batch broadcasting combined with step length 1 (coefficients (1, 1, E, D, O) against
    rhs (3, T, E), steps (1,))."""
    T, D, O = 6, 1, 3
    problem = make_problem(
        102, T=T, E=2, D=D, O=O, Ti=1, Oi=2, dtype=dtype,
        coef_batch=(1,), rhs_batch=(3,), init_batch=(), steps_batch=(), coef_T=1, steps_T=1,
    )
    u = bandsolve.smnn_solve(*problem)
    assert u.shape == (3, T, D, O)
    u_ref, cond = oracle_solve(*problem)
    assert_normwise_close(u, u_ref, solve_rtol(dtype, checked_cond(cond)), 1)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("central", [False, True])
def test_factor_lhs_batch_broadcasts_against_rhs_batch(central, dtype):
    """The Lorenz case in small: left-hand side batch (1, 3), right-hand side batch (5, 3)."""
    T, D, O, Ti, Oi = 5, 3, 3, 1, 1
    coefficients, _, _, steps = make_problem(
        103, T=T, E=2, D=D, O=O, Ti=Ti, Oi=Oi, dtype=dtype, coef_batch=(1, 3), steps_batch=(3,)
    )
    _, rhs, init, _ = make_problem(104, batch=(5, 3), T=T, E=2, D=D, O=O, Ti=Ti, Oi=Oi,
                                   dtype=dtype)
    kw = dict(central_smoothness=central, weight_init=2.0)
    factor = bandsolve.smnn_factor(coefficients, steps, init_shape=(Ti, Oi), **kw)
    u = factor.solve(rhs, init)
    assert u.shape == (5, 3, T, D, O) and u.dtype == np.dtype(dtype)
    u_direct = bandsolve.smnn_solve(coefficients, rhs, init, steps, **kw)
    u_explicit = bandsolve.smnn_solve(
        *_explicit((coefficients, rhs, init, steps), (5, 3), T), **kw
    )
    u_ref, cond = oracle_solve(coefficients, rhs, init, steps, **kw)
    rtol = solve_rtol(dtype, checked_cond(cond))
    assert_normwise_close(u, u_ref, rtol, 2)
    assert_normwise_close(u_direct, u_ref, rtol, 2)
    assert_normwise_close(u, u_explicit, rtol, 2)
    # init batch smaller than the factor's (broadcast the other way).
    u2 = factor.solve(rhs[:, :1], init[0, 0])
    u2_ref, _ = oracle_solve(coefficients, rhs[:, :1], init[0, 0], steps, **kw)
    assert u2.shape == (5, 3, T, D, O)
    assert_normwise_close(u2, u2_ref, rtol, 2)


@pytest.mark.parametrize("central", [False, True])
def test_normal_equations_batched_equals_loop(central):
    batch = (2, 2)
    problem = make_problem(105, batch=batch, T=4, E=2, D=1, O=3, Ti=1, Oi=1,
                           coef_batch=(2, 1), steps_batch=(2,))
    M, b = bandsolve.smnn_normal_equations(*problem, central_smoothness=central)
    assert b.shape == batch + (4, 3)
    dense = M.to_dense()
    assert dense.shape[-2:] == (12, 12)
    for idx in np.ndindex(batch):
        single = (problem[0][idx[0], 0], problem[1][idx], problem[2][idx], problem[3][idx[1]])
        M1, b1 = bandsolve.smnn_normal_equations(*single, central_smoothness=central)
        # The LHS depends on the coefficients (batch (2, 1)) and steps (batch (2,)) only;
        # whatever batch shape the package keeps for M, it must broadcast to this element.
        d_idx = np.broadcast_to(dense, batch + dense.shape[-2:])[idx]
        np.testing.assert_allclose(d_idx, M1.to_dense(), rtol=1e-14, atol=1e-14)
        np.testing.assert_allclose(b[idx], b1, rtol=1e-14, atol=1e-14)


@pytest.mark.parametrize("dtype", DTYPES)
def test_read_only_and_strided_inputs(dtype):
    """Broadcast views (read-only, zero strides), Fortran-ordered and sliced inputs give the
    same result as contiguous copies."""
    T, D, O = 5, 2, 3
    c, r, g, h = make_problem(106, batch=(3,), T=T, E=2, D=D, O=O, Ti=1, Oi=2, dtype=dtype)
    u_ref, cond = oracle_solve(c, r, g, h)
    rtol = solve_rtol(dtype, checked_cond(cond))
    c_view = np.broadcast_to(c[:1], c.shape)  # read-only view with a zero stride
    assert not c_view.flags.writeable
    r_wide = np.zeros((3, T, 4), dtype)
    r_wide[..., ::2] = r  # every other column: a strided view
    g_f = np.asfortranarray(g)
    h_rev = h[:, ::-1].copy()[:, ::-1]  # negative stride
    u = bandsolve.smnn_solve(c_view, r_wide[..., ::2], g_f, h_rev)
    u_ref_view, _ = oracle_solve(np.ascontiguousarray(c_view), r, g, h)
    assert_normwise_close(u, u_ref_view, rtol, 1)


def test_factor_solve_returns_the_factorisation_of_the_solve():
    """smnn_factor_solve's u equals smnn_solve's, and its factorisation rebuilt from
    ``.lower`` gives the same gradients as smnn_solve_vjp (the adapters' forward path)."""
    import bandsolve

    problem = make_problem(11, batch=(3,), T=7, E=2, D=2, O=3, Ti=1, Oi=2)
    u_ref, vjp_ref = bandsolve.smnn_solve_vjp(*problem)
    u, factorization = bandsolve.smnn_factor_solve(*problem)
    np.testing.assert_array_equal(u, u_ref)  # same kernels, same order of operations
    coefficients, rhs, init, steps = problem
    rebuilt = bandsolve.SMNNFactorization.from_lower(
        factorization.lower, coefficients, steps, init_shape=(1, 2))
    ubar = np.random.default_rng(12).standard_normal(u.shape)
    for got, expected in zip(rebuilt.backward(rhs, init, u, ubar), vjp_ref(ubar)):
        np.testing.assert_allclose(got, expected, rtol=1e-12, atol=1e-14)

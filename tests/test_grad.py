"""Vector-Jacobian products against finite differences of the independent oracle.

The scalar loss is ``L = sum(ubar * u)``. Its gradient with respect to every element of
every input (coefficients, rhs, init, steps) is estimated by 4th-order central differences
of the float64 lstsq oracle (tests/helpers.py), not of the package, so the reference is
independent of the package's forward pass as well as of its backward pass.
"""

import numpy as np
import pytest

import bandsolve

from helpers import (
    checked_cond,
    fd4,
    make_full_rank_equations,
    make_problem,
    oracle_solve,
    solve_rtol,
)

NAMES = ("coefficients", "rhs", "init", "steps")

# Finite-difference step: steps h >= 0.4 stay positive under +-2*FD_EPS; the 4th-order
# truncation error ~FD_EPS^4 = 1e-12 and the rounding error ~1e-16*cond/FD_EPS ~ 1e-10
# (relative) are both far below FD_RTOL.
FD_EPS = 1e-3
FD_RTOL = 1e-6


def fd_gradients(problem, ubar, **kw):
    def loss_with(i):
        def f(x):
            args = list(problem)
            args[i] = x
            u, _ = oracle_solve(*args, **kw)
            return float(np.sum(ubar * u))
        return f

    return [fd4(loss_with(i), problem[i], FD_EPS) for i in range(4)]


def check_vjp(problem, ubar, grads, rtol=FD_RTOL, **kw):
    fds = fd_gradients(problem, ubar, **kw)
    assert len(grads) == 4
    for name, x, g, fd in zip(NAMES, problem, grads, fds):
        g = np.asarray(g)
        assert g.shape == x.shape, f"{name}_bar shape {g.shape} != input shape {x.shape}"
        assert np.all(np.isfinite(g)), name
        scale = max(np.linalg.norm(fd), 1e-300)
        err = np.linalg.norm(g - fd)
        assert err <= rtol * scale, f"{name}_bar: relative error {err / scale:.3e}"


def _setup(problem, seed=0, **kw):
    u, vjp = bandsolve.smnn_solve_vjp(*problem, **kw)
    ubar = np.random.default_rng(seed).standard_normal(u.shape).astype(u.dtype)
    return u, vjp, ubar


@pytest.mark.parametrize("central", [False, True])
@pytest.mark.parametrize("weights", [(1.0, 1.0, 1.0), (1.7, 0.6, 1.3)], ids=str)
@pytest.mark.parametrize(
    "shape",
    [
        # (T, E, D, O, Ti, Oi)
        (4, 2, 2, 3, 1, 2),
        (5, 1, 1, 4, 2, 3),
        (4, 3, 1, 3, 4, 1),
    ],
    ids=str,
)
def test_vjp_matches_finite_differences(shape, weights, central):
    T, E, D, O, Ti, Oi = shape
    we, wi, ws = weights
    kw = dict(weight_equation=we, weight_init=wi, weight_smooth=ws, central_smoothness=central)
    problem = make_problem(200 + T + O, T=T, E=E, D=D, O=O, Ti=Ti, Oi=Oi)
    checked_cond(oracle_solve(*problem, **kw)[1])
    u, vjp, ubar = _setup(problem, **kw)
    u_ref, cond = oracle_solve(*problem, **kw)
    np.testing.assert_allclose(u, u_ref, rtol=0, atol=solve_rtol(np.float64, cond) * np.abs(u_ref).max())
    check_vjp(problem, ubar, vjp(ubar), **kw)


@pytest.mark.parametrize("central", [False, True])
@pytest.mark.parametrize(
    "lengths",
    [
        # step lengths of (coefficients, rhs, steps); None = full
        (1, None, 1),
        (None, 1, None),
    ],
    ids=str,
)
def test_vjp_step_length_one_inputs(lengths, central):
    """Inputs given with step length 1 get gradients summed over the steps (shape kept)."""
    cT, rT, sT = lengths
    problem = make_problem(201, T=5, E=2, D=1, O=3, Ti=1, Oi=2, coef_T=cT, rhs_T=rT, steps_T=sT)
    kw = dict(central_smoothness=central)
    checked_cond(oracle_solve(*problem, **kw)[1])
    u, vjp, ubar = _setup(problem, **kw)
    assert u.shape == (5, 1, 3)
    check_vjp(problem, ubar, vjp(ubar), **kw)


@pytest.mark.parametrize("central", [False, True])
def test_vjp_batch_broadcast_inputs(central):
    """Coefficients batch (1,), rhs batch (2,), init and steps unbatched: each gradient is
    summed over the axes its input was broadcast along."""
    problem = make_problem(
        202, T=4, E=2, D=2, O=3, Ti=1, Oi=1,
        coef_batch=(1,), rhs_batch=(2,), init_batch=(), steps_batch=(),
    )
    kw = dict(central_smoothness=central, weight_smooth=0.8)
    checked_cond(oracle_solve(*problem, **kw)[1])
    u, vjp, ubar = _setup(problem, **kw)
    assert u.shape == (2, 4, 2, 3)
    check_vjp(problem, ubar, vjp(ubar), **kw)


def test_vjp_batched_equals_loop():
    batch = (3,)
    problem = make_problem(203, batch=batch, T=4, E=2, D=2, O=3, Ti=1, Oi=2)
    u, vjp, ubar = _setup(problem)
    grads = vjp(ubar)
    for i in range(batch[0]):
        single = tuple(a[i] for a in problem)
        _, vjp_i = bandsolve.smnn_solve_vjp(*single)
        for name, g, g_i in zip(NAMES, grads, vjp_i(ubar[i])):
            np.testing.assert_allclose(g[i], g_i, rtol=1e-10, atol=1e-12 * np.abs(g_i).max(),
                                       err_msg=name)


def test_vjp_without_initial_values():
    """Ti = 0: the init gradient is empty with the input's shape (0, D, Oi)."""
    T, D, O = 4, 1, 3
    _, rhs, init, steps = make_problem(204, T=T, E=D * O + 1, D=D, O=O, Ti=0, Oi=2)
    coefficients = make_full_rank_equations(204, T=T, D=D, O=O)
    problem = (coefficients, rhs, init, steps)
    u, vjp, ubar = _setup(problem)
    grads = vjp(ubar)
    assert np.asarray(grads[2]).shape == (0, D, 2)
    check_vjp(problem, ubar, grads)


def test_vjp_float32():
    """float32: the gradients carry the forward error eps32 * cond(M) of both solves
    (x and y = M^-1 ubar) and the products built from them; we allow 10x solve_rtol."""
    problem = make_problem(205, T=4, E=2, D=1, O=3, Ti=1, Oi=2, dtype=np.float32)
    _, cond = oracle_solve(*problem)
    checked_cond(cond, 1e5)
    u, vjp, ubar = _setup(problem)
    assert u.dtype == np.float32
    grads = vjp(ubar)
    check_vjp(problem, ubar.astype(np.float64), grads, rtol=10 * solve_rtol(np.float32, cond))


@pytest.mark.parametrize("central", [False, True])
def test_factor_solve_vjp_equals_smnn_solve_vjp(central):
    coefficients, rhs, init, steps = make_problem(206, batch=(2,), T=4, E=2, D=2, O=3,
                                                  Ti=1, Oi=2, coef_batch=(1,))
    kw = dict(central_smoothness=central, weight_equation=1.4)
    u_ref, vjp_ref, ubar = _setup((coefficients, rhs, init, steps), **kw)
    factor = bandsolve.smnn_factor(coefficients, steps, init_shape=(1, 2), **kw)
    u, vjp = factor.solve_vjp(rhs, init)
    np.testing.assert_allclose(u, u_ref, rtol=1e-12, atol=1e-12 * np.abs(u_ref).max())
    grads = vjp(ubar)
    grads_ref = vjp_ref(ubar)
    # The factorisation's VJP gives all four gradients, or (rhs_bar, init_bar) only when
    # the left-hand side is frozen; whichever it returns must agree with smnn_solve_vjp.
    assert len(grads) in (2, 4), len(grads)
    pairs = zip(NAMES, grads, grads_ref) if len(grads) == 4 else zip(NAMES[1:3], grads, grads_ref[1:3])
    for name, g, g_ref in pairs:
        g = np.asarray(g)
        assert g.shape == np.shape(g_ref), name
        np.testing.assert_allclose(g, g_ref, rtol=1e-10, atol=1e-12 * np.abs(g_ref).max(),
                                   err_msg=name)


def test_vjp_is_linear_in_ubar():
    """vjp(a*p + q) == a*vjp(p) + vjp(q): the backward pass uses no state from a previous
    call (the factorisation is reused, not modified)."""
    problem = make_problem(207, T=4, E=2, D=1, O=3, Ti=1, Oi=2)
    u, vjp, p = _setup(problem, seed=1)
    q = np.random.default_rng(2).standard_normal(u.shape)
    gp = [np.array(g) for g in vjp(p)]
    gq = [np.array(g) for g in vjp(q)]
    gpq = vjp(2.5 * p + q)
    for name, a, b, c in zip(NAMES, gp, gq, gpq):
        scale = np.abs(2.5 * a + b).max()
        np.testing.assert_allclose(c, 2.5 * a + b, rtol=0, atol=1e-12 * scale, err_msg=name)
    # And the first call again gives the same result.
    for name, a, a2 in zip(NAMES, gp, vjp(p)):
        np.testing.assert_allclose(a2, a, rtol=1e-14, atol=0, err_msg=name)


# ------------------------------------------------------------------- forward mode (JVP)

@pytest.mark.parametrize("central", [False, True])
def test_jvp_matches_finite_differences_of_the_oracle(central):
    """``bandsolve.tangent.smnn_jvp`` along a random direction of all four inputs, against
    a 4th-order central difference of the lstsq oracle along that direction (same error
    budget as the VJP checks above). The left-hand side is shared by the batch and the
    tangent of the coefficients has a batch axis of its own (one direction per element)."""
    from bandsolve.tangent import smnn_jvp

    problem = make_problem(71, batch=(2,), T=6, E=2, D=2, O=3, Ti=1, Oi=2, coef_batch=(1,),
                           steps_batch=())
    kw = dict(weight_equation=1.3, weight_init=0.8, weight_smooth=1.1,
              central_smoothness=central)
    rng = np.random.default_rng(72)
    tangents = [rng.standard_normal(a.shape) for a in problem]
    tangents[0] = rng.standard_normal((2,) + problem[0].shape[1:])  # per-element direction
    u, factorization = bandsolve.smnn_factor_solve(*problem, **kw)
    du = smnn_jvp(factorization, *problem, u, tangents)
    _, cond = oracle_solve(*problem, **kw)
    checked_cond(cond)
    for b in range(2):
        def along(t, b=b):
            moved = [a + t * (d if d.shape == a.shape else d[b:b + 1])
                     for a, d in zip(problem, tangents)]
            return oracle_solve(*moved, **kw)[0][b]
        e = FD_EPS
        fd = (-along(2 * e) + 8 * along(e) - 8 * along(-e) + along(-2 * e)) / (12 * e)
        assert np.linalg.norm(du[b] - fd) <= FD_RTOL * np.linalg.norm(fd)

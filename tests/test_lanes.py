"""The SIMD lane kernels (``bandsolve.cpu.lanes``) against independent references.

``smnn_solve`` sends batches of at least ``W`` systems (one right-hand side each) through
the lane kernels; the size threshold that keeps small problems off them is lowered here so
that small, cheap cases reach them. Each case checks that the lane path really ran.

References: ``numpy.linalg.lstsq`` on the dense rows (``helpers.oracle_solve``, error
``~eps * cond(A)``) and, for the ill-conditioned case, the 60-digit solve of
``tests/exact.py``. Errors are per derivative order (orders differ in scale by ``h^-o``).
"""

import math
import re

import numpy as np
import pytest

import bandsolve
from bandsolve.kernels import codegen
from bandsolve.cpu.lanes import solve as lanes
from exact import exact_solution, order_errors
from helpers import (check_vjp_against_fd, directional_derivative, make_problem, oracle_solve,
                     small_step_batch)

EPS = np.finfo(np.float64).eps
# two lane groups, the second padded
BATCH = (codegen.LANES + 1,)
# D = 2 exercises the block structure over d; small n keeps the one-time compilation of
# each shape's kernels short (it grows like n^3); the paper's D = O = E = 3 is slow-marked
SHAPE = dict(E=2, D=2, O=2)


class _Calls(list):
    """Calls of ``lane_solve``; ``fallbacks`` the number of systems each call sent back
    to the one-system host kernel (a lane that failed its pivot test or refinement)."""

    fallbacks = ()


@pytest.fixture
def lane_calls(monkeypatch):
    """Route small problems through the lane kernels; returns the record of their calls
    (a broken lane factor would hide behind the host fallback: tests check both)."""
    calls = _Calls()
    calls.fallbacks = []
    real, host = lanes.lane_solve, lanes.accurate_factor_solve_kernel

    def spy(*args, **kwargs):
        calls.append(args[0].n_steps)
        return real(*args, **kwargs)

    class HostSpy:
        def for_batch(self, n_systems, n_steps):
            calls.fallbacks.append(n_systems)
            return host.for_batch(n_systems, n_steps)

    real_plain = lanes.LaneFactor.solve

    def plain_spy(self, extra, out):
        ok, redo = real_plain(self, extra, out)
        calls.plain_solved.append(int(ok.sum()))
        return ok, redo

    real_gradients = lanes.LaneFactor.gradients

    def gradients_spy(self, *outputs):
        calls.gradients.append(outputs[0].shape[0])
        return real_gradients(self, *outputs)

    calls.plain_solved = []
    calls.gradients = []
    monkeypatch.setattr(lanes.LaneFactor, "solve", plain_spy)
    monkeypatch.setattr(lanes.LaneFactor, "gradients", gradients_spy)
    monkeypatch.setattr(lanes, "MIN_BLOCK_ROWS", 1)
    monkeypatch.setattr(lanes, "lane_solve", spy)
    monkeypatch.setattr(lanes, "accurate_factor_solve_kernel", HostSpy())
    return calls


def _order_tolerance(cond_m):
    # the accurate solve and lstsq are both backward stable: errors ~ eps * cond(A) each
    # (cond(A) = sqrt(cond(M))); 100 covers the dimension factors of blocks this small
    return max(100 * EPS * math.sqrt(cond_m), 1e-13)


def _check_against_lstsq(problem, options, u):
    ref, cond = oracle_solve(*problem, **options)
    assert np.all(np.isfinite(cond)), "test problem must be full rank"
    for idx in np.ndindex(ref.shape[:-3]):
        errors = order_errors(u[idx], ref[idx])
        assert max(errors) <= _order_tolerance(cond[idx]), (idx, errors, cond[idx])


CASES = {
    "per-step inputs, steps varying per system": dict(),
    "uniform grid, coefficients constant in time": dict(coef_T=1, steps_T=1),
    "one rhs and init for all systems": dict(rhs_batch=(1,), init_batch=()),
    "two initial steps, every order pinned": dict(Ti=2, Oi=2),
}


@pytest.mark.parametrize("T", [1, 2, 7])
@pytest.mark.parametrize("case", list(CASES))
def test_lane_solve_matches_lstsq(lane_calls, case, T):
    kw = CASES[case]
    if T == 1:
        kw = dict(kw, steps_T=0, Ti=1, Oi=2)  # a single step needs every order pinned
    problem = make_problem(3, batch=BATCH, T=T, **SHAPE, **kw)
    before = [a.copy() for a in problem]
    u = bandsolve.smnn_solve(*problem)
    assert lane_calls, "the lane kernels were not used"
    assert not lane_calls.fallbacks, "well-conditioned lanes fell back to the host kernel"
    assert u.shape == BATCH + (T, SHAPE["D"], SHAPE["O"]) and u.dtype == np.float64
    _check_against_lstsq(problem, {}, u)
    for a, b in zip(problem, before):
        np.testing.assert_array_equal(a, b)  # inputs never modified


@pytest.mark.parametrize("batch, shared", [((), False), ((3,), False), ((3,), True)])
def test_one_lane_build_for_small_batches(lane_calls, batch, shared):
    """Fewer systems than lanes: one system per group (straight-line scalar code), the
    inputs read in place, or staged where the systems share rhs and initial values."""
    assert lanes.lane_width(3) == 1 and lanes.lane_width(codegen.LANES) == codegen.LANES
    kw = dict(rhs_batch=(1,), init_batch=()) if shared else {}
    problem = make_problem(6, batch=batch, T=9, **SHAPE, Ti=1, Oi=2, **kw)
    u = bandsolve.smnn_solve(*problem)
    assert lane_calls and not lane_calls.fallbacks
    _check_against_lstsq(problem, {}, u)


@pytest.mark.parametrize("batch", [BATCH, (2,)])
def test_weights_and_float32(lane_calls, batch):
    """float32 inputs are staged without a float64 copy (``(2,)``: the one-lane build
    reads a float64 cast in place); both give the float64 solution of the float32 values."""
    options = dict(weight_equation=0.5, weight_init=3.0, weight_smooth=2.0)
    problem = make_problem(4, batch=batch, T=6, **SHAPE)
    u = bandsolve.smnn_solve(*problem, **options)
    _check_against_lstsq(problem, options, u)
    u32 = bandsolve.smnn_solve(*(a.astype(np.float32) for a in problem), **options)
    assert u32.dtype == np.float32
    ref, _ = oracle_solve(*(a.astype(np.float32).astype(np.float64) for a in problem),
                          **options)
    for idx in np.ndindex(batch):
        # computed in float64 from the float32 inputs: only the final rounding to float32
        assert max(order_errors(u32[idx], ref[idx])) <= 4 * np.finfo(np.float32).eps
    assert len(lane_calls) == 2 and not lane_calls.fallbacks


def test_float32_failures_and_vjp(lane_calls):
    """float32 inputs on the paths that need the float64 cast later: a rank-deficient
    system re-solved by the host kernel (named; NaN with check=False), and the VJP,
    whose gradients are the float64 ones of the float32 values, rounded to float32."""
    c, r, g, h = (a.astype(np.float32) for a in make_problem(15, batch=BATCH, T=6, **SHAPE,
                                                             Ti=1, Oi=2))
    wide = [a.astype(np.float64) for a in (c, r, g, h)]
    ubar = np.random.default_rng(6).standard_normal((BATCH[0], 6, SHAPE["D"], SHAPE["O"]))
    u, vjp = bandsolve.smnn_solve_vjp(c, r, g, h)
    u64, vjp64 = bandsolve.smnn_solve_vjp(*wide)
    assert u.dtype == np.float32
    np.testing.assert_allclose(u, u64, rtol=4 * np.finfo(np.float32).eps, atol=0)
    for got, want in zip(vjp(ubar.astype(np.float32)), vjp64(ubar.astype(np.float32))):
        assert got.dtype == np.float32
        np.testing.assert_allclose(got, want, rtol=4 * np.finfo(np.float32).eps,
                                   atol=4 * np.finfo(np.float32).eps * np.abs(want).max())
    assert not lane_calls.fallbacks
    c[3] = 0.0
    g = np.ascontiguousarray(g[..., :0])  # no initial values: system 3's lines are free
    c[:, 0] += 1.0
    with pytest.raises(bandsolve.FactorizationError, match=r"batch index \(3,\)"):
        bandsolve.smnn_solve(c, r, g, h)
    u = bandsolve.smnn_solve(c, r, g, h, check=False)
    assert np.all(np.isnan(u[3])) and lane_calls.fallbacks == [1, 1]
    keep = [0, 1, 2, 4]
    ref = bandsolve.smnn_solve(*(a[keep].astype(np.float64) for a in (c, r, g, h)))
    np.testing.assert_allclose(u[keep], ref, rtol=4 * np.finfo(np.float32).eps, atol=0)


def test_ill_conditioned_systems_are_refined(lane_calls):
    """Small steps at O = 4: cond(A) from 1.5e4 (h = 0.05) to 1.4e7 (h = 0.005) still pass
    the pivot test and are refined in the lanes; h = 0.002 (cond(A) 1.7e8) fails it and is
    solved by the host kernel's row-QR fallback. Measured without refinement (lanes with
    ``CHOLESKY_MAX_STEPS = 0``): errors 1.1e-9, 2.0e-7, 7.4e-6, 2.2e-5, all above the
    bound below; with it: 1.5e-15 .. 2.2e-12."""
    c, r, g, h = small_step_batch()
    B = c.shape[0]
    u = bandsolve.smnn_solve(c, r, g, h)
    assert lane_calls and lane_calls.fallbacks == [1]  # h = 0.002 only
    for b in range(B):
        ref = exact_solution(c[b], r[b], g[b], h[b])
        errors = order_errors(u[b], ref.x)
        # backward-stable least squares: ~eps * cond(A); 100 for the dimension factors
        assert max(errors) <= 100 * EPS * ref.cond, (b, errors, ref.cond)


def test_rank_deficient_system_is_named(lane_calls):
    """System 3 has zero coefficients and no initial values: its straight lines are free."""
    c, r, g, h = make_problem(5, batch=BATCH, T=6, **SHAPE, Ti=1, Oi=2)
    c[3] = 0.0
    g = np.broadcast_to(g[:, :, :, :0], g.shape[:-1] + (0,)).copy()  # no initial values
    c[:, 0] += 1.0  # keep the others well posed without initial values
    with pytest.raises(bandsolve.FactorizationError, match=r"batch index \(3,\)"):
        bandsolve.smnn_solve(c, r, g, h)
    assert lane_calls.fallbacks == [1]
    u = bandsolve.smnn_solve(c, r, g, h, check=False)
    assert np.all(np.isnan(u[3]))
    others = [i for i in range(BATCH[0]) if i != 3]
    assert np.all(np.isfinite(u[others]))
    keep = np.array(others)
    _check_against_lstsq((c[keep], r[keep], g[keep], h[keep]), {}, u[keep])


@pytest.mark.parametrize("batch, keep", [(BATCH, False), (BATCH, True), ((2,), False)])
@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_coefficients_are_named_before_solving(monkeypatch, lane_calls, batch,
                                                          keep, bad):
    """The lanes test the coefficients' finiteness while staging them (the up-front check
    skips them there): the error is the host's, naming the argument and the first bad
    position, raised before the solve kernel runs; the caller's arrays are untouched.
    ``(2,)``: the one-lane build reads its inputs in place, checked up front."""
    solved = []
    real = lanes._solve_groups
    monkeypatch.setattr(lanes, "_solve_groups",
                        lambda *args: solved.append(1) or real(*args))
    c, r, g, h = make_problem(7, batch=batch, T=6, **SHAPE)
    position = (batch[0] - 1, 4, 1, 1, 1)  # (b, t, e, d, o): the last system (a padded group when BATCH)
    c[position] = bad
    before = c.copy()
    call = bandsolve.smnn_solve_vjp if keep else bandsolve.smnn_solve
    with pytest.raises(ValueError, match=r"coefficients.*" + re.escape(str(position))):
        call(c, r, g, h)
    assert lane_calls and not solved and not lane_calls.fallbacks
    np.testing.assert_array_equal(c, before)
    c[position] = 1.0  # and a finite one at the same place solves
    assert np.all(np.isfinite(call(c, r, g, h)[0] if keep else call(c, r, g, h)))
    assert solved


@pytest.mark.slow
@pytest.mark.parametrize("batch", [BATCH, (2,)])
def test_paper_block_size(lane_calls, batch):
    """D = O = E = 3 (n = 9, the benchmarks' shape), both builds."""
    problem = make_problem(11, batch=batch, T=8, E=3, D=3, O=3, Ti=1, Oi=2)
    u = bandsolve.smnn_solve(*problem)
    assert lane_calls and not lane_calls.fallbacks
    _check_against_lstsq(problem, {}, u)


def test_sub_diagonal_structure():
    """``L[t, t-1]`` is block upper triangular over d: 54 of 81 entries at D = O = 3."""
    assert codegen.Layout(3, 3, 3).n_y == 54
    assert codegen.Layout(1, 4, 1).n_y == 16


def test_small_or_central_problems_stay_off_the_lanes():
    lhs_like = type("L", (), dict(central=False, n_steps=10, block_size=6, n_equations=2))
    assert not lanes.applies(lhs_like, codegen.LANES)  # 80 block rows: not worth compiling
    assert lanes.applies(lhs_like, 10_000)  # 100k block rows
    lhs_like.central = True
    assert not lanes.applies(lhs_like, 10_000)
    lhs_like.central, lhs_like.n_equations = False, 0  # no equation rows: not generated
    assert not lanes.applies(lhs_like, 10_000)


@pytest.mark.parametrize("broadcast", [{}, dict(coef_T=1, steps_T=1)])
def test_vjp_in_the_lanes_matches_finite_differences(lane_calls, broadcast):
    """``smnn_solve_vjp`` keeps the lane factor, solves ``M y = ubar`` and forms the
    gradients in the lanes; inputs constant in time get gradients summed over time."""
    problem = make_problem(8, batch=BATCH, T=6, **SHAPE, Ti=1, Oi=2, **broadcast)
    rng = np.random.default_rng(9)
    u, vjp = bandsolve.smnn_solve_vjp(*problem)
    assert lane_calls and not lane_calls.fallbacks
    _check_against_lstsq(problem, {}, u)
    ubar = rng.standard_normal(u.shape)
    grads = vjp(ubar)
    assert len(lane_calls) == 1  # the backward pass did not factor again
    assert lane_calls.plain_solved == [BATCH[0]]  # every M y = ubar solved in the lanes
    assert lane_calls.gradients == [BATCH[0]]  # and the sums over the rows made there
    check_vjp_against_fd(problem, grads, ubar, rng)


@pytest.mark.parametrize("batch", [BATCH, (2,)])
def test_kept_lane_factor_ignores_later_changes_to_the_inputs(lane_calls, batch):
    """The VJP and a kept factorisation read the lanes' own copies (the left-hand side
    keeps no second copy of the coefficients: it is rebuilt from the lanes' on demand,
    here by the host solve of new right-hand sides): overwriting the caller's arrays
    after the solve changes neither the gradients nor a later solve."""
    from bandsolve._adapters import smnn_factor_solve

    problem = make_problem(12, batch=batch, T=6, **SHAPE, Ti=1, Oi=2)
    ubar = np.random.default_rng(3).standard_normal(
        bandsolve.smnn_solve(*problem).shape)
    pristine = [a.copy() for a in problem]
    expected = bandsolve.smnn_solve_vjp(*pristine)[1](ubar)
    mutable = [a.copy() for a in problem]
    u, vjp = bandsolve.smnn_solve_vjp(*mutable)
    u_kept, factorization = smnn_factor_solve(*mutable)
    for a in mutable:
        a[...] = 7.0  # (steps stay positive, the coefficients well posed but different)
    for got, want in zip(vjp(ubar), expected):
        np.testing.assert_array_equal(got, want)
    u_again = factorization.solve(pristine[1], pristine[2])  # the host layout, rebuilt
    np.testing.assert_allclose(u_again, u_kept, rtol=0, atol=1e-12 * np.abs(u_kept).max())
    assert not lane_calls.fallbacks


def test_kept_factor_buffers_are_pooled_and_never_shared(lane_calls):
    """A kept lane factor's buffers go back to the pool when its VJP is dropped (at once:
    no reference cycle waits for the cyclic collector) and the next kept solve reuses
    them; two live factors never share one (each VJP gives its own problem's gradients,
    the expected ones computed with the pool emptied)."""
    import gc

    first = make_problem(13, batch=BATCH, T=6, **SHAPE, Ti=1, Oi=2)
    second = make_problem(14, batch=BATCH, T=6, **SHAPE, Ti=1, Oi=2)
    ubar = np.random.default_rng(5).standard_normal(bandsolve.smnn_solve(*first).shape)
    expected = []
    for problem in (first, second):
        lanes.release_scratch()
        expected.append(bandsolve.smnn_solve_vjp(*problem)[1](ubar))
    lanes.release_scratch()
    gc.disable()
    try:
        _, vjp_first = bandsolve.smnn_solve_vjp(*first)
        _, vjp_second = bandsolve.smnn_solve_vjp(*second)
        assert not lanes._kept_pool
        del vjp_first
        pooled = len(lanes._kept_pool)
        assert pooled >= 7  # coefficients, rhs, init, steps, factor, x, column norms
        _, vjp_again = bandsolve.smnn_solve_vjp(*first)
        assert len(lanes._kept_pool) < pooled  # reused
        for vjp, want in ((vjp_again, expected[0]), (vjp_second, expected[1]),
                          (vjp_again, expected[0])):
            for got, ref in zip(vjp(ubar), want):
                np.testing.assert_array_equal(got, ref)
    finally:
        gc.enable()
    lanes.release_scratch()
    assert not lanes._kept_pool


def test_lane_factor_in_host_layout(lane_calls):
    """``factorization.lower`` rebuilt from the lanes is a Cholesky factor of M (the
    dense normal matrix of the rows, built by the test helpers)."""
    from helpers import oracle_normal_equations
    from bandsolve._adapters import smnn_factor_solve

    problem = make_problem(10, batch=BATCH, T=5, **SHAPE, Ti=1, Oi=2)
    u, factorization = smnn_factor_solve(*problem)
    assert lane_calls and not lane_calls.fallbacks
    M, *_ = oracle_normal_equations(*problem)
    lower = factorization.lower
    for b in range(BATCH[0]):
        L = _band_lower(lower[b])
        np.testing.assert_allclose(L @ L.T, M[b], rtol=0, atol=1e-12 * np.abs(M[b]).max())
    # new right-hand sides go through the host layout
    u2 = factorization.solve(problem[1], problem[2])
    np.testing.assert_allclose(u2, u, rtol=0, atol=1e-12 * np.abs(u).max())


def _band_lower(blocks):
    """Dense block lower-triangular L from host blocks ``(T, 2, n, n)`` (diagonal blocks'
    upper triangles ignored)."""
    T, _, n, _ = blocks.shape
    L = np.zeros((T * n, T * n))
    for t in range(T):
        L[t * n:(t + 1) * n, t * n:(t + 1) * n] = np.tril(blocks[t, 0])
        if t:
            L[t * n:(t + 1) * n, (t - 1) * n:t * n] = blocks[t, 1]
    return L


def test_torch_adapter_through_the_lanes(lane_calls):
    """The PyTorch operator's forward runs in the lanes (its backward rebuilds the host
    layout from the factor it returns): gradients against finite differences."""
    torch = pytest.importorskip("torch")
    import bandsolve_torch

    problem = make_problem(12, batch=BATCH, T=6, **SHAPE, Ti=1, Oi=2)
    leaves = [torch.tensor(a, requires_grad=True) for a in problem]
    u = bandsolve_torch.smnn_solve(*leaves)
    assert lane_calls and not lane_calls.fallbacks
    _check_against_lstsq(problem, {}, u.detach().numpy())
    rng = np.random.default_rng(13)
    ubar = rng.standard_normal(u.shape)
    (u * torch.tensor(ubar)).sum().backward()
    for index, leaf in enumerate(leaves):
        direction = rng.standard_normal(leaf.shape)
        expected = directional_derivative(problem, index, direction, ubar)
        got = float(np.sum(leaf.grad.numpy() * direction))
        assert abs(got - expected) <= 1e-7 * max(1.0, abs(expected)), (index, got, expected)


@pytest.fixture
def shared_calls(monkeypatch):
    """Route small shared-left-hand-side problems through the lane kernels; returns the
    lane status of each call (CONVERGED for the systems the lanes solved)."""
    calls = []
    real = lanes.shared_lane_solve

    def spy(*args, **kwargs):
        out = real(*args, **kwargs)
        calls.append(out[1].copy())
        return out

    monkeypatch.setattr(lanes, "MIN_BLOCK_ROWS", 1)
    monkeypatch.setattr(lanes, "shared_lane_solve", spy)
    return calls


@pytest.mark.parametrize("kw", [dict(), dict(coef_T=1, steps_T=1), dict(T=1, steps_T=0)],
                         ids=["per-step", "constant in time", "one step"])
def test_shared_left_hand_sides_in_the_lanes(shared_calls, kw):
    """Ten right-hand sides per left-hand side (the Lorenz experiment's structure): each
    left-hand side factored once, its right-hand sides solved four per vector sharing
    it (groups padded), against lstsq per system."""
    kw = dict(dict(T=6, Ti=1, Oi=2), **kw)
    problem = make_problem(12, batch=(10, 3), **SHAPE, coef_batch=(3,),
                           steps_batch=(3,), **kw)
    before = [a.copy() for a in problem]
    u = bandsolve.smnn_solve(*problem)
    assert len(shared_calls) == 1 and np.all(shared_calls[0] == lanes.CONVERGED)
    assert u.shape == (10, 3, kw["T"], SHAPE["D"], SHAPE["O"])
    _check_against_lstsq(problem, {}, u)
    for a, b in zip(problem, before):
        np.testing.assert_array_equal(a, b)


@pytest.mark.slow  # compiles the O = 4 kernels cold and runs the 60-digit reference
def test_shared_left_hand_side_failures_go_to_the_host(shared_calls):
    """Left-hand side 1 is rank deficient (zero coefficients, no initial values): named
    by the host path's error, NaN only in its right-hand sides' slices; left-hand side 2
    (h = 0.002 at O = 4, cond(A) ~1e8) fails the lanes' pivot test and is solved by the
    host's row-QR fallback, within the backward-stable bound of the 60-digit solution."""
    rng = np.random.default_rng(13)
    T, D, O, E = 10, 1, 4, 1
    c = rng.standard_normal((3, T, E, D, O))
    c[:, 0] += 2.0
    r = rng.standard_normal((8, 3, T, E))
    g = np.zeros((8, 3, 0, D, 0))
    h = np.full((3, T - 1), 0.5)
    h[2] = 2e-3
    c[1] = 0.0
    with pytest.raises(bandsolve.FactorizationError, match=r"batch index \(1,\)"):
        bandsolve.smnn_solve(c, r, g, h)
    u = bandsolve.smnn_solve(c, r, g, h, check=False)
    status = shared_calls[-1].reshape(8, 3)
    assert np.all(status[:, 0] == lanes.CONVERGED)
    assert not np.any(status[:, 1:] == lanes.CONVERGED)
    assert np.all(np.isnan(u[:, 1])) and np.all(np.isfinite(u[:, [0, 2]]))
    for i in range(8):
        for f in (0, 2):
            ref = exact_solution(c[f], r[i, f], g[i, f], h[f])
            errors = order_errors(u[i, f], ref.x)
            assert max(errors) <= 100 * EPS * ref.cond, (i, f, errors, ref.cond)


def test_vjp_with_shared_left_hand_sides_matches_finite_differences(shared_calls):
    """``smnn_solve_vjp`` over shared left-hand sides: the forward solve in the lanes,
    the host factorisation made for the VJP; the gradients (summed over the right-hand
    sides that share a left-hand side) against finite differences of the lstsq oracle."""
    problem = make_problem(14, batch=(6, 2), T=5, **SHAPE, Ti=1, Oi=2, coef_batch=(2,),
                           steps_batch=(2,))
    rng = np.random.default_rng(15)
    u, vjp = bandsolve.smnn_solve_vjp(*problem)
    assert len(shared_calls) == 1
    _check_against_lstsq(problem, {}, u)
    ubar = rng.standard_normal(u.shape)
    grads = vjp(ubar)
    check_vjp_against_fd(problem, grads, ubar, rng)

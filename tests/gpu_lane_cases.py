"""The generated thread-per-system CUDA kernels (``bandsolve.gpu.lanes``) under the CUDA
simulator, against the dense least-squares oracle.

Not collected by a plain ``pytest`` run: ``tests/test_gpu_lanes.py`` runs it in a
subprocess with ``NUMBA_ENABLE_CUDASIM=1`` (the simulator must be on before numba's first
import). Tiny shapes: the simulator runs every thread as a Python thread.

The first cases drive the kernels directly (inputs staged into the lane layout with NumPy,
one thread per system); the others go through ``bandsolve.smnn_solve`` on device arrays
(``bandsolve/gpu/lane_solve.py``: device staging, per-lane refinement decided on the
device, the sequential retry of failed lanes), with the size threshold that keeps small
batches off the lanes lowered, and check that the lanes really ran.
"""

import math

import numpy as np
import pytest
from numba import cuda

import bandsolve
from bandsolve.gpu import config, lane_solve, lanes
from bandsolve.kernels import codegen
from bandsolve.kernels.residual import CONVERGED
from exact import exact_solution, order_errors
from helpers import check_vjp_against_fd, make_problem, oracle_solve, small_step_batch

EPS = np.finfo(np.float64).eps
U = np.uint64


def _lanes_of(values, width):
    """``(W, ...)`` per-system values -> the lane layout ``(1, prod(...) * W)``."""
    return np.ascontiguousarray(values.reshape(width, -1).T).reshape(1, -1)


def _device_solve(problem, refine_steps):
    coefficients, rhs, init, steps = problem
    B, T, E, D, O = coefficients.shape
    n, Ti, Oi = D * O, init.shape[-3], init.shape[-1]
    lay = codegen.Layout(D, O, E)
    mod = lanes.kernels(D, O, E)
    g = np.zeros((B, max(Ti, 1), D, O))
    g[:, :Ti, :, :Oi] = init
    pins = np.zeros((T, D, O))
    pins[:Ti, :, :Oi] = 1.0
    staged = [cuda.to_device(_lanes_of(a, B)) for a in
              (coefficients.reshape(B, T, E * n), rhs, g.reshape(B, -1, n), steps)]
    inputs = (staged[0], U(E * n * B), staged[1], U(E * B), staged[2], U(n * B), max(Ti, 1),
              staged[3], U(B), cuda.to_device(pins.reshape(-1)), 1.0, 1.0)
    zeros = lambda size: cuda.to_device(np.zeros((1, size * B)))  # noqa: E731
    lower, x, scale, v = (zeros(T * lay.n_packed), zeros(T * n), zeros(T * n),
                          zeros(T * n))
    ok = cuda.to_device(np.ones((1, B)))
    grid = ((B + 31) // 32, 32)
    mod.factor_forward[grid](1, T, *inputs, 1e-10, lower, x, scale, ok,
                             zeros(lay.n_packed), zeros(n), B)
    stats = zeros(3 * O + 1)
    steps = codegen.step_arguments(inputs)  # the couplings are rebuilt from the steps
    mod.backward[grid](1, T, *steps, lower, x, x, scale, stats, zeros(n), B)
    for _ in range(refine_steps):
        mod.residual_forward[grid](1, T, *inputs, x, x, lower, v, zeros(n), zeros(n), B)
        mod.correction_backward[grid](1, T, *steps, lower, v, x, scale, stats, zeros(n), B)
    solution = x.copy_to_host().reshape(T, n, B)
    return np.moveaxis(solution, -1, 0).reshape(B, T, D, O), ok.copy_to_host()[0]


@pytest.mark.parametrize("refine_steps", [0, 1])
def test_thread_per_system_kernels_solve_the_least_squares_problem(refine_steps):
    problem = make_problem(21, batch=(5,), T=4, E=2, D=2, O=2, Ti=1, Oi=2)
    u, ok = _device_solve(problem, refine_steps)
    assert np.all(ok == 1.0)
    ref, cond = oracle_solve(*problem)
    for b in range(5):
        errors = order_errors(u[b], ref[b])
        # plain Cholesky of M: eps * cond(M); refined: eps * cond(A); 100 for n and T
        bound = 100 * EPS * (cond[b] if refine_steps == 0 else np.sqrt(cond[b]))
        assert max(errors) <= max(bound, 1e-13), (b, errors, cond[b])


def test_rank_deficient_system_fails_the_pivot_test():
    c, r, g, h = make_problem(22, batch=(3,), T=4, E=2, D=1, O=2, Ti=1, Oi=2)
    c[1] = 0.0
    g = g[..., :0]  # no initial values: system 1 has straight lines free
    _, ok = _device_solve((c, r, g, h), 0)
    assert list(ok) == [1.0, 0.0, 1.0]


# ----------------------------------------------------------------------------- smnn_solve

@pytest.fixture
def lane_statuses(monkeypatch):
    """Route small batches through the device lane path; returns each call's lane status
    ``(B,)`` (copied to the host by this spy, not by the library)."""
    monkeypatch.setattr(config, "LANES_MIN_SYSTEMS", 1)
    calls = []
    real = lane_solve.solve_lanes

    def spy(*args):
        factor, status = real(*args)
        calls.append(status.copy_to_host())
        return factor, status

    monkeypatch.setattr(lane_solve, "solve_lanes", spy)
    return calls


def _tolerance(cond_m):
    # the accurate solve and lstsq are both backward stable: errors ~ eps * cond(A) each
    # (cond(A) = sqrt(cond(M))); 100 covers the dimension factors of blocks this small
    return max(100 * EPS * math.sqrt(cond_m), 1e-13)


def _solve_on_device(problem, **options):
    u = bandsolve.smnn_solve(*(cuda.to_device(np.ascontiguousarray(a)) for a in problem),
                             **options)
    return u.copy_to_host()


CASES = {
    "per-step inputs": dict(),
    "uniform grid, coefficients constant in time": dict(coef_T=1, steps_T=1),
    "coefficients shared by the batch, steps per system": dict(coef_batch=()),
    "two initial steps, every order pinned": dict(Ti=2, Oi=2),
    "one step": dict(T=1, steps_T=0, Ti=1, Oi=2),
    "one rhs and init for all systems": dict(rhs_batch=(1,), init_batch=()),
    "two batch axes, coefficients shared along the second": dict(batch=(2, 3),
                                                                 coef_batch=(2, 1)),
}


@pytest.mark.parametrize("case", list(CASES))
def test_smnn_solve_through_the_lanes_matches_lstsq(lane_statuses, case):
    kw = dict(dict(T=4, batch=(5,)), **CASES[case])
    problem = make_problem(31, E=2, D=2, O=2, **kw)
    before = [a.copy() for a in problem]
    u = _solve_on_device(problem)
    assert len(lane_statuses) == 1, "the lane kernels were not used"
    assert np.all(lane_statuses[0] == CONVERGED), lane_statuses[0]  # no retry needed
    ref, cond = oracle_solve(*problem)
    assert u.shape == ref.shape
    for b in np.ndindex(kw["batch"]):
        errors = order_errors(u[b], ref[b])
        assert max(errors) <= _tolerance(cond[b]), (b, errors, cond[b])
    for a, b in zip(problem, before):
        np.testing.assert_array_equal(a, b)  # inputs never modified


def test_paper_block_size_through_the_lanes(lane_statuses):
    """D = O = E = 3 (n = 9, the CPU benchmarks' shape): the largest generated step code."""
    problem = make_problem(35, batch=(3,), T=3, E=3, D=3, O=3, Ti=1, Oi=2)
    u = _solve_on_device(problem)
    assert lane_statuses and np.all(lane_statuses[0] == CONVERGED)
    ref, cond = oracle_solve(*problem)
    for b in range(3):
        assert max(order_errors(u[b], ref[b])) <= _tolerance(cond[b])


def test_float32_inputs_and_weights(lane_statuses):
    options = dict(weight_equation=0.5, weight_init=3.0, weight_smooth=2.0)
    problem = [a.astype(np.float32) for a in make_problem(32, batch=(4,), T=5, E=1, D=1, O=3)]
    u = _solve_on_device(problem, **options)
    assert u.dtype == np.float32 and lane_statuses
    ref, _ = oracle_solve(*(a.astype(np.float64) for a in problem), **options)
    for b in range(4):
        # computed in float64 from the float32 inputs: only the final rounding to float32
        assert max(order_errors(u[b], ref[b])) <= 4 * np.finfo(np.float32).eps


def test_ill_conditioned_lane_is_retried_sequentially(lane_statuses):
    """The CPU lanes' case (tests/test_lanes.py): O = 4, cond(A) 1.5e4 .. 1.4e7 pass the
    pivot test and are refined in the lanes; h = 0.002 (cond(A) 1.7e8) fails it and is
    factored again by the block kernels' row-QR fallback and solved from zero; every
    system ends within the backward-stable bound of the 60-digit solution."""
    c, r, g, h = small_step_batch()
    B = c.shape[0]
    u = _solve_on_device((c, r, g, h), check=True)
    retried = [b for b in range(B) if lane_statuses[0][b] != CONVERGED]
    # h = 0.002 (cond(M) 3e16 > 1/eps) cannot pass the pivot test; h = 0.5, 0.05 and
    # 0.02 converge in the lanes. h = 0.01 and 0.005 (cond(M) up to 2e14) sit near the
    # first correction's limit (1e-4), where rounding decides: for h = 0.005 the CPU lanes
    # (FMA) measured 1.3e-5, the simulator (no FMA) 2.5e-4 (retried).
    assert 5 in retried and not set(retried) & {0, 1, 2, 6, 7}, retried
    for b in range(B):
        ref = exact_solution(c[b], r[b], g[b], h[b])
        errors = order_errors(u[b], ref.x)
        # backward-stable least squares: ~eps * cond(A); 100 for the dimension factors
        assert max(errors) <= 100 * EPS * ref.cond, (b, errors, ref.cond)


@pytest.mark.parametrize("check", [True, False])
def test_check_true_skips_the_retry_path_when_every_lane_converged(lane_statuses,
                                                                    monkeypatch, check):
    """``check=True`` synchronises anyway: it reads the lanes' status and launches none of
    the retry path's kernels where every lane converged; ``check=False`` never
    synchronises, so the retry path is launched (and does nothing). Same answers."""
    from bandsolve.gpu import driver

    retries = []
    real = driver._retry_lanes
    monkeypatch.setattr(driver, "_retry_lanes",
                        lambda *args: retries.append(1) or real(*args))
    problem = make_problem(34, batch=(5,), T=4, E=2, D=2, O=2)
    u = _solve_on_device(problem, check=check)
    assert lane_statuses and np.all(lane_statuses[0] == CONVERGED)
    assert retries == ([] if check else [1])
    ref, cond = oracle_solve(*problem)
    for b in range(5):
        assert max(order_errors(u[b], ref[b])) <= _tolerance(cond[b])


def test_rank_deficient_lane_is_named(lane_statuses):
    """System 3 has zero coefficients and no initial values: its straight lines are free."""
    c, r, g, h = make_problem(33, batch=(5,), T=5, E=2, D=1, O=2, Ti=1, Oi=2)
    c[3] = 0.0
    g = np.ascontiguousarray(g[..., :0])  # no initial values
    c[:, 0] += 1.0  # keep the others well posed without initial values
    with pytest.raises(bandsolve.FactorizationError, match=r"batch index \(3,\)"):
        _solve_on_device((c, r, g, h), check=True)
    u = _solve_on_device((c, r, g, h))
    assert np.all(np.isnan(u[3]))
    keep = np.array([0, 1, 2, 4])
    assert np.all(np.isfinite(u[keep]))
    ref, cond = oracle_solve(c[keep], r[keep], g[keep], h[keep])
    for k, b in enumerate(keep):
        assert max(order_errors(u[b], ref[k])) <= _tolerance(cond[k])


@pytest.mark.parametrize("case", ["per-step", "coefficients constant in time",
                                  "ill-conditioned system retried"])
def test_vjp_through_the_lanes_matches_finite_differences(lane_statuses, monkeypatch, case):
    """``smnn_solve_vjp`` keeps the lane factor and solves ``M y = ubar`` in the lanes
    (a lane that failed is solved with its sequential factor); the gradient sums are the
    thread kernels'. Checked against finite differences of the lstsq oracle."""
    kw = dict(coef_T=1, steps_T=1) if case == "coefficients constant in time" else {}
    ill = case == "ill-conditioned system retried"
    problem = list(make_problem(34, batch=(5,), T=8 if ill else 5, E=1 if ill else 2, D=1,
                                O=4 if ill else 2, Ti=1, Oi=2, **kw))
    if ill:  # small steps at O = 4 (cond(A) ~1e8): system 2 fails the pivot test
        problem[3] = problem[3].copy()
        problem[3][2] = 2e-3
    plain = []
    real_plain = lane_solve.DeviceLaneFactor.solve_plain

    def plain_spy(self, device, extra, y):
        status = real_plain(self, device, extra, y)
        plain.append(status.copy_to_host())
        return status

    monkeypatch.setattr(lane_solve.DeviceLaneFactor, "solve_plain", plain_spy)
    dev = [cuda.to_device(np.ascontiguousarray(a)) for a in problem]
    u, vjp = bandsolve.smnn_solve_vjp(*dev, check=True)
    assert len(lane_statuses) == 1, "the lane kernels were not used"
    rng = np.random.default_rng(9)
    ubar = rng.standard_normal(u.shape)
    grads = [gr.copy_to_host() for gr in vjp(cuda.to_device(ubar))]
    assert len(plain) == 1 and len(lane_statuses) == 1  # no second factorisation
    retried = [b for b in range(5) if plain[0][b] != CONVERGED]
    assert retried == ([2] if ill else []), (retried, lane_statuses)
    # the retried system's gradients are checked finite only: M y = ubar has cond(M) =
    # cond(A)^2 ~3e16 there, and both backends' second solve is off the finite
    # differences (measured: 0.9% device, 7.5% host; a known limit)
    check_vjp_against_fd(problem, grads, ubar, rng, finite_only=2 if ill else None)


def test_which_problems_take_the_lanes(lane_statuses):
    """Shared left-hand sides, central smoothness and blocks above ``codegen.MAX_BLOCK``
    stay on the one-thread kernels (and are still solved: against lstsq)."""
    shared = make_problem(36, batch=(4,), T=4, E=1, D=1, O=2, coef_batch=(1,),
                          steps_batch=(1,))
    central = make_problem(37, batch=(4,), T=5, E=1, D=1, O=3)
    large = make_problem(38, batch=(2,), T=3, E=1, D=4, O=3)  # n = 12
    for problem, options in ((shared, {}), (central, dict(central_smoothness=True)),
                             (large, {})):
        u = _solve_on_device(problem, **options)
        ref, cond = oracle_solve(*problem, **options)
        for idx in np.ndindex(ref.shape[:-3]):
            assert max(order_errors(u[idx], ref[idx])) <= _tolerance(cond[idx])
    assert lane_statuses == []
    config.LANES_MIN_SYSTEMS = 5  # (the fixture restores it)
    _solve_on_device(make_problem(39, batch=(4,), T=4, E=1, D=1, O=2))
    assert lane_statuses == []  # below the size threshold

"""The CUDA backend against the CPU backend and independent references.

Not collected by a plain ``pytest`` run (the file name does not match ``test_*.py``): the
Numba CUDA simulator must be switched on before numba's first import, which other test
modules already did. ``tests/test_gpu.py`` runs this file in a subprocess with
``NUMBA_ENABLE_CUDASIM=1``; ``tools/gpu_check.sh`` runs it on a real GPU (no simulator).

Shapes are tiny (T <= 8, B <= 6, n <= 6): the simulator runs every CUDA thread as a Python
thread. ``config.MIN_CHUNK`` is lowered so that the parallel-in-time solver cuts even these
short sequences into several interiors and separators.

Tolerances: the device and the CPU backends both compute in float64 whatever the inputs'
dtype, so each is within ``solve_rtol`` (eps * cond(M), see helpers.py, with the
inputs' eps: a loose bound for float32) of the float64 least-squares oracle; two such
results are within twice that of each other. Gradients carry the error of
two solves and of products built from them: 10x (as in test_grad.py).
"""

import numpy as np
import pytest
from numba import cuda

import bandsolve
from accuracy_cases import Case
from bandsolve.gpu import config, refine
from bandsolve.gpu import partitioned as gpu_partitioned
from exact import exact_solution, order_errors

from helpers import (
    fd4,
    make_full_rank_equations,
    make_problem,
    oracle_solve,
    solve_rtol,
)

ALGORITHMS = ["thread", "block", "partitioned"]
DTYPES = [np.float64, np.float32]
NAMES = ("coefficients", "rhs", "init", "steps")


DEFAULT_MIN_CHUNK = config.MIN_CHUNK


@pytest.fixture(autouse=True)
def small_chunks(monkeypatch):
    monkeypatch.setattr(config, "MIN_CHUNK", 1)


def to_device(*arrays):
    return [cuda.to_device(np.ascontiguousarray(a)) for a in arrays]


def to_host(array):
    return array.copy_to_host()


def kw(central, **extra):
    return dict(central_smoothness=central, weight_equation=1.3, weight_init=0.8,
                weight_smooth=1.1, **extra)


def assert_rel_close(actual, expected, rtol, what):
    actual = np.asarray(actual, dtype=np.float64)
    expected = np.asarray(expected, dtype=np.float64)
    assert actual.shape == expected.shape, (what, actual.shape, expected.shape)
    assert np.all(np.isfinite(actual)), f"{what} not finite"
    err = np.linalg.norm(actual - expected)
    ref = max(np.linalg.norm(expected), 1e-300)
    assert err <= rtol * ref, f"{what}: relative error {err / ref:.3e} > {rtol:.3e}"


# ----------------------------------------------------------------------------- forward + VJP

@pytest.mark.parametrize("algorithm", ALGORITHMS)
@pytest.mark.parametrize("central", [False, True])
@pytest.mark.parametrize("dtype", DTYPES)
def test_solve_and_vjp_match_cpu_and_dense(dtype, central, algorithm):
    problem = make_problem(10, batch=(2,), T=8, E=2, D=2, O=3, Ti=1, Oi=2, dtype=dtype)
    u_ref, cond = oracle_solve(*problem, **kw(central))
    u_cpu, vjp_cpu = bandsolve.smnn_solve_vjp(*problem, **kw(central))
    device_inputs = to_device(*problem)
    u, vjp = bandsolve.smnn_solve_vjp(*device_inputs, **kw(central), algorithm=algorithm)
    assert type(u) is type(device_inputs[0])  # a device array in, a device array out
    assert u.shape == u_cpu.shape and u.dtype == dtype
    rtol = solve_rtol(dtype, cond)
    assert_rel_close(to_host(u), u_ref, rtol, "u vs dense")
    assert_rel_close(to_host(u), u_cpu, 2 * rtol, "u vs CPU")
    ubar = np.random.default_rng(11).standard_normal(u.shape).astype(dtype)
    grads = vjp(cuda.to_device(ubar))
    for name, g, g_cpu, x in zip(NAMES, grads, vjp_cpu(ubar), problem):
        assert g.shape == x.shape and g.dtype == dtype, name
        assert_rel_close(to_host(g), g_cpu, 10 * 2 * rtol, f"{name}_bar vs CPU")


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_float32_inputs_are_solved_in_float64(algorithm):
    """float32 inputs where float32 normal equations cannot work: small steps make
    cond(M) = cond(A)^2 far above 1/eps32 ~ 1.7e7 (checked below), so a float32 factor
    would have a relative error of order one or fail. The device computes in float64, so
    its error is that of float32 rounding of the result (~6e-8) plus eps64 * cond(M)."""
    problem = make_problem(31, batch=(2,), T=8, E=1, D=1, O=3, Ti=1, Oi=2, dtype=np.float32)
    c, r, g, h = problem
    h = np.full_like(h, 1e-3)  # cond(A) grows like h^-2 with three orders
    u_ref, cond = oracle_solve(c, r, g, h, **kw(False))
    assert np.min(cond) > 10 / np.finfo(np.float32).eps  # float32 Cholesky: error > 10
    u = bandsolve.smnn_solve(*to_device(c, r, g, h), **kw(False), algorithm=algorithm)
    assert u.dtype == np.float32
    rtol = 4 * np.finfo(np.float32).eps + solve_rtol(np.float64, np.max(cond))
    assert_rel_close(to_host(u), u_ref, rtol, "float32 u vs float64 dense")


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_float64_refinement_reaches_the_accuracy_contract(algorithm, monkeypatch):
    """cond(A) ~ 2e6 (five orders, small steps): a float64 Cholesky solve of the normal
    equations alone misses the contract err[o] <= max(100 eps cond(A), 1e-13) by ~100x
    (checked with the refinement switched off); the device's row-residual refinement
    meets it. Reference: the 60-digit solution of tests/exact.py, per derivative order."""
    case = Case(T=8, O=5, h=0.03, seed=3)
    c, r, g, h = case.arrays()
    exact = exact_solution(c, r, g, h, **case.exact_kw)
    bound = max(100 * np.finfo(np.float64).eps * exact.cond, 1e-13)
    assert exact.cond > 1e6
    u = bandsolve.smnn_solve(*to_device(c, r, g, h), **case.weights, algorithm=algorithm)
    assert max(order_errors(to_host(u), exact.x)) <= bound
    monkeypatch.setattr(refine, "MAX_REFINE_STEPS", 0)
    u = bandsolve.smnn_solve(*to_device(c, r, g, h), **case.weights, algorithm=algorithm)
    assert max(order_errors(to_host(u), exact.x)) > 10 * bound


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_vjp_second_solve_is_refined_too(algorithm, monkeypatch):
    """The VJP's y = M^{-1} ubar at cond(A) ~ 2e6: init_bar = wi^2 y at the pinned entries
    exposes y itself, so it must meet the solution's contract, 100 eps cond(A), against
    the host's (refined) VJP; with the device's refinement off it misses by far.
    (coefficients_bar and rhs_bar are left out: they multiply y by the equations'
    residual c.x - r, which cancels to rounding level, so even two accurate solvers agree
    on them only to ~1e-6 here.)"""
    case = Case(T=8, O=5, h=0.03, seed=3)
    c, r, g, h = case.arrays()
    exact = exact_solution(c, r, g, h, **case.exact_kw)
    tol = 100 * np.finfo(np.float64).eps * exact.cond
    ubar = np.random.default_rng(5).standard_normal((8, 1, 5))
    _, vjp_host = bandsolve.smnn_solve_vjp(c, r, g, h, **case.weights)
    init_bar_host = vjp_host(ubar)[2]

    def device_init_bar():
        _, vjp = bandsolve.smnn_solve_vjp(*to_device(c, r, g, h), **case.weights,
                                          algorithm=algorithm)
        return to_host(vjp(cuda.to_device(ubar))[2])

    assert_rel_close(device_init_bar(), init_bar_host, tol, "init_bar = wi^2 y")
    monkeypatch.setattr(refine, "MAX_REFINE_STEPS", 0)
    err = np.linalg.norm(device_init_bar() - init_bar_host) / np.linalg.norm(init_bar_host)
    assert err > 10 * tol, err


def steps_taken(factorization):
    """Refinement corrections each right-hand side took in the factorisation's last solve
    (or VJP second solve)."""
    return to_host(factorization._refinement_steps).tolist()


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_well_conditioned_refinement_stops_after_one_step(algorithm):
    """cond(M) < 1e3: the first correction is at rounding level (its square below eps,
    the host's rule), so every system stops after one step, in the solve and in the
    VJP's second solve, and later steps' kernels do nothing for it."""
    problem = make_problem(12, batch=(2,), T=8, E=2, D=2, O=3, Ti=1, Oi=2)
    u_ref, cond = oracle_solve(*problem, **kw(False))
    assert np.max(cond) < 1e3
    dc, dr, dg, dh = to_device(*problem)
    factor = bandsolve.smnn_factor(dc, dh, init_shape=(1, 2), **kw(False),
                                   algorithm=algorithm)
    u, vjp = factor.solve_vjp(dr, dg)
    assert steps_taken(factor) == [1, 1]
    assert_rel_close(to_host(u), u_ref, solve_rtol(np.float64, cond), "u vs dense")
    vjp(cuda.to_device(np.ones(u.shape)))
    assert steps_taken(factor) == [1, 1]


def test_refinement_runs_until_converged(monkeypatch):
    """O = 5, h = 0.02: cond(A) = 1.1e7, cond(M) ~ 1e14. The parallel-in-time Cholesky
    factor passes the relative pivot test, so it is kept, and it contracts the error by
    only ~1e-2 per step: by the host's rule refinement needs three steps. Measured under
    the simulator against the 60-digit reference, worst order: 1.8e-13 after the fixed
    two steps the device used to take, 1.1e-15 after the three it takes now. Asserted:
    the contract 100 eps cond(A) (the floor of refinement is ~eps cond(A), times the
    small constant of the row residual), three or more steps, and that stopping after
    two is at least 10x worse."""
    case = Case(T=8, O=5, h=0.02, seed=3)
    c, r, g, h = case.arrays()
    exact = exact_solution(c, r, g, h, **case.exact_kw)
    assert 1e7 < exact.cond < 1e8

    def solve():
        factor = bandsolve.smnn_factor(*to_device(c, h), init_shape=(g.shape[0], g.shape[2]),
                                       **case.weights, algorithm="partitioned")
        u = to_host(factor.solve(*to_device(r, g)))
        assert factor.status.to_host() == 0
        assert to_host(factor._partition[3]).tolist() == [0]  # the partitioned factor
        return max(order_errors(u, exact.x)), steps_taken(factor)[0]

    err, steps = solve()
    assert steps >= 3
    assert err <= 100 * np.finfo(np.float64).eps * exact.cond
    monkeypatch.setattr(refine, "MAX_REFINE_STEPS", 2)
    err_two, steps_two = solve()
    assert steps_two == 2 and err_two > 10 * err, (err_two, err)


@pytest.mark.parametrize("algorithm", ["thread", "block"])
def test_diverging_refinement_fails_only_its_system(algorithm):
    """System 1 gets the factor of M/3 (its host factor divided by sqrt 3, through
    from_lower): each refinement step x += 3 M^{-1} (b - M x) multiplies its error by
    -2, so it never converges: after MAX_REFINE_STEPS it is NaN with status -1 and
    check() names it. System 0 (its exact factor) is solved, in one step."""
    c, r, g, h = make_problem(13, batch=(2,), T=6, E=2, D=1, O=3, Ti=1, Oi=2)
    u_ref, cond = oracle_solve(c, r, g, h)
    lower = bandsolve.smnn_factor(c, h, init_shape=(1, 2)).lower.copy()
    lower[1] /= np.sqrt(3.0)
    dc, dr, dg, dh = to_device(c, r, g, h)
    factor = bandsolve.SMNNFactorization.from_lower(cuda.to_device(lower), dc, dh,
                                                    init_shape=(1, 2), algorithm=algorithm)
    u = to_host(factor.solve(dr, dg))
    assert factor.status.to_host().tolist() == [0, -1]
    assert steps_taken(factor) == [1, refine.MAX_REFINE_STEPS]
    assert np.all(np.isnan(u[1]))
    assert_rel_close(u[0], u_ref[0], solve_rtol(np.float64, cond), "u[0] vs dense")
    with pytest.raises(bandsolve.FactorizationError, match=r"\(1,\)"):
        factor.check()


@pytest.mark.filterwarnings("ignore:invalid value:RuntimeWarning")  # planted NaN
@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_failed_right_hand_side_leaves_its_factor_s_other_one_alone(algorithm):
    """Two right-hand sides share one factor; the second has a NaN in rhs, so its
    refinement fails at the first step (a correction that is not finite): its u is NaN
    and the factor's status -1 (as check=False promises), while the first is solved, in
    one step. The status is written only after the last step, and the parallel-in-time
    retry (which refactors the shared factor sequentially and starts the failed one
    again) leaves the converged one as it was."""
    c, r, g, h = make_problem(14, batch=(2,), T=6, E=2, D=1, O=3, Ti=1, Oi=2,
                              coef_batch=(), steps_batch=())
    u_ref, cond = oracle_solve(c, r[:1], g[:1], h)
    r[1, 3, 1] = np.nan
    dc, dr, dg, dh = to_device(c, r, g, h)
    factor = bandsolve.smnn_factor(dc, dh, init_shape=(1, 2), algorithm=algorithm)
    u = to_host(factor.solve(dr, dg))
    assert steps_taken(factor)[0] == 1
    assert np.all(np.isnan(u[1]))
    assert_rel_close(u[:1], u_ref, solve_rtol(np.float64, cond), "u[0] vs dense")
    assert factor.status.to_host().tolist() == -1
    if algorithm == "partitioned":  # the retry ran and refactored the shared factor
        assert to_host(factor._partition[3]).tolist() == [1]


def test_partitioned_retries_ill_conditioned_systems_sequentially():
    """T = 32 in five interiors. System 0 (O = 5, h = 0.01, cond(A) 2e8) fails the
    relative pivot test of the parallel-in-time factorisation; it is refactored by the
    sequential block kernels (whose QR fallback takes it) and meets the contract
    against the 60-digit reference, status 0. Before: NaN with status -1 (refinement
    did not converge); the same problem at h = 0.006 gave status 24. System 1
    (h = 0.1) keeps its partitioned factor."""
    cases = [Case(T=32, O=5, h=0.01, seed=3), Case(T=32, O=5, h=0.1, seed=3)]
    arrays = [case.arrays() for case in cases]
    exact = [exact_solution(*a, **case.exact_kw) for a, case in zip(arrays, cases)]
    c, r, g, h = (np.stack(parts) for parts in zip(*arrays))
    factor = bandsolve.smnn_factor(*to_device(c, h), init_shape=(g.shape[1], g.shape[3]),
                                   **cases[0].weights, algorithm="partitioned")
    assert factor._partition[0] == 5
    u = to_host(factor.solve(*to_device(r, g)))
    assert factor.status.to_host().tolist() == [0, 0]
    assert to_host(factor._partition[3]).tolist() == [1, 0]
    for b in range(2):
        bound = max(100 * np.finfo(np.float64).eps * exact[b].cond, 1e-13)
        assert max(order_errors(u[b], exact[b].x)) <= bound, b


def test_partitioned_retries_where_refinement_does_not_converge(monkeypatch):
    """The parallel-in-time pivot test switched off (as before it existed): at O = 5,
    h = 0.006 (cond(A) 1.4e9) the partitioned factor is kept and its refinement does not
    converge (measured without the retry: NaN, status -1 after two steps and after six).
    The retry refactors the system with the sequential kernels and solves it again from zero:
    status 0 and the contract, in the solve and in the VJP's second solve (init_bar =
    wi^2 y exposes y, as in test_vjp_second_solve_is_refined_too)."""
    monkeypatch.setattr(gpu_partitioned, "CHOLESKY_PIVOT_TOL", 0.0)
    case = Case(T=8, O=5, h=0.006, seed=3)
    c, r, g, h = case.arrays()
    exact = exact_solution(c, r, g, h, **case.exact_kw)
    tol = 100 * np.finfo(np.float64).eps * exact.cond
    dc, dr, dg, dh = to_device(c, r, g, h)

    def factor():
        f = bandsolve.smnn_factor(dc, dh, init_shape=(g.shape[0], g.shape[2]),
                                  **case.weights, algorithm="partitioned")
        assert to_host(f._partition[3]).tolist() == [0]  # the pivot tests passed
        return f

    f = factor()
    u = to_host(f.solve(dr, dg))
    assert f.status.to_host() == 0 and to_host(f._partition[3]).tolist() == [1]
    assert max(order_errors(u, exact.x)) <= tol
    ubar = np.random.default_rng(5).standard_normal(u.shape)
    host = bandsolve.smnn_factor(c, h, init_shape=(g.shape[0], g.shape[2]), **case.weights)
    init_bar_host = host.backward(r, g, exact.x, ubar)[2]
    f = factor()
    grads = f.backward(dr, dg, cuda.to_device(exact.x), cuda.to_device(ubar))
    assert f.status.to_host() == 0 and to_host(f._partition[3]).tolist() == [1]
    assert_rel_close(to_host(grads[2]), init_bar_host, tol, "init_bar = wi^2 y")


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_ill_conditioned_float64_falls_back_to_row_qr(algorithm):
    """cond(A) = 2e10 (O = 5, h = 0.003): the normal equations' cond(M) ~ 5e20 is beyond
    float64, so the block Cholesky kernels' factor is replaced on the device by the QR
    sweep over the rows, and the contract err[o] <= 100 eps cond(A) holds (reference:
    tests/exact.py). The parallel-in-time factorisation fails the relative pivot test
    there and refactors the system with the sequential kernels and their QR fallback
    (before that test it failed the system: NaN, status 6)."""
    case = Case(T=8, O=5, h=0.003, seed=3)
    c, r, g, h = case.arrays()
    exact = exact_solution(c, r, g, h, **case.exact_kw)
    assert exact.cond > 1e10
    factor = bandsolve.smnn_factor(*to_device(c, h), init_shape=(g.shape[0], g.shape[2]),
                                   **case.weights, algorithm=algorithm)
    u = to_host(factor.solve(*to_device(r, g)))
    assert factor.status.to_host() == 0
    if algorithm == "partitioned":
        assert to_host(factor._partition[3]).tolist() == [1]  # refactored sequentially
    assert max(order_errors(u, exact.x)) <= 100 * np.finfo(np.float64).eps * exact.cond


@pytest.mark.parametrize("algorithm", ALGORITHMS)
@pytest.mark.parametrize("O, h, T", [(5, 0.01, 8), (5, 0.006, 8), (5, 0.004, 8),
                                     (6, 0.02, 8), (5, 0.005, 16)])
def test_ill_conditioned_systems_are_accurate(algorithm, O, h, T):
    """cond(A) 2e8 to 7e9: every algorithm meets the contract (against the 60-digit
    reference) with status 0. Before the parallel-in-time factorisation had the relative
    pivot test and the sequential retry, it failed all but the first of these visibly
    (NaN, status -1 or t + 1), and before the divergence test its O=5, h=0.006 solution
    was 510% wrong with status 0."""
    case = Case(T=T, O=O, h=h, seed=3)
    c, r, g, h_ = case.arrays()
    exact = exact_solution(c, r, g, h_, **case.exact_kw)
    factor = bandsolve.smnn_factor(*to_device(c, h_), init_shape=(g.shape[0], g.shape[2]),
                                   **case.weights, algorithm=algorithm)
    u = to_host(factor.solve(*to_device(r, g)))
    assert factor.status.to_host() == 0
    assert max(order_errors(u, exact.x)) <= 100 * np.finfo(np.float64).eps * exact.cond


@pytest.mark.parametrize("algorithm", ALGORITHMS)
@pytest.mark.parametrize("dtype", DTYPES)
def test_rank_deficient_rows_fail_on_the_device(algorithm, dtype):
    """Zero coefficients and only u[0] given: the higher orders are free (u = a + b t + ...),
    so A is rank deficient although every Cholesky pivot of M may come out positive from
    rounding; the relative pivot test and the QR sweep's rank test must fail the system,
    named by its batch index and the host's time step, while its healthy neighbour is
    solved. The parallel-in-time factorisation hands the system to the sequential
    kernels, whose QR sweep names the step."""
    c, r, g, h = make_problem(41, batch=(2,), T=8, E=1, D=1, O=3, Ti=1, Oi=1, dtype=dtype)
    c[1] = 0.0
    with pytest.raises(bandsolve.FactorizationError) as host_error:
        bandsolve.smnn_solve(c, r, g, h)
    factor = bandsolve.smnn_factor(*to_device(c, h), init_shape=(1, 1), algorithm=algorithm)
    status = factor.status.to_host()
    assert status[0] == 0 and status[1] != 0, status
    u = to_host(factor.solve(*to_device(r, g)))
    assert np.all(np.isnan(u[1])) and np.all(np.isfinite(u[0]))
    with pytest.raises(bandsolve.FactorizationError, match=r"\(1,\)"):
        factor.check()
    with pytest.raises(bandsolve.FactorizationError) as error:
        bandsolve.smnn_solve(*to_device(c, r, g, h), algorithm=algorithm, check=True)
    assert error.value.batch_indices == host_error.value.batch_indices == [(1,)]
    assert error.value.steps == host_error.value.steps


@pytest.mark.parametrize("central", [False, True])
def test_vjp_matches_finite_differences_of_dense_oracle(central):
    """Independent of both backends: 4th-order differences of the lstsq oracle."""
    problem = make_problem(20, T=5, E=2, D=1, O=3, Ti=1, Oi=2)
    ubar = np.random.default_rng(21).standard_normal((5, 1, 3))

    def loss(i):
        def f(x):
            args = list(problem)
            args[i] = x
            return float(np.sum(ubar * oracle_solve(*args, **kw(central))[0]))
        return f

    fds = [fd4(loss(i), problem[i], 1e-3) for i in range(4)]
    for algorithm in ALGORITHMS:
        _, vjp = bandsolve.smnn_solve_vjp(*to_device(*problem), **kw(central),
                                          algorithm=algorithm)
        for name, g, fd in zip(NAMES, vjp(cuda.to_device(ubar)), fds):
            # truncation ~1e-12 and rounding ~1e-10 of the differences (test_grad.py)
            assert_rel_close(to_host(g), fd, 1e-6, f"{algorithm} {name}_bar vs FD")


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_lhs_batch_broadcast_and_step_length_one(algorithm):
    """The Lorenz shape in miniature: left-hand-side batch (1, 3) against right-hand-side
    batch (2, 3); coefficients and steps given once for all time steps."""
    problem = make_problem(30, batch=(2, 3), T=7, E=2, D=1, O=3, Ti=1, Oi=2,
                           coef_batch=(1, 3), steps_batch=(1, 3), coef_T=1, steps_T=1)
    u_ref, cond = oracle_solve(*problem, **kw(False))
    u_cpu, vjp_cpu = bandsolve.smnn_solve_vjp(*problem, **kw(False))
    u, vjp = bandsolve.smnn_solve_vjp(*to_device(*problem), **kw(False), algorithm=algorithm)
    rtol = solve_rtol(np.float64, cond)
    assert_rel_close(to_host(u), u_ref, rtol, "u vs dense")
    ubar = np.random.default_rng(31).standard_normal(u.shape)
    for name, g, g_cpu in zip(NAMES, vjp(cuda.to_device(ubar)), vjp_cpu(ubar)):
        assert_rel_close(to_host(g), g_cpu, 20 * rtol, f"{name}_bar vs CPU")


def test_ubar_broadcasts_and_mixed_dtypes_promote():
    c, r, g, h = make_problem(40, batch=(2,), T=5, E=2, D=1, O=3, Ti=1, Oi=2)
    c32 = c.astype(np.float32)
    u_cpu, vjp_cpu = bandsolve.smnn_solve_vjp(c32, r, g, h)
    u, vjp = bandsolve.smnn_solve_vjp(*to_device(c32, r, g, h))
    assert u.dtype == np.float64
    assert_rel_close(to_host(u), u_cpu, 1e-12, "u")
    ubar = np.random.default_rng(41).standard_normal((5, 1, 3))  # broadcast over the batch
    for name, a, b in zip(NAMES, vjp(cuda.to_device(ubar)), vjp_cpu(ubar)):
        assert a.dtype == b.dtype, name  # float32 coefficients get a float32 gradient
        assert_rel_close(to_host(a), b, 1e-6 if a.dtype == np.float32 else 1e-10, name)


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_one_step_without_initial_values(algorithm):
    """T = 1 (no steps are read; steps_bar is zero) and no initial values (init_bar empty):
    full-rank equations make the system SPD on their own."""
    c = make_full_rank_equations(50, batch=(3,), T=1, D=2, O=2)
    r = np.random.default_rng(51).standard_normal((3, 1, c.shape[-3]))
    g = np.zeros((0, 2, 0))
    h = np.zeros((3, 0))
    u_cpu, vjp_cpu = bandsolve.smnn_solve_vjp(c, r, g, h)
    u, vjp = bandsolve.smnn_solve_vjp(*to_device(c, r, g, h), algorithm=algorithm)
    assert_rel_close(to_host(u), u_cpu, 1e-12, "u")
    ubar = np.ones(u.shape)
    grads = vjp(cuda.to_device(ubar))
    for name, a, b, x in zip(NAMES, grads, vjp_cpu(ubar), (c, r, g, h)):
        assert a.shape == x.shape, name
        if x.size:
            assert_rel_close(to_host(a), b, 1e-10, name)


@pytest.mark.parametrize("central", [False, True])
def test_parallel_in_time_batch_of_one(central):
    """B = 1, T = 16: the situation the parallel-in-time solver is for; at least three
    interiors, checked against the dense oracle and the sequential device kernel."""
    problem = make_problem(60, T=16, E=1, D=1, O=3, Ti=1, Oi=2)
    factorization = bandsolve.smnn_factor(*to_device(problem[0], problem[3]), init_shape=(1, 2),
                                          **kw(central))
    assert factorization.algorithm == "partitioned"  # chosen automatically: B = 1
    assert factorization._partition[0] >= 3
    u = factorization.solve(*to_device(problem[1], problem[2]))
    u_ref, cond = oracle_solve(*problem, **kw(central))
    assert_rel_close(to_host(u), u_ref, solve_rtol(np.float64, cond), "u vs dense")
    u_seq = bandsolve.smnn_solve(*to_device(*problem), **kw(central), algorithm="thread")
    assert_rel_close(to_host(u), to_host(u_seq), 2 * solve_rtol(np.float64, cond), "u vs thread")


# ----------------------------------------------------------------------------- factorisation

@pytest.mark.parametrize("algorithm", ["thread", "block"])
@pytest.mark.parametrize("central", [False, True])
def test_factor_lower_from_lower_and_backward(central, algorithm):
    c, r, g, h = make_problem(70, batch=(2,), T=6, E=2, D=1, O=3, Ti=1, Oi=2)
    host = bandsolve.smnn_factor(c, h, init_shape=(1, 2), **kw(central))
    dc, dr, dg, dh = to_device(c, r, g, h)
    factorization = bandsolve.smnn_factor(dc, dh, init_shape=(1, 2), **kw(central),
                                          algorithm=algorithm)
    assert factorization.algorithm == algorithm
    lower = factorization.lower  # the block Cholesky factor is unique
    assert lower.shape == host.lower.shape
    assert_rel_close(to_host(lower), host.lower, 1e-12, "lower")
    rebuilt = bandsolve.SMNNFactorization.from_lower(lower, dc, dh, init_shape=(1, 2),
                                                     **kw(central))
    u = rebuilt.solve(dr, dg)
    assert_rel_close(to_host(u), host.solve(r, g), 1e-12, "u from_lower")
    ubar = np.random.default_rng(71).standard_normal(u.shape)
    grads = factorization.backward(dr, dg, u, cuda.to_device(ubar))
    for name, a, b in zip(NAMES, grads, host.backward(r, g, host.solve(r, g), ubar)):
        assert_rel_close(to_host(a), b, 1e-10, name)


def test_parallel_in_time_factor_has_no_lower():
    c, _, _, h = make_problem(80, T=8, E=2, D=1, O=3, Ti=1, Oi=2)
    factorization = bandsolve.smnn_factor(*to_device(c, h), init_shape=(1, 2),
                                          algorithm="partitioned")
    with pytest.raises(ValueError, match="parallel-in-time"):
        factorization.lower


# ----------------------------------------------------------------------------- failure

@pytest.mark.filterwarnings("ignore:overflow:RuntimeWarning")  # planted (simulator only)
@pytest.mark.filterwarnings("ignore:invalid value:RuntimeWarning")
@pytest.mark.parametrize("algorithm", ALGORITHMS)
@pytest.mark.parametrize("dtype", DTYPES)
def test_failed_system_is_nan_and_named_by_the_status(dtype, algorithm):
    """Element 1 of a batch of 3 overflows at step 4 (its normal matrix holds Inf there):
    no exception and no synchronisation by default; its solution is NaN, the others are
    right; the status names it (and step 4), as the host path's exception does."""
    c, r, g, h = make_problem(90, batch=(3,), T=8, E=2, D=1, O=3, Ti=1, Oi=2, dtype=dtype)
    c[1, 4] *= 1e200 if dtype == np.float64 else 1e30
    with pytest.raises(bandsolve.FactorizationError) as host_error:
        bandsolve.smnn_solve(c, r, g, h)
    factorization = bandsolve.smnn_factor(*to_device(c, h), init_shape=(1, 2),
                                          algorithm=algorithm)
    u = to_host(factorization.solve(*to_device(r, g)))
    assert np.all(np.isnan(u[1]))
    good = [0, 2]
    u_ref, cond = oracle_solve(c[good], r[good], g[good], h[good])
    assert_rel_close(u[good], u_ref, solve_rtol(dtype, cond), "healthy systems")
    assert factorization.status.failed() == [(1,)]
    assert to_host(factorization.status.info).tolist() == [0, 5, 0]
    with pytest.raises(bandsolve.FactorizationError) as error:
        factorization.check()
    assert error.value.batch_indices == host_error.value.batch_indices == [(1,)]
    assert error.value.steps == host_error.value.steps == [4]
    with pytest.raises(bandsolve.FactorizationError, match="1 of 3 systems"):
        bandsolve.smnn_solve(*to_device(c, r, g, h), algorithm=algorithm, check=True)


# ----------------------------------------------------------------------------- bad input

def _message(call):
    with pytest.raises((ValueError, TypeError)) as info:
        call()
    return type(info.value), str(info.value)


BAD_INPUTS = [
    ("rhs_wrong_E", lambda p: p.__setitem__(1, p[1][..., :1])),
    ("init_too_many_orders", lambda p: p.__setitem__(2, np.zeros((1, 1, 4)))),
    ("steps_wrong_length", lambda p: p.__setitem__(3, p[3][..., :2])),
    ("coefficients_rank", lambda p: p.__setitem__(0, p[0][0, 0])),
    ("integer_rhs", lambda p: p.__setitem__(1, p[1].astype(np.int64))),
    ("batch_mismatch", lambda p: p.__setitem__(1, np.zeros((3,) + p[1].shape[1:]))),
]


@pytest.mark.parametrize("case", BAD_INPUTS, ids=lambda c: c[0])
def test_bad_input_same_error_as_host(case):
    """Shape, rank and dtype errors come from the metadata, with the host's message."""
    _, modify = case
    problem = list(make_problem(100, batch=(2,), T=5, E=2, D=1, O=3, Ti=1, Oi=2))
    modify(problem)
    expected = _message(lambda: bandsolve.smnn_solve(*problem))
    assert _message(lambda: bandsolve.smnn_solve(*to_device(*problem))) == expected


@pytest.mark.filterwarnings("ignore:invalid value:RuntimeWarning")  # planted NaN/Inf
@pytest.mark.parametrize("name, index, value", [("rhs", 1, np.nan), ("steps", 3, -0.5),
                                                ("coefficients", 0, np.inf),
                                                ("steps", 3, np.nan)])
def test_value_checks_are_opt_in(name, index, value):
    """NaN/Inf inputs and non-positive steps: with check=True the device path raises the
    host path's ValueError; by default it does not look (that would synchronise)."""
    problem = list(make_problem(110, batch=(2,), T=5, E=2, D=1, O=3, Ti=1, Oi=2))
    bad = problem[index].copy()
    bad.flat[bad.size // 2 + 1] = value
    problem[index] = bad
    expected = _message(lambda: bandsolve.smnn_solve(*problem))
    assert name in expected[1]
    device_inputs = to_device(*problem)
    assert _message(lambda: bandsolve.smnn_solve(*device_inputs, check=True)) == expected
    bandsolve.smnn_solve(*device_inputs)  # no exception without check=True
    if name != "steps":
        with pytest.raises(ValueError, match=name):
            bandsolve.gpu.check_finite(name, device_inputs[index])
    else:
        with pytest.raises(ValueError, match="steps"):
            bandsolve.gpu.check_positive("steps", device_inputs[index])


def test_mixed_host_and_device_inputs_are_a_type_error():
    c, r, g, h = make_problem(120, T=4, E=2, D=1, O=3, Ti=1, Oi=2)
    dc, dr, dg, dh = to_device(c, r, g, h)
    for args in ([dc, r, g, h], [c, dr, dg, dh]):
        with pytest.raises(TypeError, match="host .* device|device .* host"):
            bandsolve.smnn_solve(*args)
    factorization = bandsolve.smnn_factor(dc, dh, init_shape=(1, 2))
    with pytest.raises(TypeError, match="rhs is a host"):
        factorization.solve(r, dg)
    u, vjp = bandsolve.smnn_solve_vjp(dc, dr, dg, dh)
    with pytest.raises(TypeError, match="ubar is a host"):
        vjp(np.ones(u.shape))
    host_factorization = bandsolve.smnn_factor(c, h, init_shape=(1, 2))
    with pytest.raises(TypeError, match="rhs is a device array"):
        host_factorization.solve(dr, g)
    u, vjp = bandsolve.smnn_solve_vjp(c, r, g, h)
    with pytest.raises(TypeError, match="ubar is a device array"):
        vjp(cuda.to_device(np.ones(u.shape)))
    with pytest.raises(TypeError, match="host"):
        bandsolve.smnn_normal_equations(dc, dr, dg, dh)


def test_device_keywords_on_host_inputs():
    problem = make_problem(130, T=4, E=2, D=1, O=3, Ti=1, Oi=2)
    with pytest.raises(TypeError, match="stream"):
        bandsolve.smnn_solve(*problem, stream=cuda.stream())
    with pytest.raises(ValueError, match="algorithm"):
        bandsolve.smnn_solve(*problem, algorithm="thread")
    with pytest.raises(ValueError, match="algorithm must be one of"):
        bandsolve.smnn_solve(*to_device(*problem), algorithm="fastest")


def test_explicit_stream():
    problem = make_problem(140, batch=(2,), T=5, E=2, D=1, O=3, Ti=1, Oi=2)
    stream = cuda.stream()
    u = bandsolve.smnn_solve(*to_device(*problem), stream=stream)
    stream.synchronize()
    assert_rel_close(to_host(u), bandsolve.smnn_solve(*problem), 1e-12, "u")


def test_no_host_transfer_or_synchronisation_by_default(monkeypatch):
    """The default device path (check=False) neither copies to or from the host nor
    synchronises: the forward pass, the VJP and a factorisation's solve."""
    problem = make_problem(150, batch=(2,), T=6, E=2, D=1, O=3, Ti=1, Oi=2)
    device_inputs = to_device(*problem)
    ubar = cuda.to_device(np.ones((2, 6, 1, 3)))

    def forbidden(*args, **kwargs):
        raise AssertionError("host transfer or synchronisation on the device path")

    monkeypatch.setattr(cuda, "to_device", forbidden)
    monkeypatch.setattr(cuda, "synchronize", forbidden)
    monkeypatch.setattr(type(device_inputs[0]), "copy_to_host", forbidden)
    for algorithm in ALGORITHMS:
        u, vjp = bandsolve.smnn_solve_vjp(*device_inputs, algorithm=algorithm)
        vjp(ubar)
        factorization = bandsolve.smnn_factor(device_inputs[0], device_inputs[3],
                                              init_shape=(1, 2), algorithm=algorithm)
        factorization.solve(device_inputs[1], device_inputs[2])


# ----------------------------------------------------------------------------- selection

def test_automatic_kernel_shape(monkeypatch):
    """The benchmark shapes of tools/gpu_check.sh (block size, T, systems, bandwidth)."""
    monkeypatch.setattr(config, "MIN_CHUNK", DEFAULT_MIN_CHUNK)
    assert config.choose_algorithm(3, 208, 12960, 1) == "thread"   # SST
    assert config.choose_algorithm(9, 10**6, 1, 1) == "partitioned"
    assert config.choose_algorithm(6, 1727, 256, 1) == "partitioned"
    assert config.choose_algorithm(24, 100, 10**5, 1) == "block"
    assert config.choose_algorithm(3, 5, 4, 1) == "thread"  # too short to split


# ----------------------------------------------------------------------------- bad input (issue 15)

def test_no_equations_same_as_host_and_oracle():
    """E = 0 with initial values of every order (which pin the Taylor rows' polynomial
    null space): the device solves it like the host, within solve_rtol of the oracle."""
    c, r, g, h = make_problem(400, batch=(2,), T=6, E=0, D=2, O=3, Ti=1, Oi=3)
    expected, cond = oracle_solve(c, r, g, h)
    u = to_host(bandsolve.smnn_solve(*to_device(c, r, g, h)))
    assert_rel_close(u, expected, solve_rtol(np.float64, cond), "u (E = 0)")
    assert_rel_close(u, bandsolve.smnn_solve(c, r, g, h), 2 * solve_rtol(np.float64, cond),
                     "u (E = 0) host")


def test_vjp_does_not_see_later_mutation_on_the_device():
    """The device VJP keeps private copies: changing u, rhs, coefficients or steps after
    the call does not change the gradients."""
    c, r, g, h = make_problem(410, batch=(2,), T=5, E=2, D=1, O=3, Ti=1, Oi=2)
    ubar = np.random.default_rng(411).standard_normal((2, 5, 1, 3))
    _, vjp = bandsolve.smnn_solve_vjp(*to_device(c, r, g, h))
    expected = [to_host(x) for x in vjp(cuda.to_device(ubar))]
    dc, dr, dg, dh = to_device(c, r, g, h)
    u, vjp = bandsolve.smnn_solve_vjp(dc, dr, dg, dh)
    u.copy_to_device(to_host(u) + 100.0)
    for device_array, host in ((dc, c), (dr, r), (dh, h)):
        device_array.copy_to_device(host + 5.0)
    for name, got, want in zip(NAMES, vjp(cuda.to_device(ubar)), expected):
        np.testing.assert_array_equal(to_host(got), want, err_msg=name)


@pytest.mark.filterwarnings("ignore:invalid value:RuntimeWarning")
@pytest.mark.parametrize("bad", ["nan", "zero_pivot"])
def test_from_lower_marks_a_bad_factor_failed(bad):
    """A NaN or a zero pivot in a given factor: the system is failed in the status (no
    synchronisation by default), its results are NaN, check() names it; the other system
    is unaffected."""
    c, r, g, h = make_problem(420, batch=(2,), T=6, E=2, D=1, O=3, Ti=1, Oi=2)
    lower = bandsolve.smnn_factor(c, h, init_shape=(1, 2)).lower.copy()
    if bad == "nan":
        lower[1, 3, 1, 0, 2] = np.nan
    else:
        lower[1, 3, 0, 1, 1] = 0.0
    dc, dr, dg, dh = to_device(c, r, g, h)
    rebuilt = bandsolve.SMNNFactorization.from_lower(cuda.to_device(lower), dc, dh,
                                                     init_shape=(1, 2))
    assert rebuilt.status.to_host().tolist() == [0, 4]
    u = to_host(rebuilt.solve(dr, dg))
    assert np.all(np.isnan(u[1])) and np.all(np.isfinite(u[0]))
    with pytest.raises(bandsolve.FactorizationError, match=r"\(1,\) at time step 3"):
        rebuilt.status.check()


@pytest.mark.parametrize("kw_bad, exc, name", [
    (dict(weight_smooth="2"), TypeError, "weight_smooth"),
    (dict(central_smoothness="no"), TypeError, "central_smoothness"),
    (dict(n_steps=True), TypeError, "n_steps"),
])
def test_bad_scalars_same_error_on_the_device(kw_bad, exc, name):
    c, r, g, h = make_problem(430, batch=(2,), T=5, E=2, D=1, O=3, Ti=1, Oi=2)
    with pytest.raises(exc, match=name):
        bandsolve.smnn_solve(*to_device(c, r, g, h), **kw_bad)
    with pytest.raises(TypeError, match="init_shape"):
        bandsolve.smnn_factor(*to_device(c, h), init_shape=None)

# ----------------------------------------------------------------------------- thread counts

@pytest.mark.parametrize("threads", [2, 3])
@pytest.mark.parametrize("central", [False, True])
def test_fewer_threads_than_rows(monkeypatch, central, threads):
    """Thread counts below the block size n = 5 (2 threads: rows 3 + 2; 3 threads: 2 + 2 + 1),
    so every ``range(tid, n, n_threads)`` loop of the block kernels takes several rows per
    thread; the one-thread-per-item kernels run in several blocks with a partial last one,
    and the reduction over the shared coefficients and steps (12 rows each) sums several
    rows per thread before its tree. Compared with the host backend and the dense oracle."""
    monkeypatch.setattr(config, "BLOCK_THREADS", threads)
    monkeypatch.setattr(config, "THREADS_PER_BLOCK", threads)
    monkeypatch.setattr(config, "REDUCE_THREADS", threads + threads % 2)  # a power of two
    problem = make_problem(80, batch=(3,), T=5, E=2, D=1, O=5, Ti=1, Oi=3, coef_batch=(),
                           steps_batch=(1,))
    u_ref, cond = oracle_solve(*problem, **kw(central))
    u_cpu, vjp_cpu = bandsolve.smnn_solve_vjp(*problem, **kw(central))
    dev = to_device(*problem)
    factorization = bandsolve.smnn_factor(dev[0], dev[3], init_shape=(1, 3), **kw(central),
                                          algorithm="block")
    host = bandsolve.smnn_factor(problem[0], problem[3], init_shape=(1, 3), **kw(central))
    rtol = solve_rtol(np.float64, cond)
    assert_rel_close(to_host(factorization.lower), host.lower, rtol, "lower")
    u, vjp = factorization.solve_vjp(dev[1], dev[2])
    assert_rel_close(to_host(u), u_ref, rtol, "u vs dense")
    assert_rel_close(to_host(u), u_cpu, 2 * rtol, "u vs CPU")
    ubar = np.random.default_rng(81).standard_normal(u.shape)
    for name, g, g_cpu in zip(NAMES, vjp(cuda.to_device(ubar)), vjp_cpu(ubar)):
        assert_rel_close(to_host(g), g_cpu, 10 * 2 * rtol, f"{name}_bar vs CPU")


@pytest.mark.parametrize("algorithm", ["thread", "block"])
def test_from_lower_takes_both_layouts_without_copies(algorithm):
    """``.lower`` of a thread factorisation is a strided view of its storage, which
    ``from_lower`` takes back as it is; a C-contiguous factor (what a framework may hand
    back) is read through a strided view. Both solve like the host factorisation."""
    c, r, g, h = make_problem(90, batch=(2, 2), T=6, E=2, D=1, O=3, Ti=1, Oi=2)
    host = bandsolve.smnn_factor(c, h, init_shape=(1, 2), **kw(True))
    dc, dr, dg, dh = to_device(c, r, g, h)
    factorization = bandsolve.smnn_factor(dc, dh, init_shape=(1, 2), **kw(True),
                                          algorithm=algorithm)
    lower = factorization.lower
    assert_rel_close(to_host(lower), host.lower, 1e-12, "lower")
    u_host = host.solve(r, g)
    for given in (lower, cuda.to_device(np.ascontiguousarray(to_host(lower)))):
        rebuilt = bandsolve.SMNNFactorization.from_lower(given, dc, dh, init_shape=(1, 2),
                                                         **kw(True), algorithm=algorithm)
        if algorithm == "thread" and given is lower:  # the very same memory, no copy
            assert np.shares_memory(rebuilt._lower._ary, factorization._lower._ary)
        assert_rel_close(to_host(rebuilt.solve(dr, dg)), u_host, 1e-12, "u from_lower")

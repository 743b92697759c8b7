"""Accuracy against an exact reference, singular systems, overflow and the failure policy.

The reference (``tests/exact.py``) solves each system's least-squares problem at 60 digits
from the input values converted exactly; ``cond`` below is cond(A) of the weighted residual
rows (not of the normal matrix M = A^T A). Errors are measured per derivative order,
``err[o] = max|u_o - x_o| / max|x_o|`` over steps and state dimensions
(``exact.order_errors``). The contract (DESIGN.md section 5):

* float64: ``err[o] <= max(100 eps cond(A), 1e-13)`` for cond(A) <= 1e11, no exception;
* float32: ``err[o] <= 1e-5`` for cond(A) <= 1e6; beyond, a clear error or ``<= 1e-3``;
* singular / rank-deficient systems raise ``FactorizationError`` naming batch index and
  step, alone and inside a batch, float32 and float64;
* inputs whose normal-equation terms overflow give the exact answer or a ``ValueError``
  naming the argument, never NaN;
* ``check=`` selects raising or NaN in the failed system's slice (class
  ``TestFailurePolicy``).

``TestReference`` checks the reference itself and that the tolerances are achievable by
a backward-stable solver (LAPACK's SVD least squares), so no assertion here asks for more
than such a method delivers.
"""

import contextlib
import dataclasses
import functools
import math

import numpy as np
import pytest
import scipy.linalg
from accuracy_cases import (
    README_CASE,
    Case,
    grid_cases,
    issue_cases,
    weighted_cases,
)
from exact import exact_solution, order_errors
from helpers import residual_rows

import bandsolve

EPS64 = float(np.finfo(np.float64).eps)
DTYPES = [np.float64, np.float32]

# the ranges where the contract promises accuracy without an exception
COND_LIMIT = {np.float64: 1e11, np.float32: 1e6}
# beyond them: a clear error, or a result no worse than this (never silently worse)
BEYOND_LIMIT_TOL = 1e-3
FLOAT32_TOL = 1e-5

ACCURACY_CASES = grid_cases() + weighted_cases() + issue_cases()
VJP_CASES = [dataclasses.replace(case, full_init=True, wi=2.0 ** -30)
             for case in grid_cases()[::3] + weighted_cases()]


@functools.cache
def _cond_at_collection(case):
    """cond(A) from a float64 SVD of the rows (tests/helpers.residual_rows), to sort the
    cases into the promised range and beyond before the tests run; ``0`` for systems too
    large for a quick SVD (the README case, cond ~1e5: its test asserts the range from
    the exact reference)."""
    if case.T * case.D * case.O > 1200:
        return 0.0
    A, _ = residual_rows(*case.arrays(np.float64), **case.exact_kw)
    with _one_thread():
        sv = np.linalg.svd(A.toarray(), compute_uv=False)
    return float(sv[0] / sv[-1])


def _split(cases, dtype):
    """``(in_range, beyond)`` params for ``dtype``."""
    inside, beyond = [], []
    for case in cases:
        cond = _cond_at_collection(case)
        (inside if cond <= COND_LIMIT[dtype] else beyond).append(
            pytest.param(case, dtype, id=f"{case.name}-{np.dtype(dtype).name}"))
    return inside, beyond


def _one_thread():
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # pragma: no cover
        return contextlib.nullcontext()
    return threadpool_limits(1)


_IN64, _BEYOND64 = _split(ACCURACY_CASES, np.float64)
_IN32, _BEYOND32 = _split(ACCURACY_CASES, np.float32)
_VJP64, _ = _split(VJP_CASES, np.float64)
_VJP32, _ = _split(VJP_CASES, np.float32)


def float64_bound(cond):
    """A backward-stable least-squares solve has a forward error of order
    ``eps * cond(A)`` (plus ``eps * cond(A)^2 * ||r|| / (||A|| ||x||)``, negligible for
    these systems: ``TestReference.test_float64_bound_is_achievable`` shows LAPACK's SVD
    solve within the bound on every case). 100 covers the dimension factors of our small
    blocks and the per-order (rather than normwise) measure; the floor 1e-13 the rounding
    accumulated over T steps in perfectly conditioned cases."""
    return max(100 * EPS64 * cond, 1e-13)


def exact_of(case):
    return exact_solution(*case.arrays(np.float64), **case.exact_kw)


def solve(case, dtype, **extra):
    return bandsolve.smnn_solve(*case.arrays(dtype), **case.weights, **extra)


def _fmt(errs):
    return "[" + ", ".join(f"{e:.1e}" for e in errs) + "]"


# ---------------------------------------------------------------------------------------
# The reference itself
# ---------------------------------------------------------------------------------------


class TestReference:
    """The exact reference agrees with the float64 row table, and the tolerances used
    below are met by an independent backward-stable solver."""

    @pytest.mark.parametrize("case", grid_cases()[::7] + weighted_cases(), ids=lambda c: c.name)
    def test_rows_match_the_float64_table(self, case):
        # the 60-digit rows (rounded) and tests/helpers.residual_rows are written
        # independently from DESIGN.md's table; row order differs, A^T A and A^T beta do not
        ref = exact_of(case)
        A, beta = ref.rows_float64()
        c, r, g, h = case.arrays(np.float64)
        A2, beta2 = residual_rows(c, r, g, h, **case.exact_kw)
        M, M2 = (A.T @ A).toarray(), (A2.T @ A2).toarray()
        assert np.max(np.abs(M - M2)) <= 1e-13 * np.max(np.abs(M))
        b, b2 = A.T @ beta, A2.T @ beta2
        assert np.max(np.abs(b - b2)) <= 1e-13 * max(np.max(np.abs(b)), 1e-300)

    def test_exact_solution_has_zero_normal_residual(self):
        # A^T (A x - beta) = 0 at 60 digits, checked from the float64 x: the residual is
        # then only x's rounding to float64, i.e. ~eps ||M|| ||x||
        case = Case(T=10, D=2, E=2, O=3, h=0.05, seed=7)
        ref = exact_of(case)
        A, beta = ref.rows_float64()
        x = ref.x.ravel()
        g = A.T @ (A @ x - beta)
        M = (A.T @ A).toarray()
        assert np.linalg.norm(g) <= 1e3 * EPS64 * np.linalg.norm(M, 2) * np.linalg.norm(x)

    @pytest.mark.parametrize("case", [
        Case(T=3, D=1, E=1, O=4, h=0.003, seed=4),  # cond(A) ~ 1e8
        Case(T=4, D=2, E=2, O=3, h=0.05, central=True, seed=3),
    ], ids=lambda c: c.name)
    def test_banded_cholesky_matches_a_60_digit_augmented_solve(self, case):
        # an independent route at the same precision that never forms A^T A: the
        # augmented system [[I, A], [A^T, 0]] [r; x] = [beta; 0] by mpmath's dense LU;
        # agreement to 1e-30 is far beyond float64's 1e-16
        from mpmath import mp

        ref = exact_of(case)
        N, m = int(np.prod(ref.shape)), len(ref.rows)
        with mp.workdps(60):
            K = mp.zeros(m + N, m + N)
            rhs = mp.zeros(m + N, 1)
            for i, (cols, vals, b) in enumerate(ref.rows):
                K[i, i] = 1
                for j, v in zip(cols, vals):
                    K[i, m + j] += v
                    K[m + j, i] += v
                rhs[i] = b
            sol = mp.lu_solve(K, rhs)
            diff = max(abs(sol[m + j] - ref._x[j]) for j in range(N))
            size = max(abs(v) for v in ref._x)
            assert diff <= mp.mpf("1e-30") * size, (float(diff / size), ref.cond)
        assert ref.cond > 1e2  # not a trivially conditioned system

    def test_reference_refuses_a_singular_system(self):
        # 4 equations for 6 unknowns per polynomial null space, no initial values: the
        # exact pivot is zero and the reference says so rather than returning noise
        case = Case(T=4, D=2, E=1, O=3, h=0.05, init=False, central=True, seed=3)
        with pytest.raises(ValueError, match="not positive definite"):
            exact_of(case)

    @pytest.mark.parametrize("case, dtype", [p for p in _IN64 if p.values[0] is not README_CASE])
    def test_float64_bound_is_achievable(self, case, dtype):
        # LAPACK's SVD least squares (gelsd) on the float64 rows (the README case, 7000 x
        # 3000, is too large for a quick dense SVD; its cond(A) is only 1.4e5)
        ref = exact_of(case)
        A, beta = ref.rows_float64()
        with _one_thread():
            x = np.linalg.lstsq(A.toarray(), beta, rcond=None)[0].reshape(ref.shape)
        errs = order_errors(x, ref.x)
        assert np.all(errs <= float64_bound(ref.cond)), (ref.cond, _fmt(errs))

    @pytest.mark.parametrize("case, dtype", _VJP64)
    def test_vjp_bound_is_achievable(self, case, dtype):
        # y = M^{-1} ubar through the R of a Householder QR of A (a backward-stable
        # route that never forms M) meets the tolerances of test_vjp_second_solve_accuracy
        ref = exact_of(case)
        ubar = _ubar(case)
        A, _ = ref.rows_float64()
        with _one_thread():
            R = scipy.linalg.qr(A.toarray(), mode="r")[0][: A.shape[1]]
        y = scipy.linalg.solve_triangular(
            R, scipy.linalg.solve_triangular(R, ubar.ravel(), trans="T")).reshape(ref.shape)
        errs = order_errors(y, ref.solve(ubar))
        assert np.all(errs <= float64_bound(ref.cond)), (ref.cond, _fmt(errs))
        c = case.arrays(np.float64)[0]
        err, scale = _rhs_bar_error(ref, ubar, _rhs_bar_of(case, c, y), case, c)
        assert err <= float64_bound(ref.cond) * scale


# ---------------------------------------------------------------------------------------
# Forward accuracy
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("case, dtype", _IN64 + _IN32)
def test_forward_accuracy(case, dtype):
    """Per-order error against the exact solution, in the promised range, no exception."""
    ref = exact_of(case)
    assert ref.cond <= COND_LIMIT[dtype], f"case sorted wrongly: cond(A) = {ref.cond:.2e}"
    u = solve(case, dtype)
    assert u.dtype == np.dtype(dtype) and u.shape == ref.shape
    errs = order_errors(u, ref.x)
    if dtype == np.float64:
        tol = float64_bound(ref.cond)
    else:
        # float32 results: a float32 factor refined with float64 residuals, or float64
        # inside, reaches ~1e-7 here; 1e-5 is the contract (rounding u to float32 is 6e-8)
        tol = FLOAT32_TOL
    assert np.all(errs <= tol), (
        f"cond(A)={ref.cond:.2e}: err per order {_fmt(errs)} > {tol:.1e}")


@pytest.mark.parametrize("case, dtype", _BEYOND64 + _BEYOND32)
def test_forward_beyond_the_promised_range(case, dtype):
    """Beyond the promised range (float64: cond(A) > 1e11, float32: > 1e6) the contract
    is "never silently wrong": a clear error (for float32 one that says to use float64),
    or a result within 1e-3. (For float64 this is stricter than the issue's item 1, which
    is silent about cond(A) > 1e11, and follows its title; LAPACK's SVD solve gets
    ~eps cond(A) here, 1e-3 to 1 at cond(A) 1e13-1e15, so a solver must know when it
    cannot deliver.)"""
    ref = exact_of(case)
    assert ref.cond > COND_LIMIT[dtype], f"case sorted wrongly: cond(A) = {ref.cond:.2e}"
    try:
        u = solve(case, dtype)
    except (bandsolve.FactorizationError, ValueError) as err:
        if dtype == np.float32:
            assert "float64" in str(err), f"the error should say how to fix it: {err}"
        return
    errs = order_errors(u, ref.x)
    assert np.all(errs <= BEYOND_LIMIT_TOL), (
        f"cond(A)={ref.cond:.2e}: silent result with err per order {_fmt(errs)}")


def test_readme_oscillator_matches_the_published_values():
    """The README example's u at t = 0, 2.5, 5, 7.5 against the values published in the
    accuracy issue (3 digits, from an 80-digit reference): an anchor for the reference
    itself, and a user-visible check (float32 currently gives 1.0, 0.023, 8.5e-05, ...)."""
    published = [1.0, 0.135, -0.420, -0.219]
    ref = exact_of(README_CASE)
    np.testing.assert_allclose(ref.x[::250, 0, 0], published, atol=1e-3)
    for dtype in DTYPES:
        u = solve(README_CASE, dtype)
        np.testing.assert_allclose(u[::250, 0, 0], published, atol=1e-3, err_msg=str(dtype))


def test_jax_jit_float32_readme_is_accurate():
    """``jax.jit(bandsolve_jax.smnn_solve)`` with x64 off (JAX's default) on the README
    example: float32 within 1e-5 of the exact solution, or a clear error."""
    jax = pytest.importorskip("jax")
    bandsolve_jax = pytest.importorskip("bandsolve_jax")
    ref = exact_of(README_CASE)
    c, r, g, h = README_CASE.arrays(np.float32)
    with jax.enable_x64(False):
        u = np.asarray(jax.jit(bandsolve_jax.smnn_solve)(c, r, g, h))
    assert u.dtype == np.float32
    errs = order_errors(u, ref.x)
    assert np.all(errs <= FLOAT32_TOL), _fmt(errs)


# ---------------------------------------------------------------------------------------
# The VJP's second solve
# ---------------------------------------------------------------------------------------


def _ubar(case):
    T, D, O = case.T, case.D, case.O
    return np.random.default_rng(10_000 + case.seed).standard_normal((T, D, O)).astype(
        np.float32).astype(np.float64)


def _rhs_bar_of(case, c, y):
    """``rhs_bar[t, e] = we^2 sum_j C[t, e, j] y[t, j]`` (DESIGN.md section 1)."""
    T, E = c.shape[:2]
    return case.we ** 2 * np.einsum("tej,tj->te", c.reshape(T, E, -1), y.reshape(T, -1))


def _rhs_bar_error(ref, ubar, rhs_bar, case, c):
    """``(max|rhs_bar - exact|, scale)`` with ``scale = we max|A y|`` (``A y`` the rows
    applied to the exact ``y``). Why that scale: ``rhs_bar = we^2 C y = we (A y)`` on the
    equation rows, and ``z = A y`` is the minimum-norm solution of ``A^T z = ubar``, whose
    condition number is cond(A): a backward-stable route gets ``max|dz| <~ eps cond(A)
    max|z|`` (measured with a QR of A: <= 1.1 eps cond(A) on the grid), and so does
    bandsolve's plain Cholesky. The equation-row part of z can be 1e-8 of max|z| on these
    systems, so rhs_bar can be wrong relative to itself even from an exact-to-rounding y:
    this check is honest but weak; the full-y check through ``init_bar`` is the strong one."""
    y = ref.solve(ubar)
    exact = _rhs_bar_of(case, c, y)
    A, _ = ref.rows_float64()
    scale = case.we * float(np.max(np.abs(A @ y.ravel())))
    rhs_bar = np.asarray(rhs_bar, dtype=np.float64)
    if not np.all(np.isfinite(rhs_bar)):
        return math.inf, scale
    return float(np.max(np.abs(rhs_bar - exact))), scale


@pytest.mark.parametrize("case, dtype", _VJP64 + _VJP32)
def test_vjp_second_solve_accuracy(case, dtype):
    """The backward pass's ``y = M^{-1} ubar`` against the 60-digit ``y``. The cases carry
    initial values at every step and order with weight ``wi = 2^-30``, so ``init_bar =
    wi^2 y`` exposes all of y (the tiny rows change cond(A) little; the reference
    includes them exactly). y is measured per order like u: a backward-stable route
    (QR of A, ``TestReference.test_vjp_bound_is_achievable``) gets <= 0.4 eps cond(A);
    a plain Cholesky of M gets eps cond(A)^2."""
    ref = exact_of(case)
    assert ref.cond <= COND_LIMIT[dtype], f"case sorted wrongly: cond(A) = {ref.cond:.2e}"
    c, r, g, h = case.arrays(dtype)
    ubar = _ubar(case)
    _, vjp = bandsolve.smnn_solve_vjp(c, r, g, h, **case.weights)
    _, rhs_bar, init_bar, _ = vjp(ubar.astype(dtype))
    assert rhs_bar.dtype == np.dtype(dtype) and init_bar.shape == g.shape
    tol = float64_bound(ref.cond) if dtype == np.float64 else FLOAT32_TOL
    y = ref.solve(ubar)
    errs = order_errors(np.asarray(init_bar, np.float64) / case.wi ** 2, y)
    assert np.all(errs <= tol), f"y per order {_fmt(errs)} > {tol:.1e} (cond {ref.cond:.1e})"
    err, scale = _rhs_bar_error(ref, ubar, rhs_bar, case, c.astype(np.float64))
    assert err <= tol * scale, f"rhs_bar: {err / scale:.2e} (of we max|A y|) > {tol:.1e}"


# ---------------------------------------------------------------------------------------
# Singular and rank-deficient systems
# ---------------------------------------------------------------------------------------


def _zero_problem(T, E, D, O, Ti, Oi, dtype):
    return (np.zeros((T, E, D, O), dtype), np.ones((T, E), dtype),
            np.ones((Ti, D, Oi), dtype), np.full(T - 1, 0.1, dtype))


def _singular_shapes():
    """Zero coefficients and no initial values leave the constants (indeed all
    polynomials of degree < O) in the null space: every shape is singular."""
    shapes = []
    for central in (False, True):
        for O in range(3 if central else 1, 5):
            for D in (1, 2):
                for E in (1, 2):
                    for T in (2, 3, 5, 9, 16):
                        if central and T < 3:
                            continue
                        shapes.append((T, E, D, O, central))
    return shapes


@functools.cache
def _is_rank_deficient(T, E, D, O, Ti, Oi, central):
    """The test data is what it claims: a float64 SVD of the rows finds a null space."""
    A, _ = residual_rows(*_zero_problem(T, E, D, O, Ti, Oi, np.float64), central=central)
    with _one_thread():
        sv = np.linalg.svd(A.toarray(), compute_uv=False)
    return sv.size < T * D * O or sv[-1] <= 1e-12 * sv[0]


def _raises_factorization_error(problem, central):
    """The error (or None if nothing was raised)."""
    try:
        bandsolve.smnn_solve(*problem, central_smoothness=central)
    except bandsolve.FactorizationError as err:
        return err
    return None


def _assert_names(err, batch_index):
    msg = str(err)
    assert batch_index in err.batch_indices, (err.batch_indices, batch_index)
    assert len(err.steps) == len(err.batch_indices)
    assert f"batch index {batch_index}" in msg and "time step" in msg, msg
    assert "initial value" in msg, f"the message should say what it means for S-MNN: {msg}"


class TestSingular:
    @pytest.mark.parametrize("dtype", DTYPES, ids=["float64", "float32"])
    def test_zero_coefficients_without_initial_values(self, dtype):
        missed = []
        for T, E, D, O, central in _singular_shapes():
            assert _is_rank_deficient(T, E, D, O, 0, 0, central)
            err = _raises_factorization_error(_zero_problem(T, E, D, O, 0, 0, dtype), central)
            if err is None:
                missed.append((T, E, D, O, central))
            else:
                _assert_names(err, ())
        assert not missed, (f"{len(missed)} of {len(_singular_shapes())} singular shapes "
                            f"solved without error, (T, E, D, O, central): {missed[:8]}")

    @pytest.mark.parametrize("dtype", DTYPES, ids=["float64", "float32"])
    def test_zero_coefficients_with_only_u0(self, dtype):
        # u[0, d, 0] given pins the constants, not t, t^2, ... (O >= 2)
        missed, shapes = [], [s for s in _singular_shapes() if s[3] >= 2]
        for T, E, D, O, central in shapes:
            assert _is_rank_deficient(T, E, D, O, 1, 1, central)
            err = _raises_factorization_error(_zero_problem(T, E, D, O, 1, 1, dtype), central)
            if err is None:
                missed.append((T, E, D, O, central))
        assert not missed, f"{len(missed)} of {len(shapes)} solved without error: {missed[:8]}"

    @pytest.mark.parametrize("dtype", DTYPES, ids=["float64", "float32"])
    @pytest.mark.parametrize("O", [2, 3])
    def test_first_derivative_equation_without_initial_value(self, dtype, O):
        # u' = 1: u = t + C for any C
        T = 20
        c = np.zeros((T, 1, 1, O), dtype)
        c[..., 1] = 1
        problem = (c, np.ones((T, 1), dtype), np.zeros((0, 1, 0), dtype),
                   np.full(T - 1, 0.05, dtype))
        err = _raises_factorization_error(problem, False)
        assert err is not None, "u' = 1 without an initial value has a free offset"
        _assert_names(err, ())

    @staticmethod
    def rank_10_of_12(dtype, seed=3):
        """T=4, D=1, O=3, u[0] given: the quadratics tau and tau^2 (tau the time since
        t=0) satisfy every Taylor row and the initial value; coefficients orthogonal to
        both at every step keep them in the null space: rank 10 of 12 unknowns."""
        rng = np.random.default_rng(seed)
        T = 4
        # dyadic steps and scales: the coefficients are exact in float32 too, so the
        # system is exactly (not only numerically) rank deficient in both dtypes
        h = rng.choice([0.25, 0.375, 0.5, 0.625], T - 1)
        tau = np.concatenate([[0.0], np.cumsum(h)])
        c = np.zeros((T, 1, 1, 3))
        for t in range(T):
            v1 = [tau[t], 1.0, 0.0]              # tau: u, u', u''
            v2 = [tau[t] ** 2, 2 * tau[t], 2.0]  # tau^2
            c[t, 0, 0] = rng.choice([0.5, 0.75, 1.25, 2.0]) * np.cross(v1, v2)
        r = rng.standard_normal((T, 1))
        g = rng.standard_normal((1, 1, 1))
        return tuple(np.asarray(a, dtype) for a in (c, r, g, h))

    @pytest.mark.parametrize("dtype", DTYPES, ids=["float64", "float32"])
    def test_rank_10_of_12(self, dtype):
        problem = self.rank_10_of_12(dtype)
        A, _ = residual_rows(*problem)
        sv = np.linalg.svd(A.toarray(), compute_uv=False)
        assert np.sum(sv > 1e-6 * sv[0]) == 10, sv  # the test data is what it claims
        err = _raises_factorization_error(problem, False)
        assert err is not None, "a rank-10-of-12 system must not be 'solved'"
        _assert_names(err, ())

    @pytest.mark.parametrize("dtype", DTYPES, ids=["float64", "float32"])
    @pytest.mark.parametrize("bad", [(1,), (0, 2)], ids=["batch3-index1", "batch2x3-index0,2"])
    @pytest.mark.parametrize("kind", ["zero", "u_prime", "rank10"])
    def test_inside_a_batch(self, dtype, bad, kind):
        """One singular system among well-posed ones (E = 3 random equations for n = 3
        unknowns per step pin them even without initial values): the call raises, naming
        exactly that system."""
        batch = (3,) if len(bad) == 1 else (2, 3)
        T, O = 4, 3
        rng = np.random.default_rng(5)
        c = rng.standard_normal(batch + (T, 3, 1, O))
        r = rng.standard_normal(batch + (T, 3))
        h = rng.uniform(0.3, 0.6, batch + (T - 1,))
        g = np.zeros(batch + (0, 1, 0))
        c[bad] = 0
        if kind == "u_prime":
            c[bad][:, 0, 0, 1] = 1
            r[bad] = 1
        elif kind == "rank10":
            cb, rb, gb, hb = self.rank_10_of_12(np.float64)
            c[bad][:, :1] = cb
            r[bad] = 0
            r[bad][:, :1] = rb
            h[bad] = hb
            g = rng.standard_normal(batch + (1, 1, 1))
            g[bad] = gb
        problem = tuple(np.asarray(a, dtype) for a in (c, r, g, h))
        for idx in np.ndindex(batch):  # the test data is what it claims
            A, _ = residual_rows(*(np.asarray(a[idx], np.float64) for a in problem))
            sv = np.linalg.svd(A.toarray(), compute_uv=False)
            assert (sv[-1] < 1e-10 * sv[0]) == (idx == bad), (idx, sv[-1] / sv[0])
        err = _raises_factorization_error(problem, False)
        assert err is not None, f"the singular element {bad} passed silently"
        _assert_names(err, bad)
        assert err.batch_indices == [bad], err.batch_indices


# ---------------------------------------------------------------------------------------
# Overflow
# ---------------------------------------------------------------------------------------


def _decay_problem(T, rhs_scale, dtype, seed=1):
    """u' + 4 u = r (D=1, O=2, no initial values), ``r`` uniform in
    ``rhs_scale * [-1, 1]``: |u| ~ |r| / 4 and |u'| <~ |r|, so the exact answer stays
    finite even where ``r`` is near the largest float."""
    c = np.zeros((T, 1, 1, 2))
    c[..., :] = [4.0, 1.0]
    r = np.random.default_rng(seed).uniform(-1, 1, (T, 1)) * rhs_scale
    return tuple(np.asarray(a, dtype) for a in (c, r, np.zeros((0, 1, 0)), np.full(T - 1, 0.1)))


class TestOverflow:
    """Finite inputs whose normal-equation terms overflow (the problem is invariant under
    scaling the rows): the exact answer or a ValueError naming the argument, never NaN."""

    def _check(self, problem, weights, dtype, names):
        c, r, g, h = (np.asarray(a, dtype) for a in problem)
        ref = exact_solution(c, r, g, h, we=weights.get("weight_equation", 1.0),
                             wi=weights.get("weight_init", 1.0))
        assert np.all(np.isfinite(ref.x)), "the test's exact answer must be representable"
        try:
            u = bandsolve.smnn_solve(c, r, g, h, **weights)
        except ValueError as err:
            assert any(n in str(err) for n in names), f"should name {names}: {err}"
            return
        n_bad = int(np.sum(~np.isfinite(u)))
        assert n_bad == 0, f"silent NaN/Inf in {n_bad} of {u.size} entries"
        tol = float64_bound(ref.cond) if dtype == np.float64 else FLOAT32_TOL
        errs = order_errors(u, ref.x)
        assert np.all(errs <= tol), _fmt(errs)

    def test_float64_rhs_near_max(self):
        self._check(_decay_problem(12, 1.7e308, np.float64), {}, np.float64, ["rhs"])

    def test_float32_rhs_near_max(self):
        self._check(_decay_problem(12, 3e38, np.float32), {}, np.float32, ["rhs"])

    def test_float64_init_with_weight(self):
        # u' + 0.5 u = 0, u(0) = 1e308: wi * g = 1e309 overflows, the answer does not
        T = 12
        c = np.zeros((T, 1, 1, 2))
        c[..., :] = [0.5, 1.0]
        problem = (c, np.zeros((T, 1)), np.full((1, 1, 1), 1e308), np.full(T - 1, 0.1))
        self._check(problem, {"weight_init": 10.0}, np.float64, ["init", "weight_init"])


# ---------------------------------------------------------------------------------------
# Failure policy: one keyword on both backends (align the keyword name with the core)
# ---------------------------------------------------------------------------------------


def _policy_batch(dtype):
    """A batch of 3 systems (D=1, O=3, no initial values) whose element 1 has zero
    coefficients (singular); elements 0 and 2 have E = 3 random equations (well posed)."""
    rng = np.random.default_rng(21)
    T = 6
    c = rng.standard_normal((3, T, 3, 1, 3))
    c[1] = 0
    r = rng.standard_normal((3, T, 3))
    g = np.zeros((3, 0, 1, 0))
    h = np.full((3, T - 1), 0.2)
    return tuple(np.asarray(a, dtype) for a in (c, r, g, h))


def _status_failed(factor):
    """Batch indices reported failed by a factorisation's per-system status (a
    ``Status`` with ``failed()`` as on the device, or an array of codes, 0 = success)."""
    status = factor.status
    if hasattr(status, "failed"):
        return sorted(status.failed())
    return sorted(tuple(int(i) for i in idx) for idx in np.argwhere(np.asarray(status)))


class TestFailurePolicy:
    """``check=True`` (the host default) raises ``FactorizationError``; ``check=False``
    returns NaN in the failed system's slice only, the others exact, and a per-system
    status on the factorisation (JAX linalg's convention)."""

    @pytest.mark.parametrize("dtype", DTYPES, ids=["float64", "float32"])
    def test_default_and_check_true_raise(self, dtype):
        problem = _policy_batch(dtype)
        for extra in ({}, {"check": True}):
            with pytest.raises(bandsolve.FactorizationError) as info:
                bandsolve.smnn_solve(*problem, **extra)
            assert info.value.batch_indices == [(1,)]

    @pytest.mark.parametrize("dtype", DTYPES, ids=["float64", "float32"])
    def test_check_false_nan_in_failed_slice_only(self, dtype):
        problem = _policy_batch(dtype)
        u = bandsolve.smnn_solve(*problem, check=False)
        assert np.all(np.isnan(u[1])), "the failed system's slice must be NaN"
        for i in (0, 2):
            ref = exact_solution(*(a[i] for a in problem))
            tol = float64_bound(ref.cond) if dtype == np.float64 else FLOAT32_TOL
            errs = order_errors(u[i], ref.x)
            assert np.all(errs <= tol), (i, _fmt(errs))

    @pytest.mark.parametrize("dtype", DTYPES, ids=["float64", "float32"])
    def test_check_false_vjp_nan_in_failed_slice_only(self, dtype):
        problem = _policy_batch(dtype)
        u, vjp = bandsolve.smnn_solve_vjp(*problem, check=False)
        grads = vjp(np.ones_like(u))
        for name, grad in zip(("coefficients", "rhs", "init", "steps"), grads):
            if grad.size == 0:
                continue
            assert np.all(np.isfinite(grad[0])) and np.all(np.isfinite(grad[2])), name
            assert np.all(np.isnan(grad[1])), f"{name}_bar of the failed system"

    @pytest.mark.parametrize("dtype", DTYPES, ids=["float64", "float32"])
    def test_status_names_the_failed_system(self, dtype):
        c, r, g, h = _policy_batch(dtype)
        factor = bandsolve.smnn_factor(c, h, init_shape=(0, 0), check=False)
        assert _status_failed(factor) == [(1,)]
        u = factor.solve(r, g)
        assert np.all(np.isnan(u[1])) and np.all(np.isfinite(u[[0, 2]]))

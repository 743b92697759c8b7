"""Forward solves against independent references.

* ``smnn_solve`` against the dense least-squares oracle (``numpy.linalg.lstsq`` of the
  residual rows of DESIGN.md section 1) over many shapes, weights and both smoothness modes;
* ``smnn_normal_equations`` against the oracle's ``A^T A`` and ``A^T beta``;
* ``BlockBanded`` storage and ``block_cholesky`` against dense NumPy linear algebra;
* a long sequence (T = 10^4) against LAPACK's banded Cholesky (``scipy.linalg.solveh_banded``);
* linear ODEs against ``scipy.integrate.solve_ivp`` (second-order convergence in h).
"""

import numpy as np
import pytest
import scipy.linalg
import scipy.sparse
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from scipy.integrate import solve_ivp

import bandsolve

from helpers import (
    EPS,
    assert_normwise_close,
    checked_cond,
    dense_to_lower_blocks,
    lower_band_lapack,
    lower_blocks_to_dense,
    make_full_rank_equations,
    make_problem,
    oracle_normal_equations,
    oracle_solve,
    random_spd_block_banded,
    residual_rows,
    solve_rtol,
)

DTYPES = [np.float64, np.float32]


def _kw(central=False, we=1.0, wi=1.0, ws=1.0):
    return dict(
        weight_equation=we, weight_init=wi, weight_smooth=ws, central_smoothness=central
    )


def check_against_oracle(problem, dtype, batch_ndim=0, n_steps=None, cond_limit=None, **kw):
    """Solve with the package and the oracle; compare normwise with the dtype tolerance."""
    u_ref, cond = oracle_solve(*problem, n_steps=n_steps, **kw)
    limit = cond_limit or (1e5 if dtype == np.float32 else 1e10)
    checked_cond(cond, limit)
    extra = {} if n_steps is None else {"n_steps": n_steps}
    u = bandsolve.smnn_solve(*problem, **extra, **kw)
    assert isinstance(u, np.ndarray)
    assert u.dtype == np.dtype(dtype)
    assert u.shape == u_ref.shape
    assert_normwise_close(u, u_ref, solve_rtol(dtype, cond), batch_ndim)
    return u, u_ref, cond


# ---------------------------------------------------------------------------------------
# smnn_solve against the lstsq oracle
# ---------------------------------------------------------------------------------------

# (T, E, D, O, Ti, Oi, central)
SHAPES = [
    (5, 2, 2, 3, 1, 2, False),
    (5, 2, 2, 3, 1, 2, True),
    (4, 1, 1, 3, 1, 2, False),
    (4, 1, 1, 3, 1, 2, True),
    (6, 1, 2, 2, 1, 1, False),
    (3, 2, 2, 4, 1, 3, True),
    (5, 1, 1, 4, 1, 1, False),
    (5, 1, 1, 1, 1, 1, False),  # O = 1: only value rows
    (2, 1, 1, 2, 1, 1, False),  # T = 2: a single smoothness link
    (3, 1, 1, 3, 1, 3, True),  # T = 3: a single central row
    (6, 3, 3, 3, 2, 3, True),  # Ti > 1, Oi = O
    (4, 2, 2, 3, 4, 2, False),  # Ti = T
]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_solve_matches_oracle(shape, dtype):
    T, E, D, O, Ti, Oi, central = shape
    problem = make_problem(10 + T * E + D * O, T=T, E=E, D=D, O=O, Ti=Ti, Oi=Oi, dtype=dtype)
    check_against_oracle(problem, dtype, **_kw(central))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("central", [False, True])
@pytest.mark.parametrize(
    "weights", [(2.0, 1.0, 1.0), (1.0, 3.0, 1.0), (1.0, 1.0, 0.5), (0.7, 2.5, 1.6)], ids=str
)
def test_solve_weights(weights, central, dtype):
    we, wi, ws = weights
    problem = make_problem(7, T=5, E=2, D=2, O=3, Ti=1, Oi=2, dtype=dtype)
    _, u_ref, cond = check_against_oracle(problem, dtype, **_kw(central, we, wi, ws))
    # The test can tell the weights apart: the default-weight solution lies far outside
    # the tolerance around the weighted one.
    u_default, _ = oracle_solve(*problem, **_kw(central))
    rel = np.linalg.norm(u_ref - u_default) / np.linalg.norm(u_ref)
    assert rel > 10 * solve_rtol(dtype, cond)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(
    "case",
    [
        # (T, D, O, Ti, Oi, central): no initial values, full-rank equations pin u down
        (4, 2, 2, 0, 2, False),
        (4, 2, 2, 2, 0, False),
        (5, 2, 3, 0, 0, True),
        (5, 1, 3, 0, 3, True),
        (3, 1, 3, 0, 0, False),
    ],
    ids=str,
)
def test_solve_without_initial_values(case, dtype):
    T, D, O, Ti, Oi, central = case
    _, rhs, init, steps = make_problem(3, T=T, E=D * O + 1, D=D, O=O, Ti=Ti, Oi=Oi, dtype=dtype)
    coefficients = make_full_rank_equations(3, T=T, D=D, O=O, dtype=dtype)
    assert init.shape == (Ti, D, Oi)
    check_against_oracle((coefficients, rhs, init, steps), dtype, **_kw(central))


@pytest.mark.parametrize("dtype", DTYPES)
def test_solve_single_step(dtype):
    """T = 1: no smoothness rows, steps of length T-1 = 0; equations and full initial
    values only."""
    T, D, O = 1, 2, 3
    coefficients, rhs, init, steps = make_problem(5, T=T, E=2, D=D, O=O, Ti=1, Oi=O, dtype=dtype)
    assert steps.shape == (0,)
    check_against_oracle((coefficients, rhs, init, steps), dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("central", [False, True])
@pytest.mark.parametrize(
    "lengths",
    [
        # step lengths of (coefficients, rhs, steps); None = full
        (1, None, None),
        (None, 1, None),
        (None, None, 1),
        (1, 1, None),
        (1, None, 1),
    ],
    ids=str,
)
def test_solve_step_length_one_broadcasts(lengths, central, dtype):
    cT, rT, sT = lengths
    T = 6
    problem = make_problem(
        21, T=T, E=2, D=2, O=3, Ti=1, Oi=2, dtype=dtype, coef_T=cT, rhs_T=rT, steps_T=sT
    )
    u, _, _ = check_against_oracle(problem, dtype, **_kw(central))
    assert u.shape == (T, 2, 3)


@pytest.mark.parametrize("dtype", DTYPES)
def test_solve_n_steps_when_no_input_carries_T(dtype):
    T = 7
    problem = make_problem(
        22, T=T, E=2, D=1, O=3, Ti=1, Oi=2, dtype=dtype, coef_T=1, rhs_T=1, steps_T=1
    )
    u, _, _ = check_against_oracle(problem, dtype, n_steps=T)
    assert u.shape == (T, 1, 3)
    # n_steps that agrees with an input carrying T is accepted too.
    full = make_problem(23, T=T, E=2, D=1, O=3, Ti=1, Oi=2, dtype=dtype)
    u_ref, cond = oracle_solve(*full)
    u2 = bandsolve.smnn_solve(*full, n_steps=T)
    assert_normwise_close(u2, u_ref, solve_rtol(dtype, cond), 0)


@settings(max_examples=30, deadline=None, derandomize=True, database=None)
@given(
    T=st.integers(2, 7),
    D=st.integers(1, 3),
    O=st.integers(1, 4),
    E=st.integers(1, 4),
    ti=st.integers(0, 7),
    oi=st.integers(0, 4),
    central=st.booleans(),
    weights=st.tuples(*[st.sampled_from([0.5, 1.0, 2.0]) for _ in range(3)]),
    seed=st.integers(0, 2**16),
)
def test_solve_matches_oracle_hypothesis(T, D, O, E, ti, oi, central, weights, seed):
    central = central and O >= 3
    Ti, Oi = min(ti, T), min(oi, O)
    if Ti == 0 or Oi == 0:
        E = D * O + 1
    problem = make_problem(seed, T=T, E=E, D=D, O=O, Ti=Ti, Oi=Oi)
    if Ti == 0 or Oi == 0:
        problem = (make_full_rank_equations(seed, T=T, D=D, O=O),) + problem[1:]
    kw = _kw(central, *weights)
    _, cond = oracle_solve(*problem, **kw)
    assume(np.all(cond < 1e8))  # skip the rare draw whose random equations leave M singular
    check_against_oracle(problem, np.float64, **kw)


# ---------------------------------------------------------------------------------------
# smnn_normal_equations against A^T A, A^T beta
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("central", [False, True])
@pytest.mark.parametrize("batch", [(), (2,)], ids=str)
def test_normal_equations_match_oracle(batch, central, dtype):
    T, E, D, O = 5, 2, 2, 3
    problem = make_problem(31, batch=batch, T=T, E=E, D=D, O=O, Ti=2, Oi=2, dtype=dtype)
    kw = _kw(central, 1.3, 0.8, 1.7)
    M, b = bandsolve.smnn_normal_equations(*problem, **kw)
    M_ref, b_ref, M_abs, b_abs = oracle_normal_equations(*problem, **kw)
    n = D * O
    assert isinstance(M, bandsolve.BlockBanded)
    assert M.n_steps == T and M.block_size == n
    assert M.bandwidth == (2 if central else 1)
    assert tuple(M.batch_shape) == batch
    assert b.shape == batch + (T, n) and b.dtype == np.dtype(dtype)
    dense = M.to_dense()
    assert dense.shape == batch + (T * n, T * n)
    # Each entry of M is a short sum of products of the (rounded) inputs: its rounding
    # error is at most a few eps times the same sum taken in absolute value, |A|^T |A|
    # (the constant 32 covers the h^o powers and up to E + 2(O+1) terms per entry).
    tol = 32 * EPS[np.dtype(dtype)]
    np.testing.assert_array_less(np.abs(dense - M_ref), tol * M_abs + 1e-300)
    np.testing.assert_array_less(np.abs(b - b_ref), tol * b_abs + 1e-300)
    # matvec agrees with the dense matrix.
    x = np.random.default_rng(0).standard_normal(batch + (T, n)).astype(dtype)
    y = M.matvec(x)
    y_ref = (M_ref @ x.reshape(batch + (T * n, 1)).astype(np.float64)).reshape(batch + (T, n))
    y_abs = (M_abs @ np.abs(x).reshape(batch + (T * n, 1))).reshape(batch + (T, n))
    np.testing.assert_array_less(np.abs(y - y_ref), 2 * tol * y_abs + 1e-300)


def test_normal_equations_band_structure():
    """Blocks beyond the bandwidth are exactly zero: pentadiagonal needs the central rows."""
    T, D, O = 6, 1, 3
    n = D * O
    problem = make_problem(32, T=T, E=1, D=D, O=O, Ti=1, Oi=2)
    for central, p in [(False, 1), (True, 2)]:
        dense = bandsolve.smnn_normal_equations(*problem, central_smoothness=central)[0].to_dense()
        M_ref = oracle_normal_equations(*problem, central_smoothness=central)[0]
        for t in range(T):
            for s in range(T):
                blk = dense[t * n:(t + 1) * n, s * n:(s + 1) * n]
                if abs(t - s) > p:
                    assert np.all(blk == 0)
                elif abs(t - s) == p:
                    assert np.any(M_ref[t * n:(t + 1) * n, s * n:(s + 1) * n] != 0)
                    assert np.any(blk != 0)


def test_solve_equals_dense_normal_equation_solve():
    """x = M^{-1} b of the package's own normal equations is its solution (consistency of
    the two public entry points), and is the oracle's solution."""
    problem = make_problem(33, batch=(2,), T=5, E=2, D=2, O=3, Ti=1, Oi=2)
    M, b = bandsolve.smnn_normal_equations(*problem, central_smoothness=True)
    x = np.linalg.solve(M.to_dense(), b.reshape(2, -1, 1)).reshape(2, 5, 2, 3)
    u_ref, cond = oracle_solve(*problem, central_smoothness=True)
    assert_normwise_close(x, u_ref, solve_rtol(np.float64, cond), 1)


# ---------------------------------------------------------------------------------------
# BlockBanded and block_cholesky against dense linear algebra
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("p", [1, 2])
@pytest.mark.parametrize("batch", [(), (3,), (2, 2)], ids=str)
def test_block_banded_storage(batch, p, dtype):
    T, n = 6, 3
    dense, _ = random_spd_block_banded(40 + p, batch=batch, T=T, n=n, p=p, dtype=dtype)
    # NaN in the cells t - j < 0, which must never be read.
    blocks = dense_to_lower_blocks(dense, n, p, fill=np.nan)
    M = bandsolve.BlockBanded(blocks)
    assert M.n_steps == T and M.block_size == n and M.bandwidth == p
    assert tuple(M.batch_shape) == batch
    np.testing.assert_array_equal(M.to_dense(), dense)
    np.testing.assert_array_equal(lower_blocks_to_dense(blocks), dense)
    M2 = bandsolve.BlockBanded.from_dense(dense, n, p)
    assert M2.n_steps == T and M2.block_size == n and M2.bandwidth == p
    np.testing.assert_array_equal(M2.to_dense(), dense)
    x = np.random.default_rng(1).standard_normal(batch + (T, n)).astype(dtype)
    y = M.matvec(x)
    y_ref = (dense.astype(np.float64) @ x.reshape(batch + (T * n, 1))).reshape(batch + (T, n))
    assert y.shape == batch + (T, n)
    # matvec rounding: eps times |M| |x|, a handful of terms per entry.
    bound = 16 * EPS[np.dtype(dtype)] * (np.abs(dense) @ np.abs(x).reshape(batch + (T * n, 1)))
    np.testing.assert_array_less(np.abs(y - y_ref), bound.reshape(y.shape) + 1e-300)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("p", [1, 2, 3])
@pytest.mark.parametrize("batch", [(), (4,), (2, 3)], ids=str)
def test_block_cholesky_solve_and_logdet(batch, p, dtype):
    T, n = 7, 2 if p == 3 else 3
    dense, _ = random_spd_block_banded(50 + p, batch=batch, T=T, n=n, p=p, dtype=dtype)
    blocks = dense_to_lower_blocks(dense, n, p, fill=np.nan)
    chol = bandsolve.block_cholesky(bandsolve.BlockBanded(blocks))
    rng = np.random.default_rng(2)
    b = rng.standard_normal(batch + (T, n)).astype(dtype)
    x = chol.solve(b)
    assert x.shape == b.shape and x.dtype == np.dtype(dtype)
    d64 = dense.astype(np.float64)
    x_ref = np.linalg.solve(d64, b.reshape(batch + (T * n, 1)).astype(np.float64))
    cond = np.linalg.cond(d64)
    assert_normwise_close(x, x_ref.reshape(b.shape), solve_rtol(dtype, cond), len(batch))
    # logdet: absolute error ~ eps * (sum over pivots of their relative errors) ~ T*n*eps*cond
    sign, logdet_ref = np.linalg.slogdet(d64)
    assert np.all(sign == 1)
    logdet = np.asarray(chol.logdet())
    assert logdet.shape == batch
    np.testing.assert_allclose(logdet, logdet_ref, rtol=0, atol=T * n * solve_rtol(dtype, cond))


@pytest.mark.parametrize("dtype", DTYPES)
def test_block_cholesky_rhs_batch_broadcasts(dtype):
    """Factor batch (1, 3), right-hand side batch (4, 3): one factor per LHS, broadcast."""
    T, n, p = 5, 2, 1
    dense, _ = random_spd_block_banded(60, batch=(1, 3), T=T, n=n, p=p, dtype=dtype)
    chol = bandsolve.block_cholesky(bandsolve.BlockBanded.from_dense(dense, n, p))
    b = np.random.default_rng(3).standard_normal((4, 3, T, n)).astype(dtype)
    x = chol.solve(b)
    assert x.shape == (4, 3, T, n)
    d64 = np.broadcast_to(dense.astype(np.float64), (4, 3, T * n, T * n))
    x_ref = np.linalg.solve(d64, b.reshape(4, 3, T * n, 1).astype(np.float64)).reshape(b.shape)
    assert_normwise_close(x, x_ref, solve_rtol(dtype, np.linalg.cond(dense[0, 0])), 2)


# ---------------------------------------------------------------------------------------
# smnn_factor reuses the left-hand side
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("central", [False, True])
def test_factor_solve_equals_smnn_solve(central, dtype):
    coefficients, rhs, init, steps = make_problem(70, batch=(2,), T=5, E=2, D=2, O=3,
                                                  Ti=1, Oi=2, dtype=dtype)
    kw = _kw(central, 1.5, 0.9, 1.2)
    factor = bandsolve.smnn_factor(coefficients, steps, init_shape=(1, 2), **kw)
    u_ref, cond = oracle_solve(coefficients, rhs, init, steps, **kw)
    rtol = solve_rtol(dtype, cond)
    u_direct = bandsolve.smnn_solve(coefficients, rhs, init, steps, **kw)
    # Several right-hand sides through one factorisation.
    for k in range(3):
        rhs_k = rhs + k
        init_k = init - k
        u = factor.solve(rhs_k, init_k)
        assert u.dtype == np.dtype(dtype) and u.shape == (2, 5, 2, 3)
        u_k = bandsolve.smnn_solve(coefficients, rhs_k, init_k, steps, **kw)
        assert_normwise_close(u, u_k, rtol, 1)
        u_ref_k, _ = oracle_solve(coefficients, rhs_k, init_k, steps, **kw)
        assert_normwise_close(u, u_ref_k, rtol, 1)
    assert_normwise_close(u_direct, u_ref, rtol, 1)


@pytest.mark.parametrize("init_shape", [(0, 2), (2, 0), (0, 0)], ids=str)
def test_factor_with_empty_initial_values(init_shape):
    """init_shape (0, Oi) or (Ti, 0) means no initial-value rows; the factorisation accepts
    the init of exactly that shape, (Ti, D, Oi), as smnn_solve does."""
    T, D, O = 4, 2, 2
    Ti, Oi = init_shape
    coefficients = make_full_rank_equations(71, T=T, D=D, O=O)
    _, rhs, init, steps = make_problem(71, T=T, E=D * O + 1, D=D, O=O, Ti=Ti, Oi=Oi)
    assert init.shape == (Ti, D, Oi)
    u_ref, cond = oracle_solve(coefficients, rhs, init, steps)
    rtol = solve_rtol(np.float64, checked_cond(cond))
    assert_normwise_close(bandsolve.smnn_solve(coefficients, rhs, init, steps), u_ref, rtol, 0)
    factor = bandsolve.smnn_factor(coefficients, steps, init_shape=init_shape)
    assert_normwise_close(factor.solve(rhs, init), u_ref, rtol, 0)


# ---------------------------------------------------------------------------------------
# A long sequence against LAPACK's banded Cholesky
# ---------------------------------------------------------------------------------------


def sparse_to_lower_blocks(M, n, p):
    """Lower block storage ``(T, p+1, n, n)`` of a sparse symmetric block-banded matrix."""
    Mc = scipy.sparse.coo_matrix(M)
    T = M.shape[0] // n
    blocks = np.zeros((T, p + 1, n, n))
    t, s = Mc.row // n, Mc.col // n
    keep = t >= s
    assert np.all(t - s <= p)
    blocks[t[keep], (t - s)[keep], Mc.row[keep] % n, Mc.col[keep] % n] = Mc.data[keep]
    return blocks


@pytest.mark.parametrize("central", [False, True])
def test_long_sequence_against_lapack_banded(central):
    T, D, O = 10_000, 1, 3
    n, p = D * O, 2 if central else 1
    coefficients = make_full_rank_equations(80, T=T, D=D, O=O)
    _, rhs, init, steps = make_problem(80, T=T, E=n + 1, D=D, O=O, Ti=1, Oi=2)
    kw = _kw(central, 1.0, 1.0, 0.8)
    A, beta = residual_rows(coefficients, rhs, init, steps, we=1.0, wi=1.0, ws=0.8,
                            central=central)
    M_ref = (A.T @ A).tocsr()
    b_ref = A.T @ beta
    x_lapack = scipy.linalg.solveh_banded(lower_band_lapack(M_ref, (p + 1) * n - 1), b_ref,
                                          lower=True)
    # cond(M) bound: lambda_max <= max absolute row sum (Gershgorin); lambda_min >= min_t
    # sigma_min(C_t)^2, because the other rows only add positive semidefinite terms.
    lam_max = np.max(np.abs(M_ref).sum(axis=1))
    sig = np.linalg.svd(coefficients.reshape(T, n + 1, n), compute_uv=False)
    cond = checked_cond(lam_max / np.min(sig[:, -1]) ** 2, 1e6)  # ~1e5: loose bounds

    u = bandsolve.smnn_solve(coefficients, rhs, init, steps, **kw)
    assert u.shape == (T, D, O)
    assert_normwise_close(u.reshape(-1), x_lapack, solve_rtol(np.float64, cond), 0)
    # Residual of the normal equations, independent of LAPACK.
    res = M_ref @ u.reshape(-1) - b_ref
    assert np.linalg.norm(res) <= 100 * EPS[np.dtype(np.float64)] * lam_max * np.linalg.norm(u)

    # The package's normal equations: matvec against the sparse A^T A, b against A^T beta.
    M, b = bandsolve.smnn_normal_equations(coefficients, rhs, init, steps, **kw)
    assert M.n_steps == T and M.bandwidth == p and M.block_size == n
    np.testing.assert_allclose(b.reshape(-1), b_ref, rtol=1e-13, atol=1e-13 * np.abs(b_ref).max())
    x = np.random.default_rng(4).standard_normal((T, n))
    np.testing.assert_allclose(M.matvec(x).reshape(-1), M_ref @ x.reshape(-1), rtol=1e-12,
                               atol=1e-13 * lam_max * np.abs(x).max())

    # block_cholesky on our own lower block storage of A^T A, against LAPACK.
    chol = bandsolve.block_cholesky(bandsolve.BlockBanded(sparse_to_lower_blocks(M_ref, n, p)))
    assert_normwise_close(chol.solve(b_ref.reshape(T, n)).reshape(-1), x_lapack,
                          solve_rtol(np.float64, cond), 0)
    # log det = 2 sum log diag of LAPACK's banded Cholesky factor.
    c_band = scipy.linalg.cholesky_banded(lower_band_lapack(M_ref, (p + 1) * n - 1), lower=True)
    np.testing.assert_allclose(chol.logdet(), 2 * np.sum(np.log(c_band[0])), rtol=1e-10)


# ---------------------------------------------------------------------------------------
# Linear ODEs against solve_ivp
# ---------------------------------------------------------------------------------------

HALVINGS = [0.05, 0.025, 0.0125]


def _observed_orders(errors):
    errors = np.asarray(errors)
    return np.log2(errors[:-1] / errors[1:])


@pytest.mark.parametrize("central", [False, True])
def test_damped_oscillator_converges_second_order(central):
    """u'' + 0.3 u' + 4 u = 0, u(0) = 1, u'(0) = 0 on [0, 5]: E = D = 1, O = 3."""
    L = 5.0
    errors = []
    for h in HALVINGS:
        T = int(round(L / h)) + 1
        coefficients = np.zeros((T, 1, 1, 3))
        coefficients[..., 0, 0, :] = [4.0, 0.3, 1.0]
        rhs = np.zeros((T, 1))
        init = np.array([[[1.0, 0.0]]])
        steps = np.full(T - 1, h)
        u = bandsolve.smnn_solve(coefficients, rhs, init, steps, central_smoothness=central)
        t_eval = np.arange(T) * h
        ref = solve_ivp(lambda t, y: [y[1], -4.0 * y[0] - 0.3 * y[1]], (0.0, t_eval[-1]),
                        [1.0, 0.0], t_eval=t_eval, method="DOP853", rtol=1e-10, atol=1e-12)
        assert ref.success
        errors.append(np.max(np.abs(u[:, 0, 0] - ref.y[0])))
    orders = _observed_orders(errors)
    assert np.all(orders >= 1.8), (errors, orders)
    assert errors[-1] < 5e-3, errors


@pytest.mark.parametrize("O", [2, 3])
def test_linear_system_converges_second_order(O):
    """u' = A u with a damped rotation A, D = 2 states, E = 2 equations
    u'_e - sum_d A[e, d] u_d = 0, u(0) given (Ti = 1, Oi = 1)."""
    Amat = np.array([[-0.5, 2.0], [-2.0, -0.5]])
    u0 = np.array([1.0, 0.5])
    L = 4.0
    errors = []
    for h in HALVINGS:
        T = int(round(L / h)) + 1
        coefficients = np.zeros((1, 2, 2, O))  # step length 1: constant coefficients
        coefficients[0, :, :, 0] = -Amat
        coefficients[0, 0, 0, 1] = coefficients[0, 1, 1, 1] = 1.0
        rhs = np.zeros((1, 2))
        init = u0.reshape(1, 2, 1)
        steps = np.full(T - 1, h)
        u = bandsolve.smnn_solve(coefficients, rhs, init, steps)
        assert u.shape == (T, 2, O)
        t_eval = np.arange(T) * h
        ref = solve_ivp(lambda t, y: Amat @ y, (0.0, t_eval[-1]), u0, t_eval=t_eval,
                        method="DOP853", rtol=1e-10, atol=1e-12)
        assert ref.success
        errors.append(np.max(np.abs(u[:, :, 0] - ref.y.T)))
    orders = _observed_orders(errors)
    assert np.all(orders >= 1.8), (errors, orders)
    assert errors[-1] < 5e-3, errors

"""The MNN-dense baseline (``bandsolve.baselines``) against bandsolve and dense references.

* its rows, without the slack column, are exactly the S-MNN rows of DESIGN.md (central
  mode, unit weights), built independently in ``tests/helpers.py``; the slack column is 1
  on every smoothness row and 0 elsewhere;
* its dense Cholesky solve equals ``numpy.linalg.lstsq`` on its own rows;
* on a damped oscillator it agrees with ``bandsolve.smnn_solve`` (central smoothness, all
  weights 1) to 1e-6: the shared slack is the only difference and is tiny there;
* batches are solved element by element; bad input and singular systems raise.
"""

import numpy as np
import pytest

import bandsolve
from bandsolve.baselines import mnn_dense_rows, mnn_dense_solve

from helpers import checked_cond, make_problem, residual_rows


def damped_oscillator(T, h, batch=()):
    """u'' + 0.5 u' + 4 u = 0, u(0) = 1, u'(0) = 0 (E = D = 1, O = 3)."""
    coefficients = np.zeros(batch + (1, 1, 1, 3))
    coefficients[..., 0, 0, 0, :] = [4.0, 0.5, 1.0]
    rhs = np.zeros(batch + (1, 1))
    init = np.broadcast_to(np.array([[[1.0, 0.0]]]), batch + (1, 1, 2)).copy()
    return coefficients, rhs, init, np.full(batch + (T - 1,), h)


@pytest.mark.parametrize("shape", [dict(T=6, E=2, D=2, O=3, Ti=1, Oi=2),
                                   dict(T=5, E=3, D=1, O=4, Ti=2, Oi=3),
                                   dict(T=3, E=1, D=2, O=3, Ti=0, Oi=0)])
def test_rows_are_smnn_rows_plus_one_slack_column(shape):
    c, r, g, h = make_problem(1, **shape)
    A, beta = mnn_dense_rows(c, r, g, h)
    A_ref, beta_ref = residual_rows(c, r, g, h, central=True)
    T, E, D, O = c.shape
    assert A.shape == (A_ref.shape[0], T * D * O + 1)
    # Same rows in the same order (both follow DESIGN.md's table); entries are the same
    # products of the inputs, so they agree to rounding.
    np.testing.assert_allclose(A[:, :-1].toarray(), A_ref.toarray(), rtol=1e-14, atol=0)
    np.testing.assert_array_equal(beta, beta_ref)
    # The slack: 1 on every smoothness row (forward and backward Taylor for k <= O-2, and
    # central rows), 0 on equation and initial-value rows.
    n_fixed = T * E + g.size
    n_smooth = 2 * (O - 1) * D * (T - 1) + D * max(T - 2, 0)
    slack = A[:, -1].toarray().ravel()
    assert slack.size == n_fixed + n_smooth
    np.testing.assert_array_equal(slack[:n_fixed], 0.0)
    np.testing.assert_array_equal(slack[n_fixed:], 1.0)


def test_dense_cholesky_equals_lstsq_of_its_rows():
    c, r, g, h = make_problem(2, T=8, E=2, D=2, O=3, Ti=1, Oi=2)
    u, slack = mnn_dense_solve(c, r, g, h, return_slack=True)
    A, beta = mnn_dense_rows(c, r, g, h)
    A = A.toarray()
    x, _, rank, sv = np.linalg.lstsq(A, beta, rcond=None)
    assert rank == A.shape[1]
    cond = checked_cond((sv[0] / sv[-1]) ** 2)
    # Cholesky of A^T A: forward error ~ eps * cond(A^T A); the constant covers the
    # dimension factor of the bound for N = 97 unknowns.
    tol = 100 * np.finfo(np.float64).eps * cond
    np.testing.assert_allclose(u.ravel(), x[:-1], rtol=0, atol=tol * np.abs(x).max())
    np.testing.assert_allclose(slack, x[-1], rtol=0, atol=tol * np.abs(x).max())


def test_agrees_with_bandsolve_on_damped_oscillator():
    problem = damped_oscillator(T=400, h=0.01)
    u_dense, slack = mnn_dense_solve(*problem, return_slack=True)
    u = bandsolve.smnn_solve(*problem, central_smoothness=True, weight_equation=1.0,
                             weight_init=1.0, weight_smooth=1.0)
    assert u_dense.shape == u.shape == (400, 1, 3)
    # The formulations differ only by the shared slack, which is of the order of the
    # smoothness residuals, O(h^3) u''' ~ 1e-6 here, and mostly cancels between the
    # forward and backward rows: the bound is 1e-6 on every entry of u.
    assert abs(float(slack)) < 1e-6
    np.testing.assert_allclose(u_dense, u, rtol=0, atol=1e-6)
    # And both are the oscillator's solution to O(h^2).
    t = np.arange(400) * 0.01
    w = np.sqrt(4.0 - 0.25**2)
    exact = np.exp(-0.25 * t) * (np.cos(w * t) + 0.25 / w * np.sin(w * t))
    assert np.abs(u_dense[:, 0, 0] - exact).max() < 1e-3


def test_batch_is_a_loop_over_systems():
    problem = damped_oscillator(T=60, h=0.05, batch=(2,))
    problem[0][1, ..., 0] = 9.0  # a stiffer second oscillator
    u = mnn_dense_solve(*problem)
    assert u.shape == (2, 60, 1, 3)
    for i in range(2):
        np.testing.assert_array_equal(u[i], mnn_dense_solve(*(a[i] for a in problem)))
    assert not np.allclose(u[0], u[1])


def test_float32_inputs_give_float32_output():
    problem = tuple(a.astype(np.float32) for a in damped_oscillator(T=50, h=0.05))
    u = mnn_dense_solve(*problem)
    assert u.dtype == np.float32
    # computed in float64, returned rounded: agrees with the float64 run to float32 eps
    u64 = mnn_dense_solve(*(a.astype(np.float64) for a in problem))
    np.testing.assert_allclose(u, u64, rtol=0, atol=4 * np.finfo(np.float32).eps)


def test_errors():
    c, r, g, h = damped_oscillator(T=20, h=0.1)
    with pytest.raises(ValueError, match="O >= 3"):
        mnn_dense_solve(c[..., :2], r, g[..., :1], h)
    with pytest.raises(ValueError, match="steps"):
        mnn_dense_solve(c, r, g, -h)
    # zero coefficients and no initial values: constants are in the null space
    with pytest.raises(np.linalg.LinAlgError) as info:
        mnn_dense_solve(np.zeros_like(c), r, np.zeros((0, 1, 0)), h)
    assert isinstance(info.value, bandsolve.FactorizationError)

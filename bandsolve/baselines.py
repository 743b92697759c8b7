"""Baselines that bandsolve is compared against (for benchmarks, examples and tests).

:func:`mnn_dense_solve` is the original MNN formulation (Pervez et al., 2024) as the S-MNN
paper describes it: the S-MNN rows in central-smoothness mode plus **one slack variable
shared by every smoothness row**, central rows always present, no row weights, and a dense
Cholesky factorisation of the full ``(T*n + 1) x (T*n + 1)`` normal matrix. It costs
O(T^3) time and O(T^2) memory, which is the point: it is the cost that bandsolve removes.

Rows (per system; ``n = D*O``, unknowns ``x = [vec(u), eps]``, ``u`` index ``t*n + d*O + o``,
``eps`` last)::

    equation  t, e              sum_{d,o} c[t,e,d,o] u[t,d,o] - r[t,e]
    initial   t < Ti, d, o < Oi u[t,d,o] - g[t,d,o]
    forward   t < T-1, d, k <= O-2
              sum_{o>=k} h^o/(o-k)! u[t,d,o] - h^k u[t+1,d,k] + eps
    backward  t < T-1, d, k <= O-2
              sum_{o>=k} (-h)^o/(o-k)! u[t+1,d,o] - (-h)^k u[t,d,k] + eps
    central   t < T-2, d
              s^(O-3) u[t,d,O-2] + s^(O-2) u[t+1,d,O-1] - s^(O-3) u[t+2,d,O-2] + eps

with ``h = h[t]`` and ``s = h[t] + h[t+1]``. The original MNN writes the central row as
``(u[t+2,O-2] - u[t,O-2]) / s - u[t+1,O-1]``, which is the row above times ``-1/s^(O-2)``;
the S-MNN scaling is used here so that, apart from the slack, both solvers minimise the
same sum of squares and the comparison isolates the cost of the formulation. The slack lets
all smoothness rows shift by one common amount; for smooth solutions the optimal slack is
tiny and the two solutions agree closely (``tests/test_baselines.py``).

The rows are written here directly with NumPy, independently of ``bandsolve.formulation``.
"""

import math

import numpy as np
import scipy.linalg
import scipy.sparse

from . import _problem
from .errors import FactorizationError


def mnn_dense_rows(coefficients, rhs, init, steps):
    """Residual rows ``A x - beta`` of one system in the MNN-dense formulation.

    Parameters (one system, already broadcast along time, float64)
    ----------
    coefficients : ``(T, E, D, O)`` with ``O >= 3``
    rhs : ``(T, E)``
    init : ``(Ti, D, Oi)``
    steps : ``(T-1,)``

    Returns ``(A, beta)``: ``A`` a ``scipy.sparse`` CSR matrix ``(rows, T*D*O + 1)`` (last
    column: the slack) and ``beta`` ``(rows,)``.
    """
    T, E, D, O = coefficients.shape
    Ti, _, Oi = init.shape
    n = D * O
    slack = T * n
    rows, cols, vals, beta = [], [], [], []
    n_rows = 0

    def col(t, d, o):
        return t * n + d * O + o

    # equation rows
    t, e, d, o = np.indices((T, E, D, O))
    rows.append(n_rows + (t * E + e).ravel())
    cols.append(col(t, d, o).ravel())
    vals.append(coefficients.ravel())
    beta.append(rhs.ravel())
    n_rows += T * E
    # initial-value rows
    if Ti * Oi:
        t, d, o = np.indices((Ti, D, Oi))
        rows.append(n_rows + np.arange(Ti * D * Oi))
        cols.append(col(t, d, o).ravel())
        vals.append(np.ones(Ti * D * Oi))
        beta.append(init.ravel())
        n_rows += Ti * D * Oi

    def add_smoothness(entries, count):
        """One block of ``count`` rows: entries = [(column array, value array)], plus eps."""
        nonlocal n_rows
        row = n_rows + np.arange(count)
        for c, value in entries + [(np.full(count, slack), np.ones(count))]:
            rows.append(row)
            cols.append(c)
            vals.append(value)
        beta.append(np.zeros(count))
        n_rows += count

    h = steps
    ts = np.arange(T - 1)
    for dd in range(D):
        for k in range(O - 1):  # the top order is covered by the central rows
            forward = [(col(ts, dd, oo), h**oo / math.factorial(oo - k)) for oo in range(k, O)]
            add_smoothness(forward + [(col(ts + 1, dd, k), -(h**k))], T - 1)
            backward = [(col(ts + 1, dd, oo), (-h) ** oo / math.factorial(oo - k))
                        for oo in range(k, O)]
            add_smoothness(backward + [(col(ts, dd, k), -((-h) ** k))], T - 1)
    if T >= 3:
        tc = np.arange(T - 2)
        s = h[:-1] + h[1:]
        for dd in range(D):
            add_smoothness([(col(tc, dd, O - 2), s ** (O - 3)),
                            (col(tc + 1, dd, O - 1), s ** (O - 2)),
                            (col(tc + 2, dd, O - 2), -(s ** (O - 3)))], T - 2)
    A = scipy.sparse.coo_matrix(
        (np.concatenate(vals), (np.concatenate(rows), np.concatenate(cols))),
        shape=(n_rows, T * n + 1)).tocsr()
    return A, np.concatenate(beta)


def mnn_dense_solve(coefficients, rhs, init, steps, *, n_steps=None, return_slack=False):
    """Solve the S-MNN problem the original MNN way: shared slack, dense Cholesky.

    Same arguments and shapes as :func:`bandsolve.smnn_solve` (coefficients
    ``(..., T or 1, E, D, O)`` with ``O >= 3``, rhs ``(..., T or 1, E)``, init
    ``(..., Ti, D, Oi)``, steps ``(..., T-1 or 1)``), with central smoothness always on and
    all weights 1. Each batch element is solved separately in float64: the normal matrix
    ``A^T A`` is formed as a dense ``(T*D*O + 1)^2`` array and factored by LAPACK's dense
    Cholesky (O(T^3) time, O(T^2) memory; T = 2000 with n = 3 already needs ~290 MB).

    Returns ``u`` ``(..., T, D, O)`` in the inputs' dtype, and with ``return_slack=True``
    also the slack ``(...)``. Raises ``FactorizationError`` (a ``LinAlgError``) if a normal
    matrix is not positive definite, ``ValueError``/``TypeError`` for bad input.
    """
    arrays = _problem.host_inputs(rhs=rhs, coefficients=coefficients, steps=steps, init=init)
    problem = _problem.describe(**arrays, n_steps=n_steps, weight_equation=1.0,
                                weight_init=1.0, weight_smooth=1.0, central_smoothness=True)
    _problem.check_values(coefficients=arrays["coefficients"], steps=arrays["steps"],
                          rhs=arrays["rhs"], init=arrays["init"])
    coefficients, rhs, init, steps = (arrays[name].astype(problem.dtype, copy=False)
                                      for name in ("coefficients", "rhs", "init", "steps"))
    T, dtype, batch = problem.n_steps, problem.dtype, problem.batch
    E, D, O = coefficients.shape[-3:]
    c = np.broadcast_to(coefficients, batch + (T, E, D, O)).astype(np.float64)
    r = np.broadcast_to(rhs, batch + (T, E)).astype(np.float64)
    g = np.broadcast_to(init, batch + init.shape[-3:]).astype(np.float64)
    h = np.broadcast_to(steps, batch + (T - 1,)).astype(np.float64)
    u = np.empty(batch + (T, D, O), dtype=dtype)
    slack = np.empty(batch, dtype=dtype)
    for index in np.ndindex(batch):
        A, beta = mnn_dense_rows(c[index], r[index], g[index], h[index])
        normal = (A.T @ A).toarray()
        try:
            factor = scipy.linalg.cho_factor(normal, lower=True, check_finite=False)
            pivots = np.diagonal(factor[0]) ** 2
            # A singular A^T A may factor with rounding-sized positive pivots instead of
            # failing; treat pivots below the rounding level of the matrix as singular.
            if pivots.min() <= normal.shape[0] * np.finfo(np.float64).eps * pivots.max():
                raise np.linalg.LinAlgError("numerically singular (a pivot at rounding level)")
        except np.linalg.LinAlgError as error:
            raise FactorizationError(
                f"the MNN-dense normal matrix of batch index {index} is not positive "
                f"definite ({error}); the constraints do not pin the solution down",
                [index]) from None
        x = scipy.linalg.cho_solve(factor, A.T @ beta, check_finite=False)
        u[index] = x[:-1].reshape(T, D, O)
        slack[index] = x[-1]
    return (u, slack) if return_slack else u

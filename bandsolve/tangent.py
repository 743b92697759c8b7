"""Forward-mode derivative (JVP) of the S-MNN solve, with the forward factorisation.

For ``M(theta) x = b(theta)`` a tangent ``dtheta`` gives ``dx = M^{-1} (db - dM x)``: one
pair of substitutions with the factor already computed. In the row form ``M = A^T A``,
``b = A^T beta`` the right-hand side is the derivative of the normal residual at fixed
``x``::

    w = d[A^T (beta - A x)] = dA^T (beta - A x) + A^T (dbeta - dA x)

summed over the rows of ``docs/math.md`` (``bandsolve.formulation`` defines them):

* equation rows at step ``t``: ``we^2 (dC_t^T (r_t - C_t x_t) + C_t^T (dr_t - dC_t x_t))``;
* initial-value rows: ``wi^2 dg`` at the initial entries;
* Taylor rows ``R(h_t)`` acting on ``z = (u[t, d, :], u[t+1, d, :])``:
  ``-ws^2 dh_t (R'^T R z + R^T R' z)``, with ``R' = dR/dh``;
* central rows ``q(s)``, ``s = h_t + h_{t+1}``: ``-ws^2 ds (q' (q.z) + q (q'.z))``.
"""

import numpy as np

from . import _validation as v
from ._jit import jit_routine
from .formulation import central_weights, n_taylor_orders, taylor_rows


@jit_routine
def _taylor_tables(steps, n_orders, n_k, rows, drows):
    """rows, drows ``(S, 2*n_k, 2*O)``: the Taylor rows of every step size and their
    derivatives (``taylor_rows``, one call per step)."""
    for i in range(steps.size):
        taylor_rows(steps[i], n_orders, n_k, rows[i], drows[i])


@jit_routine
def _central_tables(sums, n_orders, out):
    """out ``(S, 4)``: ``(alpha, beta, dalpha, dbeta)`` of the central row per step sum."""
    for i in range(sums.size):
        out[i, 0], out[i, 1], out[i, 2], out[i, 3] = central_weights(sums[i], n_orders)


def smnn_jvp(factorization, coefficients, rhs, init, steps, u, tangents):
    """The JVP ``du`` of ``u = smnn_solve(coefficients, rhs, init, steps, ...)``.

    Parameters
    ----------
    factorization : the :class:`~bandsolve.SMNNFactorization` of ``coefficients`` and
        ``steps`` (from ``smnn_factor``, ``smnn_factor_solve`` or ``from_lower``); it carries
        the weights, ``central_smoothness`` and the initial-value shape.
    coefficients, rhs, init, steps : the solve's inputs (shapes as for ``smnn_solve``).
    u : ``(..., T, D, O)``, their solution.
    tangents : ``(dcoefficients, drhs, dinit, dsteps)``, each the shape of its input
        (or with more batch axes: one direction per batch element).

    Returns ``du`` ``(..., T, D, O)``. No refactorisation: an O(T n^2) sweep for the
    right-hand side and one pair of substitutions. Host (NumPy) arrays only.
    """
    lhs = factorization._lhs
    T, D, O = lhs.n_steps, lhs.n_dims, lhs.n_orders
    E, n = lhs.n_equations, D * O
    we, wi, ws = lhs.weights
    c, r, g, h, u = (v.as_host_array(name, a) for name, a in zip(
        ("coefficients", "rhs", "init", "steps", "u"), (coefficients, rhs, init, steps, u)))
    dc, dr, dg, dh = (v.as_host_array(name, a) for name, a in zip(
        ("dcoefficients", "drhs", "dinit", "dsteps"), tangents))
    if u.shape[-3:] != (T, D, O):
        raise ValueError(f"u must have shape (..., {T}, {D}, {O}); got {u.shape}")
    # a tangent may carry batch axes its input lacks (forward mode over many directions)
    batch = v.broadcast_batch(u=u.shape[:-3], coefficients=c.shape[:-4], rhs=r.shape[:-2],
                              init=g.shape[:-3], steps=h.shape[:-1], dcoefficients=dc.shape[:-4],
                              drhs=dr.shape[:-2], dinit=dg.shape[:-3], dsteps=dh.shape[:-1])
    dtype = lhs.dtype

    def full(a, tail):  # broadcast an input to the full batch and its time length
        return np.broadcast_to(a, batch + tail).astype(dtype, copy=False)

    C = full(c, (T, E, D, O)).reshape(batch + (T, E, n))
    dC = full(dc, (T, E, D, O)).reshape(batch + (T, E, n))
    u = full(u, (T, D, O))
    x = u.reshape(batch + (T, n))
    residual = full(r, (T, E)) - np.einsum("...ten,...tn->...te", C, x)
    w = we * we * (np.einsum("...ten,...te->...tn", dC, residual)
                   + np.einsum("...ten,...te->...tn", C,
                               full(dr, (T, E)) - np.einsum("...ten,...tn->...te", dC, x)))
    w = w.reshape(batch + (T, D, O))

    Ti, Oi = lhs.n_init_steps, lhs.n_init_orders
    if Ti * Oi:
        w[..., :Ti, :, :Oi] += wi * wi * full(dg, (Ti, D, Oi))

    hs = np.ascontiguousarray(full(h, (T - 1,)))
    dhs = full(dh, (T - 1,))
    n_k = n_taylor_orders(O, lhs.central)
    rows = np.empty(hs.shape + (2 * n_k, 2 * O), dtype=np.float64)
    drows = np.empty_like(rows)
    _taylor_tables(hs.reshape(-1).astype(np.float64), O, n_k,
                   rows.reshape(-1, 2 * n_k, 2 * O), drows.reshape(-1, 2 * n_k, 2 * O))
    z = np.concatenate([u[..., :-1, :, :], u[..., 1:, :, :]], axis=-1)  # (..., T-1, D, 2O)
    Rz = np.einsum("...kj,...dj->...dk", rows, z)
    dRz = np.einsum("...kj,...dj->...dk", drows, z)
    wz = -ws * ws * dhs[..., None, None] * (np.einsum("...kj,...dk->...dj", drows, Rz)
                                           + np.einsum("...kj,...dk->...dj", rows, dRz))
    w[..., :-1, :, :] += wz[..., :O]
    w[..., 1:, :, :] += wz[..., O:]

    if lhs.central and T >= 3:
        sums = np.ascontiguousarray(hs[..., :-1] + hs[..., 1:])
        table = np.empty(sums.shape + (4,), dtype=np.float64)
        _central_tables(sums.reshape(-1).astype(np.float64), O, table.reshape(-1, 4))
        alpha, beta, dalpha, dbeta = (table[..., i, None] for i in range(4))
        ds = (dhs[..., :-1] + dhs[..., 1:])[..., None]
        a, b_, e = u[..., :-2, :, O - 2], u[..., 1:-1, :, O - 1], u[..., 2:, :, O - 2]
        qz = alpha * (a - e) + beta * b_
        dqz = dalpha * (a - e) + dbeta * b_
        # coefficients of the central row on (u[t, O-2], u[t+1, O-1], u[t+2, O-2])
        scale = -ws * ws * ds
        w[..., :-2, :, O - 2] += scale * (dalpha * qz + alpha * dqz)
        w[..., 1:-1, :, O - 1] += scale * (dbeta * qz + beta * dqz)
        w[..., 2:, :, O - 2] -= scale * (dalpha * qz + alpha * dqz)

    du = factorization.cholesky.solve(np.ascontiguousarray(w, dtype=dtype).reshape(batch + (T, n)))
    return du.reshape(batch + (T, D, O))

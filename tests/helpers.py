"""Independent references and test-data generators for the bandsolve tests.

Nothing here imports ``bandsolve``. The reference is built straight from the residual-row
table of DESIGN.md section 1 with plain NumPy/SciPy:

* :func:`residual_rows` writes the least-squares rows ``A x - beta`` of one system as a
  sparse matrix (unknown index ``(t*D + d)*O + o``, i.e. ``t*n + d*O + o`` with ``n = D*O``);
* :func:`oracle_solve` solves ``min ||A x - beta||`` by ``numpy.linalg.lstsq`` in float64,
  one batch element at a time (a slow, obviously correct loop);
* :func:`oracle_normal_equations` returns the dense ``A^T A`` and ``A^T beta``.

Tolerances are keyed by dtype and scaled by the condition number of the normal matrix; see
:func:`solve_rtol`.
"""

from __future__ import annotations

import math

import numpy as np
import scipy.sparse

# ---------------------------------------------------------------------------------------
# Broadcasting of the S-MNN inputs (the public shape contract, re-derived here)
# ---------------------------------------------------------------------------------------


def infer_n_steps(coefficients, rhs, steps, n_steps=None):
    """T from the step axes: coefficients ``(..., T|1, E, D, O)``, rhs ``(..., T|1, E)``,
    steps ``(..., T-1|1)``; ``n_steps`` when no input carries it."""
    if n_steps is not None:
        return int(n_steps)
    for length in (np.shape(coefficients)[-4], np.shape(rhs)[-2]):
        if length != 1:
            return int(length)
    if np.shape(steps)[-1] != 1:
        return int(np.shape(steps)[-1]) + 1
    raise ValueError("T cannot be inferred in the test oracle; pass n_steps")


def broadcast_problem(coefficients, rhs, init, steps, n_steps=None):
    """Broadcast the four inputs to a common batch shape and the full step length.

    Returns float64 copies ``c (B, T, E, D, O)``, ``r (B, T, E)``, ``g (B, Ti, D, Oi)``,
    ``h (B, T-1)`` and the batch shape ``B``.
    """
    c = np.asarray(coefficients, dtype=np.float64)
    r = np.asarray(rhs, dtype=np.float64)
    g = np.asarray(init, dtype=np.float64)
    h = np.asarray(steps, dtype=np.float64)
    T = infer_n_steps(c, r, h, n_steps)
    E, D, O = c.shape[-3:]
    Ti, _, Oi = g.shape[-3:]
    batch = np.broadcast_shapes(c.shape[:-4], r.shape[:-2], g.shape[:-3], h.shape[:-1])
    c = np.broadcast_to(c, batch + (T, E, D, O)).copy()
    r = np.broadcast_to(r, batch + (T, E)).copy()
    g = np.broadcast_to(g, batch + (Ti, D, Oi)).copy()
    h = np.broadcast_to(h, batch + (max(T - 1, 0),)).copy()
    return c, r, g, h, batch


# ---------------------------------------------------------------------------------------
# The residual rows of one system
# ---------------------------------------------------------------------------------------


def residual_rows(c, r, g, h, *, we=1.0, wi=1.0, ws=1.0, central=False):
    """Sparse ``A`` (rows x T*D*O, CSR) and dense ``beta`` of one system, in float64.

    ``c (T, E, D, O)``, ``r (T, E)``, ``g (Ti, D, Oi)``, ``h (T-1,)``. Row order does not
    matter for least squares; we write equation, initial-value, forward Taylor, backward
    Taylor and central rows in that order, exactly as in DESIGN.md section 1.
    """
    c = np.asarray(c, dtype=np.float64)
    r = np.asarray(r, dtype=np.float64)
    g = np.asarray(g, dtype=np.float64)
    h = np.asarray(h, dtype=np.float64)
    T, E, D, O = c.shape
    Ti, _, Oi = g.shape
    n_unknowns = T * D * O

    def col(t, d, o):
        return (np.asarray(t) * D + d) * O + o

    rows, cols, vals, beta = [], [], [], []
    n_rows = 0

    # equation rows t, e: we * (sum_{d,o} c[t,e,d,o] u[t,d,o] - r[t,e])
    t, e, d, o = np.indices((T, E, D, O))
    rows.append(n_rows + (t * E + e).ravel())
    cols.append(col(t, d, o).ravel())
    vals.append(we * c.ravel())
    beta.append(we * r.ravel())
    n_rows += T * E

    # initial-value rows t < Ti, d, o < Oi: wi * (u[t,d,o] - g[t,d,o])
    if Ti * Oi > 0:
        t, d, o = np.indices((Ti, D, Oi))
        rows.append(n_rows + ((t * D + d) * Oi + o).ravel())
        cols.append(col(t, d, o).ravel())
        vals.append(np.full(Ti * D * Oi, wi))
        beta.append(wi * g.ravel())
        n_rows += Ti * D * Oi

    K = range(O - 1) if central else range(O)
    ts = np.arange(T - 1)
    for d in range(D):
        for k in K:
            # forward Taylor: sum_{o>=k} h^o/(o-k)! u[t,d,o] - h^k u[t+1,d,k]
            row = n_rows + ts
            for o in range(k, O):
                rows.append(row)
                cols.append(col(ts, d, o))
                vals.append(ws * h**o / math.factorial(o - k))
            rows.append(row)
            cols.append(col(ts + 1, d, k))
            vals.append(-ws * h**k)
            beta.append(np.zeros(T - 1))
            n_rows += T - 1
            # backward Taylor: sum_{o>=k} (-h)^o/(o-k)! u[t+1,d,o] - (-h)^k u[t,d,k]
            row = n_rows + ts
            for o in range(k, O):
                rows.append(row)
                cols.append(col(ts + 1, d, o))
                vals.append(ws * (-h) ** o / math.factorial(o - k))
            rows.append(row)
            cols.append(col(ts, d, k))
            vals.append(-ws * (-h) ** k)
            beta.append(np.zeros(T - 1))
            n_rows += T - 1

    if central and T >= 3:
        # central: s^(O-3) u[t,d,O-2] + s^(O-2) u[t+1,d,O-1] - s^(O-3) u[t+2,d,O-2]
        tc = np.arange(T - 2)
        s = h[:-1] + h[1:]
        for d in range(D):
            row = n_rows + tc
            rows += [row, row, row]
            cols += [col(tc, d, O - 2), col(tc + 1, d, O - 1), col(tc + 2, d, O - 2)]
            vals += [ws * s ** (O - 3), ws * s ** (O - 2), -ws * s ** (O - 3)]
            beta.append(np.zeros(T - 2))
            n_rows += T - 2

    A = scipy.sparse.coo_matrix(
        (np.concatenate(vals), (np.concatenate(rows), np.concatenate(cols))),
        shape=(n_rows, n_unknowns),
    ).tocsr()
    return A, np.concatenate(beta)


def _weights(kw):
    return dict(
        we=float(kw.get("weight_equation", 1.0)),
        wi=float(kw.get("weight_init", 1.0)),
        ws=float(kw.get("weight_smooth", 1.0)),
        central=bool(kw.get("central_smoothness", False)),
    )


def oracle_rows(coefficients, rhs, init, steps, *, n_steps=None, **kw):
    """Per batch element ``(A dense, beta)``; returns a dict index -> (A, beta) and B."""
    c, r, g, h, batch = broadcast_problem(coefficients, rhs, init, steps, n_steps)
    w = _weights(kw)
    out = {}
    for idx in np.ndindex(batch):
        A, beta = residual_rows(c[idx], r[idx], g[idx], h[idx], **w)
        out[idx] = (A.toarray(), beta)
    return out, batch, c.shape[-4:]


def oracle_solve(coefficients, rhs, init, steps, *, n_steps=None, **kw):
    """Least-squares solution ``u (..., T, D, O)`` in float64 via ``numpy.linalg.lstsq``.

    Also returns ``cond`` (array of batch shape): the 2-norm condition number of the normal
    matrix ``A^T A``, i.e. ``cond(A)**2``; ``inf`` if ``A`` is rank deficient.
    """
    systems, batch, (T, E, D, O) = oracle_rows(
        coefficients, rhs, init, steps, n_steps=n_steps, **kw
    )
    u = np.empty(batch + (T, D, O))
    cond = np.empty(batch)
    for idx, (A, beta) in systems.items():
        x, _, rank, sv = np.linalg.lstsq(A, beta, rcond=None)
        u[idx] = x.reshape(T, D, O)
        cond[idx] = (sv[0] / sv[-1]) ** 2 if rank == A.shape[1] else np.inf
    return u, cond


def oracle_normal_equations(coefficients, rhs, init, steps, *, n_steps=None, **kw):
    """Dense ``M = A^T A (..., T*n, T*n)``, ``b = A^T beta (..., T, n)`` and the entrywise
    magnitudes ``|A|^T |A|`` and ``|A|^T |beta|`` (for rounding-error bounds)."""
    systems, batch, (T, E, D, O) = oracle_rows(
        coefficients, rhs, init, steps, n_steps=n_steps, **kw
    )
    n = D * O
    M = np.empty(batch + (T * n, T * n))
    b = np.empty(batch + (T, n))
    Mabs = np.empty_like(M)
    babs = np.empty_like(b)
    for idx, (A, beta) in systems.items():
        M[idx] = A.T @ A
        b[idx] = (A.T @ beta).reshape(T, n)
        Mabs[idx] = np.abs(A).T @ np.abs(A)
        babs[idx] = (np.abs(A).T @ np.abs(beta)).reshape(T, n)
    return M, b, Mabs, babs


# ---------------------------------------------------------------------------------------
# Tolerances
# ---------------------------------------------------------------------------------------

EPS = {np.dtype(np.float32): float(np.finfo(np.float32).eps),
       np.dtype(np.float64): float(np.finfo(np.float64).eps)}


def solve_rtol(dtype, cond):
    """Normwise relative tolerance for a solution computed in ``dtype``.

    The package rounds the inputs' products into ``M`` (relative entry error ~ eps) and
    factors ``M`` by a backward-stable Cholesky; both give a forward error of order
    ``eps * cond(M)``. The oracle works in float64 from the same (already rounded) inputs,
    with error ``~1e-16 * cond(A)``, negligible here. The constant 50 covers the
    dimension-dependent factor of the Cholesky bound for our small blocks (n <= 12). A floor
    of 100 eps covers perfectly conditioned cases. float32 is thus ~5e8 times looser than
    float64, which is the ratio of the two machine epsilons.
    """
    eps = EPS[np.dtype(dtype)]
    return max(100 * eps, 50 * eps * float(np.max(cond)))


def assert_normwise_close(actual, expected, rtol, batch_ndim, what="u"):
    """``||actual - expected|| <= rtol * ||expected||`` for every batch element."""
    actual = np.asarray(actual, dtype=np.float64)
    expected = np.asarray(expected, dtype=np.float64)
    assert actual.shape == expected.shape, (actual.shape, expected.shape)
    batch = expected.shape[:batch_ndim]
    for idx in np.ndindex(batch):
        err = np.linalg.norm(actual[idx] - expected[idx])
        ref = np.linalg.norm(expected[idx])
        assert np.all(np.isfinite(actual[idx])), f"{what}[{idx}] not finite"
        assert err <= rtol * max(ref, 1e-300), (
            f"{what}[{idx}]: relative error {err / max(ref, 1e-300):.3e} > rtol {rtol:.3e}"
        )


# ---------------------------------------------------------------------------------------
# Seeded, well-posed test problems
# ---------------------------------------------------------------------------------------


def make_problem(
    seed,
    *,
    batch=(),
    T=5,
    E=2,
    D=2,
    O=3,
    Ti=1,
    Oi=2,
    dtype=np.float64,
    coef_batch=None,
    rhs_batch=None,
    init_batch=None,
    steps_batch=None,
    coef_T=None,
    rhs_T=None,
    steps_T=None,
    h_range=(0.4, 0.9),
):
    """A seeded random S-MNN problem ``(coefficients, rhs, init, steps)``.

    Well posed by construction in the common case: the smoothness rows leave only the
    polynomials of degree < O (per d) in their null space (forward and backward Taylor rows
    agree exactly on polynomials), and random Gaussian coefficients over T steps (T*E >= D*O
    generically) plus initial values remove those. Steps in [0.4, 0.9] keep the Taylor
    entries h^o of order one, so the normal matrix stays well conditioned (cond ~ 1e2-1e4).
    Tests that may leave the problem singular (no initial values, few equations) check
    the oracle's condition number, see :func:`checked_cond`.

    ``*_batch`` override the batch shape of one input (for broadcasting tests); ``*_T`` set
    the step length of one input (1 to broadcast over steps).
    """
    rng = np.random.default_rng(seed)
    cb = batch if coef_batch is None else coef_batch
    rb = batch if rhs_batch is None else rhs_batch
    ib = batch if init_batch is None else init_batch
    sb = batch if steps_batch is None else steps_batch
    cT = T if coef_T is None else coef_T
    rT = T if rhs_T is None else rhs_T
    sT = max(T - 1, 0) if steps_T is None else steps_T
    coefficients = rng.standard_normal(tuple(cb) + (cT, E, D, O))
    rhs = rng.standard_normal(tuple(rb) + (rT, E))
    init = rng.standard_normal(tuple(ib) + (Ti, D, Oi))
    steps = rng.uniform(*h_range, size=tuple(sb) + (sT,))
    return tuple(np.asarray(a, dtype=dtype) for a in (coefficients, rhs, init, steps))


def make_full_rank_equations(seed, *, batch=(), T=5, D=2, O=2, extra=1, dtype=np.float64):
    """Coefficients whose per-step block C_t (E x n, E = n + extra) has full column rank:
    C_t = [I_n + 0.3 G; 0.3 G'] with Gaussian G, so sigma_min(C_t) >= 1 - 0.3 ||G|| > 0 with
    overwhelming probability and M >= we^2 C_t^T C_t is SPD with no initial values at all.
    """
    rng = np.random.default_rng(seed)
    n = D * O
    E = n + extra
    C = 0.3 * rng.standard_normal(tuple(batch) + (T, E, n))
    C[..., :n, :] += np.eye(n)
    return np.asarray(C.reshape(tuple(batch) + (T, E, D, O)), dtype=dtype)


def checked_cond(cond, limit=1e6):
    """Assert that a test problem is well posed (the oracle's cond(M) below ``limit``), so a
    test never silently passes on a meaningless comparison."""
    worst = float(np.max(cond))
    assert np.isfinite(worst) and worst < limit, f"test problem ill posed: cond(M)={worst:.3e}"
    return worst


# ---------------------------------------------------------------------------------------
# Block-banded matrices
# ---------------------------------------------------------------------------------------


def dense_to_lower_blocks(dense, n, p, fill=0.0):
    """Lower block storage ``(..., T, p+1, n, n)``: ``blocks[..., t, j] = dense block
    (t, t-j)``; cells with ``t-j < 0`` are set to ``fill`` (they must never be read)."""
    dense = np.asarray(dense)
    T = dense.shape[-1] // n
    blocks = np.full(dense.shape[:-2] + (T, p + 1, n, n), fill, dtype=dense.dtype)
    for t in range(T):
        for j in range(min(p, t) + 1):
            s = t - j
            blocks[..., t, j, :, :] = dense[..., t * n:(t + 1) * n, s * n:(s + 1) * n]
    return blocks


def lower_blocks_to_dense(blocks):
    """Symmetric dense matrix from lower block storage (ignores cells with t-j < 0)."""
    blocks = np.asarray(blocks)
    T, p1, n, _ = blocks.shape[-4:]
    dense = np.zeros(blocks.shape[:-4] + (T * n, T * n), dtype=blocks.dtype)
    for t in range(T):
        for j in range(min(p1 - 1, t) + 1):
            s = t - j
            blk = blocks[..., t, j, :, :]
            dense[..., t * n:(t + 1) * n, s * n:(s + 1) * n] = blk
            if j > 0:
                dense[..., s * n:(s + 1) * n, t * n:(t + 1) * n] = np.swapaxes(blk, -1, -2)
    return dense


def random_spd_block_banded(seed, *, batch=(), T=6, n=3, p=1, dtype=np.float64):
    """Dense SPD block-banded ``M = L L^T`` with ``L`` block lower-banded (bandwidth p),
    diagonal blocks ``2 I + 0.3 * strictly-lower Gaussian`` and off-diagonal blocks
    ``0.3 * Gaussian``: L is well conditioned, hence so is M (cond ~ 10). Returns
    ``(dense M, dense L)``. The Schur complement at step t of a block Cholesky of M is
    exactly ``L_tt L_tt^T``."""
    rng = np.random.default_rng(seed)
    N = T * n
    L = np.zeros(tuple(batch) + (N, N))
    for t in range(T):
        for j in range(min(p, t) + 1):
            s = t - j
            if j == 0:
                blk = 2.0 * np.eye(n) + 0.3 * np.tril(rng.standard_normal(tuple(batch) + (n, n)), -1)
            else:
                blk = 0.3 * rng.standard_normal(tuple(batch) + (n, n))
            L[..., t * n:(t + 1) * n, s * n:(s + 1) * n] = blk
    M = L @ np.swapaxes(L, -1, -2)
    M = 0.5 * (M + np.swapaxes(M, -1, -2))
    return M.astype(dtype), L


def lower_band_lapack(M_sparse_or_dense, bw):
    """LAPACK lower band storage for ``scipy.linalg.solveh_banded(..., lower=True)``:
    ``ab[i - j, j] = M[i, j]`` for ``0 <= i - j <= bw`` (scalar bandwidth
    ``bw = (p+1)*n - 1``)."""
    Mc = scipy.sparse.tril(scipy.sparse.coo_matrix(M_sparse_or_dense)).tocoo()
    N = Mc.shape[0]
    ab = np.zeros((bw + 1, N))
    assert np.all(Mc.row - Mc.col <= bw), "matrix wider than the stated band"
    ab[Mc.row - Mc.col, Mc.col] = Mc.data
    return ab


def fd4(f, x, eps):
    """4th-order central finite difference of scalar ``f`` w.r.t. every element of ``x``.

    The truncation error is O(eps^4 f^(5)); the rounding error O(1e-16 |f| / eps).
    """
    x = np.array(x, dtype=np.float64)
    grad = np.zeros_like(x)
    for idx in np.ndindex(x.shape):
        def at(delta):
            y = x.copy()
            y[idx] += delta
            return f(y)
        grad[idx] = (-at(2 * eps) + 8 * at(eps) - 8 * at(-eps) + at(-2 * eps)) / (12 * eps)
    return grad


# ----------------------------------------------------------------------------- examples

EXAMPLES_DIR = __import__("pathlib").Path(__file__).resolve().parent.parent / "examples"


def run_example(name, tmp_path, *extra):
    """Run ``examples/name --quick --json --plot`` in a subprocess; returns
    ``(metrics, stdout)``. Fails on a non-zero exit or a missing/invalid PNG; skips when
    matplotlib (the ``[examples]`` or ``[bench]`` extra) is not installed."""
    import json
    import subprocess
    import sys

    import pytest

    pytest.importorskip("matplotlib", reason="the examples write a plot: the [examples] extra")

    json_path, png_path = tmp_path / f"{name}.json", tmp_path / f"{name}.png"
    # generous: measured 602 s wall (67 s of CPU) for kdv.py --quick on a 2-core machine
    # shared with a dozen other jobs
    result = subprocess.run(
        [sys.executable, str(EXAMPLES_DIR / name), "--quick", "--json", str(json_path),
         "--plot", str(png_path), *extra],
        cwd=EXAMPLES_DIR.parent, capture_output=True, text=True, timeout=1800)
    assert result.returncode == 0, result.stdout + result.stderr
    assert png_path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    return json.loads(json_path.read_text()), result.stdout


def directional_derivative(problem, index, direction, ubar, eps=1e-6):
    """``d/ds <ubar, u_lstsq(problem with input[index] + s*direction)>`` at 0 by a
    fourth-order central difference of :func:`oracle_solve` (independent of bandsolve):
    the reference for VJPs."""
    def value(s):
        moved = list(problem)
        moved[index] = problem[index] + s * direction
        return float(np.sum(ubar * oracle_solve(*moved)[0]))
    return (8 * (value(eps) - value(-eps)) - (value(2 * eps) - value(-2 * eps))) / (12 * eps)


def check_vjp_against_fd(problem, grads, ubar, rng, finite_only=None):
    """Each gradient of ``grads`` against :func:`directional_derivative` along a random
    direction (drawn from ``rng``). ``finite_only``: a batch index (first axis) whose
    gradients are only checked finite and left out of the directions."""
    for index, grad in enumerate(grads):
        assert grad.shape == problem[index].shape
        direction = rng.standard_normal(grad.shape)
        if finite_only is not None:
            assert np.all(np.isfinite(grad[finite_only]))
            direction[finite_only] = 0.0
        expected = directional_derivative(problem, index, direction, ubar)
        # the FD step 1e-6 leaves ~1e-9 relative truncation/rounding error
        assert abs(np.sum(grad * direction) - expected) <= 1e-7 * max(1.0, abs(expected)), (
            index, np.sum(grad * direction), expected)


def small_step_batch():
    """``(coefficients, rhs, init, steps)`` of 8 systems, O = 4, T = 12, whose steps go
    from 0.5 down to 0.002 (cond(A) from ~30 to 1.7e8): the lanes' ill-conditioned cases."""
    rng = np.random.default_rng(7)
    B, T, D, O, E = 8, 12, 1, 4, 1
    c = rng.standard_normal((B, T, E, D, O))
    r = rng.standard_normal((B, T, E))
    g = rng.standard_normal((B, 1, D, 2))
    h = np.full((B, T - 1), 0.5)
    for b, step in enumerate([0.05, 0.02, 0.01, 5e-3, 2e-3]):
        h[b + 1] = step
    return c, r, g, h

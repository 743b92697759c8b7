"""Exact least-squares reference for the S-MNN rows, in 60-digit arithmetic (mpmath).

Nothing here imports ``bandsolve``. The residual rows ``A x - beta`` of one system are
written straight from the row table of DESIGN.md section 1, from the input values
converted exactly (every float32/float64 value is a binary fraction, ``mpmath.mpf`` of it
is exact); the Taylor entries ``h^o / (o-k)!`` are rounded once at 60 digits. The normal
equations ``M x = A^T beta`` (``M = A^T A``) are then formed and solved by a banded
Cholesky factorisation, all at 60 digits. Rounding at 60 digits perturbs ``M`` by a
relative ``~1e-60``, so the computed ``x`` has relative error ``~1e-60 * cond(M) =
1e-60 * cond(A)^2``: below ``1e-38`` for ``cond(A) < 1e11`` and below float64's ``1e-16``
up to ``cond(A) ~ 1e22``. That is "exact" for every tolerance used in the tests; ``x`` is
returned rounded to float64.

``cond(A)`` (the 2-norm condition number of the rows, not of ``M``) is computed in
float64 from the same rows: by a dense SVD when ``T*n <= DENSE_SVD_LIMIT``; otherwise by
Lanczos (``scipy.sparse.linalg.eigsh``) on ``M`` and on ``M^{-1}`` applied through the
60-digit Cholesky factor rounded to float64 (that factor is the exact factor of a matrix
within ``~eps |L||L^T|`` of ``M``, so the smallest eigenvalue is accurate to a relative
``~eps * cond(A)^2``; the large-T route therefore refuses ``cond(A) > 1e7``). The SVD
route's ``sigma_min`` has an absolute error ``~eps * sigma_max``, i.e. a relative error
``~eps * cond(A) <= 1e-5`` for ``cond(A) <= 1e11``: plenty for a tolerance factor.

Usage::

    ref = exact_solution(c, r, g, h, we=1.0, wi=1.0, ws=1.0, central=False)
    ref.x       # (T, D, O) float64, the exact least-squares solution
    ref.cond    # cond(A), float
    ref.solve(ubar)   # (T, D, O) float64: M^{-1} ubar at 60 digits (the VJP's second solve)

Results are cached per distinct input (values, dtype, weights, mode) for the session.
"""

from __future__ import annotations

import hashlib
import math

import numpy as np
import scipy.linalg
import scipy.sparse
import scipy.sparse.linalg
from mpmath import mp, mpf

try:  # a multi-threaded BLAS on a busy machine makes this small SVD 100x slower
    from threadpoolctl import threadpool_limits
except ImportError:  # pragma: no cover
    threadpool_limits = None

DPS = 60
DENSE_SVD_LIMIT = 1200

_CACHE: dict = {}


def _exact(array):
    """Object array of mpf holding exactly the values of a float32/float64 array."""
    a = np.asarray(array)
    assert a.dtype in (np.float32, np.float64), a.dtype
    flat = [mpf(float(v)) for v in a.astype(np.float64).ravel()]  # float32 -> float64 exact
    return np.array(flat, dtype=object).reshape(a.shape) if flat else np.empty(a.shape, object)


def exact_rows(c, r, g, h, *, we=1.0, wi=1.0, ws=1.0, central=False):
    """The residual rows of one system at 60 digits.

    ``c (T, E, D, O)``, ``r (T, E)``, ``g (Ti, D, Oi)``, ``h (T-1,)`` (float32 or
    float64). Returns a list of ``(columns, values, beta)``: row ``sum_j values[j] *
    x[columns[j]] - beta``, unknown index ``(t*D + d)*O + o``. Rows as in DESIGN.md
    section 1 (the order of rows does not matter for least squares).
    """
    T, E, D, O = np.shape(c)
    Ti, _, Oi = np.shape(g)
    with mp.workdps(DPS):
        c, r, g, h = (_exact(a) for a in (c, r, g, h))
        we, wi, ws = mpf(float(we)), mpf(float(wi)), mpf(float(ws))
        fact = [mpf(math.factorial(k)) for k in range(O + 1)]
        rows = []

        def col(t, d, o):
            return (t * D + d) * O + o

        for t in range(T):  # equation rows: we * (sum c[t,e,d,o] u[t,d,o] - r[t,e])
            for e in range(E):
                cols = [col(t, d, o) for d in range(D) for o in range(O)]
                vals = [we * c[t, e, d, o] for d in range(D) for o in range(O)]
                rows.append((cols, vals, we * r[t, e]))
        for t in range(Ti):  # initial values: wi * (u[t,d,o] - g[t,d,o])
            for d in range(D):
                for o in range(Oi):
                    rows.append(([col(t, d, o)], [wi], wi * g[t, d, o]))
        K = range(O - 1) if central else range(O)
        for t in range(T - 1):
            hp = [h[t] ** o for o in range(O + 1)]       # h^o
            hm = [(-h[t]) ** o for o in range(O + 1)]    # (-h)^o
            for d in range(D):
                for k in K:
                    # forward: sum_{o>=k} h^o/(o-k)! u[t,d,o] - h^k u[t+1,d,k]
                    cols = [col(t, d, o) for o in range(k, O)] + [col(t + 1, d, k)]
                    vals = [ws * hp[o] / fact[o - k] for o in range(k, O)] + [-ws * hp[k]]
                    rows.append((cols, vals, mpf(0)))
                    # backward: sum_{o>=k} (-h)^o/(o-k)! u[t+1,d,o] - (-h)^k u[t,d,k]
                    cols = [col(t + 1, d, o) for o in range(k, O)] + [col(t, d, k)]
                    vals = [ws * hm[o] / fact[o - k] for o in range(k, O)] + [-ws * hm[k]]
                    rows.append((cols, vals, mpf(0)))
        if central:
            for t in range(T - 2):
                s = h[t] + h[t + 1]
                a, b = s ** (O - 3), s ** (O - 2)
                for d in range(D):
                    rows.append(([col(t, d, O - 2), col(t + 1, d, O - 1), col(t + 2, d, O - 2)],
                                 [ws * a, ws * b, -ws * a], mpf(0)))
    return rows


class BandedCholesky:
    """60-digit Cholesky ``M = L L^T`` of a symmetric banded matrix, lower band ``bw``.

    ``rows[i]`` holds ``M[i, lo(i):i+1]`` with ``lo(i) = max(0, i - bw)``. A non-positive
    pivot raises ``ValueError``: the test problem is then singular and unfit for an
    accuracy test.
    """

    def __init__(self, rows, N, bw):
        self.N, self.bw = N, bw
        L = []
        with mp.workdps(DPS):
            for i in range(N):
                lo_i = max(0, i - bw)
                Li = []
                for j in range(lo_i, i + 1):
                    lo_j = max(0, j - bw)
                    lo = max(lo_i, lo_j)
                    Lj = L[j] if j < i else Li
                    s = rows[i][j - lo_i] - mp.fdot(
                        (Li[k - lo_i], Lj[k - lo_j]) for k in range(lo, j))
                    if j == i:
                        if not s > 0:
                            raise ValueError(f"exact normal matrix not positive definite at {i}")
                        Li.append(mp.sqrt(s))
                    else:
                        Li.append(s / L[j][j - lo_j])
                L.append(Li)
        self.L = L

    def solve(self, b):
        """``M^{-1} b`` for a list of mpf (length N); returns a list of mpf."""
        N, bw, L = self.N, self.bw, self.L
        with mp.workdps(DPS):
            z = [mpf(0)] * N
            for i in range(N):  # L z = b
                lo = max(0, i - bw)
                z[i] = (b[i] - mp.fdot((L[i][k - lo], z[k]) for k in range(lo, i))) / L[i][i - lo]
            x = [mpf(0)] * N
            for i in reversed(range(N)):  # L^T x = z; column i of L^T is row i of L
                x[i] = z[i] / L[i][i - max(0, i - bw)]
                lo = max(0, i - bw)
                for k in range(lo, i):
                    z[k] -= L[i][k - lo] * x[i]
            return x

    def lower_band_float64(self):
        """``L`` rounded to float64 in LAPACK lower band storage ``ab[i-j, j] = L[i, j]``."""
        ab = np.zeros((self.bw + 1, self.N))
        for i, Li in enumerate(self.L):
            lo = max(0, i - self.bw)
            for j, v in zip(range(lo, i + 1), Li):
                ab[i - j, j] = float(v)
        return ab


class ExactSolution:
    """Exact least-squares solution of one system (see the module docstring)."""

    def __init__(self, c, r, g, h, *, we, wi, ws, central):
        T, _, D, O = np.shape(c)
        self.shape = (T, D, O)
        self.n = D * O
        self.rows = exact_rows(c, r, g, h, we=we, wi=wi, ws=ws, central=central)
        N = T * D * O
        bw = max(max(cols) - min(cols) for cols, _, _ in self.rows)
        with mp.workdps(DPS):
            zero = mpf(0)
            M = [[zero] * (i - max(0, i - bw) + 1) for i in range(N)]
            rhs = [zero] * N
            for cols, vals, beta in self.rows:
                for a, va in zip(cols, vals):
                    rhs[a] += va * beta
                    for b, vb in zip(cols, vals):
                        if b <= a:
                            M[a][b - max(0, a - bw)] += va * vb
            self.factor = BandedCholesky(M, N, bw)
            self._x = self.factor.solve(rhs)
        self.x = np.array([float(v) for v in self._x]).reshape(self.shape)
        self.cond = self._cond(N, bw)

    def solve(self, ubar):
        """``M^{-1} ubar`` at 60 digits, ``ubar (T, D, O)`` -> float64 ``(T, D, O)``."""
        y = self.factor.solve([mpf(float(v)) for v in np.ravel(ubar)])
        return np.array([float(v) for v in y]).reshape(self.shape)

    def rows_float64(self):
        """``(A, beta)`` rounded to float64: ``A (rows, T*n)`` sparse CSR."""
        N = int(np.prod(self.shape))
        ri, ci, vi = [], [], []
        for i, (cols, vals, _) in enumerate(self.rows):
            ri += [i] * len(cols)
            ci += cols
            vi += [float(v) for v in vals]
        A = scipy.sparse.coo_matrix((vi, (ri, ci)), shape=(len(self.rows), N)).tocsr()
        return A, np.array([float(b) for _, _, b in self.rows])

    def _cond(self, N, bw):
        A, _ = self.rows_float64()
        if N <= DENSE_SVD_LIMIT:
            if threadpool_limits is None:
                sv = np.linalg.svd(A.toarray(), compute_uv=False)
            else:
                with threadpool_limits(1):
                    sv = np.linalg.svd(A.toarray(), compute_uv=False)
            return float(sv[0] / sv[-1])
        M = (A.T @ A).tocsr()
        lam_max = scipy.sparse.linalg.eigsh(M, k=1, which="LA", return_eigenvectors=False,
                                            ncv=40, tol=1e-6)[0]
        ab = self.factor.lower_band_float64()
        # LAPACK upper band storage of L^T for solve_banded: same data, (l, u) = (0, bw)
        lower = (ab, (bw, 0))
        upper_ab = np.zeros_like(ab)
        for k in range(bw + 1):  # L^T[j, j+k] = L[j+k, j] = ab[k, j]
            upper_ab[bw - k, k:] = ab[k, :N - k]

        def inv_m(v):
            z = scipy.linalg.solve_banded(lower[1], lower[0], v)
            return scipy.linalg.solve_banded((0, bw), upper_ab, z)

        op = scipy.sparse.linalg.LinearOperator((N, N), matvec=inv_m, dtype=np.float64)
        inv_lam_min = scipy.sparse.linalg.eigsh(op, k=1, which="LA",
                                                return_eigenvectors=False, ncv=40, tol=1e-6)[0]
        cond = float(math.sqrt(lam_max * inv_lam_min))
        assert cond < 1e7, f"large-T cond route is accurate only below 1e7, got {cond:.2e}"
        return cond


def _key(arrays, kw):
    digest = hashlib.sha1()
    for a in arrays:
        # keyed by value: a float32 input and its exact float64 copy are the same problem
        a = np.ascontiguousarray(a, dtype=np.float64)
        digest.update(str(a.shape).encode())
        digest.update(a.tobytes())
    digest.update(repr(sorted(kw.items())).encode())
    return digest.hexdigest()


def exact_solution(c, r, g, h, *, we=1.0, wi=1.0, ws=1.0, central=False):
    """Cached :class:`ExactSolution` of one system (inputs of one batch element)."""
    kw = {"we": float(we), "wi": float(wi), "ws": float(ws), "central": bool(central)}
    key = _key((c, r, g, h), kw)
    if key not in _CACHE:
        _CACHE[key] = ExactSolution(c, r, g, h, **kw)
    return _CACHE[key]


def order_errors(u, x):
    """Error per derivative order: ``err[o] = max|u[..., o] - x[..., o]| / max|x[..., o]|``
    over steps and state dimensions; ``u, x (T, D, O)``. An order whose exact values are
    all zero is measured against ``max|x|`` instead. Non-finite ``u`` gives ``inf``."""
    u = np.asarray(u, dtype=np.float64)
    x = np.asarray(x, dtype=np.float64)
    assert u.shape == x.shape, (u.shape, x.shape)
    whole = float(np.max(np.abs(x))) if x.size else 0.0
    errs = []
    for o in range(x.shape[-1]):
        uo, xo = u[..., o], x[..., o]
        if not np.all(np.isfinite(uo)):
            errs.append(math.inf)
            continue
        scale = float(np.max(np.abs(xo))) or whole or 1.0
        errs.append(float(np.max(np.abs(uo - xo))) / scale)
    return np.array(errs)

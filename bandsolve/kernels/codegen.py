"""Source of the lane kernels for one shape ``(D, O, E)``: straight-line block code.

Every block loop of one time step is unrolled here, in Python, into statements on named
scalars, with the entries known to be zero left out (the smoothness couplings are
block-diagonal over ``d``, so ``L[t, t-1]`` is block upper triangular over ``d``). The only
loop left inside a time step is the lane loop ``for w in range(W)`` over ``W`` systems,
which LLVM turns into vector instructions.

Lane storage: quantity ``k`` of step ``t`` of lane ``w`` in group ``g`` lives at
``array[g, (t*K + k)*W + w]`` (K quantities per step). Indices are unsigned (``U``):
with signed ones Numba inserts a negative-index wrap-around test that keeps LLVM from
vectorising. Each lane loop reads arrays it does not write, or reads a slot and then
overwrites the same slot (the ``carry`` arrays that pass one step's values to the next):
any other overlap makes LLVM give up on the loop ("unsafe dependent memory operations").

Kernels (CPU: ``prange`` over lane groups; CUDA, ``target="cuda"``: one thread per
lane of a single group as wide as the batch), float64:

- ``factor_forward``: assemble ``M``'s block row and ``b_t`` from the staged inputs,
  factor (``L[t,t-1] = Y^T`` with ``Y = L[t-1,t-1]^{-1} M[t,t-1]^T``, then
  ``L[t,t] = chol(M[t,t] - Y^T Y)``), relative pivot test, forward substitution;
- ``backward``: ``x_t = L[t,t]^{-T} (z_t - Y_{t+1} x_{t+1})`` from ``T-1`` down to 0;
  the stored factor is the diagonal blocks alone (packed): every sweep rebuilds the
  coupling ``B_t = M[t, t-1]`` from the step and applies ``Y_t = L[t-1,t-1]^{-1} B_t^T``
  as ``L^{-1} (B^T x)`` or ``B (L^{-T} z)``, which costs a few more multiply-adds than
  reading ``Y`` but moves 45 instead of 99 values per step at ``n = 9`` (the sweeps are
  bound by memory traffic at large batches);
  ``forward``: ``L^{-1}`` alone;
- ``residual_forward`` (``plain_residual_forward`` for ``M y = extra``):
  ``g = L^{-1} A^T (beta - A x)`` with the residual formed from the rows (never from
  ``M``), the forward substitution fused into the same sweep;
- ``correction_backward``: ``L^{-T}`` of that, the per-order maxima refinement's
  convergence test needs (``|g_o|``, ``|x_o|``, ``|x_o| sqrt(M_kk)``), and ``x += g``;
- ``gradient``: the VJP's sums over the rows (``bandsolve/kernels/gradient.py``'s).
"""

import math
import re

from .residual import FAILED, RUNNING

# lanes (systems) per group: one AVX2 float64 vector. Every scalar of the straight-line
# code becomes a vector of LANES values, so the ~100 live values of a step spill less with
# 4 lanes than with 8 (measured B=64, T=1000, D=O=E=3, one thread: 39.6 ms with 4 lanes,
# 58.2 ms with 8). 1 gives the one-system kernels for small batches of long sequences.
LANES = 4

# Largest block the generated code is made for: the straight-line code of one step grows
# like n^3 (n = 9: ~1.5k statements per kernel, ~30 s to compile once per machine).
MAX_BLOCK = 10

# Diagonal blocks are stored packed (lower triangle, row-major) with 1/L_ii on the
# diagonal, so that substitutions multiply instead of divide.


def packed(i, j):
    return i * (i + 1) // 2 + j


class Layout:
    """Sizes and index maps of one shape: ``n = D*O`` unknowns per step."""

    def __init__(self, n_dims, n_orders, n_equations):
        self.D, self.O, self.E = n_dims, n_orders, n_equations
        self.n = n_dims * n_orders
        self.n_packed = self.n * (self.n + 1) // 2
        O = n_orders
        # Taylor rows of one pair (scaled by ws): row q (2*O of them), entries
        # (column, slot); forward row k reads u[t, k..O-1] and u[t+1, k], backward row
        # k reads u[t+1, k..O-1] (columns O+k..) and u[t, k]
        self.taylor = []
        slot = 0
        for k in range(O):
            cols = list(range(k, O)) + [O + k]
            self.taylor.append([(c, slot + i) for i, c in enumerate(cols)])
            slot += len(cols)
        for k in range(O):
            cols = [O + o for o in range(k, O)] + [k]
            self.taylor.append([(c, slot + i) for i, c in enumerate(cols)])
            slot += len(cols)
        self.n_taylor = slot
        # (power, factor) of each slot: the entry is factor * h**power (taylor_rows:
        # h^o/(o-k)! forward, (-h)^o/(o-k)! backward, -h^k / -(-h)^k on the other step)
        self.taylor_terms = []
        for q, entries in enumerate(self.taylor):
            k, backward = q % O, q >= O
            for c, _ in entries:
                o = c % O
                if (c >= O) == backward:  # the row's own step
                    sign = (-1.0) ** o if backward else 1.0
                    self.taylor_terms.append((o, sign / math.factorial(o - k)))
                else:  # the other step
                    self.taylor_terms.append((k, -((-1.0) ** k) if backward else -1.0))
        # Y = L[t-1]^{-1} B^T with B = M[t,t-1] block diagonal over d: entry (r, c) can be
        # non-zero only when block(r) >= block(c) ... computed symbolically below
        self.y_entries = [(r, c) for r in range(self.n) for c in range(self.n)
                          if r // O >= c // O]
        self.y_slot = {rc: i for i, rc in enumerate(self.y_entries)}
        self.n_y = len(self.y_entries)

    def key(self, width, shared=False):
        return f"d{self.D}_o{self.O}_e{self.E}_w{width}{'_shared' if shared else ''}"


def _sum(terms):
    """``a + b + ...`` of the non-empty terms, or None (a known zero)."""
    terms = [t for t in terms if t is not None]
    if not terms:
        return None
    return " + ".join(terms)


class _Body:
    def __init__(self, indent):
        self.lines = []
        self.indent = indent

    def __call__(self, text):
        self.lines.append(" " * self.indent + text)

    def let(self, name, expr):
        """``name = expr``; returns name, or None when expr is a known zero."""
        if expr is None:
            return None
        self(f"{name} = {expr}")
        return name


def _ld(array, offset, k):
    return f"{array}[g, {offset} + U({k} * W) + w]"


def _taylor_entries(lay, body, offset, tag, weight):
    """One pair's Taylor rows from its step ``h`` (read from ``steps`` at ``offset``),
    times ``weight`` (``ws``, or 0.0 for a missing pair), as names ``{tag}_{q}_{c}``;
    returns rows[q][c]. Entry ``(q, c)`` is ``factor * h**power``
    (:meth:`Layout.taylor_terms`), so only ``h`` is staged, not the rows."""
    h = body.let(f"{tag}_h", _ld("steps", offset, 0))
    powers = ["1.0", h]
    for p in range(2, lay.O):
        powers.append(body.let(f"{tag}_p{p}", f"{powers[-1]} * {h}"))
    rows = []
    for q, entries in enumerate(lay.taylor):
        row = [None] * (2 * lay.O)
        for c, s in entries:
            power, factor = lay.taylor_terms[s]
            row[c] = body.let(f"{tag}_{q}_{c}", f"({weight} * {factor!r}) * {powers[power]}")
        rows.append(row)
    return rows


def _gram(rows, i_half, j_half, O):
    """``sum_q a[q, i] a[q, j]`` over one pair's rows, as expressions ``[i][j]``."""
    out = [[None] * O for _ in range(O)]
    for i in range(O):
        for j in range(O):
            terms = []
            for row in rows:
                a, b = row[i_half * O + i], row[j_half * O + j]
                if a is not None and b is not None:
                    terms.append(f"{a} * {b}")
            out[i][j] = _sum(terms)
    return out


def _load_packed(lay, body, array, offset, tag):
    """Names ``{tag}_{i}_{j}`` of a packed factor block (diagonal: the inverse)."""
    L = [[None] * lay.n for _ in range(lay.n)]
    for i in range(lay.n):
        for j in range(i + 1):
            L[i][j] = body.let(f"{tag}_{i}_{j}", _ld(array, offset, packed(i, j)))
    return L


def _forward_solve(lay, body, L, vec, tag):
    """``L^{-1} vec`` (packed L with inverse diagonal), names ``{tag}_{i}``."""
    out = [None] * lay.n
    for i in range(lay.n):
        terms = [f"{L[i][m]} * {out[m]}" for m in range(i) if out[m] is not None]
        if vec[i] is None and not terms:
            continue
        expr = vec[i] if vec[i] is not None else "0.0"
        if terms:
            expr = f"({expr}) - ({' + '.join(terms)})"
        out[i] = body.let(f"{tag}_{i}", f"({expr}) * {L[i][i]}")
    return out


def _backward_solve(lay, body, L, vec, tag):
    """``L^{-T} vec``, names ``{tag}_{i}``."""
    out = [None] * lay.n
    for i in range(lay.n - 1, -1, -1):
        terms = [f"{L[m][i]} * {out[m]}" for m in range(i + 1, lay.n) if out[m] is not None]
        if vec[i] is None and not terms:
            continue
        expr = vec[i] if vec[i] is not None else "0.0"
        if terms:
            expr = f"({expr}) - ({' + '.join(terms)})"
        out[i] = body.let(f"{tag}_{i}", f"({expr}) * {L[i][i]}")
    return out


def _coupling(lay, body, tr_prev):
    """``B^T`` as expressions: ``B = M[t, t-1]`` = ws^2 G10 per d (row u[t], col u[t-1]);
    ``B^T[(d, i), (d, j)] = G10[j, i]``."""
    O = lay.O
    g10 = _gram(tr_prev, 1, 0, O)  # [i: u[t] order][j: u[t-1] order]
    names = [[None] * O for _ in range(O)]
    for i in range(O):
        for j in range(O):
            names[i][j] = body.let(f"g10_{i}_{j}", g10[i][j])
    bt = [[None] * lay.n for _ in range(lay.n)]
    for d in range(lay.D):
        for i in range(O):
            for j in range(O):
                bt[d * O + i][d * O + j] = names[j][i]
    return bt


def _y_from(lay, body, Lp, bt):
    """``Y = Lp^{-1} B^T`` column by column, names ``y_{r}_{c}``; returns Y[r][c]."""
    Y = [[None] * lay.n for _ in range(lay.n)]
    for c in range(lay.n):
        col = _forward_solve(lay, body, Lp, [bt[r][c] for r in range(lay.n)], f"y_c{c}")
        for r in range(lay.n):
            Y[r][c] = col[r]
    for r in range(lay.n):
        for c in range(lay.n):
            if Y[r][c] is not None:
                assert (r, c) in lay.y_slot, (r, c)
    return Y


def _factor_step(lay):
    """Lane-loop body of one step of ``factor_forward``. The first and last steps are the
    same code: the carries start at zero and the weights ``wsp`` (``ws`` if a previous
    step exists, else 0) and ``wsn`` (a next one) zero a missing pair's Taylor rows,
    whose step is read from a valid but unused slot."""
    n, O, E = lay.n, lay.O, lay.E
    b = _Body(12)
    c = [[b.let(f"c_{e}_{a}", _ld("coefficients", "oc", e * n + a)) for a in range(n)]
         for e in range(E)]
    r = [b.let(f"r_{e}", _ld("rhs", "orr", e)) for e in range(E)]
    gi = [b.let(f"gi_{k}", _ld("init", "og", k)) for k in range(n)]
    tr_next = _taylor_entries(lay, b, "otn", "tn", "wsn")
    grams_next = _gram(tr_next, 0, 0, O)
    tr_prev = _taylor_entries(lay, b, "otp", "tp", "wsp")
    grams_prev = _gram(tr_prev, 1, 1, O)
    # M[t, t] (lower triangle) and b_t
    m = [[None] * n for _ in range(n)]
    for i in range(n):
        for j in range(i + 1):
            expr = f"we2 * ({' + '.join(f'{c[e][i]} * {c[e][j]}' for e in range(E))})"
            terms = [expr]
            if i // O == j // O:
                for g in (grams_next, grams_prev):
                    if g[i % O][j % O] is not None:
                        terms.append(f"({g[i % O][j % O]})")
            if i == j:
                terms.append(f"pw_{i}")
            m[i][j] = b.let(f"m_{i}_{j}", " + ".join(terms))
    rhs = [b.let(f"b_{i}", f"we2 * ({' + '.join(f'{c[e][i]} * {r[e]}' for e in range(E))})"
                 f" + pw_{i} * {gi[i]}") for i in range(n)]
    for i in range(n):
        b(f"scale[g, os + U({i} * W) + w] = math.sqrt({m[i][i]})")
    s = [row[:] for row in m]
    Lp = _load_packed(lay, b, "carry_l", "U(0)", "lp")
    Y = _y_from(lay, b, Lp, _coupling(lay, b, tr_prev))
    for i in range(n):
        for j in range(i + 1):
            terms = [f"{Y[q][i]} * {Y[q][j]}" for q in range(n)
                     if Y[q][i] is not None and Y[q][j] is not None]
            if terms:
                s[i][j] = b.let(f"s_{i}_{j}", f"{m[i][j]} - ({' + '.join(terms)})")
    zp = [b.let(f"zp_{i}", _ld("carry_z", "U(0)", i)) for i in range(n)]
    for i in range(n):
        terms = [f"{Y[q][i]} * {zp[q]}" for q in range(n) if Y[q][i] is not None]
        if terms:
            rhs[i] = b.let(f"v_{i}", f"{rhs[i]} - ({' + '.join(terms)})")
    # Cholesky of s, with the relative pivot test (branch-free: NaN fails it too)
    L = [[None] * n for _ in range(n)]
    b("good = ok[g, w]")
    for j in range(n):
        terms = [f"{L[j][k]} * {L[j][k]}" for k in range(j)]
        pivot = b.let(f"piv_{j}", s[j][j] + (f" - ({' + '.join(terms)})" if terms else ""))
        b(f"good = good * (({pivot}) > tol * {m[j][j]})")
        b(f"root_{j} = math.sqrt({pivot})")
        L[j][j] = b.let(f"l_{j}_{j}", f"1.0 / root_{j}")
        for i in range(j + 1, n):
            terms = [f"{L[i][k]} * {L[j][k]}" for k in range(j)]
            expr = s[i][j] + (f" - ({' + '.join(terms)})" if terms else "")
            L[i][j] = b.let(f"l_{i}_{j}", f"({expr}) * {L[j][j]}")
    b("ok[g, w] = good")
    z = _forward_solve(lay, b, L, rhs, "z")
    for i in range(n):
        for j in range(i + 1):
            b(f"lower[g, ol + U({packed(i, j)} * W) + w] = {L[i][j]}")
            b(f"carry_l[g, U({packed(i, j)} * W) + w] = {L[i][j]}")
        b(f"x[g, ox + U({i} * W) + w] = {z[i] if z[i] is not None else '0.0'}")
        b(f"carry_z[g, U({i} * W) + w] = {z[i] if z[i] is not None else '0.0'}")
    return b.lines


def _backward_step(lay, with_stats):
    """Lane-loop body of one step of ``x_t = L_t^{-T} (z_t - Y_{t+1} x_{t+1})`` on array
    ``v`` (in place). ``with_stats``: ``v`` holds the correction's forward half; gather the
    per-order maxima of the correction test and add the correction to ``x`` (``v`` is
    left as it was). At the last step the carry is zero and so is the coupling (``wsn``)."""
    n, O = lay.n, lay.O
    b = _Body(12)
    L = _load_packed(lay, b, "lower", "ol", "l")
    vec = [b.let(f"z_{i}", _ld("v", "ov", i)) for i in range(n)]
    xn = [b.let(f"xn_{i}", _ld("carry_z", "U(0)", i)) for i in range(n)]
    # Y_{t+1} x_{t+1} = L_t^{-1} (B_{t+1}^T x_{t+1}): the coupling rebuilt from the step
    # (zero at the last step, wsn = 0) instead of stored
    bt = _coupling(lay, b, _taylor_entries(lay, b, "otn", "tn", "wsn"))
    product = [_sum([f"{bt[r][c]} * {xn[c]}" for c in range(n) if bt[r][c] is not None])
               for r in range(n)]
    coupled = _forward_solve(lay, b, L, [b.let(f"bx_{r}", e) for r, e in enumerate(product)],
                             "q")
    for r in range(n):
        if coupled[r] is not None:
            vec[r] = b.let(f"zq_{r}", f"{vec[r]} - {coupled[r]}")
    out = _backward_solve(lay, b, L, vec, "o")
    for i in range(n):
        value = out[i] if out[i] is not None else "0.0"
        if not with_stats:
            b(f"v[g, ov + U({i} * W) + w] = {value}")
        b(f"carry_z[g, U({i} * W) + w] = {value}")
    if with_stats:
        # stats slots: [0, O) max|g_o|, [O, 2O) max|x_o|, [2O, 3O) max|x_o| sqrt(M_kk),
        # 3O: all finite (1.0) or not (0.0)
        b(f"fin = stats[g, U({3 * O} * W) + w]")
        for o in range(O):
            for slot in range(3):
                b(f"st{slot}_{o} = stats[g, U({(slot * O + o)} * W) + w]")
        for i in range(n):
            o = i % O
            b(f"xo_{i} = x[g, ox + U({i} * W) + w]")
            b(f"ax_{i} = abs(xo_{i})")
            b(f"ag_{i} = abs({out[i] if out[i] is not None else '0.0'})")
            b(f"fin = fin * (ag_{i} < math.inf)")
            b(f"st0_{o} = max(st0_{o}, ag_{i})")
            b(f"st1_{o} = max(st1_{o}, ax_{i})")
            b(f"st2_{o} = max(st2_{o}, ax_{i} * scale[g, os + U({i} * W) + w])")
        for o in range(O):
            for slot in range(3):
                b(f"stats[g, U({(slot * O + o)} * W) + w] = st{slot}_{o}")
        b(f"stats[g, U({3 * O} * W) + w] = fin")
        for i in range(n):  # x += g (the test is on the x before it)
            b(f"x[g, ox + U({i} * W) + w] = xo_{i} + {out[i] if out[i] is not None else '0.0'}")
    return b.lines


def _substitute_forward(lay, b, vec):
    """Emit ``v_t = L_t^{-1} (vec - Y_t^T z_{t-1})`` (``L_t`` from the stored factor, ``Y_t^T
    z_{t-1} = B_t w_{t-1}`` from the step and the carry ``w_{t-1} = L_{t-1}^{-T}
    z_{t-1}``), write it to ``v`` and ``w_t`` to ``carry_z``; returns the body's lines."""
    n = lay.n
    # Y_t^T z_{t-1} = B_t w_{t-1} with w_{t-1} = L_{t-1}^{-T} z_{t-1} (the carry): the
    # coupling rebuilt from the step (zero at t = 0, wsp = 0) instead of stored
    wp = [b.let(f"wp_{i}", _ld("carry_z", "U(0)", i)) for i in range(n)]
    bt = _coupling(lay, b, _taylor_entries(lay, b, "otp", "tp", "wsp"))
    for i in range(n):
        terms = [f"{bt[c][i]} * {wp[c]}" for c in range(n) if bt[c][i] is not None]
        if terms:
            vec[i] = b.let(f"u_{i}", f"{vec[i]} - ({' + '.join(terms)})")
    L = _load_packed(lay, b, "lower", "ol", "l")
    z = _forward_solve(lay, b, L, vec, "z")
    carried = _backward_solve(lay, b, L, z, "wz")
    for i in range(n):
        b(f"v[g, ov + U({i} * W) + w] = {z[i] if z[i] is not None else '0.0'}")
        b(f"carry_z[g, U({i} * W) + w] = {carried[i] if carried[i] is not None else '0.0'}")
    return b.lines


def _forward_step(lay):
    """Lane-loop body of one step of ``forward``: ``v_t <- L_t^{-1} (v_t - Y_t^T v_{t-1})``
    in place (the carry, ``L_{t-1}^{-T} v_{t-1}``, starts at zero)."""
    n = lay.n
    b = _Body(12)
    vec = [b.let(f"e_{i}", _ld("v", "ov", i)) for i in range(n)]
    return _substitute_forward(lay, b, vec)


def _couplings_step(lay):
    """Lane-loop body of one step of ``couplings``: ``Y_t = L_{t-1}^{-1} B_t^T`` (zero at
    t = 0) into ``ys`` (entries ``lay.y_entries``), from the stored diagonal blocks and the
    step; the sweeps rebuild what they need of it, this is for the host block layout."""
    b = _Body(12)
    Lp = _load_packed(lay, b, "lower", "olp", "lp")
    Y = _y_from(lay, b, Lp, _coupling(lay, b, _taylor_entries(lay, b, "otp", "tp", "wsp")))
    for (rr, cc) in lay.y_entries:
        value = Y[rr][cc] if Y[rr][cc] is not None else "0.0"
        b(f"ys[g, oy + U({lay.y_slot[(rr, cc)]} * W) + w] = {value}")
    return b.lines


def _gradient_step(lay):
    """Lane-loop body of one step of ``gradient``: the VJP's sums over the rows of step
    ``t`` from ``x`` and ``y = M^{-1} ubar`` (``bandsolve/kernels/gradient.py``, the same
    formulas): equation rows into ``c_bar`` ``(Tc, E*n)`` and ``r_bar`` ``(Tr, E)``, the
    Taylor rows of pair (t, t+1) into ``h_bar`` ``(Th,)`` (``-ws^2`` times
    ``sum (dA x)(A y) + (dA y)(A x)``, dA the derivative in h). Each output is
    accumulated in place (read, then written, the same slot), so inputs broadcast in time
    (stride 0) sum over the steps; the caller zeroes them."""
    n, O, E, D = lay.n, lay.O, lay.E, lay.D
    b = _Body(12)
    xt = [b.let(f"xt_{i}", _ld("x", "ox", i)) for i in range(n)]
    yt = [b.let(f"yt_{i}", _ld("y", "ox", i)) for i in range(n)]
    for e in range(E):
        ce = [b.let(f"c_{e}_{a}", _ld("coefficients", "oc", e * n + a)) for a in range(n)]
        b(f"cx_{e} = {' + '.join(f'{ce[a]} * {xt[a]}' for a in range(n))}")
        b(f"cy_{e} = {' + '.join(f'{ce[a]} * {yt[a]}' for a in range(n))}")
        b(f"res_{e} = cx_{e} - {_ld('rhs', 'orr', e)}")
        b(f"r_bar[g, orr + U({e} * W) + w] = {_ld('r_bar', 'orr', e)} + we2 * cy_{e}")
        for a in range(n):
            k = e * n + a
            b(f"c_bar[g, oc + U({k} * W) + w] = {_ld('c_bar', 'oc', k)} - we2 * "
              f"({yt[a]} * res_{e} + cy_{e} * {xt[a]})")
    # the pair (t, t+1); at the last step its weight is 0 and x_{t+1} is read from t
    xn = [b.let(f"xn_{i}", _ld("x", "oxn", i)) for i in range(n)]
    yn = [b.let(f"yn_{i}", _ld("y", "oxn", i)) for i in range(n)]
    rows = _taylor_entries(lay, b, "otn", "tn", "wsn")
    # derivative rows in h: factor * power * h^(power-1), times the same weight
    h = "tn_h"
    powers = ["1.0", h] + [f"tn_p{p}" for p in range(2, O)]
    drows = []
    for q, entries in enumerate(lay.taylor):
        row = [None] * (2 * O)
        for c, slot in entries:
            power, factor = lay.taylor_terms[slot]
            if power:
                row[c] = b.let(f"dtn_{q}_{c}",
                               f"(wsn * {factor * power!r}) * {powers[power - 1]}")
        drows.append(row)
    terms = []
    for d in range(D):
        def dot(row, first, second):
            parts = [f"{row[c]} * {(first if c < O else second)[d * O + c % O]}"
                     for c in range(2 * O) if row[c] is not None]
            return " + ".join(parts) if parts else "0.0"
        for q in range(2 * O):
            ax = b.let(f"ax_{d}_{q}", dot(rows[q], xt, xn))
            ay = b.let(f"ay_{d}_{q}", dot(rows[q], yt, yn))
            dax = b.let(f"dax_{d}_{q}", dot(drows[q], xt, xn))
            day = b.let(f"day_{d}_{q}", dot(drows[q], yt, yn))
            terms.append(f"{dax} * {ay} + {day} * {ax}")
    b(f"h_bar[g, otn + w] = {_ld('h_bar', 'otn', 0)} - ({' + '.join(terms)})")
    return b.lines


def _residual_step(lay, with_beta):
    """Lane-loop body of one step of ``residual_forward``: ``g_t = [A^T (beta - A x)]_t``
    (its equations and initial values, the pair (t, t+1) whose share of ``g_{t+1}`` is
    carried, plus the share of pair (t-1, t) carried in), then ``z_t = L_t^{-1} (g_t -
    Y_t^T z_{t-1})``. Without ``with_beta``: the plain system ``g = extra - M x``. The
    carries start at zero; at the last step ``wsn = 0`` zeroes the pair (t, t+1), whose
    ``x_{t+1}`` is then read from step ``t``."""
    n, O, E, D = lay.n, lay.O, lay.E, lay.D
    b = _Body(12)
    xt = [b.let(f"xt_{i}", _ld("x", "ox", i)) for i in range(n)]
    g = [None] * n
    if with_beta:
        for i in range(n):
            g[i] = f"(-pw_{i} * ({xt[i]} - {_ld('init', 'og', i)}))"
    else:
        for i in range(n):
            g[i] = f"({_ld('extra', 'ox', i)} - pw_{i} * {xt[i]})"
    for e in range(E):
        terms = " + ".join(f"{_ld('coefficients', 'oc', e * n + a)} * {xt[a]}"
                           for a in range(n))
        if with_beta:
            terms = f"({terms}) - {_ld('rhs', 'orr', e)}"
        b(f"res_{e} = we2 * ({terms})")
        for a in range(n):
            b(f"ce_{e}_{a} = {_ld('coefficients', 'oc', e * n + a)}")
    for a in range(n):
        g[a] = f"{g[a]} - ({' + '.join(f'ce_{e}_{a} * res_{e}' for e in range(E))})"
    for i in range(n):
        g[i] = f"{g[i]} + {_ld('carry_g', 'U(0)', i)}"
    carried = [None] * n
    xn = [b.let(f"xn_{i}", _ld("x", "oxn", i)) for i in range(n)]
    rows = _taylor_entries(lay, b, "otn", "tn", "wsn")
    for d in range(D):
        for q, row in enumerate(rows):
            terms = [f"{row[cidx]} * {(xt if cidx < O else xn)[d * O + cidx % O]}"
                     for cidx in range(2 * O) if row[cidx] is not None]
            res = b.let(f"rs_{d}_{q}", " + ".join(terms))
            for cidx in range(2 * O):
                if row[cidx] is None:
                    continue
                k = d * O + cidx % O
                if cidx < O:
                    g[k] = f"{g[k]} - {row[cidx]} * {res}"
                else:
                    carried[k] = _sum([carried[k], f"{row[cidx]} * {res}"])
    gt = [b.let(f"gt_{i}", g[i]) for i in range(n)]
    for i in range(n):
        b(f"carry_g[g, U({i} * W) + w] = {'-(' + carried[i] + ')' if carried[i] else '0.0'}")
    return _substitute_forward(lay, b, gt)


_HEADER = '''"""Generated by bandsolve.kernels.codegen for D={D}, O={O}, E={E}, W={W}, target
{target}: do not edit."""
import math

import numba
import numpy as np
{cuda_import}
U = np.uint64
W = {W}
N = {n}
NP = {n_packed}
NY = {n_y}
NT = {n_taylor}
_OPTIONS = dict(parallel={parallel}, cache=True, nogil=True, error_model="numpy",
                boundscheck=False, fastmath={{"contract"}})
'''


def _offsets(names):
    return [f"        {line}" for line in names]


def _loop(body_lines, t_expr_lines, lane_loop):
    """The lane loop around a body, preceded by the per-step offsets (indent 8)."""
    out = [f"        {line}" for line in t_expr_lines]
    out.append(f"        {lane_loop}")
    out.extend(body_lines)
    return out


_BACK_OFFSETS = ["tt = U(t)", "last = t == T - 1", "wsn = 0.0 if last else ws",
                 "otn = (U(0) if last else tt) * hs", "ol = tt * U(NP * W)",
                 "ov = tt * U(N * W)", "ox = tt * U(N * W)", "os = tt * U(N * W)"]


_FORWARD_OFFSETS = ["tt = U(t)", "wsp = ws if t > 0 else 0.0",
                    "otp = (tt - U(1)) * hs if t > 0 else U(0)", "ol = tt * U(NP * W)",
                    "ov = tt * U(N * W)"]


def step_arguments(inputs):
    """``(steps, hs, ws)`` from the inputs every sweep kernel takes first (``coefficients,
    cs, rhs, rs, init, gs, n_init, steps, hs, pins, we2, ws``): what the substitution
    sweeps need to rebuild the couplings between steps."""
    return inputs[7], inputs[8], inputs[11]


def _pins(n):
    return [f"pw_{i} = pins[t * N + {i}]" for i in range(n)]


# The sweeps of a shared left-hand side (``generate(..., shared=True)``) and the arrays
# they read from it: one left-hand side per group, stored without lanes
SHARED_SWEEPS = ("correction_backward", "residual_forward")
LHS_ARRAYS = ("coefficients", "steps", "lower", "scale")


def generate(n_dims, n_orders, n_equations, width=LANES, target="cpu", shared=False):
    """Python source of the lane kernels for shape ``(D, O, E)``.

    ``target="cpu"``: Numba CPU kernels, ``width`` lanes per group, ``prange`` over
    groups. ``target="cuda"``: the same step bodies as CUDA kernels, one thread per lane
    (system) of a single group whose width ``W`` (the number of systems, padded) is a
    kernel argument: consecutive threads read consecutive addresses (coalesced), and
    every block of a step lives in registers.

    ``shared`` (CPU): the sweeps of :data:`SHARED_SWEEPS` for right-hand sides that
    share left-hand sides: every lane of group ``g`` belongs to left-hand side
    ``fmap[g]`` (a last argument), whose arrays (:data:`LHS_ARRAYS`: inputs, factor,
    column norms) are read from row ``fmap[g]`` of the one-lane layout (the factor of
    ``generate(..., width=1)``'s ``factor_forward``), one value for all lanes.
    """
    lay = Layout(n_dims, n_orders, n_equations)
    n = lay.n
    cuda = target == "cuda"
    # one lane: nothing to vectorise, and Numba's parallel passes take ~2/3 of the
    # compilation of these long bodies; prange's noalias arguments are what lets LLVM
    # vectorise the lane loop (a serial build of the same code stays scalar)
    parallel = width > 1 and not cuda
    src = [_HEADER.format(D=lay.D, O=lay.O, E=lay.E, W=width, n=n, parallel=parallel,
                          n_packed=lay.n_packed, target=target,
                          cuda_import="from numba import cuda\n" if cuda else "",
                          n_y=lay.n_y, n_taylor=lay.n_taylor)]

    step_offsets = ["tt = U(t)", "last = t == T - 1",
                    "wsp = ws if t > 0 else 0.0", "wsn = 0.0 if last else ws",
                    "oc = tt * cs", "orr = tt * rs", "og = U(min(t, n_init - 1)) * gs",
                    "ox = tt * U(N * W)", "ol = tt * U(NP * W)",
                    "os = tt * U(N * W)", "ov = tt * U(N * W)",
                    "oxn = (tt if last else tt + U(1)) * U(N * W)",
                    "otn = (U(0) if last else tt) * hs",
                    "otp = (tt - U(1)) * hs if t > 0 else U(0)"] + _pins(n)
    kernels = (
        ("factor_forward", "coefficients, cs, rhs, rs, init, gs, n_init, steps, hs, pins, "
         "we2, ws, tol, lower, x, scale, ok, carry_l, carry_z", "range(T)",
         step_offsets, _factor_step(lay)),
        ("forward", "steps, hs, ws, lower, v, carry_z", "range(T)", _FORWARD_OFFSETS,
         _forward_step(lay)),
        ("backward", "steps, hs, ws, lower, v, x, scale, stats, carry_z",
         "range(T - 1, -1, -1)", _BACK_OFFSETS, _backward_step(lay, False)),
        ("correction_backward", "steps, hs, ws, lower, v, x, scale, stats, carry_z",
         "range(T - 1, -1, -1)", _BACK_OFFSETS, _backward_step(lay, True)),
        ("residual_forward", "coefficients, cs, rhs, rs, init, gs, n_init, steps, hs, pins, "
         "we2, ws, x, extra, lower, v, carry_g, carry_z", "range(T)", step_offsets,
         _residual_step(lay, True)),
        ("plain_residual_forward", "coefficients, cs, rhs, rs, init, gs, n_init, steps, hs, "
         "pins, we2, ws, x, extra, lower, v, carry_g, carry_z", "range(T)", step_offsets,
         _residual_step(lay, False)),
        ("gradient", "coefficients, cs, rhs, rs, init, gs, n_init, steps, hs, pins, we2, ws, "
         "x, y, c_bar, r_bar, h_bar", "range(T)", step_offsets, _gradient_step(lay)),
    )
    if not cuda:  # the host block layout of the factor (LaneFactor.lower) needs Y_t
        kernels += (("couplings", "steps, hs, ws, lower, ys", "range(T)",
                     ["tt = U(t)", "wsp = ws if t > 0 else 0.0",
                      "otp = (tt - U(1)) * hs if t > 0 else U(0)",
                      "olp = (tt - U(1)) * U(NP * W) if t > 0 else U(0)",
                      "oy = tt * U(NY * W)"], _couplings_step(lay)),)
    if shared:
        kernels = tuple(k for k in kernels if k[0] in SHARED_SWEEPS)
    for name, arguments, steps, offsets, body in kernels:
        if shared:
            arguments += ", fmap"
        if cuda:  # one thread per lane; W (the lanes of the one group) an argument
            src.append("@cuda.jit(fastmath={'contract'})")
            src.append(f"def {name}(n_groups, T, {arguments}, W):")
            src.append("    w = U(cuda.grid(1))")
            src.append("    g = 0")
            src.append("    if True:")
            lane_loop = "if w < U(W):"
        else:
            src.append("@numba.njit(**_OPTIONS)")
            src.append(f"def {name}(n_groups, T, {arguments}):")
            src.append(f"    for g in {'numba.prange' if parallel else 'range'}(n_groups):")
            if shared:
                src.append("        f = fmap[g]")
            lane_loop = "for w in range(U(W)):"
        src.append(f"        for t in {steps}:")
        src.extend(["    " + line for line in _loop(body, offsets, lane_loop)])
        if not cuda:
            src.append("    return 0")
        src.append("")
    if not cuda and not shared:
        src.extend(_fused_solve(lay, parallel, step_offsets))
    if cuda:
        src.extend(_cuda_refinement(lay, step_offsets))
    source = "\n".join(src) + "\n"
    if shared:
        source = _shared_lhs(source)
    return source if cuda else _with_offset_constants(source)


def _rule_digest():
    """Digest of the refinement rule's source (``kernels/residual.py``), written into the
    fused kernel's module: Numba's cache of a generated file does not see changes to the
    helpers it calls, a new digest makes a new file."""
    import hashlib
    import inspect

    from . import residual

    return hashlib.sha1(inspect.getsource(residual).encode()).hexdigest()[:12]


def _renamed(lines, prefix, split):
    """``(lines[:split], lines[split:])`` with every name they assign prefixed."""
    import re

    names = {m.group(1) for line in lines for m in [re.match(r"\s*(\w+) = ", line)] if m}
    pattern = re.compile(r"(?<![\w.])(" + "|".join(sorted(names, key=len, reverse=True))
                         + r")\b")
    lines = [pattern.sub(lambda m: prefix + m.group(1), line) for line in lines]
    return lines[:split], lines[split:]


def _fused_solve(lay, parallel, step_offsets):
    """Source of ``solve`` and ``solve_plain``. ``solve``: factor, solve and refine each
    group in turn, all its sweeps
    before the next group's, so that a group's factor is read back while it is still in
    cache (B=64, T=1000, D=O=E=3: the sweeps one group after another ran in ~2/3 of the
    time of each sweep over all groups), and the whole solve is one parallel launch.
    Refinement stops per lane by ``kernels/residual.py::lane_refinement_step`` (the
    status ``(G, W)``: ``RUNNING`` becomes ``CONVERGED`` or ``FAILED``; lanes whose pivot
    test failed start ``FAILED``); the group stops when no lane is running.
    ``solve_plain``: the same for the VJP's ``M y = extra`` with ``solve``'s factor (y into
    ``x``), then the group's gradient sums from ``xs`` (the forward solution) and y into
    ``c_bar``, ``r_bar``, ``h_bar`` (``gradient``'s sweep, while the group's inputs, x and
    y are in cache; where a lane's refinement failed the caller discards them)."""
    O = lay.O
    back = _BACK_OFFSETS
    first_backward = [line.replace("v[g, ", "x[g, ") for line in _backward_step(lay, False)]

    def sweep(steps, offsets, body, indent):
        # every sweep's locals get a name of their own: a name assigned in two loops is
        # one variable to Numba, whose value flowing out of a lane loop stops LLVM from
        # vectorising it ("value ... used outside the loop")
        nonlocal n_sweeps
        n_sweeps += 1
        offsets, body = _renamed(offsets + body, f"s{n_sweeps}_", len(offsets))
        pad = " " * indent
        lines = [f"{pad}for t in {steps}:"]
        lines += [f"{pad}    {line}" for line in offsets]
        lines.append(f"{pad}    for w in range(U(W)):")
        lines += [" " * (indent - 4) + line for line in body]  # body lines are at indent 12
        return lines

    def zero(array, indent):
        return [f"{' ' * indent}for q in range({array}.shape[1]):",
                f"{' ' * indent}    {array}[g, q] = 0.0"]

    def refinement(first_status, least_squares):
        """Each lane's status from ``first_status``, then up to ``max_steps`` refinement
        steps of the least-squares (or the plain) system, until no lane is running."""
        lines = ["        for k in range(W):",
                 f"            status[g, k] = {first_status}",
                 "            previous[g, k] = math.inf",
                 "        for step in range(max_steps):"]
        lines += zero("carry_g", 12) + zero("carry_z", 12)
        lines += sweep("range(T)", step_offsets, _residual_step(lay, least_squares), 12)
        lines += zero("carry_z", 12) + zero("stats", 12)
        lines += ["            for k in range(W):",
                  f"                stats[g, {3 * O} * W + k] = 1.0"]
        lines += sweep("range(T - 1, -1, -1)", back, _backward_step(lay, True), 12)
        lines += ["            if _decide(stats, status, previous, g, step, max_steps, "
                  "first_limit) == 0:",
                  "                break"]
        return lines

    n_sweeps = 0
    out = [f"# refinement rule {_rule_digest()}",
           "from bandsolve.kernels.residual import lane_refinement_step",
           "",
           "",
           "# a call, not inlined, given whole arrays: the rule inlined into the kernel, or",
           "# row views of its arrays made there, made LLVM refuse to vectorise every lane",
           "# loop of the kernel",
           "@numba.njit(inline='never', cache=True, nogil=True, error_model='numpy')",
           "def _decide(stats, status, previous, g, step, max_steps, first_limit):",
           "    running = 0",
           "    for k in range(W):",
           f"        lane_refinement_step(stats[g], k, W, {O}, step, max_steps, first_limit,",
           "                             status[g], previous[g])",
           f"        running += status[g, k] == {RUNNING}",
           "    return running",
           "",
           "",
           "@numba.njit(**_OPTIONS)",
           "def solve(n_groups, T, coefficients, cs, rhs, rs, init, gs, n_init, steps, hs, "
           "pins, we2, ws, tol, lower, x, scale, ok, v, stats, carry_l, carry_z, carry_g, "
           "status, previous, max_steps, first_limit):",
           f"    for g in {'numba.prange' if parallel else 'range'}(n_groups):"]
    out += zero("carry_l", 8) + zero("carry_z", 8)
    # (the small per-lane loops count with k: the lane loops' w is unsigned, and one
    # name typed two ways would make Numba convert it, which stops vectorisation)
    out += ["        for k in range(W):", "            ok[g, k] = 1.0"]
    out += sweep("range(T)", step_offsets, _factor_step(lay), 8)
    out += zero("carry_z", 8)
    out += sweep("range(T - 1, -1, -1)", back, first_backward, 8)
    out += refinement(f"{RUNNING} if ok[g, k] == 1.0 else {FAILED}", True)
    out += ["    return 0",
            "",
            "",
            "@numba.njit(**_OPTIONS)",
            "def solve_plain(n_groups, T, coefficients, cs, rhs, rs, init, gs, n_init, steps, "
            "hs, pins, we2, ws, lower, x, scale, v, extra, stats, carry_z, carry_g, status, "
            "previous, max_steps, first_limit, xs, c_bar, r_bar, h_bar):",
            f"    for g in {'numba.prange' if parallel else 'range'}(n_groups):"]
    # x = M^{-1} extra with the factor of solve (the VJP's second solve), then refined on
    # the plain system; every lane starts RUNNING
    out += ["        for q in range(x.shape[1]):", "            x[g, q] = extra[g, q]"]
    out += zero("carry_z", 8)
    out += sweep("range(T)", _FORWARD_OFFSETS,
                 [line.replace("v[g, ", "x[g, ") for line in _forward_step(lay)], 8)
    out += zero("carry_z", 8)
    out += sweep("range(T - 1, -1, -1)", back, first_backward, 8)
    out += refinement(f"{RUNNING}", False)
    # the gradient sums read the forward solution as xs and y (solved above) as x
    gradient = [re.sub(r"\by\[g, ", "x[g, ", re.sub(r"\bx\[g, ", "xs[g, ", line))
                for line in _gradient_step(lay)]
    out += zero("c_bar", 8) + zero("r_bar", 8) + zero("h_bar", 8)
    out += sweep("range(T)", step_offsets, gradient, 8)
    out += ["    return 0",
            ""]
    return out


def _cuda_refinement(lay, step_offsets):
    """Source of the CUDA kernels ``refine`` and ``refine_plain``: every refinement step
    of one lane (thread) in one launch, the residual sweep, the correction sweep and the
    stopping rule (``lane_refinement_step``, on ``status`` ``(W,)`` and ``previous``),
    until the lane stops; a lane whose pivot test failed (``ok[0, lane] != 1``) starts
    ``FAILED``. One launch instead of three per step and a preparing one: each thread
    owns its lane, so no other thread's result is waited for."""
    O = lay.O
    out = ["from bandsolve.gpu._runtime import device_function",
           "from bandsolve.kernels.residual import lane_refinement_step",
           f"# refinement rule {_rule_digest()}",
           "_rule = device_function(lane_refinement_step)",
           ""]
    for name, least_squares in (("refine", True), ("refine_plain", False)):
        sweeps = []
        for tag, (steps, offsets, body) in enumerate((
                ("range(T)", step_offsets, _residual_step(lay, least_squares)),
                ("range(T - 1, -1, -1)", _BACK_OFFSETS, _backward_step(lay, True)))):
            offsets, body = _renamed(offsets + body, f"s{tag}_", len(offsets))
            sweeps.append(["            for q in range(N):",
                           "                carry_z[0, U(q) * U(W) + w] = 0.0"]
                          + [f"            for t in {steps}:"]
                          + [f"                {line}" for line in offsets]
                          + ["                if True:"]
                          + ["        " + line for line in body])  # body lines at indent 12
        out += ["",
                "@cuda.jit(fastmath={'contract'})",
                f"def {name}(n_groups, T, coefficients, cs, rhs, rs, init, gs, n_init, steps, "
                "hs, pins, we2, ws, x, extra, lower, v, scale, stats, carry_g, carry_z, ok, "
                "status, previous, max_steps, first_limit, W):",
                "    lane = cuda.grid(1)",
                "    w = U(lane)",
                "    g = 0",
                "    if lane < W:",
                f"        status[lane] = {RUNNING} if ok[0, lane] == 1.0 else {FAILED}",
                "        previous[lane] = math.inf",
                "        for step in range(max_steps):",
                f"            if status[lane] != {RUNNING}:",
                "                break",
                "            for q in range(N):",
                "                carry_g[0, U(q) * U(W) + w] = 0.0",
                f"            for q in range({3 * O}):",
                "                stats[0, U(q) * U(W) + w] = 0.0",
                f"            stats[0, U({3 * O}) * U(W) + w] = 1.0"]
        out += sweeps[0] + sweeps[1]
        out += [f"            _rule(stats[0], lane, W, {O}, step, max_steps, first_limit, "
                "status, previous)",
                ""]
    return out


def _shared_lhs(source):
    """The left-hand side's arrays read from row ``f`` of the one-lane layout: their
    accesses lose the lane (``[g, o + U(k * W) + w]`` -> ``[f, o + U(k)]``) and their step
    offsets ``ol``, ``oy``, ``os`` the width (the strides ``cs``, ``hs`` are the caller's)."""
    import re

    names = "|".join(LHS_ARRAYS)
    source = re.sub(rf"\b({names})\[g, (\w+) \+ U\((\d+) \* W\) \+ w\]",
                    r"\1[f, \2 + U(\3)]", source)
    source = re.sub(r"^(\s+(?:ol|os) = .*)U\((NP|N) \* W\)$", r"\1U(\2)", source,
                    flags=re.M)
    assert not re.search(rf"\b({names})\[g,", source), "a left-hand-side access kept its lane"
    return source


def load(source, name):
    """Import generated ``source`` as module ``name`` from a file in :func:`cache_folder`
    (Numba's disk cache keys on the file, so it must be a real, unchanging one)."""
    import hashlib
    import importlib.util
    import os
    import sys

    digest = hashlib.sha1(source.encode()).hexdigest()[:12]
    name = f"{name}_{digest}"
    path = os.path.join(cache_folder(), name + ".py")
    if not os.path.exists(path):  # never rewritten: its mtime keys Numba's cache
        partial = f"{path}.{os.getpid()}.tmp"
        with open(partial, "w") as handle:
            handle.write(source)
        os.replace(partial, path)
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def cache_folder():
    """Where generated kernel sources (and so Numba's cache of them) are kept: the
    folder in the environment variable ``BANDSOLVE_CACHE_DIR``, else a ``bandsolve``
    folder in ``NUMBA_CACHE_DIR``, else ``~/.cache/bandsolve``, else a new temporary
    folder (then every process compiles them again)."""
    import os
    import tempfile

    numba_cache = os.environ.get("NUMBA_CACHE_DIR")
    for folder in (os.environ.get("BANDSOLVE_CACHE_DIR"),
                   numba_cache and os.path.join(numba_cache, "bandsolve"),
                   os.path.join(os.path.expanduser("~"), ".cache", "bandsolve")):
        if not folder:
            continue
        try:
            os.makedirs(folder, exist_ok=True)
            if os.access(folder, os.W_OK):
                return folder
        except OSError:
            continue
    return tempfile.mkdtemp(prefix="bandsolve-")


def _with_offset_constants(source):
    """Replace every ``U(k * W)`` by a module constant ``_Kk``: Numba freezes module
    globals, so the kernels see literal offsets instead of thousands of conversions
    (which cost compilation time, not run time)."""
    import re

    used = sorted({int(k) for k in re.findall(r"U\((\d+) \* W\)", source)})
    source = re.sub(r"U\((\d+) \* W\)", r"_K\1", source)
    constants = "".join(f"_K{k} = U({k} * W)\n" for k in used)
    marker = "_OPTIONS = dict("
    return source.replace(marker, constants + marker, 1)

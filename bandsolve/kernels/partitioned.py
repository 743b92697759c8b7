"""Parallel-in-time block Cholesky: a partitioned (Schur-complement) method.

The block Cholesky sweep of ``kernels/banded.py`` is sequential in ``T``; with a small batch it
leaves most cores (or most of a GPU) idle. This method cuts the time axis of one system
into ``P`` independent *interiors* separated by *separators* of ``p`` block rows (``p`` =
block bandwidth), so that no interior touches another::

    block rows:  | I_0 (m rows) | S_0 (p) | I_1 (m) | S_1 (p) | ... | I_{P-1} (>= m rows) |
    start(c) = c (m + p),   stop(c) = start(c) + m   (the last interior ends at T)

    M = [ M_II  M_IS ]      M_II block diagonal over the interiors (each banded),
        [ M_SI  M_SS ]      M_SS block diagonal over the separators (m >= p).

1. every interior is factored independently (``factor_chunk``): ``M_{I_c} = L_c L_c^T``,
   and its contributions to the Schur complement ``S = M_SS - M_SI M_II^{-1} M_IS`` are
   formed by solving with the ``p n`` columns of its couplings to its two separators;
2. ``S`` is block tridiagonal in the separators (blocks ``p n x p n``), so it is itself a
   block-banded SPD system of ``P - 1`` block rows, factored with the ordinary sequential
   helpers (``factor_reduced``);
3. a solve is: interiors (``solve_chunk``, parallel), separators (``solve_separators``,
   one short sequential sweep), interiors again (``correct_chunk``, parallel).

The interiors' factors live in place, in the ordinary lower block storage ``lower``
``(T, p+1, n, n)``; the separator rows keep the entries of ``M`` (the couplings are read
from there). The cells of an interior's first ``p`` rows that point into the previous
separator are the couplings ``M[I, S]``: ``factor_block_row`` on the interior's slice never
reads them. Work is about 3x that of the sequential sweep, spread over ``P`` chunks; the
sequential part is ``P - 1`` block rows of size ``p n``.

The relative pivot test of the sequential kernels applies to both factorisations
(``weak_chunk_pivot``, ``weak_separator_pivot``: each pivot against the diagonal entry of
``M`` it came from).

Every function here is a ``jit_helper`` (plain loops), compiled for the CPU by
``bandsolve.cpu.partitioned`` (one ``prange`` iteration per chunk) and again from the same
source for CUDA by ``bandsolve.gpu.partitioned`` (one thread per chunk).
"""

from .._jit import jit_helper
from .banded import backward_substitute, factor_block_row, forward_substitute, weak_pivot_step


# ----------------------------------------------------------------------------- geometry

@jit_helper
def n_chunks_for(n_steps, bandwidth, chunk):
    """Number of interiors ``P`` for interior length ``m = chunk >= bandwidth`` (the last
    interior takes the remainder, so it has between ``m`` and ``2m + p - 1`` rows)."""
    return max(1, (n_steps + bandwidth) // (chunk + bandwidth))


@jit_helper
def chunk_start(c, bandwidth, chunk):
    """First block row of interior ``c``."""
    return c * (chunk + bandwidth)


@jit_helper
def chunk_stop(c, n_chunks, n_steps, bandwidth, chunk):
    """One past the last block row of interior ``c``; separator ``c`` starts there."""
    return n_steps if c == n_chunks - 1 else c * (chunk + bandwidth) + chunk


# ----------------------------------------------------------------------------- couplings
# Column q (0 <= q < p n) of a separator is unknown (q // n, q % n) of its q // n-th row.

@jit_helper
def _left_coupling(lower, start, stop, q, w):
    """``w <- M[I, S_left][:, q]`` for the interior ``[start, stop)`` whose left separator
    is rows ``start-p .. start-1``. w ``(stop-start, n)`` is indexed from ``start``."""
    p = lower.shape[1] - 1
    n = lower.shape[2]
    s = start - p + q // n
    comp = q % n
    for tl in range(stop - start):
        for a in range(n):
            w[tl, a] = 0.0
    for tl in range(min(p, stop - start)):
        j = start + tl - s  # M[t, s] = lower[t, t - s] for t > s
        if j <= p:
            for a in range(n):
                w[tl, a] = lower[start + tl, j, a, comp]


@jit_helper
def _right_coupling(lower, start, stop, q, w):
    """``w <- M[I, S_right][:, q]``, the right separator being rows ``stop .. stop+p-1``."""
    p = lower.shape[1] - 1
    n = lower.shape[2]
    s = stop + q // n
    comp = q % n
    for tl in range(stop - start):
        for a in range(n):
            w[tl, a] = 0.0
    for t in range(max(start, s - p), stop):
        for a in range(n):  # M[t, s] = M[s, t]^T = lower[s, s - t]^T
            w[t - start, a] = lower[s, s - t, comp, a]


@jit_helper
def _left_coupling_dot(lower, start, stop, q, w):
    """``(M[S_left, I] w)[q]`` for w ``(stop-start, n)`` indexed from ``start``."""
    p = lower.shape[1] - 1
    n = lower.shape[2]
    s = start - p + q // n
    comp = q % n
    total = 0.0
    for tl in range(min(p, stop - start)):
        j = start + tl - s
        if j <= p:
            for a in range(n):  # M[s, t] = lower[t, t - s]^T
                total += lower[start + tl, j, a, comp] * w[tl, a]
    return total


@jit_helper
def _right_coupling_dot(lower, start, stop, q, w):
    """``(M[S_right, I] w)[q]`` for w ``(stop-start, n)`` indexed from ``start``."""
    p = lower.shape[1] - 1
    n = lower.shape[2]
    s = stop + q // n
    comp = q % n
    total = 0.0
    for t in range(max(start, s - p), stop):
        for a in range(n):
            total += lower[s, s - t, comp, a] * w[t - start, a]
    return total


# ----------------------------------------------------------------------------- factor

@jit_helper
def factor_chunk(lower, work, c, n_chunks, chunk, schur):
    """Factor interior ``c`` of one system in place and form its Schur contributions.

    lower ``(T, p+1, n, n)`` holds ``M`` on entry (the interior's rows hold ``L_c`` on
    exit); work ``(T, n)`` scratch (rows of interior ``c`` only); schur ``(3, pn, pn)``
    receives ``[0] = M[Sl,I] M_I^{-1} M[I,Sl]``, ``[1] = M[Sr,I] M_I^{-1} M[I,Sr]`` and
    ``[2] = M[Sr,I] M_I^{-1} M[I,Sl]`` (``Sl``/``Sr``: the left/right separator; entries for
    a missing separator are not written). Returns 0, or ``t + 1`` for the first block row
    ``t`` whose pivot was not positive.
    """
    n_steps = lower.shape[0]
    p = lower.shape[1] - 1
    n = lower.shape[2]
    start = chunk_start(c, p, chunk)
    stop = chunk_stop(c, n_chunks, n_steps, p, chunk)
    interior = lower[start:stop]
    for tl in range(stop - start):
        if factor_block_row(interior, tl) != 0:
            return start + tl + 1
    w = work[start:stop]
    pn = p * n
    if c > 0:
        for q in range(pn):
            _left_coupling(lower, start, stop, q, w)
            forward_substitute(interior, w)
            backward_substitute(interior, w)
            for q2 in range(pn):
                schur[0, q2, q] = _left_coupling_dot(lower, start, stop, q2, w)
            if c < n_chunks - 1:
                for q2 in range(pn):
                    schur[2, q2, q] = _right_coupling_dot(lower, start, stop, q2, w)
    if c < n_chunks - 1:
        # these columns are zero above the interior's last p rows and L^{-1} keeps leading
        # zeros: the forward sweep starts there (the skipped rows' updates read only zeros)
        first = max(stop - start - p, 0)
        for q in range(pn):
            _right_coupling(lower, start, stop, q, w)
            forward_substitute(interior[first:], w[first:])
            backward_substitute(interior, w)
            for q2 in range(pn):
                schur[1, q2, q] = _right_coupling_dot(lower, start, stop, q2, w)
    return 0


@jit_helper
def factor_reduced(lower, schur, chunk_status, n_chunks, chunk, reduced):
    """Assemble and factor the separators' Schur complement of one system.

    lower ``(T, p+1, n, n)`` after :func:`factor_chunk` on every interior; schur
    ``(P, 3, pn, pn)``; chunk_status ``(P,)`` their return values; reduced
    ``(P-1 or more, 2, pn, pn)`` receives the block Cholesky factor of ``S`` (bandwidth 1).
    Returns 0, the first failed interior's status, or ``s + 1`` with ``s`` the first block
    row of the separator whose pivot failed.
    """
    for c in range(n_chunks):
        if chunk_status[c] != 0:
            return chunk_status[c]
    n_steps = lower.shape[0]
    p = lower.shape[1] - 1
    n = lower.shape[2]
    pn = p * n
    for g in range(n_chunks - 1):
        s0 = chunk_stop(g, n_chunks, n_steps, p, chunk)
        diagonal = reduced[g, 0]
        for r in range(pn):
            for col in range(pn):
                if col <= r:  # lower triangle: M[S_g, S_g] from the band, minus both sides
                    sr = s0 + r // n
                    sc = s0 + col // n
                    value = lower[sr, sr - sc, r % n, col % n]
                    diagonal[r, col] = value - schur[g, 1, r, col] - schur[g + 1, 0, r, col]
                else:
                    diagonal[r, col] = 0.0
        if g > 0:  # M[S_g, S_{g-1}] = 0 (m >= p); only interior g couples them
            for r in range(pn):
                for col in range(pn):
                    reduced[g, 1, r, col] = -schur[g, 2, r, col]
        if factor_block_row(reduced[:n_chunks - 1], g) != 0:
            return s0 + 1
    return 0


@jit_helper
def weak_chunk_pivot(lower, c, n_chunks, chunk, tol):
    """0, or ``t + 1`` for the first block row ``t`` of interior ``c`` (factored by
    :func:`factor_chunk`) with a pivot ``L_kk^2 <= tol * M_kk``: the sequential kernels'
    relative pivot test (``banded.weak_pivot_step``; ``M_{I_c}`` is a principal block of
    ``M``, so its diagonal is ``M``'s)."""
    n_steps = lower.shape[0]
    p = lower.shape[1] - 1
    start = chunk_start(c, p, chunk)
    stop = chunk_stop(c, n_chunks, n_steps, p, chunk)
    weak = weak_pivot_step(lower[start:stop], tol)
    return 0 if weak == 0 else start + weak


@jit_helper
def weak_separator_pivot(lower, reduced, n_chunks, chunk, tol):
    """0, or ``s + 1`` for the first separator block row ``s`` whose pivot in the factor
    of the Schur complement (:func:`factor_reduced`) has ``L_qq^2 <= tol * M_qq``, with
    ``M``'s own diagonal (kept in the separator rows of lower): like the sequential
    test, each pivot is measured against the diagonal entry of ``M`` it came from."""
    n_steps = lower.shape[0]
    p = lower.shape[1] - 1
    n = lower.shape[2]
    for g in range(n_chunks - 1):
        s0 = chunk_stop(g, n_chunks, n_steps, p, chunk)
        for q in range(p * n):
            pivot = reduced[g, 0, q, q]
            if not (pivot * pivot > tol * lower[s0 + q // n, 0, q % n, q % n]):
                return s0 + q // n + 1
    return 0


# ----------------------------------------------------------------------------- solve

@jit_helper
def solve_chunk(lower, v, c, n_chunks, chunk):
    """``v[I_c] <- M_{I_c}^{-1} v[I_c]`` for one system; v ``(T, n)``."""
    n_steps = lower.shape[0]
    p = lower.shape[1] - 1
    start = chunk_start(c, p, chunk)
    stop = chunk_stop(c, n_chunks, n_steps, p, chunk)
    forward_substitute(lower[start:stop], v[start:stop])
    backward_substitute(lower[start:stop], v[start:stop])


@jit_helper
def solve_separators(lower, reduced, v, vs, n_chunks, chunk):
    """Separator unknowns of one system, after :func:`solve_chunk` on every interior.

    On entry v ``(T, n)`` holds ``b`` on the separator rows and ``M_I^{-1} b_I`` on the
    interiors; on exit the separator rows hold ``x_S``. vs ``(P-1 or more, pn)`` scratch.
    """
    n_steps = lower.shape[0]
    p = lower.shape[1] - 1
    n = lower.shape[2]
    n_sep = n_chunks - 1
    for g in range(n_sep):
        s0 = chunk_stop(g, n_chunks, n_steps, p, chunk)
        start_l = chunk_start(g, p, chunk)
        start_r = chunk_start(g + 1, p, chunk)
        stop_r = chunk_stop(g + 1, n_chunks, n_steps, p, chunk)
        for q in range(p * n):
            value = v[s0 + q // n, q % n]
            value -= _right_coupling_dot(lower, start_l, s0, q, v[start_l:s0])
            value -= _left_coupling_dot(lower, start_r, stop_r, q, v[start_r:stop_r])
            vs[g, q] = value
    forward_substitute(reduced[:n_sep], vs[:n_sep])
    backward_substitute(reduced[:n_sep], vs[:n_sep])
    for g in range(n_sep):
        s0 = chunk_stop(g, n_chunks, n_steps, p, chunk)
        for q in range(p * n):
            v[s0 + q // n, q % n] = vs[g, q]


@jit_helper
def correct_chunk(lower, v, work, c, n_chunks, chunk):
    """``v[I_c] -= M_{I_c}^{-1} (M[I,Sl] x_Sl + M[I,Sr] x_Sr)`` once the separators are
    solved: v ``(T, n)`` then holds the solution on interior ``c``. work ``(T, n)``."""
    n_steps = lower.shape[0]
    p = lower.shape[1] - 1
    n = lower.shape[2]
    start = chunk_start(c, p, chunk)
    stop = chunk_stop(c, n_chunks, n_steps, p, chunk)
    w = work[start:stop]
    for tl in range(stop - start):
        for a in range(n):
            w[tl, a] = 0.0
    if c > 0:  # rows start .. start+p-1 reach back into the left separator
        for tl in range(min(p, stop - start)):
            t = start + tl
            for j in range(tl + 1, p + 1):
                for a in range(n):
                    value = 0.0
                    for b in range(n):
                        value += lower[t, j, a, b] * v[t - j, b]
                    w[tl, a] += value
    if c < n_chunks - 1:  # separator rows stop .. stop+p-1 reach back into the interior
        for s in range(stop, stop + p):
            for t in range(max(start, s - p), stop):
                for a in range(n):
                    value = 0.0
                    for b in range(n):
                        value += lower[s, s - t, b, a] * v[s, b]
                    w[t - start, a] += value
    forward_substitute(lower[start:stop], w)
    backward_substitute(lower[start:stop], w)
    for tl in range(stop - start):
        for a in range(n):
            v[start + tl, a] -= w[tl, a]

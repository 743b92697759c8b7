"""The accurate least-squares solve of a batch of S-MNN systems with the lane kernels.

``lane_solve`` does what ``accurate_factor_solve_kernel`` does for each system (Cholesky
with the relative pivot test, refinement with row residuals until the correction stops
shrinking, the row-QR factor where either fails), for ``W`` systems at a time:

1. stage the inputs into lane layout (``array[g, (t*K + k)*W + w]``, NumPy copies) and
   the smoothness rows of every step size (scaled by ``ws``);
2. the generated ``solve``, one group after another in one parallel launch: factor and
   ``x = M^{-1} b``, then up to ``CHOLESKY_MAX_STEPS`` refinement steps ``x += M^{-1}
   A^T (beta - A x)``, each lane stopped by the host's rule
   (``kernels/residual.py::lane_refinement_step``, as :func:`bandsolve.cpu.accurate.refine`);
3. lanes whose pivot test or refinement failed are solved again, one system at a time,
   by the host kernel (whose row-QR fallback handles them).

The generated source of each shape is written to a cache folder and imported from there,
so that Numba's disk cache keeps its compilation between processes
(:func:`bandsolve.kernels.codegen.cache_folder`).
"""

import math
import threading
import weakref

import numba
import numpy as np

from ..._jit import jit_helper, jit_kernel, jit_routine
from ...kernels.banded import CHOLESKY_PIVOT_TOL
from ...kernels.residual import (CHOLESKY_FIRST_CORRECTION, CHOLESKY_MAX_STEPS, CONVERGED,
                                 FAILED, RUNNING, lane_refinement_step)
from ..accurate import QR_MAX_STEPS, accurate_factor_solve_kernel
from ...kernels import codegen
from ...kernels.codegen import MAX_BLOCK
# Below this many block rows in all (a host solve of ~5-10 ms), the one-time compilation of
# a new shape (10-60 s, then cached on disk) is not worth it. Batches of fewer than
# ``codegen.LANES`` systems (which would leave most lanes of a group empty) use the
# one-lane build: straight-line code for one system.
MIN_BLOCK_ROWS = 8192

_modules = {}
_lock = threading.Lock()


def kernels(n_dims, n_orders, n_equations, width):
    """The generated module for shape ``(D, O, E)`` and ``width`` lanes (generated,
    written and imported once per process; compiled once per machine)."""
    key = (n_dims, n_orders, n_equations, width)
    with _lock:
        if key not in _modules:
            _modules[key] = codegen.load(codegen.generate(*key), "bandsolve_lanes_"
                                         + codegen.Layout(*key[:3]).key(width))
        return _modules[key]


def shared_kernels(n_dims, n_orders, n_equations, width):
    """The generated sweeps for right-hand sides sharing left-hand sides
    (``codegen.generate(..., shared=True)``), ``width`` lanes."""
    key = (n_dims, n_orders, n_equations, width, "shared")
    with _lock:
        if key not in _modules:
            _modules[key] = codegen.load(
                codegen.generate(*key[:4], shared=True),
                "bandsolve_lanes_" + codegen.Layout(*key[:3]).key(width, shared=True))
        return _modules[key]


def applies_shared(lhs, n_systems):
    """Whether the shared-left-hand-side lane kernels take this problem: ``n_systems``
    right-hand sides over fewer left-hand sides, at least a full group per left-hand side
    on average."""
    n_lhs = math.prod(lhs.batch_shape)
    return (not lhs.central and n_systems * lhs.n_steps >= MIN_BLOCK_ROWS
            and lhs.block_size <= MAX_BLOCK and lhs.n_equations >= 1
            and n_systems >= codegen.LANES * n_lhs)


def applies(lhs, n_systems):
    """Whether the lane kernels take this problem (``n_systems`` systems, one right-hand
    side each)."""
    return (not lhs.central and n_systems * lhs.n_steps >= MIN_BLOCK_ROWS
            and lhs.block_size <= MAX_BLOCK and lhs.n_equations >= 1)


def lane_width(n_systems):
    """Systems per group: full vector groups, or one system per group for small batches."""
    return codegen.LANES if n_systems >= codegen.LANES else 1


def _members(first, n_groups, width, n_systems):
    """``(G, W)`` systems of groups ``first, first+1, ...``: lane ``w`` of group ``g`` is
    system ``(first + g)*W + w``, lanes past the last system repeating it."""
    start = first * width
    return np.minimum(np.arange(start, start + n_groups * width),
                      n_systems - 1).reshape(n_groups, width)


@jit_helper
def _interleave(sources, rows, flat, out, check):
    """``out[k*W + w] = flat[rows[sources[w]], k]`` for the ``W`` lanes of one group:
    rows of flat ``(R, K)`` interleaved into the lane layout ``out`` ``(K*W,)``. With
    ``check``, returns the sum of ``0 * value`` over the values copied: 0 when all are
    finite, NaN as soon as one is NaN or infinite (the finiteness test on the way, at no
    extra memory traffic; sums of zeros cannot overflow); else 0."""
    W, K = sources.shape[0], flat.shape[1]
    finite = 0.0
    if W == 4:  # four explicit streams: ~2-4x the generic loop (one index per value)
        s0, s1 = flat[rows[sources[0]]], flat[rows[sources[1]]]
        s2, s3 = flat[rows[sources[2]]], flat[rows[sources[3]]]
        if check:
            # (one loop per case: the sum's dependency chain in the plain copy slowed
            # it ~2x)
            for k in range(K):
                a, b, c, d = s0[k], s1[k], s2[k], s3[k]
                out[4 * k] = a
                out[4 * k + 1] = b
                out[4 * k + 2] = c
                out[4 * k + 3] = d
                finite += (a * 0.0 + b * 0.0) + (c * 0.0 + d * 0.0)
            return finite
        for k in range(K):
            out[4 * k] = s0[k]
            out[4 * k + 1] = s1[k]
            out[4 * k + 2] = s2[k]
            out[4 * k + 3] = s3[k]
        return finite
    for k in range(K):
        for w in range(W):
            value = flat[rows[sources[w]], k]
            out[k * W + w] = value
            if check:
                finite += value * 0.0
    return finite


@jit_kernel
def _stage(members, with_lhs, n, coefficients, steps, rhs, rhs_index, init, init_index,
           n_orders, n_init_steps, n_init_orders, c_l, r_l, g_l, h_l, check, c_finite):
    """Lane layout of the inputs of the groups of ``members`` ``(G, W)`` (the system of
    each lane): rhs ``(Br, Tr*E)`` (row ``rhs_index[b]`` for system ``b``) and initial
    values ``(Ti', n)`` (zero where nothing is pinned), and with ``with_lhs``
    coefficients ``(B, Tc*E*n)`` and steps ``(B, Th')``, each into ``(G, K*W)``; with
    ``check``, ``c_finite[g]`` ``(G,)`` is 0 where group ``g``'s coefficients are all
    finite, NaN where not (else 0)."""
    W = members.shape[1]
    identity = np.arange(coefficients.shape[0])
    for gl in numba.prange(members.shape[0]):
        # lane-innermost: the writes are contiguous (each lane writing its own stride-W
        # slots in turn would bring every cache line in W times)
        systems = members[gl]
        c_finite[gl] = 0.0
        if with_lhs:
            c_finite[gl] = _interleave(systems, identity, coefficients, c_l[gl], check)
            _interleave(systems, identity, steps, h_l[gl], False)
        _interleave(systems, rhs_index, rhs, r_l[gl], False)
        for t in range(g_l.shape[1] // (n * W)):
            for k in range(n):
                o = k % n_orders
                pinned = t < n_init_steps and o < n_init_orders
                base = (t * n + k) * W
                for w in range(W):
                    g_l[gl, base + w] = (init[init_index[systems[w]], t, k // n_orders, o]
                                         if pinned else 0.0)


@jit_helper
def _unstage_group(m, src, out):
    """``out[m[w], k] = src[k*W + w]``: one group's lanes ``src`` ``(K*W,)`` back into
    the rows ``m`` ``(W,)`` of ``out`` ``(B, K)`` (padding lanes, which repeat the lane
    before them, dropped)."""
    W, K = m.shape[0], out.shape[1]
    if W == 4 and m[0] != m[1] and m[1] != m[2] and m[2] != m[3]:
        # four full lanes: four output streams (~3x the loop below)
        o0, o1, o2, o3 = out[m[0]], out[m[1]], out[m[2]], out[m[3]]
        for k in range(K):
            o0[k] = src[4 * k]
            o1[k] = src[4 * k + 1]
            o2[k] = src[4 * k + 2]
            o3[k] = src[4 * k + 3]
        return
    for w in range(W):
        b = m[w]
        if w == 0 or b != m[w - 1]:
            for k in range(K):
                out[b, k] = src[k * W + w]


@jit_kernel
def _unstage(members, lanes, out):
    """``out[b, k]`` ``(B, K)`` from the lane layout ``lanes[g, k*W + w]`` of the groups
    of ``members`` ``(G, W)`` (lane ``w`` of group ``g`` is system ``members[g, w]``;
    padding lanes, which repeat the lane before them, dropped)."""
    for gl in numba.prange(lanes.shape[0]):
        _unstage_group(members[gl], lanes[gl], out)


@jit_kernel
def _unstage_gradients(members, c_l, c_bar, r_l, r_bar, h_l, h_bar):
    """:func:`_unstage` of the three gradient sums in one parallel launch (each launch
    waits for every thread, milliseconds where another process holds a core); an empty
    output (``(B, 0)``) is skipped."""
    for gl in numba.prange(c_l.shape[0]):
        m = members[gl]
        _unstage_group(m, c_l[gl], c_bar)
        if r_bar.shape[1]:
            _unstage_group(m, r_l[gl], r_bar)
        if h_bar.shape[1]:
            _unstage_group(m, h_l[gl], h_bar)


# Scratch of one batch of groups at most about this large (bytes; at least one group per
# thread). Each batch costs three parallel launches (staging, the fused solve, unstaging),
# and each launch waits for every thread: on a machine where another process holds a core
# that wait is milliseconds, so batches are few. Cache locality does not need small
# batches: the fused solve finishes one group's sweeps before the next group's. Kept
# between calls by the calling thread, so that solves do not pay fresh page faults every
# time.
SCRATCH_BYTES = 1 << 27
# Buffers up to this size are kept for the next call (a long sequence's factor, T = 1e5:
# ~140 MiB in all); larger ones are freed.
RETAIN_BYTES = 1 << 28
_workspace = threading.local()


# The arrays of a kept factor (``lane_solve(keep=True)``, the VJP's) go back to this pool
# when their LaneFactor is garbage collected, and the next kept solve takes them: on the
# benchmark machine fresh pages cost 0.2-1 ms per MB when first touched (B=64, T=1000 keeps
# ~50 MB: 10-40 ms of page faults, more than the kernels that fill them), and whether
# malloc hands back pages already touched depends on its history. At most this many bytes
# wait in the pool.
KEPT_POOL_BYTES = 1 << 29
_kept_pool = []  # free float64 buffers (1-D)
_kept_lock = threading.Lock()


def release_scratch():
    """Free the scratch this thread keeps between lane solves (up to ``RETAIN_BYTES``
    per buffer) and the pool of buffers that kept factors gave back; the next solve
    allocates them again."""
    _workspace.buffers = {}
    with _kept_lock:
        _kept_pool.clear()


def _kept_array(shape, bases):
    """A float64 array ``shape`` (contents undefined) for a kept factor: a pooled buffer
    of at least its size (at most twice, the smallest such), else a new one; its buffer
    is appended to ``bases`` (given back by :func:`_give_back`)."""
    size = math.prod(shape)
    buffer = None
    with _kept_lock:
        fits = [i for i, b in enumerate(_kept_pool) if size <= b.size <= 2 * size]
        if fits:
            buffer = _kept_pool.pop(min(fits, key=lambda i: _kept_pool[i].size))
    if buffer is None:
        buffer = np.empty(size)
    bases.append(buffer)
    return buffer[:size].reshape(shape)


def _give_back(bases):
    """Return the buffers of a collected factor to the pool (up to ``KEPT_POOL_BYTES``
    in all; the rest is freed)."""
    with _kept_lock:
        held = sum(b.nbytes for b in _kept_pool)
        for buffer in bases:
            if held + buffer.nbytes <= KEPT_POOL_BYTES:
                _kept_pool.append(buffer)
                held += buffer.nbytes
    bases.clear()


def scratch(name, shape):
    """A reusable float64 array ``shape`` (contents undefined), one per calling thread and
    ``name``: valid until the next call with the same name in this thread."""
    size = math.prod(shape)
    buffers = getattr(_workspace, "buffers", None)
    if buffers is None:
        buffers = _workspace.buffers = {}
    buffer = buffers.get(name)
    if buffer is None or buffer.size < size:
        buffer = np.empty(size)
        if size * 8 <= RETAIN_BYTES:
            buffers[name] = buffer
    return buffer[:size].reshape(shape)


@jit_routine
def _decide(stats, n_orders, step, max_steps, first_limit, status, previous):
    """The host's stopping rule after refinement step ``step`` for every lane of the
    groups: stats ``(G, (3 O + 1) W)`` (the correction sweep's maxima), status and
    previous ``(G, W)`` updated in place (``kernels/residual.py::lane_refinement_step``,
    the rule the CUDA lane kernels apply too)."""
    width = status.shape[1]
    for g in range(status.shape[0]):
        for w in range(width):
            lane_refinement_step(stats[g], w, width, n_orders, step, max_steps,
                                 first_limit, status[g], previous[g])


def lane_solve(lhs, rhs_flat, rhs_index, init_flat, init_index, keep=False,
               check_coefficients=None, out_dtype=np.float64):
    """``(x, info)`` for a batch whose left-hand-side batch is the full batch: x
    ``(B, T, n)`` (NaN for failed systems; computed in float64, written in ``out_dtype``,
    float32 without a float64 copy of the whole solution), info ``(B,)`` as the host
    kernel's.

    ``keep``: return ``(x, info, factor)``, with ``factor`` a :class:`LaneFactor` that
    solves ``M y = ubar`` (the VJP's second solve) with the same lane factors.
    ``check_coefficients``: the caller's finiteness check of the coefficients (raises
    ``ValueError``), not run yet: it runs before any solve kernel, at once where the
    inputs are staged in more than one batch or not at all, else only where the staging
    found a value that is not finite (one pass over the coefficients fewer)."""
    O, Ti, Oi, we2, wi2, ws2, central = lhs.kernel_scalars()
    steps = lhs.steps
    B, Tc, E, n = lhs.flat_coefficients_shape
    T, D = lhs.n_steps, n // O
    W = lane_width(B)
    mod = kernels(D, O, E, W)
    lay = codegen.Layout(D, O, E)
    U = np.uint64
    Tr, Th = rhs_flat.shape[1], steps.shape[1]
    n_init = max(Ti, 1)
    # per-step sizes of each lane array (its step axis broadcasts when of length 1)
    sizes = dict(c=Tc * E * n, r=Tr * E, g=n_init * n, h=max(Th, 1),
                 lower=T * lay.n_packed, x=T * n, scale=T * n,
                 v=T * n)
    per_group = 8 * W * sum(sizes.values())
    n_groups = -(-B // W)
    threads = numba.get_num_threads()
    batch = min(n_groups, max(threads, SCRATCH_BYTES // per_group))
    if batch >= threads:
        batch -= batch % threads
    if keep:  # the factor of every group is kept: one batch, its own arrays
        batch = n_groups
    pins = np.zeros((T, D, O))
    pins[:Ti, :, :Oi] = wi2
    pins = pins.reshape(-1)
    strides = dict(cs=U(E * n * W if Tc > 1 else 0), rs=U(E * W if Tr > 1 else 0),
                   gs=U(n * W), hs=U(W if Th > 1 else 0))
    x_out = np.empty((B, T, n), dtype=np.float64 if keep else out_dtype)
    status_out = np.empty(n_groups * W, dtype=np.int64)
    # one lane per group: the lane layout of a system's inputs and solution is their own
    # layout, so the kernels read and write them in place (no staging copies)
    direct = W == 1 and rhs_flat.shape[0] == B and np.array_equal(rhs_index, np.arange(B))
    # (the one-lane build writes a float64 solution in place)
    in_place = direct and not keep and x_out.dtype == np.float64
    # staging reads float32 coefficients as they are (no separate cast pass); the kernels
    # reading in place (direct) and the host kernel of failed systems read float64
    coefficients = lhs.coefficients if direct else lhs.raw_coefficients
    if check_coefficients is not None and (direct or batch < n_groups):
        check_coefficients()
        check_coefficients = None
    c_finite = np.empty(batch)
    bases = []  # the kept factor's buffers (from the pool)
    for first in range(0, n_groups, batch):
        G = min(batch, n_groups - first)
        # (a kept factor keeps its own arrays, but v is a temporary of the solve)
        a = {name: _kept_array((G, size * W), bases) if keep and name != "v"
             else scratch(name, (G, size * W)) for name, size in sizes.items()}
        if not Th:
            a["h"][:] = 0.0
        if direct:
            rows = slice(first, first + G)
            # (a kept factor must not see later changes to the caller's arrays, which the
            # left-hand side's may be: copies)
            own = np.copy if keep else (lambda view: view)
            a["c"] = own(coefficients[rows].reshape(G, -1))
            a["r"] = own(rhs_flat[rows].reshape(G, -1))
            if Th:
                a["h"] = own(steps[rows])
            g = np.zeros((G, n_init, D, O))
            if Ti:
                g[:, :Ti, :, :Oi] = init_flat[init_index[rows]]
            a["g"] = g.reshape(G, -1)
            if in_place:  # (a kept factor keeps its own solution)
                a["x"] = x_out[rows].reshape(G, -1)
        else:
            _stage.for_batch(G * W, T)(_members(first, G, W, B), True, n,
                                       coefficients.reshape(B, -1), steps,
                                       rhs_flat.reshape(rhs_flat.shape[0], -1), rhs_index,
                                       init_flat, init_index, O, Ti, Oi, a["c"], a["r"],
                                       a["g"], a["h"], check_coefficients is not None,
                                       c_finite[:G])
            if check_coefficients is not None and not np.all(c_finite[:G] == 0.0):
                check_coefficients()  # raises, naming the first value that is not finite
        status_out[first * W:(first + G) * W] = _solve_groups(
            mod, lay, G, T, W, a, strides, n_init, pins, we2, math.sqrt(ws2), O).reshape(-1)
        if not in_place:
            _unstage.for_batch(G * W, T)(_members(first, G, W, B), a["x"],
                                         x_out.reshape(B, -1))

    info = np.zeros(B, dtype=np.int64)
    failed = np.flatnonzero(status_out[:B] != CONVERGED)
    sub_lower = np.empty((0, T, lhs.bandwidth + 1, n, n))
    if failed.size:
        sub_lower = np.empty((failed.size, T, lhs.bandwidth + 1, n, n))
        sub_info = np.zeros(failed.size, dtype=np.int64)
        sub_x = np.empty((failed.size, T, n))
        sub_index = np.arange(failed.size)
        accurate_factor_solve_kernel.for_batch(failed.size, T)(
            lhs.coefficients[failed], steps[failed],
            rhs_flat[rhs_index[failed]], sub_index, init_flat[init_index[failed]], sub_index,
            O, Ti, Oi, we2, wi2, ws2, central, sub_lower, sub_info, sub_x)
        x_out[failed] = sub_x
        info[failed] = sub_info
    if not keep:
        return x_out, info
    factor = LaneFactor(mod, lay, T, W, B, a, strides, n_init, pins, we2, math.sqrt(ws2),
                        failed, sub_lower, bases)
    return x_out, info, factor


@jit_kernel
def _to_lanes(values, members, out):
    """Lane layout ``(G, K*W)`` of the rows of values ``(B, K)``, lane ``w`` of group
    ``g`` holding system ``members[g, w]`` (the staging's interleave: lane-innermost
    writes, four read streams)."""
    identity = np.arange(values.shape[0])
    for gl in numba.prange(out.shape[0]):
        _interleave(members[gl], identity, values, out[gl], False)


@jit_kernel
def _to_host_layout(lower_l, ys_l, W, y_rows, y_cols, out):
    """Host block layout ``out`` ``(B, T, 2, n, n)`` of lane factors: packed diagonal
    blocks (inverse diagonal) ``lower_l`` and the entries ``(y_rows, y_cols)`` of ``Y_t``
    in ``ys_l`` (``L[t, t-1] = Y_t^T``)."""
    n_systems, n_steps, _, n, _ = out.shape
    n_packed = n * (n + 1) // 2
    n_y = y_rows.shape[0]
    for b in numba.prange(n_systems):
        gl, w = b // W, b % W
        for t in range(n_steps):
            for i in range(n):
                for j in range(i + 1):
                    value = lower_l[gl, (t * n_packed + i * (i + 1) // 2 + j) * W + w]
                    out[b, t, 0, i, j] = 1.0 / value if i == j else value
            for s in range(n_y):
                out[b, t, 1, y_cols[s], y_rows[s]] = ys_l[gl, (t * n_y + s) * W + w]


class LaneFactor:
    """The lane factors of a batch kept after :func:`lane_solve` (``keep=True``), with
    the staged left-hand-side inputs, for the VJP's second solve ``M y = ubar``.

    ``failed`` lists the systems the lanes could not factor, whose host factors (Cholesky
    or row QR, ``(k, T, p+1, n, n)``) are ``host_lower``; :meth:`lower` rebuilds the
    factor of every system in the host's block layout.
    """

    def __init__(self, mod, lay, n_steps, width, n_systems, arrays, strides, n_init, pins,
                 we2, ws, failed, host_lower, bases):
        self._mod, self._lay, self._T, self._W, self._B = mod, lay, n_steps, width, n_systems
        self._a, self._strides, self._n_init, self._pins = arrays, strides, n_init, pins
        # the pooled buffers behind the arrays, given back when this is collected; nothing
        # outside this object holds a view of them
        self._bases = bases
        weakref.finalize(self, _give_back, bases)
        self._weights = (we2, ws)
        self.failed, self.host_lower = failed, host_lower

    def coefficients(self):
        """The staged coefficients back in the systems' layout ``(B, Tc*E*n)`` (a new
        array; a copy of the solve's inputs that later changes to the caller's do not
        reach)."""
        c_l = self._a["c"]
        out = np.empty((self._B, c_l.shape[1] // self._W))
        G = c_l.shape[0]
        _unstage.for_batch(self._B, self._T)(_members(0, G, self._W, self._B), c_l, out)
        return out

    def lower(self):
        """The factor ``L`` of every system, ``(B, T, 2, n, n)`` (host block layout:
        ``L[t, 1] = L[t, t-1] = Y_t^T``; the diagonal blocks unpacked)."""
        lay, n = self._lay, self._lay.n
        out = np.zeros((self._B, self._T, 2, n, n))
        y_rows = np.array([r for r, _ in lay.y_entries], dtype=np.int64)
        y_cols = np.array([c for _, c in lay.y_entries], dtype=np.int64)
        a = self._a
        inputs = _kernel_inputs(a, self._strides, self._n_init, self._pins, *self._weights)
        ys = np.empty((a["lower"].shape[0], self._T * lay.n_y * self._W))
        self._mod.couplings(ys.shape[0], self._T, *codegen.step_arguments(inputs), a["lower"], ys)
        _to_host_layout.for_batch(self._B, self._T)(a["lower"], ys, self._W, y_rows, y_cols,
                                                    out)
        out[self.failed] = self.host_lower
        return out

    def solve(self, extra, out):
        """``out = M^{-1} extra`` refined, both ``(B, T, n)`` (``out`` may be ``extra``);
        returns ``(ok, redo)``: ``ok`` ``(B,)`` False for the systems the caller must solve
        with the host factor (the lanes' failed systems and those whose refinement
        failed), ``redo`` a copy of their rows of ``extra``, taken before ``out`` is
        written."""
        mod, lay, T, W = self._mod, self._lay, self._T, self._W
        a, st = self._a, self._strides
        G, n = a["lower"].shape[0], lay.n
        e_l = scratch("extra", (G, T * n * W))
        _to_lanes.for_batch(G * W, T)(extra.reshape(self._B, T * n), _members(0, G, W, self._B),
                                      e_l)
        inputs = _kernel_inputs(a, st, self._n_init, self._pins, *self._weights)
        y = scratch("y", (G, T * n * W))
        self._drop_sums()  # the last solve's sums are replaced
        # the gradient sums, shaped like the staged coefficients, rhs and steps; kept for
        # gradients() in pooled buffers (given back there)
        bases = []
        self._sums = [_kept_array(a[k].shape, bases) for k in ("c", "r", "h")]
        self._sum_bases = bases
        status = np.empty((G, W), dtype=np.int64)
        # y = M^{-1} extra, refined, then the gradient sums from x and y, each group in
        # turn (the generated solve_plain)
        mod.solve_plain(G, T, *inputs, a["lower"], y, a["scale"], scratch("v", (G, T * n * W)),
                        e_l, np.empty((G, (3 * lay.O + 1) * W)), np.empty((G, n * W)),
                        np.empty((G, n * W)), status, np.empty((G, W)), QR_MAX_STEPS,
                        math.inf, a["x"], *self._sums)
        ok = status.reshape(-1)[:self._B] == CONVERGED
        ok[self.failed] = False
        redo = np.array(extra[~ok])
        # (out unstaged in place: a fresh u-sized array costs its page faults every call)
        target = out if out.flags.c_contiguous else np.empty(out.shape)
        _unstage.for_batch(G * W, T)(_members(0, G, W, self._B), y,
                                     target.reshape(self._B, -1))
        if target is not out:
            out[...] = target
        return ok, redo

    def _drop_sums(self):
        """Give the buffers of the last solve's gradient sums back to the pool."""
        if getattr(self, "_sums", None) is not None:
            _give_back(self._sum_bases)
            self._sums = None

    def gradients(self, coefficients_bar, rhs_bar, steps_bar):
        """The VJP's per-system sums from the kept solution ``x`` and the last
        :meth:`solve`'s ``y`` (formed by that solve, as the host's ``gradient_kernel``
        does) into coefficients_bar ``(B, Tc, E, n)``, rhs_bar ``(B, Tr, E)`` and
        steps_bar ``(B, Th)``; once per solve."""
        if getattr(self, "_sums", None) is None:
            raise RuntimeError("LaneFactor.gradients needs a solve() before it")
        G, W = self._a["lower"].shape[0], self._W
        flat = [array.reshape(self._B, math.prod(array.shape[1:]))
                for array in (coefficients_bar, rhs_bar, steps_bar)]
        sums = self._sums
        _unstage_gradients.for_batch(self._B, self._T)(
            _members(0, G, W, self._B), sums[0], flat[0], sums[1], flat[1], sums[2], flat[2])
        self._drop_sums()


class _WithMap:
    """The shared-left-hand-side sweeps with their group -> left-hand-side map bound (the
    call signature of the ordinary lane kernels)."""

    def __init__(self, mod, fmap):
        self._mod, self._fmap = mod, fmap

    def __getattr__(self, name):
        kernel = getattr(self._mod, name)
        return lambda *args: kernel(*args, self._fmap)


def _groups_by_lhs(lhs_index, n_lhs, width):
    """``(members, fmap)``: the right-hand sides grouped by their left-hand side,
    ``width`` per group (a left-hand side's last group padded with its last system),
    members ``(G, W)`` int64 and the left-hand side of each group ``(G,)`` uint64."""
    order = np.argsort(lhs_index, kind="stable")
    counts = np.bincount(lhs_index, minlength=n_lhs)
    members, fmap = [], []
    start = 0
    for f in range(n_lhs):
        mine = order[start:start + counts[f]]
        start += counts[f]
        n_groups = -(-mine.size // width)
        if not n_groups:
            continue
        padded = np.concatenate([mine, np.full(n_groups * width - mine.size, mine[-1])])
        members.append(padded.reshape(n_groups, width))
        fmap.append(np.full(n_groups, f, dtype=np.uint64))
    return np.concatenate(members), np.concatenate(fmap)


def shared_lane_solve(lhs, rhs_flat, rhs_index, init_flat, init_index, lhs_index):
    """``(x, status)`` of many right-hand sides over few left-hand sides: each left-hand
    side factored once (the one-lane ``factor_forward``), then the right-hand sides solved
    and refined ``W`` at a time, the lanes of a group sharing one factor (read once for
    all of them). x ``(B, T, n)`` float64; status ``(B,)``: ``CONVERGED``, or not for the
    systems the caller must solve another way (their left-hand side failed the pivot
    test, or their refinement failed)."""
    O, Ti, Oi, we2, wi2, ws2, _ = lhs.kernel_scalars()
    coefficients, steps = lhs.coefficients, lhs.steps
    n_lhs, Tc, E, n = coefficients.shape
    T, D = lhs.n_steps, n // O
    B, W = lhs_index.size, codegen.LANES
    lay = codegen.Layout(D, O, E)
    U = np.uint64
    Tr, Th = rhs_flat.shape[1], steps.shape[1]
    n_init, ws = max(Ti, 1), math.sqrt(ws2)
    pins = np.zeros((T, D, O))
    pins[:Ti, :, :Oi] = wi2
    pins = pins.reshape(-1)
    # the left-hand sides in the one-lane layout (their own), factored with b = 0
    c1 = coefficients.reshape(n_lhs, -1)
    h1 = steps if Th else np.zeros((n_lhs, 1))
    cs, hs = U(E * n if Tc > 1 else 0), U(1 if Th > 1 else 0)
    factor = dict(lower=np.empty((n_lhs, T * lay.n_packed)),
                  scale=np.empty((n_lhs, T * n)))
    ok = np.ones((n_lhs, 1))
    kernels(D, O, E, 1).factor_forward(
        n_lhs, T, c1, cs, np.zeros((n_lhs, E)), U(0), np.zeros((n_lhs, n)), U(n), 1, h1,
        hs, pins, we2, ws, CHOLESKY_PIVOT_TOL, factor["lower"],
        np.empty((n_lhs, T * n)), factor["scale"], ok, np.zeros((n_lhs, lay.n_packed)),
        np.zeros((n_lhs, n)))
    # the right-hand sides, W per group of one left-hand side
    members, fmap = _groups_by_lhs(lhs_index, n_lhs, W)
    G = members.shape[0]
    mod = _WithMap(shared_kernels(D, O, E, W), fmap)
    r_l, g_l = np.empty((G, Tr * E * W)), np.empty((G, n_init * n * W))
    _stage.for_batch(G * W, T)(members, False, n, c1, steps,
                               rhs_flat.reshape(rhs_flat.shape[0], -1), rhs_index,
                               init_flat, init_index, O, Ti, Oi, np.empty((G, 0)), r_l,
                               g_l, np.empty((G, 0)), False, np.empty(G))
    inputs = (c1, cs, r_l, U(E * W if Tr > 1 else 0), g_l, U(n * W), n_init, h1, hs, pins,
              we2, ws)
    # x = M^{-1} b: the least-squares residual of x = 0 is b
    x_l, v = np.zeros((G, T * n * W)), np.empty((G, T * n * W))
    mod.residual_forward(G, T, *inputs, x_l, x_l, factor["lower"], v,
                         np.zeros((G, n * W)), np.zeros((G, n * W)))
    mod.correction_backward(G, T, *codegen.step_arguments(inputs), factor["lower"], v, x_l, factor["scale"],
                            np.zeros((G, (3 * O + 1) * W)), np.zeros((G, n * W)))
    start = np.where(ok[fmap.astype(np.int64), 0] == 1.0, RUNNING, FAILED)
    status = _refine_groups(mod, lay, G, T, W, inputs, factor, x_l, v,
                            CHOLESKY_MAX_STEPS, CHOLESKY_FIRST_CORRECTION,
                            np.repeat(start[:, None], W, axis=1))
    x = np.empty((B, T, n))
    _unstage.for_batch(G * W, T)(members, x_l, x.reshape(B, -1))
    return x, _by_system(members, status, B)


def _by_system(members, status, n_systems):
    """Per-system values ``(B,)`` of per-lane ones ``(G, W)`` (padding lanes repeat a
    system, with the same value)."""
    out = np.empty(n_systems, dtype=status.dtype)
    out[members.reshape(-1)] = status.reshape(-1)
    return out


def _kernel_inputs(a, strides, n_init, pins, we2, ws):
    """The staged inputs every sweep kernel takes first: each lane array with its stride
    per step, then the pinned weights and the equation and smoothness weights."""
    return (a["c"], strides["cs"], a["r"], strides["rs"], a["g"], strides["gs"], n_init,
            a["h"], strides["hs"], pins, we2, ws)


def _solve_groups(mod, lay, G, T, W, a, strides, n_init, pins, we2, ws, n_orders):
    """Factor, solve and refine ``G`` staged groups in place (solution in ``a["x"]``),
    each group's sweeps one after another in one parallel launch (the generated
    ``solve``); returns the lanes' status ``(G, W)``."""
    n = lay.n
    inputs = _kernel_inputs(a, strides, n_init, pins, we2, ws)
    status = np.empty((G, W), dtype=np.int64)
    # (carries, pivot flags and convergence maxima are reset by the kernel per group)
    mod.solve(G, T, *inputs, CHOLESKY_PIVOT_TOL, a["lower"], a["x"], a["scale"],
              np.empty((G, W)), a["v"], np.empty((G, (3 * n_orders + 1) * W)),
              np.empty((G, lay.n_packed * W)), np.empty((G, n * W)), np.empty((G, n * W)),
              status, np.empty((G, W)), CHOLESKY_MAX_STEPS, CHOLESKY_FIRST_CORRECTION)
    return status


def _refine_groups(mod, lay, G, T, W, inputs, a, x, v, max_steps, first_limit, status):
    """Refinement ``x += M^{-1} (A^T (beta - A x))`` of the shared-left-hand-side sweeps
    ``mod``, lane by lane with the host's stopping rule
    (:func:`bandsolve.cpu.accurate.refine`); returns the lanes' status ``(G, W)``."""
    n, n_orders = lay.n, lay.O
    carry_z = np.zeros((G, n * W))
    carry_g = np.zeros((G, n * W))
    stats = np.zeros((G, (3 * n_orders + 1) * W))
    previous = np.full((G, W), math.inf)
    status = np.ascontiguousarray(status, dtype=np.int64)
    for step in range(max_steps):
        carry_g[:] = 0.0
        carry_z[:] = 0.0
        # (the argument after x, extra, is read by the plain residual only)
        mod.residual_forward(G, T, *inputs, x, x, a["lower"], v, carry_g, carry_z)
        carry_z[:] = 0.0
        stats[:] = 0.0
        stats.reshape(G, -1, W)[:, 3 * n_orders] = 1.0
        # the sweep adds the correction to every lane (a lane that had already converged
        # takes one more, rounding-level step; a failing lane's x is not used)
        mod.correction_backward(G, T, *codegen.step_arguments(inputs), a["lower"], v, x, a["scale"], stats,
                                carry_z)
        _decide(stats, n_orders, step, max_steps, first_limit, status, previous)
        if not np.any(status == RUNNING):
            break
    return status

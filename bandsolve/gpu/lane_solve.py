"""The accurate least-squares solve of a batch of S-MNN systems on the device with the
generated thread-per-system kernels of :mod:`bandsolve.gpu.lanes`: the device counterpart
of ``bandsolve/cpu/lanes/solve.py``, decided on the device without synchronising.

1. :func:`stage_kernel`: the inputs in lane layout (system innermost, one group as wide
   as the batch: quantity ``k`` of step ``t`` of system ``b`` at ``array[0, (t*K + k)*B
   + b]``), the pinned weights and every lane's zero carries;
2. ``factor_forward`` + ``backward``: ``x = M^{-1} b`` (relative pivot test per lane);
3. ``refine``: up to ``CHOLESKY_MAX_STEPS`` refinement steps ``x += M^{-1} A^T (beta -
   A x)`` of each lane in one launch, each step's residual and correction sweeps followed
   by the host's stopping rule (``kernels/residual.py::lane_refinement_step``, shared
   with the CPU lanes), the thread leaving when its lane stops;
4. :func:`unstage_kernel`: ``x`` in the caller's layout ``(B, T, n)``;
5. the systems whose lane failed (pivot test or refinement) are factored again by the
   sequential block kernels with their row-QR fallback and solved and refined from zero
   (the retry of the parallel-in-time factorisation); where no lane failed, those
   kernels return at once (about 30 launches that do nothing), and ``smnn_solve`` with
   ``check=True``, which synchronises anyway, reads the lanes' status first and does not
   launch them (:func:`all_converged`).

Taken by ``smnn_solve`` on device arrays with ``algorithm="auto"`` for one right-hand
side per system, forward smoothness, ``n <= codegen.MAX_BLOCK``, ``E >= 1`` and at least
``config.LANES_MIN_SYSTEMS`` systems (:func:`applies`). Nothing here has run on a real
GPU yet: it is verified under the CUDA simulator and compiled for sm_90.
"""

import math

import numpy as np
from numba import cuda

from ..kernels import codegen
from ..kernels.banded import CHOLESKY_PIVOT_TOL, diagonal_of_product
from ..kernels.residual import CHOLESKY_FIRST_CORRECTION, CHOLESKY_MAX_STEPS, CONVERGED
from . import arrays, config, partitioned, refine
from ._runtime import device_function
from .arrays import source_row
from .lanes import kernels

_source_row = device_function(source_row)
_diagonal_of_product = device_function(diagonal_of_product)


def applies(lhs, n_systems):
    """Whether the lane kernels take this problem (``n_systems`` right-hand sides, one per
    left-hand side)."""
    return (config.USE_LANES and not lhs.central and lhs.block_size <= codegen.MAX_BLOCK
            and lhs.n_equations >= 1 and n_systems >= config.LANES_MIN_SYSTEMS
            and n_systems == math.prod(lhs.batch_shape))


# ----------------------------------------------------------------------------- kernels

@cuda.jit
def stage_kernel(coefficients, steps, rhs, init, shape, c_strides, h_strides, r_strides,
                 g_strides, n_orders, n_init_steps, n_init_orders, n_sizes, wi2, c_l, r_l,
                 g_l, h_l, pins, ok, carry_l, carry_z, carry_c):
    """Thread ``t * B + b`` writes step ``t`` of system ``b`` in lane layout: coefficients
    ``(Bc, Tc, E, n)`` -> c_l ``(1, Tc*E*n*B)``, rhs ``(Br, Tr, E)`` -> r_l, initial
    values ``(Bi, Ti, D, Oi)`` -> g_l ``(1, max(Ti, 1)*n*B)`` (zero where not pinned),
    steps ``(Bh, Th)`` with ``Th = n_sizes`` -> h_l ``(1, max(Th, 1)*B)`` (zero when
    ``Th = 0``: then ``steps`` is a placeholder); pins ``(T*n,)`` gets the initial-value
    weight of each unknown of step ``t``; step 0 also starts the lane: ``ok = 1``, zero
    carries ``carry_l`` ``(1, NP*B)``, ``carry_z``, ``carry_c`` ``(1, n*B)`` (of the
    first forward and backward sweeps)."""
    k = cuda.grid(1)
    B = ok.shape[1]
    n = coefficients.shape[3]
    n_steps = pins.shape[0] // n
    if k >= B * n_steps:
        return
    t = k // B
    b = k % B
    if t < coefficients.shape[1]:
        c = coefficients[_source_row(b, shape, c_strides), t]
        en = c.shape[0] * n
        for e in range(c.shape[0]):
            for a in range(n):
                c_l[0, (t * en + e * n + a) * B + b] = c[e, a]
    if t < rhs.shape[1]:
        r = rhs[_source_row(b, shape, r_strides), t]
        for e in range(r.shape[0]):
            r_l[0, (t * r.shape[0] + e) * B + b] = r[e]
    if t < g_l.shape[1] // (n * B):
        row = _source_row(b, shape, g_strides)
        for a in range(n):
            o = a % n_orders
            pinned = t < n_init_steps and o < n_init_orders
            g_l[0, (t * n + a) * B + b] = init[row, t, a // n_orders, o] if pinned else 0.0
    if t < h_l.shape[1] // B:
        h_l[0, t * B + b] = (steps[_source_row(b, shape, h_strides), t]
                             if n_sizes > 0 else 0.0)
    if b == 0:
        for a in range(n):
            pinned = t < n_init_steps and a % n_orders < n_init_orders
            pins[t * n + a] = wi2 if pinned else 0.0
    if t == 0:
        ok[0, b] = 1.0
        for q in range(carry_l.shape[1] // B):
            carry_l[0, q * B + b] = 0.0
        for q in range(carry_z.shape[1] // B):
            carry_z[0, q * B + b] = 0.0
            carry_c[0, q * B + b] = 0.0


@cuda.jit
def unstage_kernel(x_l, x):
    """x ``(B, T, n)`` from the lane layout x_l ``(1, T*n*B)``; thread ``t * B + b``."""
    k = cuda.grid(1)
    B, n_steps, n = x.shape
    if k >= B * n_steps:
        return
    t = k // B
    b = k % B
    for a in range(n):
        x[b, t, a] = x_l[0, (t * n + a) * B + b]


@cuda.jit
def to_lanes_kernel(values, first, second, carry_z, carry_c):
    """values ``(B, T, n)`` into the lane layout ``(1, T*n*B)`` of both first and second;
    step 0 zeroes lane ``b``'s carries ``(1, n*B)`` (thread ``t * B + b``)."""
    k = cuda.grid(1)
    B, n_steps, n = values.shape
    if k >= B * n_steps:
        return
    t = k // B
    b = k % B
    for a in range(n):
        first[0, (t * n + a) * B + b] = values[b, t, a]
        second[0, (t * n + a) * B + b] = values[b, t, a]
    if t == 0:
        for a in range(n):
            carry_z[0, a * B + b] = 0.0
            carry_c[0, a * B + b] = 0.0


@cuda.jit
def mark_retries_kernel(status, sequential, info, state, applied, last):
    """System ``b = thread``: a converged lane is done (``state`` ``CONVERGED``); any other
    is to be factored again sequentially (``sequential`` ``PENDING``, ``state``
    ``RETRY``). ``info = 0``, no correction applied yet (``refine.apply_kernel``)."""
    b = cuda.grid(1)
    if b >= status.shape[0]:
        return
    info[b] = 0
    applied[b] = 0
    last[b] = 0
    if status[b] == CONVERGED:
        sequential[b] = partitioned.PARTITIONED  # not sequential: solved by the lanes
        state[b] = refine.CONVERGED
    else:
        sequential[b] = partitioned.PENDING
        state[b] = refine.RETRY


@cuda.jit
def mark_plain_retries_kernel(status, sequential, state, applied, last):
    """The VJP's second solve, system ``b = thread``: a converged lane is done; any other
    is solved again from zero with its sequential factor (``RETRY``), which is made first
    (``PENDING``) where the forward solve did not need one."""
    b = cuda.grid(1)
    if b >= status.shape[0]:
        return
    applied[b] = 0
    last[b] = 0
    if status[b] == CONVERGED:
        state[b] = refine.CONVERGED
    else:
        state[b] = refine.RETRY
        if sequential[b] != partitioned.SEQUENTIAL:
            sequential[b] = partitioned.PENDING


@cuda.jit
def retry_column_norms_kernel(lower, sequential, scale):
    """``scale[s, t, k] = sqrt(M_kk)`` from the sequential factor ``(Bl, T, p+1, n, n)``
    of the systems being retried only (thread ``s * T + t``; scale ``(Bl, T, n)``)."""
    k = cuda.grid(1)
    n_steps = scale.shape[1]
    if k >= scale.shape[0] * n_steps:
        return
    s = k // n_steps
    if sequential[s] != partitioned.SEQUENTIAL:
        return
    t = k % n_steps
    for a in range(scale.shape[2]):
        scale[s, t, a] = math.sqrt(_diagonal_of_product(lower[s], t, a))


# ----------------------------------------------------------------------------- solve

class DeviceLaneFactor:
    """The lane factors of a batch (:func:`solve_lanes`) with the staged left-hand-side
    inputs, kept for the VJP's second solve :meth:`solve_plain` (``M y = ubar``)."""

    def __init__(self, mod, lay, n_steps, n_systems, inputs, lower, scale, ok):
        self._mod, self._lay, self._T, self._B = mod, lay, n_steps, n_systems
        self._inputs, self._lower, self._scale, self._ok = inputs, lower, scale, ok
        # what the substitution sweeps rebuild the couplings from: (steps, hs, ws)
        self._steps = codegen.step_arguments(inputs)

    def _lanes(self, device, per_system):
        return device.scratch((1, per_system * self._B), np.float64)

    def _refine(self, device, x_l, extra_l, max_steps, first_limit):
        """Refinement of x_l in place (``extra_l`` None: ``x += M^{-1} A^T (beta - A x)``,
        else of the plain system ``M x = extra``), each lane stopped by the host's rule on
        the device; returns the lanes' status ``(B,)``. The lanes whose factor failed its
        pivot test are ``FAILED`` from the start."""
        B, n, O, mod = self._B, self._lay.n, self._lay.O, self._mod
        status = device.scratch((B,), np.int64)
        refine_kernel = mod.refine if extra_l is None else mod.refine_plain
        extra_l = x_l if extra_l is None else extra_l  # (unused by the least-squares residual)
        # every refinement step of a lane and its stopping rule in one launch
        device.launch(refine_kernel, B, 1, self._T, *self._inputs, x_l, extra_l, self._lower,
                      self._lanes(device, self._T * n), self._scale,
                      self._lanes(device, 3 * O + 1), self._lanes(device, n),
                      self._lanes(device, n), self._ok, status,
                      device.scratch((B,), np.float64), max_steps, first_limit, B,
                      threads=config.LANE_THREADS)
        return status

    def solve_plain(self, device, extra, y):
        """``y = M^{-1} extra`` refined (both ``(B, T, n)`` float64 device arrays); returns
        the lanes' status ``(B,)`` (``FAILED``: y of that system is not to be used)."""
        B, T, n = self._B, self._T, self._lay.n
        extra_l, y_l = self._lanes(device, T * n), self._lanes(device, T * n)
        carry_z, carry_c = self._lanes(device, n), self._lanes(device, n)
        threads = config.LANE_THREADS
        device.launch(to_lanes_kernel, B * T, extra, extra_l, y_l, carry_z, carry_c)
        device.launch(self._mod.forward, B, 1, T, *self._steps, self._lower, y_l, carry_z, B,
                      threads=threads)
        device.launch(self._mod.backward, B, 1, T, *self._steps, self._lower, y_l, y_l,
                      self._scale, self._lanes(device, 3 * self._lay.O + 1), carry_c, B,
                      threads=threads)
        status = self._refine(device, y_l, extra_l, refine.MAX_REFINE_STEPS, math.inf)
        device.launch(unstage_kernel, B * T, y_l, y)
        return status


def solve_lanes(device, lhs, rhs_flat, init_flat, shape, strides, x):
    """``x = M^{-1} b`` refined into x ``(B, T, n)`` (float64 device array) for a batch
    whose left-hand-side batch is the full batch (index maps ``shape``, ``strides`` of
    ``batch_maps``); returns ``(factor, status)``: the :class:`DeviceLaneFactor` and each
    lane's status ``(B,)`` (``CONVERGED``, or ``FAILED`` where the pivot test or the
    refinement failed: its x is not to be used)."""
    O, Ti, Oi, we2, wi2, ws2, _ = lhs.kernel_scalars()
    coefficients = lhs.coefficients
    Bc, Tc, E, n = coefficients.shape
    B, T, _ = x.shape
    D = n // O
    Tr, Th = rhs_flat.shape[1], lhs.steps_shape[-1]
    n_init = max(Ti, 1)
    lay = codegen.Layout(D, O, E)
    mod = kernels(D, O, E)

    def lanes(per_system):
        return device.scratch((1, per_system * B), np.float64)

    c_l, r_l, g_l, h_l = lanes(Tc * E * n), lanes(Tr * E), lanes(n_init * n), lanes(max(Th, 1))
    lower = lanes(T * lay.n_packed)
    x_l, scale_l, ok = lanes(T * n), lanes(T * n), lanes(1)
    carry_l, carry_z, carry_c = lanes(lay.n_packed), lanes(n), lanes(n)
    pins = device.scratch((T * n,), np.float64)
    U = np.uint64
    inputs = (c_l, U(E * n * B if Tc > 1 else 0), r_l, U(E * B if Tr > 1 else 0), g_l,
              U(n * B), n_init, h_l, U(B if Th > 1 else 0), pins, we2, math.sqrt(ws2))

    threads = config.LANE_THREADS
    device.launch(stage_kernel, B * T, coefficients, lhs.steps, rhs_flat, init_flat, shape,
                  strides["coefficients"], strides["steps"], strides["rhs"], strides["init"],
                  O, Ti, Oi, Th, wi2, c_l, r_l, g_l, h_l, pins, ok, carry_l, carry_z, carry_c)
    # the factor and first solve start from stage_kernel's zero carries (refine zeroes its own)
    device.launch(mod.factor_forward, B, 1, T, *inputs, CHOLESKY_PIVOT_TOL, lower, x_l,
                  scale_l, ok, carry_l, carry_z, B, threads=threads)
    factor = DeviceLaneFactor(mod, lay, T, B, inputs, lower, scale_l, ok)
    device.launch(mod.backward, B, 1, T, *factor._steps, lower, x_l, x_l, scale_l,
                  lanes(3 * O + 1), carry_c, B, threads=threads)
    status = factor._refine(device, x_l, None, CHOLESKY_MAX_STEPS, CHOLESKY_FIRST_CORRECTION)
    device.launch(unstage_kernel, B * T, x_l, x)
    return factor, status


def all_converged(device, status):
    """Whether every lane's status ``(B,)`` is ``CONVERGED`` (copies it to the host:
    synchronises the stream)."""
    host = status.copy_to_host(stream=device.stream)
    arrays.synchronize(device)
    return bool(np.all(host == CONVERGED))


def retry_plan(device, B, T, n, bandwidth, status, info):
    """The arrays of the sequential retry of the failed lanes: ``(lower, sequential,
    state, applied, last)`` with the retried systems ``PENDING`` / ``RETRY``."""
    lower = device.scratch((B, T, bandwidth + 1, n, n), np.float64)
    sequential, state, applied, last = (device.scratch((B,), np.int64) for _ in range(4))
    device.launch(mark_retries_kernel, B, status, sequential, info, state, applied, last)
    return lower, sequential, state, applied, last



def bytes_moved(n_systems, n_steps, n_dims, n_orders, n_equations, itemsize,
                refinement_steps=1):
    """Model of the device memory traffic of one lane solve (bytes), every input varying
    per system and step and ``itemsize`` bytes per input/output value; each value is
    counted once per kernel that reads or writes it (no cache reuse across kernels).

    Per system and step (float64 ``F = 8`` bytes; ``n = D O``, ``NP`` packed diagonal
    entries, the only factor stored: the couplings are rebuilt from the step): inputs
    ``I = E n + E + 1`` values (one initial step, not counted), cast to float64 (``I
    (itemsize + F)``, none for float64) and staged (``2 I F``); ``factor_forward`` reads
    ``I`` and writes ``NP + 2 n``; ``backward`` reads ``NP + 2 n + 1`` (the step) and
    writes ``n``; each refinement step reads ``I + NP + n`` and writes ``n`` (residual),
    reads ``NP + 3 n + 1`` and writes ``n`` (correction); ``x`` unstaged (``2 n F``) and
    cast back (``n (F + itemsize)``, none for float64).
    """
    lay = codegen.Layout(n_dims, n_orders, n_equations)
    n, F = lay.n, 8
    inputs = n_equations * n + n_equations + 1
    factor = lay.n_packed
    cast = 0 if itemsize == F else inputs * (itemsize + F) + n * (F + itemsize)
    values = (2 * inputs                          # staging
              + inputs + factor + 2 * n           # factor_forward
              + factor + 3 * n + 1                # backward
              + refinement_steps * (inputs + factor + 2 * n + factor + 4 * n + 1)
              + 2 * n)                            # unstaging
    return n_systems * n_steps * (values * F + cast)

"""The device (CUDA) driver of the S-MNN solve: factor, solve, backward.

Reached through ``bandsolve.smnn_solve`` / ``smnn_solve_vjp`` / ``smnn_factor`` /
``SMNNFactorization.from_lower`` when the inputs are device arrays (CuPy, anything with
``__cuda_array_interface__``, the simulator's arrays). Results are CuPy arrays if any input
is a CuPy array, Numba device arrays otherwise.

Contract of the device path, in addition to the host path's:

* shapes, ranks, dtypes, weights and step counts are checked on the host from the arrays'
  metadata, with the host path's messages; nothing reads device memory;
* value checks (NaN/Inf inputs, positive steps) would synchronise the device, so they run
  only with ``check=True`` (then with the host path's messages);
* numerical failure never raises by itself: each factorisation keeps a per-system
  :class:`Status` on the device, the failed systems' results are NaN, and
  ``Status.check()`` (or ``check=True``) synchronises once and raises
  ``FactorizationError`` naming the failed batch indices and time steps;
* every kernel runs on one stream: ``stream=`` if given, else CuPy's current stream for
  CuPy inputs, else Numba's default stream; no call synchronises unless ``check=True``.
"""

import math

import numpy as np

from .. import _problem
from .. import _validation as v
from ..kernels.partitioned import n_chunks_for
from ..kernels.residual import ACCEPT_CORRECTION, correction_record_size
from ..errors import raise_if_failed
from . import arrays, block, config, gradient, lane_solve, partitioned, refine, thread
from ._runtime import Device, batch_maps, numba_view, numba_view_strided, shape_of

# float64 on the device too, whatever the inputs' dtype (``_problem.COMPUTE_DTYPE``)
COMPUTE = _problem.COMPUTE_DTYPE

_WHAT = "S-MNN normal matrix"
_NAMES = ("coefficients", "rhs", "init", "steps")


# ----------------------------------------------------------------------------- status

class Status:
    """Per-system outcome of a device factorisation, kept on the device.

    ``info`` (the caller's array kind, shape = left-hand-side batch shape, int64) holds 0
    for a system that factored, ``t + 1`` for one whose block row ``t`` had a pivot that
    was not positive and finite (or, after the QR fallback, whose rows are rank deficient
    there), and ``-1`` for one whose refinement did not converge in a solve; such a
    system's results are NaN. Reading it is the
    caller's choice: :meth:`check` and :meth:`failed` synchronise, nothing else does.
    """

    def __init__(self, info_user, info_view, batch_shape, device):
        self._info_user = info_user
        self._info = info_view
        self.batch_shape = tuple(batch_shape)
        self._device = device

    @property
    def info(self):
        return self._info_user.reshape(self.batch_shape)

    def to_host(self):
        """``info`` as a NumPy array (synchronises the stream)."""
        if self._info is None:
            return np.zeros(self.batch_shape, dtype=np.int64)
        host = self._info.copy_to_host(stream=self._device.stream)
        arrays.synchronize(self._device)
        return host.reshape(self.batch_shape)

    def failed(self):
        """Batch indices of the systems that failed (synchronises)."""
        return [tuple(int(i) for i in index) for index in np.argwhere(self.to_host())]

    def check(self):
        """Synchronise once and raise ``FactorizationError`` naming every failed system
        (batch index and time step) if any failed."""
        raise_if_failed(self.to_host().reshape(-1), self.batch_shape, what=_WHAT)


# ----------------------------------------------------------------------------- left-hand side

class _DeviceLHS:
    """Validated left-hand-side inputs as flat device views (no copies, no broadcasting:
    index maps reach each system's row)."""

    def __init__(self, device, problem, coefficients, steps):
        self.problem = problem
        self.coefficients_shape = problem.coefficients_shape
        self.steps_shape = problem.steps_shape
        self.n_steps = problem.n_steps
        Tc, self.n_equations, self.n_dims, self.n_orders = self.coefficients_shape[-4:]
        if self.n_orders > config.MAX_ORDERS:
            raise ValueError(
                f"the device path supports O <= {config.MAX_ORDERS} derivative orders "
                f"(bandsolve.gpu.config.MAX_ORDERS); coefficients have O={self.n_orders}")
        self.block_size = problem.block_size
        self.n_init_steps, self.n_init_orders = problem.init_shape
        self.weights = problem.weights
        self.central = problem.central
        self.dtype = problem.dtype
        self.coefficients_batch = self.coefficients_shape[:-4]
        self.batch_shape = problem.lhs_batch
        self.coefficients = coefficients.reshape(
            (math.prod(self.coefficients_batch), Tc, self.n_equations, self.block_size))
        if steps.size:
            self.steps_batch = self.steps_shape[:-1]
            self.steps = steps.reshape((math.prod(self.steps_batch), self.steps_shape[-1]))
        else:  # T = 1: no steps are ever read; one dummy row keeps the kernels' pointer valid
            self.steps_batch = ()
            self.steps = device.scratch((1, 1), COMPUTE)

    @property
    def bandwidth(self):
        return 2 if self.central else 1

    def kernel_scalars(self):
        return self.problem.kernel_scalars()

    def lhs_maps(self):
        shape, strides = batch_maps(self.batch_shape, coefficients=self.coefficients_batch,
                                    steps=self.steps_batch)
        return shape, strides["coefficients"], strides["steps"]


def _require_device(**arrays):
    """``TypeError`` for host arrays handed to a device factorisation or VJP."""
    for name, value in arrays.items():
        if not v.is_device_array(value):
            raise TypeError(f"{name} is a host (NumPy) array but this factorisation lives on "
                            f"the device; move {name} to the device first (e.g. "
                            "cupy.asarray or numba.cuda.to_device)")


def _resolve_algorithm(algorithm, lhs, n_systems):
    if algorithm not in config.ALGORITHMS:
        raise ValueError(f"algorithm must be one of {config.ALGORITHMS}; got {algorithm!r}")
    if algorithm == "auto":
        return config.choose_algorithm(lhs.block_size, lhs.n_steps, n_systems, lhs.bandwidth)
    return algorithm


# ----------------------------------------------------------------------------- factorisation

class DeviceSMNNFactorization(_problem.FactorizationInfo):
    """The factored S-MNN left-hand side on the device; the device counterpart of
    :class:`bandsolve.SMNNFactorization` (same methods, device arrays in and out).

    ``algorithm`` is ``"thread"`` (one thread per system), ``"block"`` (a thread block per
    system) or ``"partitioned"`` (parallel in time). ``status`` is the per-system
    :class:`Status`; :meth:`check` raises on failure (synchronises). Methods take an optional
    ``stream=`` (default: CuPy's current stream for CuPy inputs, else Numba's default).
    """

    def __init__(self, lhs, algorithm, lower_user, lower, status, device, partition=None,
                 scale=None):
        self._lhs = lhs
        self.algorithm = algorithm
        self._lower_user = lower_user
        self._lower = lower
        self.status = status
        self._device = device
        self._partition = partition  # (n_chunks, chunk, reduced, sequential) if "partitioned"
        self._scale = scale  # sqrt(M_kk) (Bl, T, n), made by the first refinement if None
        self._refinement_steps = None  # corrections per system of the last refinement

    def __repr__(self):
        return f"DeviceSMNNFactorization({self._repr_fields()}, algorithm={self.algorithm!r})"

    def check(self):
        """Raise ``FactorizationError`` if any system failed (synchronises)."""
        self.status.check()

    @property
    def lower(self):
        """The block Cholesky factor ``(..., T, p+1, n, n)`` (left-hand-side batch), no copy.

        For ``"thread"`` it is a strided view of the system-innermost storage (not
        C-contiguous: ``numpy.moveaxis(storage, -1, 0)``); :meth:`from_lower` recognises
        that layout and uses it as it is. Not available for the parallel-in-time
        factorisation, which is a different factorisation of ``M``."""
        lhs = self._lhs
        shape = lhs.batch_shape + (lhs.n_steps, lhs.bandwidth + 1, lhs.block_size,
                                   lhs.block_size)
        if self.algorithm == "partitioned":
            raise ValueError(
                "a parallel-in-time factorisation has no block Cholesky factor to return; "
                "factor with algorithm='thread' or 'block' to carry .lower")
        if self.algorithm == "block" or self._lower is None:
            return self._lower_user.reshape(shape)
        return self._device.strided(self._lower, shape,
                                    thread_lower_strides(shape, lhs.batch_shape,
                                                         COMPUTE.itemsize))[0]

    # -- solves
    def _check(self, device, rhs, init):
        """Checks of a solve's inputs (metadata only); returns their views and the batch."""
        lhs = self._lhs
        _require_device(rhs=rhs, init=init)
        rhs = numba_view("rhs", rhs, device)
        init = numba_view("init", init, device)
        batch = lhs.problem.with_rhs(rhs, init).batch
        return arrays.as_dtype(device, rhs, COMPUTE), arrays.as_dtype(device, init, COMPUTE), batch

    def solve(self, rhs, init, *, stream=None):
        """Solve for ``rhs`` ``(..., T or 1, E)`` and ``init`` ``(..., Ti, D, Oi)`` (device
        arrays); returns ``u`` ``(..., T, D, O)``, NaN for systems whose factor failed."""
        device = Device.for_inputs((rhs, init), stream)
        rhs, init, batch = self._check(device, rhs, init)
        return self._solve(device, rhs, init, batch)[0]

    def solve_vjp(self, rhs, init, *, stream=None):
        """Like :meth:`solve`, also returning ``vjp(ubar, *, stream=None)``."""
        device = Device.for_inputs((rhs, init), stream)
        rhs, init, batch = self._check(device, rhs, init)
        return self._solve_vjp(device, rhs, init, batch)

    def backward(self, rhs, init, u, ubar, *, stream=None):
        """Gradients ``(coefficients_bar, rhs_bar, init_bar, steps_bar)`` of
        ``sum(ubar * u)`` from a solution ``u = self.solve(rhs, init)`` computed earlier."""
        device = Device.for_inputs((rhs, init, u, ubar), stream)
        rhs, init, batch = self._check(device, rhs, init)
        _require_device(u=u)
        lhs = self._lhs
        u_shape = batch + (lhs.n_steps, lhs.n_dims, lhs.n_orders)
        u = numba_view("u", u, device)
        v.check_dtype("u", u.dtype)
        if shape_of(u) != u_shape:
            raise ValueError(f"u must have shape {u_shape}; got {shape_of(u)}")
        if u.dtype == COMPUTE:
            x = u.reshape((math.prod(batch), lhs.n_steps, lhs.block_size))
        else:  # as on the host: float32 rounding of u would be amplified in the gradient
            x = self._solve(device, rhs, init, batch)[1]
        return self._backward(device, rhs, init, batch, x, ubar)

    def _solve_vjp(self, device, rhs, init, batch):
        u, x = self._solve(device, rhs, init, batch)
        # the vjp keeps private copies: later changes to the caller's rhs or u (a view of
        # x) must not change the gradients
        rhs, x = (arrays.copy_broadcast(device, a, shape_of(a), a.dtype)[1] for a in (rhs, x))

        def vjp(ubar, *, stream=None):
            call = device if stream is None else Device.for_inputs((ubar,), stream)
            return self._backward(call, rhs, init, batch, x, ubar)

        return u, vjp

    def _solve(self, device, rhs, init, batch):
        """``(u, x)``: the user's ``u`` ``(..., T, D, O)`` and its flat view ``(B, T, n)``."""
        lhs = self._lhs
        B, T, n = math.prod(batch), lhs.n_steps, lhs.block_size
        u_shape = batch + (T, lhs.n_dims, lhs.n_orders)
        if B == 0:
            return device.empty((B, T, n), lhs.dtype)[0].reshape(u_shape), None
        rhs_flat, init_flat, shape, strides = _solve_inputs(device, lhs, rhs, init, batch)
        O, Ti, Oi, we2, wi2, ws2, central = lhs.kernel_scalars()
        x_user, x = device.empty((B, T, n), COMPUTE)
        device.launch(gradient.rhs_kernel, B * T, lhs.coefficients, rhs_flat, init_flat,
                      shape, strides["coefficients"], strides["rhs"], strides["init"],
                      O, Ti, Oi, we2, wi2, x)
        started = self._start(device, B, shape, strides["factor"])
        self._substitute(device, x, shape, strides["factor"], started[0])
        self._refine(device, x, shape, strides, rhs_flat, init_flat, None, started)
        return _to_user(device, x_user, x, lhs.dtype).reshape(u_shape), x

    def _start(self, device, B, shape, factor_strides):
        """The refinement state of a new solve ``(state, applied, last)``, each ``(B,)``:
        ``REFINING``, or ``FAILED`` where the factor failed; no correction applied yet
        (``refine.start_kernel``)."""
        state, applied, last = (device.scratch((B,), np.int64) for _ in range(3))
        device.launch(refine.start_kernel, B, shape, factor_strides, self.status._info, state,
                      applied, last)
        return state, applied, last

    def _column_norms(self, device):
        """``sqrt(M_kk)`` ``(Bl, T, n)`` for the convergence measure, from the factor
        (computed once per factorisation; the parallel-in-time assembly keeps it)."""
        if self._scale is None:
            lhs = self._lhs
            n_lhs = math.prod(lhs.batch_shape)
            self._scale = device.scratch((n_lhs, lhs.n_steps, lhs.block_size), COMPUTE)
            kernel = (refine.thread_column_norms_kernel if self.algorithm == "thread"
                      else refine.block_column_norms_kernel)
            device.launch(kernel, n_lhs * lhs.n_steps, self._lower, self._scale)
        return self._scale

    def _refine(self, device, x, shape, strides, rhs_flat, init_flat, extra, started):
        """Refine x ``(B, T, n)`` in place, ``x += M^{-1} A^T (beta - A x)``, or for the plain
        system ``M x = extra`` when ``extra`` is given, by the host's rule decided on the
        device (``refine`` module docstring): at most ``refine.MAX_REFINE_STEPS`` steps;
        each system stops when converged, and one that fails gets NaN and status -1.
        ``started``: :meth:`_start`'s arrays. The number of corrections each system took
        is kept in ``_refinement_steps`` ``(B,)`` (device, int64; for tests and
        diagnostics)."""
        B, T, n = shape_of(x)
        max_steps = refine.MAX_REFINE_STEPS
        if not max_steps or B * T == 0:
            self._refinement_steps = None
            return
        factor_strides = strides["factor"]
        correction = device.scratch((B, T, n), COMPUTE)
        n_spans = refine.spans_for(T)[1]
        records = device.scratch(
            (B, n_spans, correction_record_size.py_func(self._lhs.n_orders)), COMPUTE)
        state, applied, last = started
        previous = device.scratch((B,), COMPUTE)
        refinement = (rhs_flat, init_flat, extra, state, correction, records, applied,
                      last, previous)
        self._refine_steps(device, x, shape, strides, *refinement, first_tag=1)
        if self.algorithm == "partitioned":
            self._retry_sequentially(device, x, shape, strides, *refinement,
                                     first_tag=max_steps + 1)
        device.launch(refine.finish_kernel, B, state, shape, factor_strides,
                      self.status._info)
        self._refinement_steps = applied

    def _refine_steps(self, device, x, shape, strides, rhs_flat, init_flat, extra, state,
                      correction, records, applied, last, previous, *, first_tag,
                      from_zero=False):
        """The refinement steps (``MAX_REFINE_STEPS`` of them, numbered ``first_tag``
        on for ``apply_kernel``); ``from_zero``: first the solve of the systems restarted
        from ``x = 0`` (their first residual is the right-hand side itself), numbered
        ``first_tag - 1``; only the sequential factors' systems are still refining then."""
        B, T, n = shape_of(x)
        lhs = self._lhs
        max_steps = refine.MAX_REFINE_STEPS
        factor_strides = strides["factor"]
        span, n_spans = refine.spans_for(T)
        scale = self._column_norms(device)
        for step in range(-1 if from_zero else 0, max_steps):
            tag = first_tag + step
            device.launch(refine.residual_kernel, B * T, lhs.coefficients, lhs.steps,
                          rhs_flat, init_flat, shape, strides["coefficients"],
                          strides["steps"], strides["rhs"], strides["init"],
                          *lhs.kernel_scalars(), extra is None, state, x,
                          correction if extra is None else extra, correction)
            self._substitute(device, correction, shape, factor_strides, state,
                             sequential_only=from_zero)
            if step >= 0:
                device.launch(refine.correction_spans_kernel, B * n_spans, x, correction,
                              scale, shape, factor_strides, state, lhs.n_orders, span,
                              records)
                device.launch(refine.decision_kernel, B, records, lhs.n_orders, step,
                              max_steps, ACCEPT_CORRECTION, tag, state, applied, last,
                              previous)
            device.launch(refine.apply_kernel, B * T * n, x, correction, state, last, tag)

    def _retry_sequentially(self, device, x, shape, strides, *refinement, first_tag):
        """Parallel-in-time only: the right-hand sides whose refinement failed with a
        partitioned factor that passed the pivot tests get their factor redone by the
        sequential block kernels (QR fallback included, in place) and are solved and
        refined again from ``x = 0``. Decided on the device: where nothing failed, every
        kernel returns at once (about ``5 * MAX_REFINE_STEPS + 10`` empty launches)."""
        B, T, n = shape_of(x)
        state, applied, last = refinement[3], refinement[6], refinement[7]
        factor_strides = strides["factor"]
        info = self.status._info
        device.launch(partitioned.mark_unconverged_kernel, B, state, shape, factor_strides,
                      info, self._partition[3])
        _sequential_retry(device, self._lhs, self._lower, info, self._partition[3])
        device.launch(refine.restart_kernel, B * T * n, x, state)
        device.launch(refine.resume_kernel, B, state, shape, factor_strides, info, first_tag,
                      applied, last)
        self._refine_steps(device, x, shape, strides, *refinement, first_tag=first_tag + 1,
                           from_zero=True)

    def _substitute(self, device, x, shape, factor_strides, skip, sequential_only=False):
        """``x[i] <- M_{factor(i)}^{-1} x[i]`` in place for x ``(B, T, n)``, except where
        ``skip[i] != 0`` (``(B,)``). ``sequential_only``: parallel-in-time, where every
        right-hand side not skipped has a sequential factor (the retry's solves)."""
        B, T, n = shape_of(x)
        info = self.status._info
        if self.algorithm == "partitioned" and sequential_only:
            device.launch_blocks(partitioned.sequential_solve_kernel, B, _block_threads(n),
                                 self._lower, info, self._partition[3], shape,
                                 factor_strides, skip, x)
        elif self.algorithm == "thread":
            device.launch(thread.solve_kernel, B, self._lower, info, shape, factor_strides,
                          skip, x)
        elif self.algorithm == "block":
            device.launch_blocks(block.solve_kernel, B, _block_threads(n), self._lower, info,
                                 shape, factor_strides, skip, x)
        else:
            n_chunks, chunk, reduced, sequential = self._partition
            work = device.scratch((B, T, n), COMPUTE)
            xs = device.scratch((B, max(n_chunks - 1, 1), shape_of(reduced)[-1]), COMPUTE)
            lower = self._lower
            device.launch(partitioned.solve_chunks_kernel, B * n_chunks, lower, info,
                          sequential, shape, factor_strides, skip, x, n_chunks, chunk)
            device.launch(partitioned.solve_separators_kernel, B, lower, reduced, info,
                          sequential, shape, factor_strides, skip, x, xs, n_chunks, chunk)
            device.launch(partitioned.correct_chunks_kernel, B * n_chunks, lower, info,
                          sequential, shape, factor_strides, skip, x, work, n_chunks, chunk)
            device.launch_blocks(partitioned.sequential_solve_kernel, B, _block_threads(n),
                                 lower, info, sequential, shape, factor_strides, skip, x)

    def _ubar_of(self, device, batch, ubar):
        """``ubar`` checked against u's shape (broadcastable to it) as a new float64 array
        ``(B, T, n)``; None for an empty batch."""
        lhs = self._lhs
        B, T, n = math.prod(batch), lhs.n_steps, lhs.block_size
        u_shape = batch + (T, lhs.n_dims, lhs.n_orders)
        _require_device(ubar=ubar)
        ubar = numba_view("ubar", ubar, device)
        v.check_dtype("ubar", ubar.dtype)
        try:
            ok = np.broadcast_shapes(shape_of(ubar), u_shape) == u_shape
        except ValueError:
            ok = False
        if not ok:
            raise ValueError(f"ubar must have the shape of u, {u_shape}; "
                             f"got {shape_of(ubar)}")
        if B == 0:
            return None
        return arrays.copy_broadcast(device, ubar, u_shape, COMPUTE)[1].reshape((B, T, n))

    def _backward(self, device, rhs, init, batch, x, ubar):
        lhs = self._lhs
        B, T, n = math.prod(batch), lhs.n_steps, lhs.block_size
        y = self._ubar_of(device, batch, ubar)
        if y is None:
            return self._zero_gradients(device, shape_of(rhs), shape_of(init))
        target = arrays.copy_broadcast(device, y, (B, T, n), COMPUTE)[1]  # ubar, kept
        shape, strides = batch_maps(batch, coefficients=lhs.coefficients_batch,
                                    steps=lhs.steps_batch, rhs=shape_of(rhs)[:-2],
                                    init=(), factor=lhs.batch_shape)
        started = self._start(device, B, shape, strides["factor"])
        self._substitute(device, y, shape, strides["factor"], started[0])
        rhs_shape = shape_of(rhs)
        self._refine(device, y, shape, strides,
                     rhs.reshape((math.prod(rhs_shape[:-2]),) + rhs_shape[-2:]),
                     device.scratch((1, 1, 1, 1), COMPUTE), target, started)
        return self._gradients(device, rhs, init, batch, x, y, shape, strides)

    def _zero_gradients(self, device, rhs_shape, init_shape):
        lhs = self._lhs
        return tuple(arrays.zeros(device, s, lhs.dtype)[0] for s in
                     (lhs.coefficients_shape, rhs_shape, init_shape, lhs.steps_shape))

    def _gradients(self, device, rhs, init, batch, x, y, shape, strides):
        """The four gradients from ``x = M^{-1} b`` and ``y = M^{-1} ubar`` (B, T, n): the
        gradient kernel writes per-step pieces for the full batch and length, written
        straight into the result when an input is not broadcast, else reduced into it."""
        lhs = self._lhs
        dtype = COMPUTE  # computed in float64, returned in the inputs' dtype
        B, T, n = shape_of(x)
        E, D = lhs.n_equations, lhs.n_dims
        Ti, Oi = lhs.n_init_steps, lhs.n_init_orders
        rhs_shape, init_shape = shape_of(rhs), shape_of(init)
        # name: (kernel's full shape, its rows (batch + step axis), input shape, input rows)
        specs = {
            "coefficients": ((B, T, E, n), batch + (T,), lhs.coefficients_shape,
                             lhs.coefficients_shape[:-3]),
            "rhs": ((B, T, E), batch + (T,), rhs_shape, rhs_shape[:-1]),
            "init": ((B, Ti, D * Oi), batch + (Ti,), init_shape, init_shape[:-2]),
            "steps": ((B, T - 1), batch + (T - 1,), lhs.steps_shape, lhs.steps_shape),
        }
        results, fulls, pending = {}, {}, []
        for name, (kernel_shape, full_rows, in_shape, in_rows) in specs.items():
            if math.prod(kernel_shape) == 0:  # T = 1, no initial values or E = 0
                results[name] = arrays.zeros(device, in_shape, dtype)
                fulls[name] = device.scratch(kernel_shape, dtype)  # never read or written
                continue
            user, view = device.empty(in_shape, dtype)
            results[name] = (user, view)
            if tuple(in_rows) == full_rows:
                fulls[name] = view.reshape(kernel_shape)
            else:
                fulls[name] = device.scratch(kernel_shape, dtype)
                pending.append((fulls[name], full_rows, tuple(in_rows),
                                math.prod(kernel_shape[2:]), view))
        _, _, _, we2, wi2, ws2, _ = lhs.kernel_scalars()
        device.launch(gradient.gradient_kernel, B * T, lhs.coefficients, lhs.steps,
                      rhs.reshape((math.prod(rhs_shape[:-2]),) + rhs_shape[-2:]),
                      shape, strides["coefficients"], strides["steps"], strides["rhs"],
                      x, y, lhs.n_orders, Ti, Oi, we2, wi2, ws2, lhs.central,
                      fulls["coefficients"], fulls["rhs"], fulls["steps"], fulls["init"])
        for full, full_rows, target_rows, inner, out in pending:
            arrays.reduce_to(device, full, full_rows, target_rows, inner, out)
        return tuple(_to_user(device, *results[name], lhs.dtype)
                     for name in ("coefficients", "rhs", "init", "steps"))


def _solve_inputs(device, lhs, rhs, init, batch):
    """``(rhs_flat, init_flat, shape, strides)``: rhs ``(Br, Tr, E)`` and init ``(Bi, Ti, D,
    Oi)`` (a placeholder when no initial values are read) with the index maps of every
    input from the full ``batch`` (``batch_maps``)."""
    rhs_shape, init_shape = shape_of(rhs), shape_of(init)
    rhs_flat = rhs.reshape((math.prod(rhs_shape[:-2]),) + rhs_shape[-2:])
    if lhs.n_init_steps:
        init_batch = init_shape[:-3]
        init_flat = init.reshape((math.prod(init_batch),) + init_shape[-3:])
    else:  # no initial values are read
        init_batch = ()
        init_flat = device.scratch((1, 1, 1, 1), COMPUTE)
    shape, strides = batch_maps(batch, coefficients=lhs.coefficients_batch,
                                steps=lhs.steps_batch, rhs=rhs_shape[:-2],
                                init=init_batch, factor=lhs.batch_shape)
    return rhs_flat, init_flat, shape, strides


def _lane_solve(device, lhs, rhs, init, batch, with_vjp, check=False):
    """``smnn_solve`` (``with_vjp=False``: returns ``(u, status)``) and ``smnn_solve_vjp``
    (``(u, vjp, status)``) by the generated thread-per-system kernels (``lane_solve``
    module docstring). The systems whose lane failed are factored again by the sequential
    block kernels (row-QR fallback included) and solved from zero, as the
    parallel-in-time factorisation retries its failures; all decided on the device.

    ``check`` (the caller synchronises anyway): ``smnn_solve`` reads the lanes' status
    first (one synchronisation) and, where every lane converged, launches none of the
    retry path's ~30 kernels (each of which would return at once)."""
    B, T, n = math.prod(batch), lhs.n_steps, lhs.block_size
    rhs_flat, init_flat, shape, strides = _solve_inputs(device, lhs, rhs, init, batch)
    x_user, x = device.empty((B, T, n), COMPUTE)
    lanes, lanes_status = lane_solve.solve_lanes(device, lhs, rhs_flat, init_flat, shape,
                                                 strides, x)
    if check and not with_vjp and lane_solve.all_converged(device, lanes_status):
        info_user, info = arrays.zeros(device, (B,), np.int64)
        u = _to_user(device, x_user, x, lhs.dtype).reshape(batch + (T, lhs.n_dims,
                                                                     lhs.n_orders))
        return u, Status(info_user, info, lhs.batch_shape, device)
    info_user, info = device.empty((B,), np.int64)
    lower, sequential, state, applied, last = lane_solve.retry_plan(
        device, B, T, n, lhs.bandwidth, lanes_status, info)
    status = Status(info_user, info, lhs.batch_shape, device)
    # the parallel-in-time factorisation's retry path: its substitutions and refinement of
    # the systems marked sequential are what the failed lanes need
    retry = DeviceSMNNFactorization(lhs, "partitioned", lower, lower, status, device,
                                    partition=(None, None, None, sequential),
                                    scale=device.scratch((B, T, n), COMPUTE))
    _retry_lanes(device, retry, x, shape, strides, rhs_flat, init_flat, None, state, applied,
                 last)
    u = _to_user(device, x_user, x, lhs.dtype).reshape(batch + (T, lhs.n_dims, lhs.n_orders))
    if not with_vjp:
        return u, status
    # private copies: later changes to the caller's rhs or u (a view of x) must not change
    # the gradients
    rhs, x = (arrays.copy_broadcast(device, a, shape_of(a), a.dtype)[1] for a in (rhs, x))

    def vjp(ubar, *, stream=None):
        call = device if stream is None else Device.for_inputs((ubar,), stream)
        y = retry._ubar_of(call, batch, ubar)
        if y is None:  # an empty batch
            return retry._zero_gradients(call, shape_of(rhs), shape_of(init))
        target = arrays.copy_broadcast(call, y, (B, T, n), COMPUTE)[1]  # ubar, kept
        plain_status = lanes.solve_plain(call, target, y)
        state, applied, last = (call.scratch((B,), np.int64) for _ in range(3))
        call.launch(lane_solve.mark_plain_retries_kernel, B, plain_status, sequential, state,
                    applied, last)
        # (the plain system reads no rhs or initial values, only their index maps' rows)
        _retry_lanes(call, retry, y, shape, strides, rhs_flat, init_flat, target, state,
                     applied, last)
        return retry._gradients(call, rhs, init, batch, x, y, shape, strides)

    return u, vjp, status


def _retry_lanes(device, retry, x, shape, strides, rhs_flat, init_flat, extra, state,
                 applied, last):
    """Factor the ``PENDING`` systems of ``retry`` (a ``"partitioned"`` factorisation whose
    every factor is sequential or absent) with the sequential block kernels and solve
    the ``RETRY`` right-hand sides x ``(B, T, n)`` again from zero, refined (``extra``:
    the plain system ``M x = extra`` of the VJP); a system that fails gets NaN and its
    status. Where no system is to be retried every kernel returns at once."""
    B, T, n = shape_of(x)
    lhs, info = retry._lhs, retry.status._info
    lower, sequential = retry._lower, retry._partition[3]
    _sequential_retry(device, lhs, lower, info, sequential)
    device.launch(lane_solve.retry_column_norms_kernel, B * T, lower, sequential,
                  retry._scale)
    factor_strides = strides["factor"]
    device.launch(refine.restart_kernel, B * T * n, x, state)
    device.launch(refine.resume_kernel, B, state, shape, factor_strides, info, 1, applied,
                  last)
    correction = device.scratch((B, T, n), COMPUTE)
    records = device.scratch(
        (B, refine.spans_for(T)[1], correction_record_size.py_func(lhs.n_orders)), COMPUTE)
    previous = device.scratch((B,), COMPUTE)
    retry._refine_steps(device, x, shape, strides, rhs_flat, init_flat, extra, state,
                        correction, records, applied, last, previous, first_tag=2,
                        from_zero=True)
    device.launch(refine.finish_kernel, B, state, shape, factor_strides, info)


def _to_user(device, user, view, dtype):
    """A float64 result ``(user array, numba view)`` as the user's array in ``dtype``
    (the array itself for float64, else a cast copy)."""
    if view is None or view.dtype == dtype:
        return user
    return arrays.copy_broadcast(device, view, shape_of(view), dtype)[0]


def thread_lower_strides(shape, batch_shape, itemsize):
    """Byte strides of the user-shaped ``(..., T, p+1, n, n)`` view of the thread kernels'
    system-innermost storage ``(T, p+1, n, n, Bl)``."""
    n_lhs = math.prod(batch_shape)
    inner, stride = [], itemsize * n_lhs
    for extent in reversed(shape[-4:]):
        inner.append(stride)
        stride *= extent
    outer, stride = [], itemsize
    for extent in reversed(batch_shape):
        outer.append(stride)
        stride *= extent
    return tuple(reversed(outer)) + tuple(reversed(inner))


def _same_layout(shape, strides, expected):
    """Strides agree on every axis of extent > 1 (the others are never stepped along)."""
    return all(n == 1 or a == b for n, a, b in zip(shape, strides, expected))


def _block_threads(block_size):
    return max(1, min(config.BLOCK_THREADS, block_size))


# ----------------------------------------------------------------------------- factor

def _factor(device, lhs, algorithm):
    """Assemble and factor every left-hand side; returns a DeviceSMNNFactorization."""
    n_lhs = math.prod(lhs.batch_shape)
    T, p, n = lhs.n_steps, lhs.bandwidth, lhs.block_size
    info_user, info = device.empty((n_lhs,), np.int64)
    status = Status(info_user, info, lhs.batch_shape, device)
    shape, c_strides, h_strides = lhs.lhs_maps()
    scalars = lhs.kernel_scalars()
    partition = scale = None
    if algorithm == "thread":
        lower_user, lower = device.empty((T, p + 1, n, n, n_lhs), COMPUTE)
        device.launch(thread.factor_kernel, n_lhs, lhs.coefficients, lhs.steps, shape,
                      c_strides, h_strides, *scalars, lower, info)
        _qr_fallback(device, lhs, refine.thread_fallback_kernel, lower, info)
    elif algorithm == "block":
        lower_user, lower = device.empty((n_lhs, T, p + 1, n, n), COMPUTE)
        device.launch_blocks(block.factor_kernel, n_lhs, _block_threads(n), lhs.coefficients,
                             lhs.steps, shape, c_strides, h_strides, *scalars, lower, info)
        _qr_fallback(device, lhs, refine.block_fallback_kernel, lower, info)
    else:
        chunk = config.chunk_length(T, n_lhs, p)
        n_chunks = n_chunks_for(T, p, chunk)
        lower_user, lower = device.empty((n_lhs, T, p + 1, n, n), COMPUTE)
        pn = p * n
        work = device.scratch((n_lhs, T, n), COMPUTE)
        schur = device.scratch((n_lhs, n_chunks, 3, pn, pn), COMPUTE)
        chunk_status = device.scratch((n_lhs, n_chunks), np.int64)
        reduced = device.scratch((n_lhs, max(n_chunks - 1, 1), 2, pn, pn), COMPUTE)
        scale = device.scratch((n_lhs, T, n), COMPUTE)
        device.launch(partitioned.assemble_kernel, n_lhs * T, lhs.coefficients, lhs.steps,
                      shape, c_strides, h_strides, *scalars, lower, scale)
        device.launch(partitioned.factor_chunks_kernel, n_lhs * n_chunks, lower, work,
                      n_chunks, chunk, schur, chunk_status)
        device.launch(partitioned.factor_reduced_kernel, n_lhs, lower, schur, chunk_status,
                      n_chunks, chunk, reduced, info)
        # systems that failed (a pivot not positive, or failing the relative test) are
        # refactored by the sequential block kernels, with their QR fallback, in place
        sequential = device.scratch((n_lhs,), np.int64)
        device.launch(partitioned.mark_failed_kernel, n_lhs, info, sequential)
        _sequential_retry(device, lhs, lower, info, sequential)
        partition = (n_chunks, chunk, reduced, sequential)
    return DeviceSMNNFactorization(lhs, algorithm, lower_user, lower, status, device,
                                   partition, scale)


def _sequential_retry(device, lhs, lower, info, sequential):
    """Refactor the ``PENDING`` systems of a parallel-in-time factorisation with the
    sequential block kernels and their QR fallback, in place (lower ``(Bl, T, p+1, n,
    n)``); they become ``SEQUENTIAL``. Decided on the device, no synchronisation."""
    shape, c_strides, h_strides = lhs.lhs_maps()
    device.launch_blocks(partitioned.sequential_factor_kernel, math.prod(lhs.batch_shape),
                         _block_threads(lhs.block_size), lhs.coefficients, lhs.steps, shape,
                         c_strides, h_strides, *lhs.kernel_scalars(), sequential, lower,
                         info)
    _qr_fallback(device, lhs, partitioned.sequential_fallback_kernel, lower, info,
                 sequential)


def _qr_fallback(device, lhs, kernel, lower, info, *selection):
    """Refactor by the row QR sweep the systems whose Cholesky factor failed or is weak
    (``refine.fallback``; decided on the device, no synchronisation). ``kernel``: one of
    the fallback kernels; ``selection``: its arguments before ``lower`` that say which
    systems it may touch (the parallel-in-time retry's)."""
    n_lhs = math.prod(lhs.batch_shape)
    per_launch, rows, width = refine.qr_scratch_shape(
        n_lhs, lhs.n_equations, lhs.n_dims, lhs.n_orders, lhs.central)
    work = device.scratch((per_launch, rows, width), COMPUTE)
    colsq = device.scratch((per_launch, width), COMPUTE)
    shape, c_strides, h_strides = lhs.lhs_maps()
    O, Ti, Oi = lhs.n_orders, lhs.n_init_steps, lhs.n_init_orders
    we, wi, ws = (float(w) for w in lhs.weights)
    for first in range(0, n_lhs, per_launch):
        device.launch(kernel, min(per_launch, n_lhs - first), lhs.coefficients, lhs.steps,
                      shape, c_strides, h_strides, O, Ti, Oi, we, wi, ws, lhs.central, first,
                      *selection, lower, work, colsq, info)


# ----------------------------------------------------------------------------- entry points

def _check_values(device, **views):
    """The host path's value checks, on the device (synchronises; ``check=True`` only)."""
    for name in ("rhs", "coefficients", "steps", "init"):
        if name in views:
            arrays.check_finite(name, views[name], device)
    if "steps" in views:
        arrays.check_positive("steps", views["steps"], device)


def solve(coefficients, rhs, init, steps, *, n_steps, weight_equation, weight_init,
          weight_smooth, central_smoothness, stream, check, algorithm, with_vjp):
    """Device ``smnn_solve`` (``with_vjp=False``: returns ``u``) and ``smnn_solve_vjp``
    (returns ``(u, vjp)``)."""
    device = Device.for_inputs((coefficients, rhs, init, steps), stream)
    views = [numba_view(name, value, device) for name, value in
             zip(_NAMES, (coefficients, rhs, init, steps))]
    problem = _problem.describe(*views, n_steps=n_steps, weight_equation=weight_equation,
                                weight_init=weight_init, weight_smooth=weight_smooth,
                                central_smoothness=central_smoothness)
    c, r, g, h = views
    if check:
        _check_values(device, coefficients=c, rhs=r, init=g, steps=h)
    if with_vjp:  # the vjp reads coefficients and steps: private float64 copies
        c, h = (arrays.copy_broadcast(device, a, shape_of(a), COMPUTE)[1] for a in (c, h))
    else:
        c, h = (arrays.as_dtype(device, a, COMPUTE) for a in (c, h))
    r, g = (arrays.as_dtype(device, a, COMPUTE) for a in (r, g))
    lhs = _DeviceLHS(device, problem, c, h)
    batch = problem.batch
    resolved = _resolve_algorithm(algorithm, lhs, math.prod(batch))
    if algorithm == "auto" and resolved == "thread" and lane_solve.applies(lhs,
                                                                           math.prod(batch)):
        *result, status = _lane_solve(device, lhs, r, g, batch, with_vjp, check)
        if check:
            status.check()
        return tuple(result) if with_vjp else result[0]
    factorization = _factor(device, lhs, resolved)
    if check:
        factorization.check()
    if with_vjp:
        result = factorization._solve_vjp(device, r, g, batch)
    else:
        result = factorization._solve(device, r, g, batch)[0]
    if check:  # the solve's refinement can fail a system too (status -1)
        factorization.check()
    return result


def _device_lhs(device, coefficients, steps, *, init_shape, check, **options):
    """The validated left-hand side of ``smnn_factor`` / ``from_lower`` (metadata checks,
    value checks with ``check``, float64 views)."""
    c = numba_view("coefficients", coefficients, device)
    h = numba_view("steps", steps, device)
    problem = _problem.describe_lhs(c, h, init_shape=init_shape, **options)
    if check:
        _check_values(device, coefficients=c, steps=h)
    c, h = (arrays.as_dtype(device, a, COMPUTE) for a in (c, h))
    return _DeviceLHS(device, problem, c, h)


def factor(coefficients, steps, *, init_shape, n_steps, weight_equation, weight_init,
           weight_smooth, central_smoothness, stream, check, algorithm):
    """Device ``smnn_factor``."""
    device = Device.for_inputs((coefficients, steps), stream)
    lhs = _device_lhs(device, coefficients, steps, init_shape=init_shape, n_steps=n_steps,
                      weight_equation=weight_equation, weight_init=weight_init,
                      weight_smooth=weight_smooth, central_smoothness=central_smoothness,
                      check=check)
    factorization = _factor(device, lhs, _resolve_algorithm(algorithm, lhs,
                                                            math.prod(lhs.batch_shape)))
    if check:
        factorization.check()
    return factorization


def from_lower(lower, coefficients, steps, *, init_shape, n_steps, weight_equation,
               weight_init, weight_smooth, central_smoothness, stream, algorithm):
    """Device ``SMNNFactorization.from_lower``: no refactorisation. ``lower`` is checked on
    the device without synchronising: a system whose factor is not finite where read or
    has a non-positive diagonal pivot is failed in ``.status`` (results NaN; ``check()``
    raises), where the host path raises ``ValueError``."""
    device = Device.for_inputs((lower, coefficients, steps), stream)
    given = lower
    lower = numba_view_strided(lower)
    lhs = _device_lhs(device, coefficients, steps, init_shape=init_shape, n_steps=n_steps,
                      weight_equation=weight_equation, weight_init=weight_init,
                      weight_smooth=weight_smooth, central_smoothness=central_smoothness,
                      check=False)
    T = lhs.n_steps
    n_lhs = math.prod(lhs.batch_shape)
    p, n = lhs.bandwidth, lhs.block_size
    expected = lhs.batch_shape + (T, p + 1, n, n)
    if shape_of(lower) != expected:
        raise ValueError(f"lower must have shape {expected}; got {shape_of(lower)}")
    v.check_dtype("lower", lower.dtype)
    if algorithm == "auto":
        algorithm = config.choose_cholesky_algorithm(n)
    if algorithm not in ("thread", "block"):
        raise ValueError("from_lower rebuilds a block Cholesky factorisation: algorithm must "
                         f"be 'auto', 'thread' or 'block'; got {algorithm!r}")
    itemsize = COMPUTE.itemsize
    thread_strides = thread_lower_strides(expected, lhs.batch_shape, itemsize)
    strides = tuple(int(s) for s in lower.strides)
    flat_lower = None
    if (algorithm == "thread" and lower.dtype == COMPUTE and math.prod(expected)
            and _same_layout(expected, strides, thread_strides)):
        # .lower of a thread factorisation: its storage, as it is
        storage_shape = (T, p + 1, n, n, n_lhs)
        storage_strides = thread_strides[len(lhs.batch_shape):] + (itemsize,)
        lower_user, storage = device.strided(lower, storage_shape, storage_strides)
    else:
        if not lower.is_c_contiguous() or lower.dtype != COMPUTE:
            lower = arrays.as_dtype(device, numba_view("lower", given, device), COMPUTE)
        flat_lower = lower.reshape((n_lhs, T, p + 1, n, n))
        if algorithm == "thread" and flat_lower.size:
            # the thread kernels read system s as storage[..., s]: a strided view of the
            # caller's (Bl, T, p+1, n, n) array, no transposed copy
            c_strides = tuple(int(s) for s in flat_lower.strides)
            lower_user, storage = device.strided(
                flat_lower, (T, p + 1, n, n, n_lhs), c_strides[1:] + c_strides[:1])
        else:
            lower_user, storage = device.as_user(flat_lower), flat_lower
    info_user, info = arrays.zeros(device, (n_lhs,), np.int64)
    if flat_lower is not None:
        # lower is checked without synchronising: a system whose factor is not finite or
        # has a non-positive pivot is marked failed in the status (its solves give NaN).
        # (A factor in the thread kernels' own strided layout is this library's .lower.)
        device.launch(arrays.factor_status_kernel, n_lhs, flat_lower, info)
    status = Status(info_user, info, lhs.batch_shape, device)
    return DeviceSMNNFactorization(lhs, algorithm, lower_user, storage, status, device)


def factor_solve(coefficients, rhs, init, steps, *, n_steps, weight_equation, weight_init,
                 weight_smooth, central_smoothness, stream, check, algorithm):
    """Device ``smnn_factor_solve``: ``(u, factorization)``. The caller keeps
    ``factorization.lower``, so ``"auto"`` picks a block Cholesky kernel, never the
    parallel-in-time factorisation (which has no such factor)."""
    T = _problem.infer_n_steps(n_steps, shape_of(coefficients), shape_of(rhs), shape_of(steps))
    if algorithm == "auto":
        algorithm = config.choose_cholesky_algorithm(
            coefficients.shape[-2] * coefficients.shape[-1])
    factorization = factor(
        coefficients, steps, init_shape=(init.shape[-3], init.shape[-1]), n_steps=T,
        weight_equation=weight_equation, weight_init=weight_init,
        weight_smooth=weight_smooth, central_smoothness=central_smoothness,
        stream=stream, check=check, algorithm=algorithm)
    u = factorization.solve(rhs, init)
    if check:  # the solve's refinement can fail a system too (status -1)
        factorization.check()
    return u, factorization

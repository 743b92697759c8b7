"""The three calls into the bandsolve core, as XLA buffer callbacks.

Each call is a ``jax.experimental.buffer_callback``: XLA hands the callback its input
buffers and preallocated output buffers, the callback runs the core and writes the results
into the outputs. No mathematics happens here; the only array work is the copy of the core's
results into XLA's output buffers.

=========  ===================================  =======================================
call       core function                        results
=========  ===================================  =======================================
solve      ``smnn_solve``                        ``u``
forward    ``smnn_factor`` + ``.solve``          ``u``, ``lower`` (the factor, residual)
backward   ``SMNNFactorization.from_lower``      the four input gradients
           + ``.backward`` (no refactorisation)
tangent    ``from_lower`` + ``tangent.smnn_jvp``  ``du`` for four tangents (forward mode)
=========  ===================================  =======================================

Under ``jax.vmap`` a callback is called once with the mapped axis as a new leading batch
axis of every argument (the caller gives all arguments the same number of batch axes, so
NumPy broadcasting lines the mapped axes up):

* ``solve`` and ``forward`` use ``vmap_method="expand_dims"``: an unmapped argument gets a
  leading axis of length 1 and the core broadcasts it, so an unmapped left-hand side is
  factored once, not once per mapped element. XLA still declares ``lower`` with the mapped
  axis, so the single factor is broadcast into that output buffer.
* ``backward`` uses ``vmap_method="broadcast_all"``: under ``vmap(grad(...))`` the gradient
  of an unmapped input is wanted per mapped element, and the core would sum it over a
  broadcast axis of length 1.

Where the buffers live (their DLPack device) decides the branch: host buffers go to the Numba
CPU kernels, CUDA buffers (``__cuda_array_interface__``) to the CUDA kernels on XLA's stream.
"""

import threading
from typing import Callable, NamedTuple

import numpy as np
from jax import ShapeDtypeStruct

import bandsolve
from bandsolve import _adapters
from bandsolve.tangent import smnn_jvp

try:
    from jax.experimental.buffer_callback import buffer_callback
except ImportError as error:  # older JAX
    raise ImportError("bandsolve_jax needs jax.experimental.buffer_callback (tested with "
                      "jax 0.10.2); upgrade JAX: pip install -U 'bandsolve[jax]'") from error


class Static(NamedTuple):
    """The hashable, non-array part of a problem (a ``nondiff`` argument of the VJP)."""

    n_steps: int
    init_shape: tuple  # (Ti, Oi); (0, 0) when there are no initial values
    weight_equation: float
    weight_init: float
    weight_smooth: float
    central_smoothness: bool

    @property
    def keywords(self):
        """Keyword arguments shared by ``smnn_solve``, ``smnn_factor`` and ``from_lower``."""
        return dict(n_steps=self.n_steps, weight_equation=self.weight_equation,
                    weight_init=self.weight_init, weight_smooth=self.weight_smooth,
                    central_smoothness=self.central_smoothness)


# ----------------------------------------------------------------------- the core calls
# Each takes the static part and the input arrays (NumPy or CuPy: the core dispatches on
# the array type) and returns the results in the order of the declared outputs.

def _run_solve(static, coefficients, rhs, init, steps):
    return (bandsolve.smnn_solve(coefficients, rhs, init, steps, **static.keywords),)


def _pack_lower(lower, dtype):
    """The float64 factor as the residual XLA keeps: itself for float64 inputs; for
    float32 (JAX without x64 cannot hold float64) its leading and trailing float32 parts
    ``hi = f32(L)``, ``lo = f32(L - hi)`` stacked along the band axis, which keep 48 of
    its 53 bits (a factor rounded to float32 would make the backward pass's refinement
    stall and fall back to the slow QR factor)."""
    if dtype == np.float64:
        return lower
    hi = lower.astype(np.float32)
    lo = (lower - hi).astype(np.float32)
    return _array_module(lower).concatenate([hi, lo], axis=-3)


def _unpack_lower(lower):
    """The float64 factor from :func:`_pack_lower`'s residual."""
    if lower.dtype == np.float64:
        return lower
    bands = lower.shape[-3] // 2
    return lower[..., :bands, :, :].astype(np.float64) + lower[..., bands:, :, :]


def _array_module(array):
    if isinstance(array, np.ndarray):
        return np
    import cupy  # device buffers are CuPy arrays here (see _on_device)

    return cupy


def _run_forward(static, coefficients, rhs, init, steps):
    u, factor = bandsolve.smnn_factor_solve(coefficients, rhs, init, steps, **static.keywords)
    return u, _pack_lower(factor.lower, coefficients.dtype)


def _run_tangent(static, coefficients, rhs, init, steps, u, lower, *tangents):
    factor = _adapters.from_lower(
        _unpack_lower(lower), coefficients, steps, init_shape=static.init_shape,
        **static.keywords)
    return (smnn_jvp(factor, coefficients, rhs, init, steps, u, tangents),)


def _run_backward(static, coefficients, rhs, init, steps, u, lower, ubar):
    factor = _adapters.from_lower(
        _unpack_lower(lower), coefficients, steps, init_shape=static.init_shape,
        **static.keywords)
    return factor.backward(rhs, init, u, ubar)


# --------------------------------------------------------------------- host and device

# Serialises the CPU kernels: XLA may run independent callbacks on several threads at once,
# and Numba's "workqueue" threading layer aborts the process on concurrent parallel
# launches. One call already keeps every core busy, so nothing is lost.
_HOST_LOCK = threading.Lock()


def _on_host(run, static, outputs, args):
    with _HOST_LOCK:
        results = run(static, *(np.asarray(a) for a in args))
    for buffer, result in zip(outputs, results):
        np.asarray(buffer)[...] = result  # broadcasts a factor shared across a vmapped axis


def _on_device(run, static, ctx, outputs, args):
    """CUDA branch: wrap XLA's device buffers as CuPy arrays (``__cuda_array_interface__``,
    no copy) and run the core's CUDA kernels on XLA's stream, without any host round trip.

    Not exercised on the CPU-only CI; it relies on the core launching its CUDA kernels on
    CuPy's current stream.
    """
    import cupy  # the [cuda] extra; only reached when JAX runs on a CUDA device

    with cupy.cuda.ExternalStream(ctx.stream):
        results = run(static, *(_cupy_array(cupy, a) for a in args))
        for buffer, result in zip(outputs, results):
            _cupy_array(cupy, buffer)[...] = result


def _cupy_array(cupy, buffer):
    """The buffer as a CuPy array, no copy. Not ``cupy.asarray`` when the buffer has a
    ``__cuda_array_interface__``: one that names XLA's stream would make CuPy synchronise
    the host with it, and everything here runs on that stream anyway."""
    if hasattr(buffer, "__cuda_array_interface__"):
        from bandsolve.gpu._runtime import cupy_view

        return cupy_view(buffer)
    return cupy.asarray(buffer)


_DLPACK_CPU = 1  # DLPack's kDLCPU; a CUDA buffer reports kDLCUDA (2)


class _Callback(NamedTuple):
    """A buffer-callback target. A value (hashable by its fields), so that eager calls with
    the same static part reuse JAX's compiled primitive instead of recompiling it."""

    run: Callable
    static: Static

    def __call__(self, ctx, outputs, *args):
        if outputs[0].__dlpack_device__()[0] != _DLPACK_CPU:
            _on_device(self.run, self.static, ctx, outputs, args)
        else:
            _on_host(self.run, self.static, outputs, args)


# ------------------------------------------------------------------------ declarations

def _result(shape, dtype):
    return ShapeDtypeStruct(tuple(shape), dtype)


def _u_result(static, coefficients, rhs, init, steps):
    batch = np.broadcast_shapes(coefficients.shape[:-4], rhs.shape[:-2], init.shape[:-3],
                                steps.shape[:-1])
    return _result(batch + (static.n_steps,) + coefficients.shape[-2:], coefficients.dtype)


def _lower_result(static, coefficients, steps):
    """The factor residual ``(lhs batch..., T, p+1, n, n)`` (``SMNNFactorization.lower``)
    for float64, ``2(p+1)`` bands of float32 for float32 (:func:`_pack_lower`)."""
    batch = np.broadcast_shapes(coefficients.shape[:-4], steps.shape[:-1])
    n = coefficients.shape[-2] * coefficients.shape[-1]
    bands = 3 if static.central_smoothness else 2
    if coefficients.dtype != np.float64:
        bands *= 2
    return _result(batch + (static.n_steps, bands, n, n), coefficients.dtype)


def solve(static, coefficients, rhs, init, steps):
    """``u (..., T, D, O)`` from inputs of equal batch rank and equal dtype."""
    call = buffer_callback(_Callback(_run_solve, static),
                           (_u_result(static, coefficients, rhs, init, steps),),
                           vmap_method="expand_dims")
    (u,) = call(coefficients, rhs, init, steps)
    return u


def forward(static, coefficients, rhs, init, steps):
    """``(u, lower)``: the solution and the factor to keep for :func:`backward`."""
    call = buffer_callback(_Callback(_run_forward, static),
                           (_u_result(static, coefficients, rhs, init, steps),
                            _lower_result(static, coefficients, steps)),
                           vmap_method="expand_dims")
    return tuple(call(coefficients, rhs, init, steps))


def backward(static, coefficients, rhs, init, steps, u, lower, ubar):
    """The gradients of ``sum(ubar * u)`` with respect to the four inputs, each the shape
    of its input."""
    results = tuple(_result(a.shape, a.dtype) for a in (coefficients, rhs, init, steps))
    call = buffer_callback(_Callback(_run_backward, static), results,
                           vmap_method="broadcast_all")
    return tuple(call(coefficients, rhs, init, steps, u, lower, ubar))


def tangent(static, coefficients, rhs, init, steps, u, lower, *tangents):
    """``du`` for the tangents of the four inputs (forward mode), from the saved solution
    and factor. Arguments of equal batch rank; a tangent's batch axes may be longer than
    its input's (the core broadcasts)."""
    arrays = (coefficients, rhs, init, steps, u, *tangents)
    ndims = (4, 2, 3, 1, 3, 4, 2, 3, 1)
    batch = np.broadcast_shapes(*(a.shape[:a.ndim - k] for a, k in zip(arrays, ndims)))
    result = _result(batch + u.shape[-3:], u.dtype)
    call = buffer_callback(_Callback(_run_tangent, static), (result,),
                           vmap_method="broadcast_all")
    (du,) = call(coefficients, rhs, init, steps, u, lower, *tangents)
    return du

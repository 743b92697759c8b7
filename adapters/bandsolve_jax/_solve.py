"""``smnn_solve`` on JAX arrays: checks at trace time, a ``custom_jvp`` around the core."""

import functools

import jax
import jax.extend
import jax.numpy as jnp
import numpy as np
from jax.interpreters import ad, batching, mlir

from bandsolve import _validation
from bandsolve import _problem

from . import _callbacks
from ._callbacks import Static

_NAMES = ("coefficients", "rhs", "init", "steps")
_CORE_NDIM = {"coefficients": 4, "rhs": 2, "init": 3, "steps": 1}


def smnn_solve(coefficients, rhs, init, steps, *, n_steps=None, weight_equation=1.0,
               weight_init=1.0, weight_smooth=1.0, central_smoothness=False):
    """Solve the S-MNN least-squares problem on JAX arrays (``bandsolve.smnn_solve``).

    Parameters
    ----------
    coefficients : ``(..., T or 1, E, D, O)``
    rhs : ``(..., T or 1, E)``
    init : ``(..., Ti, D, Oi)`` (``Ti`` or ``Oi`` may be 0)
    steps : ``(..., T-1 or 1)``, positive
    n_steps, weight_equation, weight_init, weight_smooth, central_smoothness :
        as in :func:`bandsolve.smnn_solve`; static Python values (not traced, not
        differentiated). A new value retraces a jitted caller.

    Returns
    -------
    u : ``(..., T, D, O)``, leading batch axes broadcast by NumPy rules.

    Works under ``jax.jit``, ``jax.vmap`` (a mapped axis becomes a batch axis of one core
    call), reverse mode (``jax.grad``, ``jax.vjp``, ``jacrev``) and forward mode
    (``jax.jvp``, ``jacfwd``), first order, with respect to all four arrays; both modes
    reuse the forward factorisation (forward mode: ``du = M^{-1} (db - dM u)``). Forward
    mode runs on the CPU only so far.

    float64 when ``jax_enable_x64`` is on, float32 otherwise; float64 input while x64 is off
    is a ``TypeError`` rather than a silent downcast (under ``jax.jit`` such input is
    converted by ``jit`` itself, before this function sees it). Mixed float32/float64 input
    computes in float64.

    Structural misuse (shapes, dtypes, weights) raises ``ValueError``/``TypeError`` when the
    call is traced. Value errors (NaN/Inf, non-positive steps) and a singular system are
    found by the core when the computation runs, and surface as a
    ``jax.errors.JaxRuntimeError`` that carries the core's message.
    """
    arrays = _as_jax_arrays(coefficients=coefficients, rhs=rhs, init=init, steps=steps)
    static = _check_shapes(arrays, n_steps, weight_equation, weight_init, weight_smooth,
                           central_smoothness)
    return _solve(static, *_equal_batch_rank(arrays))


# ----------------------------------------------------------------------- trace-time checks

def _as_jax_arrays(**values):
    """The inputs as JAX arrays of one floating dtype; no silent float64 -> float32."""
    x64 = jax.dtypes.canonicalize_dtype(np.float64) == np.float64
    arrays, dtypes = {}, []
    for name, value in values.items():
        if isinstance(value, np.ma.MaskedArray):  # JAX would drop the mask silently
            _validation.as_host_array(name, value)
        if getattr(value, "dtype", None) is None:  # Python numbers and lists
            value = _validation.as_host_array(name, value)
        dtype = _validation.check_dtype(name, value.dtype)
        if dtype == np.float64 and not x64:
            raise TypeError(
                f"{name} is float64 but jax_enable_x64 is off, so JAX would silently compute "
                f"in float32. Enable it (jax.config.update('jax_enable_x64', True)) or pass "
                f"float32 arrays (.astype(numpy.float32)).")
        arrays[name] = value
        dtypes.append(dtype)
    dtype = np.result_type(*dtypes)
    return tuple(jnp.asarray(arrays[name], dtype=dtype) for name in _NAMES)


def _check_shapes(arrays, n_steps, weight_equation, weight_init, weight_smooth,
                  central_smoothness):
    """All structural checks of the core, on shapes only; returns the :class:`Static`.

    The core's own checks (:func:`bandsolve._problem.describe`) read only the arrays'
    shapes and dtypes, so they run on the JAX arrays (or tracers) themselves and the
    errors and their messages are the core's.
    """
    for name, array in zip(_NAMES, arrays):
        _validation.check_rank(name, array, _CORE_NDIM[name], _problem.LAYOUTS[name])
    weights = (weight_equation, weight_init, weight_smooth)
    for name, weight in zip(("weight_equation", "weight_init", "weight_smooth"), weights):
        if isinstance(weight, jax.core.Tracer):
            raise TypeError(f"{name} must be a Python number, not a traced JAX value: the "
                            f"weights are static (pass them outside jit's traced arguments)")
    problem = _problem.describe(
        *arrays, n_steps=n_steps, weight_equation=weight_equation, weight_init=weight_init,
        weight_smooth=weight_smooth, central_smoothness=central_smoothness)
    we, wi, ws = problem.weights
    return Static(n_steps=problem.n_steps, init_shape=problem.init_shape,
                  weight_equation=we, weight_init=wi, weight_smooth=ws,
                  central_smoothness=problem.central)


def _equal_batch_rank(arrays):
    """Give every input the same number of batch axes (leading axes of length 1).

    A vmapped axis is then the first axis of every argument of the callback, where NumPy
    broadcasting in the core lines it up. JAX differentiates the reshape.
    """
    batch_ndims = [a.ndim - _CORE_NDIM[name] for name, a in zip(_NAMES, arrays)]
    ndim = max(batch_ndims)
    return tuple(a.reshape((1,) * (ndim - k) + a.shape) for a, k in zip(arrays, batch_ndims))


# ------------------------------------------------------------------ derivatives
# One custom JVP serves both modes. Its tangent is a primitive, linear in the four input
# tangents, whose evaluation is the core's forward-mode derivative (same factor, no
# refactorisation) and whose transpose is the core's VJP; JAX builds reverse mode
# (grad, vjp, jacrev) by transposing it, forward mode (jvp, jacfwd) by evaluating it.

@functools.partial(jax.custom_jvp, nondiff_argnums=(0,))
def _solve(static, coefficients, rhs, init, steps):
    return _callbacks.solve(static, coefficients, rhs, init, steps)


@_solve.defjvp
def _solve_jvp(static, primals, tangents):
    u, lower = _callbacks.forward(static, *primals)
    return u, _tangent_p.bind(*primals, u, lower, *tangents, static=static)


_CORE_NDIMS = (4, 2, 3, 1, 3, 4, 4, 2, 3, 1)  # c, r, g, h, u, lower, dc, dr, dg, dh
_tangent_p = jax.extend.core.Primitive("bandsolve_smnn_tangent")
_tangent_p.def_impl(lambda *args, static: _callbacks.tangent(static, *args))


@_tangent_p.def_abstract_eval
def _(*avals, static):
    arrays = avals[:5] + avals[6:]
    ndims = _CORE_NDIMS[:5] + _CORE_NDIMS[6:]
    batch = np.broadcast_shapes(*(a.shape[:a.ndim - k] for a, k in zip(arrays, ndims)))
    u = avals[4]
    return jax.core.ShapedArray(batch + u.shape[-3:], u.dtype)


mlir.register_lowering(_tangent_p, mlir.lower_fun(
    lambda *args, static: _callbacks.tangent(static, *args), multiple_results=False))


def _tangent_transpose(du_bar, *args, static):
    """Cotangents of the four tangents: the core's VJP at the saved solution and factor."""
    primals, tangents = args[:6], args[6:]
    if type(du_bar) is ad.Zero:
        return (None,) * 10
    c, r, g, h, u, lower = primals
    # a tangent with more batch axes than its input wants a cotangent of its own shape
    c, r, g, h = (jnp.broadcast_to(p, t.aval.shape) if ad.is_undefined_primal(t) else p
                  for p, t in zip((c, r, g, h), tangents))
    lower = jnp.broadcast_to(lower, np.broadcast_shapes(c.shape[:-4], h.shape[:-1])
                             + lower.shape[-4:])
    bars = _callbacks.backward(static, c, r, g, h, u, lower, du_bar)
    return (None,) * 6 + tuple(bar if ad.is_undefined_primal(t) else None
                               for bar, t in zip(bars, tangents))


ad.primitive_transposes[_tangent_p] = _tangent_transpose


def _tangent_batch(args, dims, static):
    """A mapped axis becomes a new leading batch axis of every argument (length 1 where
    unmapped), so the core broadcasts an unmapped input over it: one call, not a loop."""
    moved = [jnp.moveaxis(a, d, 0) if d is not None else a[None]
             for a, d in zip(args, dims)]
    if dims[0] is None and dims[3] is None and dims[5] is not None:
        # an unmapped left-hand side whose factor came out of a mapped forward call: every
        # copy is the same factor; keep one, to match the coefficients' batch
        moved[5] = moved[5][:1]
    return _tangent_p.bind(*moved, static=static), 0


batching.primitive_batchers[_tangent_p] = _tangent_batch

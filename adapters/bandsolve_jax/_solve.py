"""``smnn_solve`` on JAX arrays: checks at trace time, a ``custom_vjp`` around the core."""

import functools

import jax
import jax.numpy as jnp
import numpy as np

from bandsolve import _validation
from bandsolve import smnn as _core

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

    Works under ``jax.jit``, ``jax.grad`` / ``jax.vjp`` (reverse mode, first order, with
    respect to all four arrays) and ``jax.vmap`` (a mapped axis becomes a batch axis of one
    core call). Forward-mode differentiation (``jax.jvp``, ``jacfwd``) is not supported.

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

    The core's own checks run on host stand-ins that carry each input's per-system shape
    (batch axes dropped, values 1), so the errors and their messages are the core's.
    """
    for name, array in zip(_NAMES, arrays):
        _validation.check_rank(name, array, _CORE_NDIM[name], _core._LAYOUTS[name])
    weights = (weight_equation, weight_init, weight_smooth)
    for name, weight in zip(("weight_equation", "weight_init", "weight_smooth"), weights):
        if isinstance(weight, jax.core.Tracer):
            raise TypeError(f"{name} must be a Python number, not a traced JAX value: the "
                            f"weights are static (pass them outside jit's traced arguments)")
    stand_ins = [np.ones(a.shape[a.ndim - _CORE_NDIM[name]:])
                 for name, a in zip(_NAMES, arrays)]
    c, r, g, h = stand_ins
    central_smoothness = _validation.check_flag("central_smoothness", central_smoothness)
    _, _, T, weights = _core._check_lhs(c, h, n_steps, *weights, central_smoothness, rhs=r)
    _core._check_rhs(c.shape, r, g, T)
    _validation.broadcast_batch(**{name: a.shape[:a.ndim - _CORE_NDIM[name]]
                                   for name, a in zip(_NAMES, arrays)})
    Ti, _, Oi = g.shape
    return Static(n_steps=T, init_shape=(Ti, Oi) if Ti * Oi else (0, 0),
                  weight_equation=weights[0], weight_init=weights[1],
                  weight_smooth=weights[2], central_smoothness=bool(central_smoothness))


def _equal_batch_rank(arrays):
    """Give every input the same number of batch axes (leading axes of length 1).

    A vmapped axis is then the first axis of every argument of the callback, where NumPy
    broadcasting in the core lines it up. JAX differentiates the reshape.
    """
    batch_ndims = [a.ndim - _CORE_NDIM[name] for name, a in zip(_NAMES, arrays)]
    ndim = max(batch_ndims)
    return tuple(a.reshape((1,) * (ndim - k) + a.shape) for a, k in zip(arrays, batch_ndims))


# ----------------------------------------------------------------------------- the VJP

@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _solve(static, coefficients, rhs, init, steps):
    return _callbacks.solve(static, coefficients, rhs, init, steps)


def _solve_forward(static, coefficients, rhs, init, steps):
    u, lower = _callbacks.forward(static, coefficients, rhs, init, steps)
    return u, (coefficients, rhs, init, steps, u, lower)


def _solve_backward(static, residuals, ubar):
    return _callbacks.backward(static, *residuals, ubar)


_solve.defvjp(_solve_forward, _solve_backward)

"""What an S-MNN problem is, read from the inputs' shapes and dtypes alone.

:func:`describe` (a full problem) and :func:`describe_lhs` (a left-hand side, for
``smnn_factor``) check ranks, shapes, dtypes, weights and step counts and return one
frozen :class:`Problem`. They read only ``.shape`` and ``.dtype``, so every caller hands in
its own arrays: NumPy, CuPy or Numba device arrays, Dask arrays, JAX arrays or tracers.
Nothing here reads values: :func:`check_values` (NaN/Inf, positive steps) is the separate
step the host runs always and the device runs with ``check=True`` (on the device, with
``bandsolve.gpu.arrays``' kernels and the same messages).

Bad input is a ``ValueError`` naming the argument, the expected and the received shape or
value; a wrong dtype is a ``TypeError`` saying how to fix it.

Example::

    problem = describe(coefficients, rhs, init, steps, n_steps=None, weight_equation=1.0,
                       weight_init=1.0, weight_smooth=1.0, central_smoothness=False)
    problem.n_steps, problem.block_size, problem.batch
"""

import dataclasses
import math

import numpy as np

from . import _validation as v

# Both backends compute in float64 whatever the inputs' dtype: the normal equations square
# the condition number, and float32 rows cannot hold the accuracy a user expects
# (results are returned in the inputs' dtype).
COMPUTE_DTYPE = np.dtype(np.float64)

LAYOUTS = {
    "coefficients": "(..., T or 1, E, D, O)",
    "rhs": "(..., T or 1, E)",
    "init": "(..., Ti, D, Oi)",
    "steps": "(..., T-1 or 1)",
}
_CORE_NDIM = {"coefficients": 4, "rhs": 2, "init": 3, "steps": 1}


@dataclasses.dataclass(frozen=True)
class Problem:
    """The checked description of an S-MNN problem (no arrays, only what they imply).

    ``n_steps`` T, ``n_equations`` E, ``n_dims`` D, ``n_orders`` O, ``n_init_steps`` Ti and
    ``n_init_orders`` Oi (both 0 when there are no initial values); the inputs' full
    shapes; ``lhs_batch`` (coefficients and steps broadcast) and ``batch`` (all four
    broadcast; ``None`` for a left-hand side alone); ``weights`` ``(we, wi, ws)`` as Python
    floats; the common ``dtype``; ``central`` (central smoothness rows).
    """

    n_steps: int
    n_equations: int
    n_dims: int
    n_orders: int
    n_init_steps: int
    n_init_orders: int
    coefficients_shape: tuple
    steps_shape: tuple
    lhs_batch: tuple
    weights: tuple
    dtype: np.dtype
    central: bool
    rhs_shape: tuple = None
    init_values_shape: tuple = None
    batch: tuple = None

    @property
    def block_size(self):
        """``n = D * O`` unknowns per time step."""
        return self.n_dims * self.n_orders

    @property
    def bandwidth(self):
        """Block bandwidth ``p`` of the normal matrix: 2 with central smoothness, else 1."""
        return 2 if self.central else 1

    @property
    def init_shape(self):
        """``(Ti, Oi)``, ``(0, 0)`` when there are no initial values."""
        return (self.n_init_steps, self.n_init_orders)

    def kernel_scalars(self):
        """The scalar arguments of the assembly and factorisation kernels, on both
        backends: ``(O, Ti, Oi, we^2, wi^2, ws^2, central)``, the squared weights as
        float64 (both backends compute in float64 whatever the data's dtype)."""
        we, wi, ws = self.weights
        return (self.n_orders, self.n_init_steps, self.n_init_orders,
                float(we * we), float(wi * wi), float(ws * ws), self.central)

    def with_rhs(self, rhs, init):
        """This left-hand side with the right-hand-side inputs of a solve of its
        factorisation: ``rhs`` and ``init`` must match its ``(T, E, D, O)``, its
        ``init_shape`` and its dtype. Returns the completed :class:`Problem`."""
        rhs_shape, init_shape = _check_rhs(self.coefficients_shape, rhs, init, self.n_steps)
        given = (init_shape[-3], init_shape[-1])
        if given[0] * given[1] == 0:
            given = (0, 0)  # no initial values, however the empty shape is spelled
        if given != self.init_shape:
            raise ValueError(
                f"init must have Ti={self.n_init_steps}, Oi={self.n_init_orders} (the "
                f"init_shape this factorisation was built for); got shape {init_shape}")
        for name, array in (("rhs", rhs), ("init", init)):
            if np.dtype(array.dtype) != self.dtype:
                raise TypeError(f"{name} has dtype {np.dtype(array.dtype)}; this factorisation "
                                f"is {self.dtype} (convert with .astype(numpy.{self.dtype}))")
        batch = v.broadcast_batch(factor=self.lhs_batch, rhs=rhs_shape[:-2],
                                  init=init_shape[:-3])
        return dataclasses.replace(self, rhs_shape=rhs_shape, init_values_shape=init_shape,
                                   batch=batch)


def shape_of(array):
    """``array.shape`` as a tuple of ints (the CUDA simulator's shapes are not tuples)."""
    return tuple(int(s) for s in array.shape)


def _dtype(name, array):
    return v.check_dtype(name, array.dtype)


def _check_rank(name, shape):
    minimum = _CORE_NDIM[name]
    if len(shape) < minimum:
        raise ValueError(f"{name} must have shape {LAYOUTS[name]} (at least {minimum} axes); "
                         f"got shape {shape}")


def infer_n_steps(n_steps, coefficients_shape=None, rhs_shape=None, steps_shape=None):
    """The sequence length ``T`` carried by the input shapes (step length 1 broadcasts)."""
    claims = {}
    if coefficients_shape is not None and coefficients_shape[-4] != 1:
        claims["coefficients (axis -4)"] = coefficients_shape[-4]
    if rhs_shape is not None and rhs_shape[-2] != 1:
        claims["rhs (axis -2)"] = rhs_shape[-2]
    if steps_shape is not None and steps_shape[-1] != 1:
        claims["steps (axis -1, plus one)"] = steps_shape[-1] + 1
    if n_steps is not None:
        claims["n_steps"] = v.check_count("n_steps", n_steps, minimum=1)
    if len(set(claims.values())) > 1:
        listing = ", ".join(f"{name} says T={value}" for name, value in claims.items())
        raise ValueError(f"inconsistent sequence lengths: {listing}")
    if not claims:
        raise ValueError(
            "cannot infer the number of time steps T: every input has step length 1; "
            "pass n_steps=T")
    return next(iter(claims.values()))


def _check_lhs(coefficients, steps, n_steps, weight_equation, weight_init, weight_smooth,
               central_smoothness, rhs_shape=None):
    """Shapes of coefficients and steps, and the weights; returns
    ``(coefficients_shape, steps_shape, T, weights)``."""
    _dtype("coefficients", coefficients)
    _dtype("steps", steps)
    coefficients_shape, steps_shape = shape_of(coefficients), shape_of(steps)
    _check_rank("coefficients", coefficients_shape)
    _check_rank("steps", steps_shape)
    T = infer_n_steps(n_steps, coefficients_shape, rhs_shape, steps_shape)
    if steps_shape[-1] not in (1, T - 1):
        raise ValueError(
            f"steps must have shape {LAYOUTS['steps']} = (..., {T - 1} or 1); got {steps_shape}")
    n_orders = coefficients_shape[-1]
    central_smoothness = v.check_flag("central_smoothness", central_smoothness)
    if central_smoothness and n_orders < 3:
        raise ValueError(
            f"central_smoothness needs O >= 3 derivative orders; coefficients have O={n_orders}")
    if coefficients_shape[-2] < 1 or n_orders < 1:
        raise ValueError(f"coefficients need D >= 1 and O >= 1; got shape {coefficients_shape}")
    weights = (v.check_weight("weight_equation", weight_equation),
               v.check_weight("weight_init", weight_init),
               v.check_weight("weight_smooth", weight_smooth))
    return coefficients_shape, steps_shape, T, weights


def _check_rhs(coefficients_shape, rhs, init, T):
    """Shapes of rhs and init against the left-hand side's ``(E, D, O)`` and ``T``;
    returns ``(rhs_shape, init_shape)``."""
    _, E, D, O = coefficients_shape[-4:]
    _dtype("rhs", rhs)
    _dtype("init", init)
    rhs_shape, init_shape = shape_of(rhs), shape_of(init)
    _check_rank("rhs", rhs_shape)
    _check_rank("init", init_shape)
    if rhs_shape[-1] != E or rhs_shape[-2] not in (1, T):
        raise ValueError(
            f"rhs must have shape (..., {T} or 1, {E}) to match coefficients "
            f"{coefficients_shape}; got {rhs_shape}")
    Ti, Dg, Oi = init_shape[-3:]
    if Ti > T:
        raise ValueError(f"init has Ti={Ti} initial steps but there are only T={T} steps")
    if Oi > O:
        raise ValueError(f"init has Oi={Oi} orders but coefficients have only O={O}")
    if math.prod(init_shape) and Dg != D:
        raise ValueError(f"init must have shape (..., Ti, {D}, Oi); got {init_shape}")
    return rhs_shape, init_shape


def _check_init_shape(init_shape, n_orders, T):
    """``(Ti, Oi)`` checked against ``(T, O)``; ``(0, 0)`` when either is zero."""
    Ti, Oi = v.check_init_shape(init_shape)
    if Ti > T or Oi > n_orders:
        raise ValueError(f"init_shape {(Ti, Oi)} exceeds (T, O) = {(T, n_orders)}")
    return (Ti, Oi) if Ti * Oi else (0, 0)


def _common_dtype(*arrays):
    return v.check_dtype("inputs", np.result_type(*(np.dtype(a.dtype) for a in arrays)))


def describe_lhs(coefficients, steps, *, init_shape, n_steps, weight_equation, weight_init,
                 weight_smooth, central_smoothness):
    """The :class:`Problem` of a left-hand side alone (``smnn_factor``): coefficients
    ``(..., T or 1, E, D, O)``, steps ``(..., T-1 or 1)``, ``init_shape`` ``(Ti, Oi)``.
    Reads shapes and dtypes only."""
    c_shape, h_shape, T, weights = _check_lhs(
        coefficients, steps, n_steps, weight_equation, weight_init, weight_smooth,
        central_smoothness)
    Ti, Oi = _check_init_shape(init_shape, c_shape[-1], T)
    return Problem(
        n_steps=T, n_equations=c_shape[-3], n_dims=c_shape[-2], n_orders=c_shape[-1],
        n_init_steps=Ti, n_init_orders=Oi, coefficients_shape=c_shape, steps_shape=h_shape,
        lhs_batch=v.broadcast_batch(coefficients=c_shape[:-4], steps=h_shape[:-1]),
        weights=weights, dtype=_common_dtype(coefficients, steps),
        central=bool(central_smoothness))


def describe(coefficients, rhs, init, steps, *, n_steps, weight_equation, weight_init,
             weight_smooth, central_smoothness):
    """The :class:`Problem` of a full S-MNN problem (the arguments of ``smnn_solve``).
    Reads shapes and dtypes only; every structural check runs here, before any kernel."""
    _dtype("rhs", rhs)
    rhs_shape = shape_of(rhs)
    _check_rank("rhs", rhs_shape)
    c_shape, h_shape, T, weights = _check_lhs(
        coefficients, steps, n_steps, weight_equation, weight_init, weight_smooth,
        central_smoothness, rhs_shape=rhs_shape)
    rhs_shape, init_shape = _check_rhs(c_shape, rhs, init, T)
    batch = v.broadcast_batch(coefficients=c_shape[:-4], rhs=rhs_shape[:-2],
                              init=init_shape[:-3], steps=h_shape[:-1])
    Ti, _, Oi = init_shape[-3:]
    Ti, Oi = (Ti, Oi) if Ti * Oi else (0, 0)
    return Problem(
        n_steps=T, n_equations=c_shape[-3], n_dims=c_shape[-2], n_orders=c_shape[-1],
        n_init_steps=Ti, n_init_orders=Oi, coefficients_shape=c_shape, steps_shape=h_shape,
        lhs_batch=v.broadcast_batch(coefficients=c_shape[:-4], steps=h_shape[:-1]),
        weights=weights, dtype=_common_dtype(coefficients, rhs, init, steps),
        central=bool(central_smoothness), rhs_shape=rhs_shape, init_values_shape=init_shape,
        batch=batch)


def host_inputs(**values):
    """Each value as a NumPy array (no copy when possible), its dtype checked."""
    return {name: v.as_host_array(name, value) for name, value in values.items()}


def check_values(**arrays):
    """The value checks of host inputs: no NaN/Inf in any, and ``steps`` positive."""
    for name, array in arrays.items():
        v.check_finite(name, array)
    if "steps" in arrays:
        v.check_positive("steps", arrays["steps"])


class FactorizationInfo:
    """What a factorisation knows without touching its arrays, the same on both backends
    (mixed into ``SMNNFactorization`` and ``DeviceSMNNFactorization``, which keep their
    left-hand side's :class:`Problem` as ``self._lhs.problem``)."""

    @property
    def batch_shape(self):
        """The left-hand-side batch ``...`` (of ``coefficients`` and ``steps`` broadcast)."""
        return self._lhs.problem.lhs_batch

    @property
    def n_steps(self):
        """The sequence length ``T``."""
        return self._lhs.problem.n_steps

    @property
    def dtype(self):
        """float32 or float64 (of the inputs and results; the factor itself is float64);
        ``rhs`` and ``init`` must have this dtype."""
        return self._lhs.problem.dtype

    def _repr_fields(self):
        problem = self._lhs.problem
        return (f"batch_shape={problem.lhs_batch}, T={problem.n_steps}, "
                f"E={problem.n_equations}, D={problem.n_dims}, O={problem.n_orders}, "
                f"init_shape={problem.init_shape}, central_smoothness={problem.central}, "
                f"dtype={problem.dtype}")

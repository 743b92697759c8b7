"""S-MNN solve and its vector-Jacobian product (DESIGN sections 1 and 2).

``smnn_solve`` validates and flattens the inputs once, factors the block-banded normal
equations (assembly fused with the block Cholesky sweep), and substitutes. The left-hand
side depends only on ``coefficients``, ``steps``, the weights and which entries carry
initial values, so it is factored once per distinct left-hand side (its own, possibly
smaller, batch) and broadcast over the right-hand sides. :func:`smnn_factor` exposes that
factorisation for reuse (the "frozen left-hand side").
"""

import math
from typing import Any, Callable

import numpy as np
from numpy.typing import ArrayLike

from . import _validation as v
from .banded import BlockBanded, BlockCholesky
from .cpu.smnn import (
    assemble_and_factor_kernel,
    assemble_kernel,
    assemble_rhs_kernel,
    factor_and_solve_kernel,
    gradient_kernel,
)
from .errors import raise_if_failed

# (coefficients_bar, rhs_bar, init_bar, steps_bar), each the shape of its input
Gradients = tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]

_LAYOUTS = {
    "coefficients": "(..., T or 1, E, D, O)",
    "rhs": "(..., T or 1, E)",
    "init": "(..., Ti, D, Oi)",
    "steps": "(..., T-1 or 1)",
}


def _kernel_array(array, dtype=None):
    """``array`` as a C-contiguous, writable array for the kernels (a copy only when it is
    not already one). Numba compiles read-only arrays (e.g. ``broadcast_to`` views) as a
    separate type: normalising here keeps one compiled variant per dtype. The kernels
    never write to their inputs."""
    array = np.asarray(array, dtype=dtype)
    if not (array.flags.c_contiguous and array.flags.writeable):
        array = np.array(array, order="C", copy=True)
    return array


class _LeftHandSide:
    """Validated, flattened left-hand-side inputs (internal)."""

    def __init__(self, coefficients, steps, n_steps, init_shape, weights, central):
        self.coefficients_shape = coefficients.shape
        self.steps_shape = steps.shape
        self.n_steps = n_steps
        _, self.n_equations, self.n_dims, self.n_orders = coefficients.shape[-4:]
        self.block_size = self.n_dims * self.n_orders
        self.n_init_steps, self.n_init_orders = init_shape
        self.weights = weights
        self.central = central
        self.dtype = coefficients.dtype
        self.batch_shape = v.broadcast_batch(
            coefficients=coefficients.shape[:-4], steps=steps.shape[:-1])
        n_lhs = math.prod(self.batch_shape)
        self.coefficients = _kernel_array(
            np.broadcast_to(coefficients, self.batch_shape + coefficients.shape[-4:])
        ).reshape(n_lhs, coefficients.shape[-4], self.n_equations, self.block_size)
        self.steps = _kernel_array(
            np.broadcast_to(steps, self.batch_shape + steps.shape[-1:])
        ).reshape(n_lhs, steps.shape[-1])

    @property
    def bandwidth(self):
        return 2 if self.central else 1

    def kernel_scalars(self):
        we, wi, ws = self.weights
        # weights in the data's dtype, so float32 kernels stay in float32
        scalar = self.dtype.type
        return (self.n_orders, self.n_init_steps, self.n_init_orders,
                scalar(we * we), scalar(wi * wi), scalar(ws * ws), self.central)

    def flat_rhs(self, rhs, init, batch):
        """Right-hand-side inputs flattened for the kernels, with their index maps over
        the full batch ``batch``: ``(rhs_flat, rhs_index, init_flat, init_index, lhs_index)``."""
        rhs_flat = _kernel_array(rhs).reshape((-1,) + rhs.shape[-2:])
        lhs_index = v.flat_batch_index(self.batch_shape, batch)
        rhs_index = v.flat_batch_index(rhs.shape[:-2], batch)
        if init.size:
            init_flat = _kernel_array(init).reshape((-1,) + init.shape[-3:])
            init_index = v.flat_batch_index(init.shape[:-3], batch)
        else:  # no initial values: one empty row that every system points to
            init_flat = np.zeros((1, 0, self.n_dims, 0), dtype=self.dtype)
            init_index = np.zeros_like(lhs_index)
        return rhs_flat, rhs_index, init_flat, init_index, lhs_index

    def assemble_rhs(self, rhs, init, batch):
        """``b`` ``(B, T, n)`` for the full batch ``batch``, and the flat rhs with the index
        maps that the gradient kernel needs: ``(b, lhs_index, rhs_flat, rhs_index)``."""
        rhs_flat, rhs_index, init_flat, init_index, lhs_index = self.flat_rhs(rhs, init, batch)
        b = np.empty((lhs_index.size, self.n_steps, self.block_size), dtype=self.dtype)
        we, wi, _ = self.weights
        scalar = self.dtype.type
        assemble_rhs_kernel.for_batch(*b.shape[:2])(
            self.coefficients, lhs_index, rhs_flat, rhs_index, init_flat, init_index,
            self.n_orders, scalar(we * we), scalar(wi * wi), b)
        return b, lhs_index, rhs_flat, rhs_index

    def empty_blocks(self):
        return np.empty((self.coefficients.shape[0], self.n_steps, self.bandwidth + 1,
                         self.block_size, self.block_size), dtype=self.dtype)


# ----------------------------------------------------------------------------- dispatch

def _on_device(**arrays):
    """True for device inputs, False for host inputs, ``TypeError`` if they are mixed."""
    return v.backend_of(**arrays) == "device"


def _gpu():
    """The CUDA backend (imported on first use: it imports ``numba.cuda``)."""
    from .gpu import smnn as gpu_smnn

    return gpu_smnn


def _require_host(**arrays):
    """``TypeError`` for device arrays handed to a host factorisation."""
    for name, value in arrays.items():
        if v.is_device_array(value):
            raise TypeError(f"{name} is a device array but this factorisation lives on the "
                            "host; factor device inputs to solve on the device, or move "
                            f"{name} to the host (e.g. cupy.asnumpy)")


def _host_options(stream, algorithm):
    """The device-only keywords must keep their defaults for host inputs."""
    if stream is not None:
        raise TypeError("stream= applies to device (CuPy / CUDA) inputs; these inputs are "
                        "host (NumPy) arrays")
    if algorithm != "auto":
        raise ValueError(f"algorithm={algorithm!r} picks a CUDA kernel shape; host (NumPy) "
                         "inputs use the CPU solver (leave algorithm='auto')")


# ----------------------------------------------------------------------------- validation

def _prepare(name, value, device=False):
    """Host: a float NumPy array whose values are checked. Device: the device array with
    its dtype checked; its values are checked only on request (``check=True``), since that
    would synchronise the device (STYLE habit 6)."""
    if device:
        v.check_dtype(name, value.dtype)
        return value
    array = v.as_host_array(name, value)
    v.check_finite(name, array)
    return array


def _infer_n_steps(n_steps, coefficients=None, rhs=None, steps=None):
    """The sequence length ``T`` carried by the inputs (step length 1 broadcasts)."""
    claims = {}
    if coefficients is not None and coefficients.shape[-4] != 1:
        claims["coefficients (axis -4)"] = coefficients.shape[-4]
    if rhs is not None and rhs.shape[-2] != 1:
        claims["rhs (axis -2)"] = rhs.shape[-2]
    if steps is not None and steps.shape[-1] != 1:
        claims["steps (axis -1, plus one)"] = steps.shape[-1] + 1
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
               central_smoothness, rhs=None, device=False):
    """Validate coefficients, steps, weights; returns (coefficients, steps, T, weights)."""
    coefficients = _prepare("coefficients", coefficients, device)
    steps = _prepare("steps", steps, device)
    v.check_rank("coefficients", coefficients, 4, _LAYOUTS["coefficients"])
    v.check_rank("steps", steps, 1, _LAYOUTS["steps"])
    T = _infer_n_steps(n_steps, coefficients=coefficients, rhs=rhs, steps=steps)
    if steps.shape[-1] not in (1, T - 1):
        raise ValueError(
            f"steps must have shape {_LAYOUTS['steps']} = (..., {T - 1} or 1); got {steps.shape}")
    if not device:
        v.check_positive("steps", steps)
    n_orders = coefficients.shape[-1]
    if central_smoothness and n_orders < 3:
        raise ValueError(
            f"central_smoothness needs O >= 3 derivative orders; coefficients have O={n_orders}")
    if coefficients.shape[-2] < 1 or n_orders < 1:
        raise ValueError(f"coefficients need D >= 1 and O >= 1; got shape {coefficients.shape}")
    weights = (v.check_weight("weight_equation", weight_equation),
               v.check_weight("weight_init", weight_init),
               v.check_weight("weight_smooth", weight_smooth))
    return coefficients, steps, T, weights


def _check_rhs(lhs_shape, rhs, init, T, device=False):
    """Validate rhs and init against the left-hand side's ``(E, D, O)`` and ``T``."""
    _, E, D, O = lhs_shape[-4:]
    rhs = _prepare("rhs", rhs, device)
    init = _prepare("init", init, device)
    v.check_rank("rhs", rhs, 2, _LAYOUTS["rhs"])
    v.check_rank("init", init, 3, _LAYOUTS["init"])
    if rhs.shape[-1] != E or rhs.shape[-2] not in (1, T):
        raise ValueError(
            f"rhs must have shape (..., {T} or 1, {E}) to match coefficients {lhs_shape}; "
            f"got {rhs.shape}")
    Ti, Dg, Oi = init.shape[-3:]
    if Ti > T:
        raise ValueError(f"init has Ti={Ti} initial steps but there are only T={T} steps")
    if Oi > O:
        raise ValueError(f"init has Oi={Oi} orders but coefficients have only O={O}")
    if init.size and Dg != D:
        raise ValueError(f"init must have shape (..., Ti, {D}, Oi); got {init.shape}")
    return rhs, init


def _check_init_shape(init_shape, coefficients, T):
    """``(Ti, Oi)`` checked against ``(T, O)``; ``(0, 0)`` when either is zero."""
    Ti = v.check_count("init_shape[0] (Ti)", init_shape[0])
    Oi = v.check_count("init_shape[1] (Oi)", init_shape[1])
    if Ti > T or Oi > coefficients.shape[-1]:
        raise ValueError(f"init_shape {(Ti, Oi)} exceeds (T, O) = {(T, coefficients.shape[-1])}")
    return (Ti, Oi) if Ti * Oi else (0, 0)


def _common_dtype(*arrays):
    return v.check_dtype("inputs", np.result_type(*(a.dtype for a in arrays)))


def _validate(coefficients, rhs, init, steps, n_steps, weight_equation, weight_init,
              weight_smooth, central_smoothness, device=False):
    """All checks of a full problem, before any kernel runs (``device=True``: metadata
    only, and the arrays are returned uncast; ``bandsolve.gpu`` casts on the device)."""
    v.backend_of(coefficients=coefficients, rhs=rhs, init=init, steps=steps)
    # only the shape is needed here (to infer T); _check_rhs checks the values once
    rhs_array = rhs if device else v.as_host_array("rhs", rhs)
    v.check_rank("rhs", rhs_array, 2, _LAYOUTS["rhs"])
    coefficients, steps, T, weights = _check_lhs(
        coefficients, steps, n_steps, weight_equation, weight_init, weight_smooth,
        central_smoothness, rhs=rhs_array, device=device)
    rhs, init = _check_rhs(coefficients.shape, rhs_array, init, T, device)
    v.broadcast_batch(coefficients=coefficients.shape[:-4], rhs=rhs.shape[:-2],
                      init=init.shape[:-3], steps=steps.shape[:-1])
    if device:
        return coefficients, rhs, init, steps, T, weights
    dtype = _common_dtype(coefficients, rhs, init, steps)
    return (coefficients.astype(dtype, copy=False), rhs.astype(dtype, copy=False),
            init.astype(dtype, copy=False), steps.astype(dtype, copy=False), T, weights)


def _factor(coefficients, steps, T, init_shape, weights, central):
    return _factor_lhs(_LeftHandSide(coefficients, steps, T, init_shape, weights, central))


def _factor_lhs(lhs):
    lower = lhs.empty_blocks()
    info = np.zeros(lower.shape[0], dtype=np.int64)
    assemble_and_factor_kernel.for_batch(*lower.shape[:2])(
        lhs.coefficients, lhs.steps, *lhs.kernel_scalars(), lower, info)
    raise_if_failed(info, lhs.batch_shape, what="S-MNN normal matrix")
    return SMNNFactorization(lhs, BlockCholesky(lower, lhs.batch_shape))


# ----------------------------------------------------------------------------- public API

class SMNNFactorization:
    """The factored left-hand side of an S-MNN problem, reusable for many right-hand sides.

    Obtain it from :func:`smnn_factor`. Holds the block Cholesky factor of the normal
    matrix (``cholesky``, a :class:`~bandsolve.BlockCholesky`, batch = the left-hand-side
    batch) and the flattened coefficients and steps needed for gradients. It is a plain
    value: keep it as long as the coefficients and steps are unchanged, drop it otherwise.
    Solving with it never changes it.

    Attributes
    ----------
    cholesky : BlockCholesky
        The factor of the normal matrix, batch = the left-hand-side batch.

    Examples
    --------
    A damped oscillator ``u'' + 0.3 u' + 4 u = 0`` on 100 steps of 0.01, factored once and
    solved for 8 right-hand sides at once (their batch axis broadcasts against the
    factor's empty batch):

    >>> import numpy as np, bandsolve
    >>> T = 100
    >>> coefficients = np.zeros((T, 1, 1, 3)); coefficients[...] = [4.0, 0.3, 1.0]
    >>> steps = np.full(T - 1, 0.01)
    >>> factor = bandsolve.smnn_factor(coefficients, steps, init_shape=(1, 2))
    >>> factor
    SMNNFactorization(batch_shape=(), T=100, E=1, D=1, O=3, init_shape=(1, 2), \
central_smoothness=False, dtype=float64)
    >>> rhs = np.zeros((8, T, 1))                     # (B, T, E)
    >>> init = np.array([[[1.0, 0.0]]])               # (Ti, D, Oi)
    >>> factor.solve(rhs, init).shape                 # (B, T, D, O)
    (8, 100, 1, 3)
    >>> u = bandsolve.smnn_solve(coefficients, rhs[0], init, steps)
    >>> np.allclose(factor.solve(rhs[0], init), u)
    True
    """

    def __init__(self, lhs, cholesky):
        self._lhs = lhs
        self.cholesky = cholesky

    @property
    def lower(self) -> np.ndarray:
        """The block Cholesky factor ``(..., T, p+1, n, n)`` (left-hand-side batch, block
        size ``n = D*O``, bandwidth ``p`` 1 or 2): what an adapter keeps as an array and
        hands back to :meth:`from_lower`. A view: do not write to it."""
        return self.cholesky.lower

    @classmethod
    def from_lower(cls, lower, coefficients, steps, *, init_shape, n_steps=None,
                   weight_equation=1.0, weight_init=1.0, weight_smooth=1.0,
                   central_smoothness=False, stream=None, algorithm="auto"):
        """Rebuild a factorisation from its ``lower`` factor (as returned by ``.lower``)
        and the same arguments as :func:`smnn_factor`, without refactoring. For adapters
        that must carry the factor between forward and backward passes as an array.

        ``lower`` must have the shape ``(..., T, p+1, n, n)`` that those arguments imply
        (``ValueError`` otherwise); it is cast to the coefficients' dtype (a copy only
        when needed). Nothing checks that ``lower`` really factors that matrix: pass
        only a ``.lower`` computed from the same ``coefficients`` and ``steps``.
        """
        if _on_device(lower=lower, coefficients=coefficients, steps=steps):
            return _gpu().from_lower(lower, coefficients, steps, init_shape=init_shape,
                                     n_steps=n_steps, weight_equation=weight_equation,
                                     weight_init=weight_init, weight_smooth=weight_smooth,
                                     central_smoothness=central_smoothness, stream=stream,
                                     algorithm=algorithm)
        _host_options(stream, algorithm)
        v.backend_of(lower=lower, coefficients=coefficients, steps=steps)
        coefficients, steps, T, weights = _check_lhs(
            coefficients, steps, n_steps, weight_equation, weight_init, weight_smooth,
            central_smoothness)
        lhs = _LeftHandSide(coefficients, steps, T, _check_init_shape(init_shape, coefficients, T),
                            weights, central_smoothness)
        lower = v.as_host_array("lower", lower)
        expected = lhs.batch_shape + (T, lhs.bandwidth + 1, lhs.block_size, lhs.block_size)
        if lower.shape != expected:
            raise ValueError(f"lower must have shape {expected}; got {lower.shape}")
        flat = _kernel_array(lower, dtype=lhs.dtype).reshape((-1,) + expected[-4:])
        return cls(lhs, BlockCholesky(flat, lhs.batch_shape))

    @property
    def batch_shape(self) -> tuple[int, ...]:
        """The left-hand-side batch ``...`` (of ``coefficients`` and ``steps`` broadcast)."""
        return self._lhs.batch_shape

    @property
    def n_steps(self) -> int:
        """The sequence length ``T``."""
        return self._lhs.n_steps

    @property
    def dtype(self) -> np.dtype:
        """float32 or float64; ``rhs`` and ``init`` must have this dtype."""
        return self._lhs.dtype

    def __repr__(self):
        lhs = self._lhs
        return (f"SMNNFactorization(batch_shape={lhs.batch_shape}, T={lhs.n_steps}, "
                f"E={lhs.n_equations}, D={lhs.n_dims}, O={lhs.n_orders}, "
                f"init_shape={(lhs.n_init_steps, lhs.n_init_orders)}, "
                f"central_smoothness={lhs.central}, dtype={lhs.dtype})")

    def _check(self, rhs, init):
        _require_host(rhs=rhs, init=init)
        lhs = self._lhs
        rhs, init = _check_rhs(lhs.coefficients_shape, rhs, init, lhs.n_steps)
        given = (init.shape[-3], init.shape[-1])
        if given[0] * given[1] == 0:
            given = (0, 0)  # no initial values, however the empty shape is spelled
        if given != (lhs.n_init_steps, lhs.n_init_orders):
            raise ValueError(
                f"init must have Ti={lhs.n_init_steps}, Oi={lhs.n_init_orders} (the init_shape "
                f"this factorisation was built for); got shape {init.shape}")
        for name, array in (("rhs", rhs), ("init", init)):
            if array.dtype != lhs.dtype:
                raise TypeError(f"{name} has dtype {array.dtype}; this factorisation is "
                                f"{lhs.dtype} (convert with .astype(numpy.{lhs.dtype}))")
        batch = v.broadcast_batch(factor=lhs.batch_shape, rhs=rhs.shape[:-2],
                                  init=init.shape[:-3])
        return rhs, init, batch

    def _solve(self, rhs, init, batch):
        x, lhs_index, rhs_flat, rhs_index = self._lhs.assemble_rhs(rhs, init, batch)
        self.cholesky.solve_flat_in_place(x, lhs_index)
        return x, (lhs_index, rhs_flat, rhs_index)

    def _shape_u(self, x, batch):
        lhs = self._lhs
        return x.reshape(batch + (lhs.n_steps, lhs.n_dims, lhs.n_orders))

    def solve(self, rhs: ArrayLike, init: ArrayLike) -> np.ndarray:
        """Solve for new ``rhs`` ``(..., T or 1, E)`` and ``init`` ``(..., Ti, D, Oi)``.

        Their batch axes broadcast against the factorisation's. Returns ``u``
        ``(..., T, D, O)`` in :attr:`dtype`, equal to :func:`smnn_solve` with the same
        inputs. Two block substitutions per system, no refactorisation.

        Raises ``ValueError`` for shapes that do not match the factorisation (including
        an ``init`` whose ``(Ti, Oi)`` differs from ``init_shape``), batch axes that do
        not broadcast, or NaN/Inf values; ``TypeError`` for a dtype other than
        :attr:`dtype` or a device array.
        """
        rhs, init, batch = self._check(rhs, init)
        x, _ = self._solve(rhs, init, batch)
        return self._shape_u(x, batch)

    def solve_vjp(self, rhs: ArrayLike, init: ArrayLike,
                  ) -> tuple[np.ndarray, Callable[[ArrayLike], Gradients]]:
        """Like :meth:`solve`, and also return ``vjp(ubar) -> (coefficients_bar, rhs_bar,
        init_bar, steps_bar)``, each the shape of its input, reusing this factorisation.

        Returns ``(u, vjp)``; ``ubar`` ``(..., T, D, O)`` (or broadcastable to it) is the
        gradient of a scalar loss with respect to ``u``. Errors as for :meth:`solve`.
        """
        rhs, init, batch = self._check(rhs, init)
        return self._solve_vjp(rhs, init, batch)

    def _solve_vjp(self, rhs, init, batch):
        x, _ = self._solve(rhs, init, batch)
        return self._shape_u(x, batch), lambda ubar: self._backward(rhs, init, batch, x, ubar)

    def backward(self, rhs: ArrayLike, init: ArrayLike, u: ArrayLike,
                 ubar: ArrayLike) -> Gradients:
        """Gradients from a solution computed earlier, for frameworks that keep residuals
        as arrays (the PyTorch and JAX adapters): ``u = self.solve(rhs, init)``.

        Returns ``(coefficients_bar, rhs_bar, init_bar, steps_bar)`` of ``sum(ubar * u)``,
        each the shape of its input. No refactorisation: two substitutions and an
        O(T n^2) gradient sweep.
        """
        rhs, init, batch = self._check(rhs, init)
        lhs = self._lhs
        u_shape = batch + (lhs.n_steps, lhs.n_dims, lhs.n_orders)
        _require_host(u=u)
        u = _prepare("u", u)
        if u.shape != u_shape:
            raise ValueError(f"u must have shape {u_shape}; got {u.shape}")
        x = _kernel_array(u, dtype=lhs.dtype).reshape(-1, lhs.n_steps, lhs.block_size)
        return self._backward(rhs, init, batch, x, ubar)

    def _backward(self, rhs, init, batch, x, ubar):
        lhs = self._lhs
        u_shape = batch + (lhs.n_steps, lhs.n_dims, lhs.n_orders)
        _require_host(ubar=ubar)
        ubar = _prepare("ubar", ubar)
        try:
            ubar = np.broadcast_to(ubar, u_shape)
        except ValueError:
            raise ValueError(f"ubar must have the shape of u, {u_shape}; "
                             f"got {ubar.shape}") from None
        y = np.array(ubar, dtype=lhs.dtype, order="C").reshape(x.shape)
        rhs_flat, rhs_index, _, _, lhs_index = lhs.flat_rhs(rhs, init, batch)
        self.cholesky.solve_flat_in_place(y, lhs_index)
        return self._gradients(x, y, batch, lhs_index, rhs_flat, rhs_index,
                               rhs.shape, init.shape)

    def _gradients(self, x, y, batch, lhs_index, rhs_flat, rhs_index, rhs_shape, init_shape):
        lhs = self._lhs
        B = x.shape[0]
        we, wi, ws = lhs.weights
        coefficients_bar = np.empty((B,) + lhs.coefficients.shape[1:], dtype=lhs.dtype)
        rhs_bar = np.empty((B,) + rhs_flat.shape[1:], dtype=lhs.dtype)
        steps_bar = np.empty((B, lhs.steps.shape[1]), dtype=lhs.dtype)
        gradient_kernel.for_batch(*x.shape[:2])(
            lhs.coefficients, lhs.steps, lhs_index, rhs_flat, rhs_index, x, y, lhs.n_orders,
            we * we, ws * ws, lhs.central, coefficients_bar, rhs_bar, steps_bar)
        D, O = lhs.n_dims, lhs.n_orders
        Ti, Oi = lhs.n_init_steps, lhs.n_init_orders
        if Ti * Oi:
            y4 = y.reshape(batch + (lhs.n_steps, D, O))
            init_bar = v.sum_to_shape(wi * wi * y4[..., :Ti, :, :Oi], init_shape)
        else:
            init_bar = np.zeros(init_shape, dtype=lhs.dtype)
        coefficients_bar = coefficients_bar.reshape(
            batch + lhs.coefficients_shape[-4:])
        return (v.sum_to_shape(coefficients_bar, lhs.coefficients_shape),
                v.sum_to_shape(rhs_bar.reshape(batch + rhs_shape[-2:]), rhs_shape),
                init_bar,
                v.sum_to_shape(steps_bar.reshape(batch + lhs.steps_shape[-1:]), lhs.steps_shape))


def smnn_factor(coefficients: ArrayLike, steps: ArrayLike, *, init_shape: tuple[int, int],
                n_steps: int | None = None, weight_equation: float = 1.0,
                weight_init: float = 1.0, weight_smooth: float = 1.0,
                central_smoothness: bool = False, stream: Any = None, check: bool = False,
                algorithm: str = "auto") -> SMNNFactorization:
    """Factor the S-MNN normal matrix once, for reuse with many right-hand sides.

    Parameters
    ----------
    coefficients : array ``(..., T or 1, E, D, O)``, float32 or float64
        As for :func:`smnn_solve`.
    steps : array ``(..., T-1 or 1)``
        Positive step sizes.
    init_shape : tuple ``(Ti, Oi)``
        Which entries will carry initial values (``t < Ti``, ``o < Oi``): part of the
        left-hand side, because they add ``weight_init**2`` to its diagonal.
    n_steps : int, optional
        ``T``, needed only when neither input carries it.
    weight_equation, weight_init, weight_smooth, central_smoothness
        As for :func:`smnn_solve`.
    stream, check, algorithm
        Device inputs only (``bandsolve.gpu``); leave the defaults for NumPy inputs.
        ``stream``: the CUDA stream to run on (default: CuPy's current stream for CuPy
        inputs). ``check=True`` also checks the input values and the factorisation
        status, which synchronises the device; by default a failed system's result is
        NaN and the failure is reported by ``smnn_factor(...).status``. ``algorithm``:
        ``"auto"``, ``"thread"`` (a thread per system), ``"block"`` (a thread block per
        system) or ``"partitioned"`` (parallel in time).

    Returns
    -------
    SMNNFactorization
        (a ``bandsolve.gpu.DeviceSMNNFactorization``, with a per-system ``.status``, for
        device inputs); ``.solve(rhs, init)`` equals
        ``smnn_solve(coefficients, rhs, init, steps, ...)``.

    Raises
    ------
    FactorizationError
        Naming the batch indices and time steps where the matrix is not positive
        definite.
    ValueError, TypeError
        Bad input, naming the argument, before any kernel runs.

    Examples
    --------
    >>> import numpy as np, bandsolve
    >>> T = 100
    >>> coefficients = np.zeros((T, 1, 1, 3)); coefficients[...] = [4.0, 0.3, 1.0]
    >>> rhs, init, steps = np.zeros((T, 1)), np.array([[[1.0, 0.0]]]), np.full(T - 1, 0.01)
    >>> factor = bandsolve.smnn_factor(coefficients, steps, init_shape=(1, 2))
    >>> np.allclose(factor.solve(rhs, init),
    ...             bandsolve.smnn_solve(coefficients, rhs, init, steps))
    True
    """
    if _on_device(coefficients=coefficients, steps=steps):
        return _gpu().factor(coefficients, steps, init_shape=init_shape, n_steps=n_steps,
                             weight_equation=weight_equation, weight_init=weight_init,
                             weight_smooth=weight_smooth,
                             central_smoothness=central_smoothness, stream=stream,
                             check=check, algorithm=algorithm)
    _host_options(stream, algorithm)
    v.backend_of(coefficients=coefficients, steps=steps)
    coefficients, steps, T, weights = _check_lhs(
        coefficients, steps, n_steps, weight_equation, weight_init, weight_smooth,
        central_smoothness)
    dtype = _common_dtype(coefficients, steps)
    return _factor(coefficients.astype(dtype, copy=False), steps.astype(dtype, copy=False),
                   T, _check_init_shape(init_shape, coefficients, T), weights,
                   central_smoothness)


def smnn_solve(coefficients: ArrayLike, rhs: ArrayLike, init: ArrayLike, steps: ArrayLike, *,
               n_steps: int | None = None, weight_equation: float = 1.0,
               weight_init: float = 1.0, weight_smooth: float = 1.0,
               central_smoothness: bool = False, stream: Any = None, check: bool = False,
               algorithm: str = "auto") -> np.ndarray:
    """Solve the S-MNN least-squares problem (DESIGN.md section 1).

    Parameters
    ----------
    coefficients : array ``(..., T or 1, E, D, O)``, float32 or float64
        ``c[t, e, d, o]``: ODE coefficients of equation ``e`` on derivative ``o`` of ``d``.
    rhs : array ``(..., T or 1, E)``
        ``r[t, e]``: right-hand side of equation ``e`` at step ``t``.
    init : array ``(..., Ti, D, Oi)``
        Initial values for ``t < Ti``, ``o < Oi`` (``Ti`` or ``Oi`` may be 0: none).
    steps : array ``(..., T-1 or 1)``
        Positive step sizes.
    n_steps : int, optional
        ``T``, needed only when no input carries it.
    weight_equation, weight_init, weight_smooth : float
        Positive row weights.
    central_smoothness : bool
        Add central rows (needs ``O >= 3``; the system becomes block-pentadiagonal).
    stream, check, algorithm
        Device inputs only (``bandsolve.gpu``); leave the defaults for NumPy inputs.
        ``stream``: the CUDA stream to run on (default: CuPy's current stream for CuPy
        inputs). ``check=True`` also checks the input values and the factorisation
        status, which synchronises the device; by default a failed system's result is
        NaN and the failure is reported by ``smnn_factor(...).status``. ``algorithm``:
        ``"auto"``, ``"thread"`` (a thread per system), ``"block"`` (a thread block per
        system) or ``"partitioned"`` (parallel in time).

    Leading batch axes broadcast by NumPy rules; the left-hand side is factored once per
    distinct (coefficients, steps) batch element. float32 or float64 (mixed inputs
    compute in the wider type).

    Returns
    -------
    u : array ``(..., T, D, O)``
        In the inputs' dtype. CuPy inputs give CuPy results; other device arrays give
        Numba device arrays.

    Raises
    ------
    ValueError, TypeError
        Bad input, naming the argument, before any computation; mixing host and device
        inputs is a ``TypeError``.
    FactorizationError
        A ``numpy.linalg.LinAlgError`` naming the systems and time steps where the
        normal matrix is not positive definite (on the device: only with
        ``check=True``).

    Examples
    --------
    The damped oscillator ``u'' + 0.3 u' + 4 u = 0``, ``u(0) = 1``, ``u'(0) = 0`` on 100
    steps of 0.01, against its closed form:

    >>> import numpy as np, bandsolve
    >>> T = 100
    >>> coefficients = np.zeros((T, 1, 1, 3)); coefficients[...] = [4.0, 0.3, 1.0]
    >>> rhs, init, steps = np.zeros((T, 1)), np.array([[[1.0, 0.0]]]), np.full(T - 1, 0.01)
    >>> u = bandsolve.smnn_solve(coefficients, rhs, init, steps)
    >>> u.shape                                       # (T, D, O): u, u', u''
    (100, 1, 3)
    >>> t = np.arange(T) * 0.01
    >>> w = np.sqrt(4.0 - 0.15**2)
    >>> exact = np.exp(-0.15 * t) * (np.cos(w * t) + 0.15 / w * np.sin(w * t))
    >>> bool(np.abs(u[:, 0, 0] - exact).max() < 1e-3)
    True
    """
    if _on_device(coefficients=coefficients, rhs=rhs, init=init, steps=steps):
        return _gpu().solve(coefficients, rhs, init, steps, n_steps=n_steps,
                            weight_equation=weight_equation, weight_init=weight_init,
                            weight_smooth=weight_smooth, central_smoothness=central_smoothness,
                            stream=stream, check=check, algorithm=algorithm, with_vjp=False)
    _host_options(stream, algorithm)
    u, _, _ = _solve_full(coefficients, rhs, init, steps, n_steps, weight_equation,
                          weight_init, weight_smooth, central_smoothness)
    return u


def smnn_solve_vjp(coefficients: ArrayLike, rhs: ArrayLike, init: ArrayLike,
                   steps: ArrayLike, *, n_steps: int | None = None,
                   weight_equation: float = 1.0, weight_init: float = 1.0,
                   weight_smooth: float = 1.0, central_smoothness: bool = False,
                   stream: Any = None, check: bool = False, algorithm: str = "auto",
                   ) -> tuple[np.ndarray, Callable[[ArrayLike], Gradients]]:
    """:func:`smnn_solve` plus its vector-Jacobian product.

    Returns ``(u, vjp)``; ``vjp(ubar)`` with ``ubar`` ``(..., T, D, O)`` returns
    ``(coefficients_bar, rhs_bar, init_bar, steps_bar)``, each the shape of its input
    (summed over broadcast axes). The backward pass reuses the forward factorisation:
    one extra pair of substitutions and an O(T n^2) gradient sweep. Arguments and errors
    as for :func:`smnn_solve`.

    Examples
    --------
    >>> import numpy as np, bandsolve
    >>> T = 100
    >>> coefficients = np.zeros((T, 1, 1, 3)); coefficients[...] = [4.0, 0.3, 1.0]
    >>> rhs, init, steps = np.zeros((T, 1)), np.array([[[1.0, 0.0]]]), np.full(T - 1, 0.01)
    >>> u, vjp = bandsolve.smnn_solve_vjp(coefficients, rhs, init, steps)
    >>> coefficients_bar, rhs_bar, init_bar, steps_bar = vjp(np.ones_like(u))
    >>> coefficients_bar.shape, rhs_bar.shape, init_bar.shape, steps_bar.shape
    ((100, 1, 1, 3), (100, 1), (1, 1, 2), (99,))
    """
    if _on_device(coefficients=coefficients, rhs=rhs, init=init, steps=steps):
        return _gpu().solve(coefficients, rhs, init, steps, n_steps=n_steps,
                            weight_equation=weight_equation, weight_init=weight_init,
                            weight_smooth=weight_smooth, central_smoothness=central_smoothness,
                            stream=stream, check=check, algorithm=algorithm, with_vjp=True)
    _host_options(stream, algorithm)
    u, factorization, backward = _solve_full(
        coefficients, rhs, init, steps, n_steps, weight_equation, weight_init,
        weight_smooth, central_smoothness)
    return u, backward


def smnn_factor_solve(coefficients: ArrayLike, rhs: ArrayLike, init: ArrayLike,
                      steps: ArrayLike, *, n_steps: int | None = None,
                      weight_equation: float = 1.0, weight_init: float = 1.0,
                      weight_smooth: float = 1.0, central_smoothness: bool = False,
                      stream: Any = None, check: bool = False, algorithm: str = "auto",
                      ) -> tuple[np.ndarray, SMNNFactorization]:
    """:func:`smnn_solve` that also returns the :class:`SMNNFactorization` it built.

    Returns ``(u, factorization)``: ``factorization.lower`` is the factor to keep as an
    array, and ``factorization.backward(rhs, init, u, ubar)`` the gradients later, with no
    refactorisation. For frameworks that carry residuals as arrays (the PyTorch and JAX
    adapters); on the host it takes the same fused factor-and-solve pass as
    :func:`smnn_solve`. Arguments as for :func:`smnn_solve`.

    Examples
    --------
    >>> import numpy as np, bandsolve
    >>> T = 100
    >>> coefficients = np.zeros((T, 1, 1, 3)); coefficients[...] = [4.0, 0.3, 1.0]
    >>> rhs, init, steps = np.zeros((T, 1)), np.array([[[1.0, 0.0]]]), np.full(T - 1, 0.01)
    >>> u, factorization = bandsolve.smnn_factor_solve(coefficients, rhs, init, steps)
    >>> factorization.lower.shape                     # (T, p+1, n, n), n = D*O
    (100, 2, 3, 3)
    >>> grads = factorization.backward(rhs, init, u, np.ones_like(u))
    >>> [g.shape for g in grads]
    [(100, 1, 1, 3), (100, 1), (1, 1, 2), (99,)]
    """
    if _on_device(coefficients=coefficients, rhs=rhs, init=init, steps=steps):
        T = _infer_n_steps(n_steps, coefficients=coefficients, rhs=rhs, steps=steps)
        if algorithm == "auto":
            # the caller keeps .lower: a block Cholesky kernel, never the parallel-in-time
            # factorisation (which has no such factor)
            from .gpu import config
            block_size = coefficients.shape[-2] * coefficients.shape[-1]
            algorithm = "thread" if block_size <= config.THREAD_MAX_BLOCK_SIZE else "block"
        factorization = smnn_factor(
            coefficients, steps, init_shape=(init.shape[-3], init.shape[-1]), n_steps=T,
            weight_equation=weight_equation, weight_init=weight_init,
            weight_smooth=weight_smooth, central_smoothness=central_smoothness,
            stream=stream, check=check, algorithm=algorithm)
        return factorization.solve(rhs, init), factorization
    _host_options(stream, algorithm)
    u, factorization, _ = _solve_full(coefficients, rhs, init, steps, n_steps,
                                      weight_equation, weight_init, weight_smooth,
                                      central_smoothness)
    return u, factorization


def _host_problem(coefficients, rhs, init, steps, n_steps, weight_equation, weight_init,
                  weight_smooth, central_smoothness):
    """Validate a full host problem; returns ``(lhs, rhs, init, batch)`` with the
    flattened left-hand side and the full broadcast batch shape."""
    coefficients, rhs, init, steps, T, weights = _validate(
        coefficients, rhs, init, steps, n_steps, weight_equation, weight_init,
        weight_smooth, central_smoothness)
    init_shape = _check_init_shape((init.shape[-3], init.shape[-1]), coefficients, T)
    lhs = _LeftHandSide(coefficients, steps, T, init_shape, weights, central_smoothness)
    batch = v.broadcast_batch(factor=lhs.batch_shape, rhs=rhs.shape[:-2], init=init.shape[:-3])
    return lhs, rhs, init, batch


def _solve_full(coefficients, rhs, init, steps, n_steps, weight_equation, weight_init,
                weight_smooth, central_smoothness):
    """Validate, factor and solve on the host: ``(u, factorization, vjp)``."""
    lhs, rhs, init, batch = _host_problem(
        coefficients, rhs, init, steps, n_steps, weight_equation, weight_init,
        weight_smooth, central_smoothness)
    T = lhs.n_steps
    if batch == lhs.batch_shape:
        # one right-hand side per left-hand side: factor and solve each system in one
        # pass while its factor is still in cache
        rhs_flat, rhs_index, init_flat, init_index, _ = lhs.flat_rhs(rhs, init, batch)
        lower = lhs.empty_blocks()
        info = np.zeros(lower.shape[0], dtype=np.int64)
        x = np.empty((lower.shape[0], T, lhs.block_size), dtype=lhs.dtype)
        factor_and_solve_kernel.for_batch(*lower.shape[:2])(
            lhs.coefficients, lhs.steps, rhs_flat, rhs_index, init_flat, init_index,
            *lhs.kernel_scalars(), lower, info, x)
        raise_if_failed(info, lhs.batch_shape, what="S-MNN normal matrix")
        factorization = SMNNFactorization(lhs, BlockCholesky(lower, lhs.batch_shape))
    else:
        factorization = _factor_lhs(lhs)
        x, _ = factorization._solve(rhs, init, batch)
    u = factorization._shape_u(x, batch)
    return u, factorization, lambda ubar: factorization._backward(rhs, init, batch, x, ubar)


def smnn_normal_equations(coefficients: ArrayLike, rhs: ArrayLike, init: ArrayLike,
                          steps: ArrayLike, *, n_steps: int | None = None,
                          weight_equation: float = 1.0, weight_init: float = 1.0,
                          weight_smooth: float = 1.0, central_smoothness: bool = False,
                          ) -> tuple[BlockBanded, np.ndarray]:
    """The assembled normal equations ``M x = b`` (same arguments as :func:`smnn_solve`).

    Returns ``(M, b)``: ``M`` a :class:`BlockBanded` with the left-hand-side batch
    (bandwidth 1, or 2 with central smoothness; block size ``n = D*O``, unknown index
    ``d*O + o``) and ``b`` ``(..., T, n)`` with the full batch. Host arrays only
    (``TypeError`` for device arrays); otherwise errors as for :func:`smnn_solve`.

    Examples
    --------
    >>> import numpy as np, bandsolve
    >>> T = 100
    >>> coefficients = np.zeros((T, 1, 1, 3)); coefficients[...] = [4.0, 0.3, 1.0]
    >>> rhs, init, steps = np.zeros((T, 1)), np.array([[[1.0, 0.0]]]), np.full(T - 1, 0.01)
    >>> M, b = bandsolve.smnn_normal_equations(coefficients, rhs, init, steps)
    >>> M
    BlockBanded(batch_shape=(), n_steps=100, bandwidth=1, block_size=3, dtype=float64)
    >>> x = bandsolve.block_cholesky(M).solve(b)      # (T, n)
    >>> np.allclose(x.reshape(T, 1, 3), bandsolve.smnn_solve(coefficients, rhs, init, steps))
    True
    """
    if _on_device(coefficients=coefficients, rhs=rhs, init=init, steps=steps):
        raise TypeError("smnn_normal_equations works on host (NumPy) arrays only; copy the "
                        "inputs to the host first (e.g. cupy.asnumpy)")
    lhs, rhs, init, batch = _host_problem(
        coefficients, rhs, init, steps, n_steps, weight_equation, weight_init,
        weight_smooth, central_smoothness)
    blocks = lhs.empty_blocks()
    assemble_kernel.for_batch(*blocks.shape[:2])(
        lhs.coefficients, lhs.steps, *lhs.kernel_scalars(), blocks)
    matrix = BlockBanded(blocks.reshape(lhs.batch_shape + blocks.shape[1:]))
    b, *_ = lhs.assemble_rhs(rhs, init, batch)
    return matrix, b.reshape(batch + (lhs.n_steps, lhs.block_size))

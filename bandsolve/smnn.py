"""S-MNN solve and its vector-Jacobian product (DESIGN sections 1 and 2).

``smnn_solve`` validates and flattens the inputs once, factors the block-banded normal
equations (assembly fused with the block Cholesky sweep), and substitutes. The left-hand
side depends only on ``coefficients``, ``steps``, the weights and which entries carry
initial values, so it is factored once per distinct left-hand side (its own, possibly
smaller, batch) and broadcast over the right-hand sides. :func:`smnn_factor` exposes that
factorisation for reuse (the "frozen left-hand side").
"""

import math

import numpy as np

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

# VJP with a shared left-hand side: systems per gradient-kernel call (at least the lhs
# batch) chosen so one call's per-system coefficients_bar holds about this many numbers
_GRADIENT_CHUNK_ELEMENTS = 2**21

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
        rhs_flat = _kernel_array(rhs).reshape((math.prod(rhs.shape[:-2]),) + rhs.shape[-2:])
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
    central_smoothness = v.check_flag("central_smoothness", central_smoothness)
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
    Ti, Oi = v.check_init_shape(init_shape)
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
    return SMNNFactorization(lhs, BlockCholesky._trusted(lower, lhs.batch_shape))


# ----------------------------------------------------------------------------- public API

class SMNNFactorization:
    """The factored left-hand side of an S-MNN problem, reusable for many right-hand sides.

    Obtain it from :func:`smnn_factor`. Holds the block Cholesky factor of the normal
    matrix (``cholesky``, a :class:`~bandsolve.BlockCholesky`, batch = the left-hand-side
    batch) and the flattened coefficients and steps needed for gradients. It is a plain
    value: keep it as long as the coefficients and steps are unchanged, drop it otherwise.
    """

    def __init__(self, lhs, cholesky):
        self._lhs = lhs
        self.cholesky = cholesky

    @property
    def lower(self):
        """The block Cholesky factor ``(..., T, p+1, n, n)`` (left-hand-side batch)."""
        return self.cholesky.lower

    @classmethod
    def from_lower(cls, lower, coefficients, steps, *, init_shape, n_steps=None,
                   weight_equation=1.0, weight_init=1.0, weight_smooth=1.0,
                   central_smoothness=False, stream=None, algorithm="auto"):
        """Rebuild a factorisation from its ``lower`` factor (as returned by ``.lower``)
        and the same arguments as :func:`smnn_factor`, without refactoring. For adapters
        that must carry the factor between forward and backward passes as an array.
        ``lower`` must be finite where read with positive diagonal pivots: ``ValueError``
        otherwise (device inputs: the system is failed in ``.status``, see
        ``bandsolve.gpu``)."""
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
    def batch_shape(self):
        return self._lhs.batch_shape

    @property
    def n_steps(self):
        return self._lhs.n_steps

    @property
    def dtype(self):
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

    def solve(self, rhs, init):
        """Solve for new ``rhs`` ``(..., T or 1, E)`` and ``init`` ``(..., Ti, D, Oi)``.

        Their batch axes broadcast against the factorisation's. Returns ``u``
        ``(..., T, D, O)``.
        """
        rhs, init, batch = self._check(rhs, init)
        x, _ = self._solve(rhs, init, batch)
        return self._shape_u(x, batch)

    def solve_vjp(self, rhs, init):
        """Like :meth:`solve`, and also return ``vjp(ubar) -> (coefficients_bar, rhs_bar,
        init_bar, steps_bar)``, each the shape of its input, reusing this factorisation."""
        rhs, init, batch = self._check(rhs, init)
        return self._solve_vjp(rhs, init, batch)

    def _solve_vjp(self, rhs, init, batch):
        x, _ = self._solve(rhs, init, batch)
        rhs = rhs.copy()  # the vjp must not see later changes to the caller's rhs or u
        return self._shape_u(x.copy(), batch), lambda ubar: self._backward(rhs, init, batch,
                                                                           x, ubar)

    def backward(self, rhs, init, u, ubar):
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
        n_lhs, n_rhs = lhs.coefficients.shape[0], rhs_flat.shape[0]
        # The kernel writes per-system gradients. With a shared left-hand side (or rhs)
        # they are summed into the input's own batch chunk by chunk, so the full batch's
        # coefficients_bar (E times the size of u) is never allocated.
        chunk = B if n_lhs == n_rhs == B else max(
            n_lhs, 1, _GRADIENT_CHUNK_ELEMENTS // max(1, lhs.coefficients[0].size))
        chunk = min(chunk, B)
        coefficients_bar = np.empty((chunk,) + lhs.coefficients.shape[1:], dtype=lhs.dtype)
        rhs_bar = np.empty((chunk,) + rhs_flat.shape[1:], dtype=lhs.dtype)
        steps_bar = np.empty((chunk, lhs.steps.shape[1]), dtype=lhs.dtype)
        sums = (coefficients_bar, rhs_bar, steps_bar)
        if chunk < B:
            sums = tuple(np.zeros((rows,) + a.shape[1:], dtype=lhs.dtype) for rows, a in
                         zip((n_lhs, n_rhs, n_lhs), sums))
        for start in range(0, B, max(chunk, 1)):
            part = slice(start, min(start + chunk, B))
            m = part.stop - start
            gradient_kernel.for_batch(m, x.shape[1])(
                lhs.coefficients, lhs.steps, lhs_index[part], rhs_flat, rhs_index[part],
                x[part], y[part], lhs.n_orders, we * we, ws * ws, lhs.central,
                coefficients_bar[:m], rhs_bar[:m], steps_bar[:m])
            if chunk < B:
                for total, index, values in zip(sums, (lhs_index, rhs_index, lhs_index),
                                                (coefficients_bar, rhs_bar, steps_bar)):
                    np.add.at(total, index[part], values[:m])
        D, O = lhs.n_dims, lhs.n_orders
        Ti, Oi = lhs.n_init_steps, lhs.n_init_orders
        if Ti * Oi:
            y4 = y.reshape(batch + (lhs.n_steps, D, O))
            init_bar = v.sum_to_shape(wi * wi * y4[..., :Ti, :, :Oi], init_shape)
        else:
            init_bar = np.zeros(init_shape, dtype=lhs.dtype)
        coefficients_bar, rhs_bar, steps_bar = sums
        # batch each sum belongs to: the full batch, or the input's own (flattened) batch
        lhs_batch = batch if chunk == B else lhs.batch_shape
        rhs_batch = batch if chunk == B else rhs_shape[:-2]
        return (v.sum_to_shape(coefficients_bar.reshape(lhs_batch + lhs.coefficients_shape[-4:]),
                               lhs.coefficients_shape),
                v.sum_to_shape(rhs_bar.reshape(rhs_batch + rhs_shape[-2:]), rhs_shape),
                init_bar,
                v.sum_to_shape(steps_bar.reshape(lhs_batch + lhs.steps_shape[-1:]),
                               lhs.steps_shape))


def smnn_factor(coefficients, steps, *, init_shape, n_steps=None, weight_equation=1.0,
                weight_init=1.0, weight_smooth=1.0, central_smoothness=False, stream=None,
                check=False, algorithm="auto"):
    """Factor the S-MNN normal matrix once, for reuse with many right-hand sides.

    Parameters
    ----------
    coefficients : ``(..., T or 1, E, D, O)``
    steps : ``(..., T-1 or 1)``, positive
    init_shape : ``(Ti, Oi)``, which entries carry initial values (``t < Ti``, ``o < Oi``);
        part of the left-hand side because they add ``weight_init**2`` to its diagonal.
    n_steps : ``T``, needed only when neither input carries it.
    stream, check, algorithm : device inputs only (``bandsolve.gpu``). ``stream``: the CUDA
        stream to run on (default: CuPy's current stream for CuPy inputs). ``check=True``
        also checks the input values and the factorisation status, which synchronises the
        device; by default a failed system's result is NaN and the failure is reported by
        ``smnn_factor(...).status``. ``algorithm``: ``"auto"``, ``"thread"`` (a thread per
        system), ``"block"`` (a thread block per system) or ``"partitioned"`` (parallel in
        time).

    Returns an :class:`SMNNFactorization` (a ``bandsolve.gpu.DeviceSMNNFactorization``,
    with a per-system ``.status``, for device inputs); ``.solve(rhs, init)`` equals
    ``smnn_solve(coefficients, rhs, init, steps, ...)``. Raises ``FactorizationError``
    naming the batch indices and time steps where the matrix is not positive definite.
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


def smnn_solve(coefficients, rhs, init, steps, *, n_steps=None, weight_equation=1.0,
               weight_init=1.0, weight_smooth=1.0, central_smoothness=False, stream=None,
               check=False, algorithm="auto"):
    """Solve the S-MNN least-squares problem (DESIGN.md section 1).

    Parameters
    ----------
    coefficients : ``(..., T or 1, E, D, O)``
        ``c[t, e, d, o]``: ODE coefficients of equation ``e`` on derivative ``o`` of ``d``.
    rhs : ``(..., T or 1, E)``
    init : ``(..., Ti, D, Oi)``, initial values for ``t < Ti``, ``o < Oi`` (``Ti`` or
        ``Oi`` may be 0).
    steps : ``(..., T-1 or 1)``, positive step sizes.
    n_steps : ``T``, needed only when no input carries it.
    weight_equation, weight_init, weight_smooth : positive row weights.
    central_smoothness : add central rows (needs ``O >= 3``; block-pentadiagonal system).
    stream, check, algorithm : device inputs only (``bandsolve.gpu``). ``stream``: the CUDA
        stream to run on (default: CuPy's current stream for CuPy inputs). ``check=True``
        also checks the input values and the factorisation status, which synchronises the
        device; by default a failed system's result is NaN and the failure is reported by
        ``smnn_factor(...).status``. ``algorithm``: ``"auto"``, ``"thread"`` (a thread per
        system), ``"block"`` (a thread block per system) or ``"partitioned"`` (parallel in
        time).

    Leading batch axes broadcast by NumPy rules; the left-hand side is factored once per
    distinct (coefficients, steps) batch element. float32 or float64.

    Returns
    -------
    u : ``(..., T, D, O)``, the inputs' dtype.

    Raises ``ValueError``/``TypeError`` for bad input (before any computation) and
    ``FactorizationError`` (a ``numpy.linalg.LinAlgError``) naming the systems and time
    steps where the normal matrix is not positive definite (on the device: only with
    ``check=True``). CuPy inputs give CuPy results; other device arrays give Numba device
    arrays; mixing host and device inputs is a ``TypeError``.
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


def smnn_solve_vjp(coefficients, rhs, init, steps, *, n_steps=None, weight_equation=1.0,
                   weight_init=1.0, weight_smooth=1.0, central_smoothness=False, stream=None,
                   check=False, algorithm="auto"):
    """:func:`smnn_solve` plus its vector-Jacobian product.

    Returns ``(u, vjp)``; ``vjp(ubar)`` with ``ubar`` ``(..., T, D, O)`` returns
    ``(coefficients_bar, rhs_bar, init_bar, steps_bar)``, each the shape of its input
    (summed over broadcast axes). The backward pass reuses the forward factorisation:
    one extra pair of substitutions and an O(T n^2) gradient sweep.
    """
    if _on_device(coefficients=coefficients, rhs=rhs, init=init, steps=steps):
        return _gpu().solve(coefficients, rhs, init, steps, n_steps=n_steps,
                            weight_equation=weight_equation, weight_init=weight_init,
                            weight_smooth=weight_smooth, central_smoothness=central_smoothness,
                            stream=stream, check=check, algorithm=algorithm, with_vjp=True)
    _host_options(stream, algorithm)
    # private copies: the vjp must not see later changes to the caller's rhs or u
    rhs = v.as_host_array("rhs", rhs).copy()
    u, factorization, backward = _solve_full(
        coefficients, rhs, init, steps, n_steps, weight_equation, weight_init,
        weight_smooth, central_smoothness)
    return u.copy(), backward


def smnn_factor_solve(coefficients, rhs, init, steps, *, n_steps=None, weight_equation=1.0,
                      weight_init=1.0, weight_smooth=1.0, central_smoothness=False,
                      stream=None, check=False, algorithm="auto"):
    """:func:`smnn_solve` that also returns the :class:`SMNNFactorization` it built.

    Returns ``(u, factorization)``: ``factorization.lower`` is the factor to keep as an
    array, and ``factorization.backward(rhs, init, u, ubar)`` the gradients later, with no
    refactorisation. For frameworks that carry residuals as arrays (the PyTorch and JAX
    adapters); on the host it takes the same fused factor-and-solve pass as
    :func:`smnn_solve`. Arguments as for :func:`smnn_solve`.
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
        factorization = SMNNFactorization(lhs, BlockCholesky._trusted(lower, lhs.batch_shape))
    else:
        factorization = _factor_lhs(lhs)
        x, _ = factorization._solve(rhs, init, batch)
    u = factorization._shape_u(x, batch)
    return u, factorization, lambda ubar: factorization._backward(rhs, init, batch, x, ubar)


def smnn_normal_equations(coefficients, rhs, init, steps, *, n_steps=None,
                          weight_equation=1.0, weight_init=1.0, weight_smooth=1.0,
                          central_smoothness=False):
    """The assembled normal equations ``M x = b`` (same arguments as :func:`smnn_solve`).

    Returns ``(M, b)``: ``M`` a :class:`BlockBanded` with the left-hand-side batch
    (bandwidth 1, or 2 with central smoothness; block size ``n = D*O``, unknown index
    ``d*O + o``) and ``b`` ``(..., T, n)`` with the full batch.
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

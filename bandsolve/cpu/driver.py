"""The host (CPU) driver of the S-MNN solve: flatten, factor, solve, backward.

Reached through ``bandsolve.smnn_solve`` and friends for NumPy inputs, after
:mod:`bandsolve._problem` has checked the inputs' structure. The left-hand side depends only
on ``coefficients``, ``steps``, the weights and which entries carry initial values, so it is
factored once per distinct left-hand side (its own, possibly smaller, batch) and broadcast
over the right-hand sides; :class:`SMNNFactorization` keeps that factorisation for reuse.
The device counterpart, with the same shape, is :mod:`bandsolve.gpu.driver`.
"""

import math

import numpy as np

from .. import _backend
from .. import _problem
from .. import _validation as v
from ..banded import BlockBanded, BlockCholesky
from ..errors import raise_if_failed
from .smnn import (
    assemble_and_factor_kernel,
    assemble_kernel,
    assemble_rhs_kernel,
    factor_and_solve_kernel,
    gradient_kernel,
)


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

    def __init__(self, problem, coefficients, steps):
        """``problem`` a :class:`bandsolve._problem.Problem`; ``coefficients`` and ``steps``
        the host arrays it describes (cast here to ``problem.dtype``)."""
        self.problem = problem
        self.coefficients_shape = problem.coefficients_shape
        self.steps_shape = problem.steps_shape
        self.n_steps = problem.n_steps
        self.n_equations, self.n_dims, self.n_orders = (
            problem.n_equations, problem.n_dims, problem.n_orders)
        self.block_size = problem.block_size
        self.n_init_steps, self.n_init_orders = problem.init_shape
        self.weights = problem.weights
        self.central = problem.central
        self.dtype = problem.dtype
        self.batch_shape = problem.lhs_batch
        n_lhs = math.prod(self.batch_shape)
        self.coefficients = _kernel_array(
            np.broadcast_to(coefficients, self.batch_shape + coefficients.shape[-4:]),
            dtype=self.dtype,
        ).reshape(n_lhs, coefficients.shape[-4], self.n_equations, self.block_size)
        self.steps = _kernel_array(
            np.broadcast_to(steps, self.batch_shape + steps.shape[-1:]), dtype=self.dtype
        ).reshape(n_lhs, steps.shape[-1])

    @property
    def bandwidth(self):
        return 2 if self.central else 1

    def kernel_scalars(self):
        return self.problem.kernel_scalars()

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



def _require_host(**arrays):
    """``TypeError`` for device arrays handed to a host factorisation."""
    for name, value in arrays.items():
        if v.is_device_array(value):
            raise TypeError(f"{name} is a device array but this factorisation lives on the "
                            "host; factor device inputs to solve on the device, or move "
                            f"{name} to the host (e.g. cupy.asnumpy)")



def _host_values(name, value):
    """A float NumPy array whose values are checked (NaN/Inf)."""
    array = v.as_host_array(name, value)
    v.check_finite(name, array)
    return array


def factor(coefficients, steps, *, init_shape, **options):
    """Host ``smnn_factor``: check, flatten and factor; returns an
    :class:`SMNNFactorization`. ``options``: ``n_steps``, the weights,
    ``central_smoothness``."""
    arrays = _problem.host_inputs(coefficients=coefficients, steps=steps)
    problem = _problem.describe_lhs(**arrays, init_shape=init_shape, **options)
    _problem.check_values(**arrays)
    return _factor_lhs(_LeftHandSide(problem, arrays["coefficients"], arrays["steps"]))


def _factor_lhs(lhs):
    lower = lhs.empty_blocks()
    info = np.zeros(lower.shape[0], dtype=np.int64)
    assemble_and_factor_kernel.for_batch(*lower.shape[:2])(
        lhs.coefficients, lhs.steps, *lhs.kernel_scalars(), lower, info)
    raise_if_failed(info, lhs.batch_shape, what="S-MNN normal matrix")
    return SMNNFactorization(lhs, BlockCholesky(lower, lhs.batch_shape))



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
        that must carry the factor between forward and backward passes as an array."""
        if _backend.on_device(lower=lower, coefficients=coefficients, steps=steps):
            return _backend.gpu_driver().from_lower(lower, coefficients, steps, init_shape=init_shape,
                                     n_steps=n_steps, weight_equation=weight_equation,
                                     weight_init=weight_init, weight_smooth=weight_smooth,
                                     central_smoothness=central_smoothness, stream=stream,
                                     algorithm=algorithm)
        _backend.host_options(stream, algorithm)
        arrays = _problem.host_inputs(coefficients=coefficients, steps=steps)
        problem = _problem.describe_lhs(
            **arrays, init_shape=init_shape, n_steps=n_steps, weight_equation=weight_equation,
            weight_init=weight_init, weight_smooth=weight_smooth,
            central_smoothness=central_smoothness)
        _problem.check_values(**arrays)
        lhs = _LeftHandSide(problem, arrays["coefficients"], arrays["steps"])
        T = problem.n_steps
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
        arrays = _problem.host_inputs(rhs=rhs, init=init)
        problem = self._lhs.problem.with_rhs(arrays["rhs"], arrays["init"])
        _problem.check_values(**arrays)
        return arrays["rhs"], arrays["init"], problem.batch

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
        return self._shape_u(x, batch), lambda ubar: self._backward(rhs, init, batch, x, ubar)

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
        u = _host_values("u", u)
        if u.shape != u_shape:
            raise ValueError(f"u must have shape {u_shape}; got {u.shape}")
        x = _kernel_array(u, dtype=lhs.dtype).reshape(-1, lhs.n_steps, lhs.block_size)
        return self._backward(rhs, init, batch, x, ubar)

    def _backward(self, rhs, init, batch, x, ubar):
        lhs = self._lhs
        u_shape = batch + (lhs.n_steps, lhs.n_dims, lhs.n_orders)
        _require_host(ubar=ubar)
        ubar = _host_values("ubar", ubar)
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


def _host_problem(coefficients, rhs, init, steps, **options):
    """Validate a full host problem (structure, then values); returns
    ``(lhs, rhs, init, batch)`` with the flattened left-hand side, rhs and init in the
    problem's dtype, and the full broadcast batch shape."""
    arrays = _problem.host_inputs(rhs=rhs, coefficients=coefficients, steps=steps, init=init)
    problem = _problem.describe(**arrays, **options)
    _problem.check_values(coefficients=arrays["coefficients"], steps=arrays["steps"],
                          rhs=arrays["rhs"], init=arrays["init"])
    lhs = _LeftHandSide(problem, arrays["coefficients"], arrays["steps"])
    rhs = arrays["rhs"].astype(problem.dtype, copy=False)
    init = arrays["init"].astype(problem.dtype, copy=False)
    return lhs, rhs, init, problem.batch


def solve(coefficients, rhs, init, steps, **options):
    """Host ``smnn_solve``: validate, factor and solve; returns
    ``(u, factorization, vjp)``. ``options``: ``n_steps``, the weights,
    ``central_smoothness``."""
    lhs, rhs, init, batch = _host_problem(coefficients, rhs, init, steps, **options)
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



def normal_equations(coefficients, rhs, init, steps, **options):
    """Host ``smnn_normal_equations``: ``(M, b)``, ``M`` a :class:`BlockBanded` with the
    left-hand-side batch, ``b`` ``(..., T, n)`` with the full batch."""
    lhs, rhs, init, batch = _host_problem(coefficients, rhs, init, steps, **options)
    blocks = lhs.empty_blocks()
    assemble_kernel.for_batch(*blocks.shape[:2])(
        lhs.coefficients, lhs.steps, *lhs.kernel_scalars(), blocks)
    matrix = BlockBanded(blocks.reshape(lhs.batch_shape + blocks.shape[1:]))
    b, *_ = lhs.assemble_rhs(rhs, init, batch)
    return matrix, b.reshape(batch + (lhs.n_steps, lhs.block_size))

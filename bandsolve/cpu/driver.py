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
from .accurate import (
    accurate_factor_kernel,
    accurate_factor_solve_kernel,
    qr_factor_kernel,
    refined_solve_kernel,
)
from ..kernels.finite import finite_rows, max_abs
from .lanes import solve as lanes
from .smnn import assemble_kernel, assemble_rhs_kernel, gradient_kernel

# VJP with a shared left-hand side: systems per gradient-kernel call (at least the lhs
# batch) chosen so one call's per-system coefficients_bar holds about this many numbers
_GRADIENT_CHUNK_ELEMENTS = 2**21

COMPUTE_DTYPE = _problem.COMPUTE_DTYPE
_SMNN_HINT = ("For an S-MNN problem this means the rows do not pin the solution down: too "
              "few initial values or coefficients (e.g. all-zero coefficients with no "
              "initial value leave a polynomial free); or the problem is singular to "
              "working precision: cond(A) beyond ~1e12 (many derivative orders with tiny "
              "steps: the Taylor rows weigh order o by h^o; bandsolve already computes in "
              "float64 whatever the inputs' dtype, so use larger steps or fewer orders), "
              "or coefficients so large that their squares overflow (rescale the "
              "equations).")



def _kernel_array(array, dtype=None):
    """``array`` as a C-contiguous, writable array for the kernels (a copy only when it is
    not already one). Numba compiles read-only arrays (e.g. ``broadcast_to`` views) as a
    separate type: normalising here keeps one compiled variant per dtype. The kernels
    never write to their inputs."""
    array = np.asarray(array, dtype=dtype)
    if not (array.flags.c_contiguous and array.flags.writeable):
        array = np.array(array, order="C", copy=True)
    return array


def _lhs_array(array, shape, private):
    """``array`` broadcast to ``shape`` as a C-contiguous float64 array: a new one if
    ``private``, if it broadcasts or if it is not one already (the broadcast view of an
    array to its own shape is read-only, which :func:`_kernel_array` would copy anyway)."""
    if private or array.shape != shape:
        return _kernel_array(np.broadcast_to(array, shape), dtype=COMPUTE_DTYPE)
    return _kernel_array(array, dtype=COMPUTE_DTYPE)


class _LeftHandSide:
    """Validated, flattened left-hand-side inputs (internal)."""

    def __init__(self, problem, coefficients, steps, private=True):
        """``problem`` a :class:`bandsolve._problem.Problem`; ``coefficients`` and ``steps``
        the host arrays it describes (cast here to float64). ``private``: always keep
        copies (a factorisation or VJP that outlives the call must not see later changes
        to the caller's arrays); else the caller's arrays themselves where they already
        are C-contiguous float64 of the full left-hand-side batch."""
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
        self.dtype = problem.dtype  # the inputs' (and results') dtype
        self.batch_shape = problem.lhs_batch
        n_lhs = math.prod(self.batch_shape)
        # (n_lhs, Tc, E, n): what the kernels read
        self.flat_coefficients_shape = (n_lhs, coefficients.shape[-4], self.n_equations,
                                        self.block_size)
        full_shape = self.batch_shape + coefficients.shape[-4:]
        if (not private and coefficients.dtype == np.float32
                and coefficients.shape == full_shape and coefficients.flags.c_contiguous):
            # float32 coefficients of the full batch stay as they are until a float64
            # kernel reads them (cast then); the lane kernels stage them without the cast
            raw = coefficients.reshape(self.flat_coefficients_shape)
            self.coefficients_from(lambda: raw.astype(COMPUTE_DTYPE))
            self.raw_coefficients = raw
        else:
            self.coefficients = _lhs_array(coefficients, full_shape, private
                                           ).reshape(self.flat_coefficients_shape)
            self.raw_coefficients = self.coefficients
        self.steps = _lhs_array(steps, self.batch_shape + steps.shape[-1:], private
                                ).reshape(n_lhs, steps.shape[-1])
        self._callers = (coefficients, steps)  # (make_private: are these still theirs?)

    _restore_coefficients = None

    @property
    def coefficients(self):
        """``(n_lhs, Tc, E, n)`` float64 (rebuilt by the function given to
        :meth:`coefficients_from` if it was dropped). ``raw_coefficients``: the same
        values, possibly still float32 and the caller's array (what the lane kernels
        stage; None once dropped)."""
        if self._coefficients is None:
            self._coefficients = self._restore_coefficients()
        return self._coefficients

    @coefficients.setter
    def coefficients(self, value):
        self._coefficients = value

    def make_private(self, coefficients=True):
        """Copy the steps (and with ``coefficients`` the coefficients) where they still are
        the caller's arrays (built with ``private=False``), so that later changes to
        those do not reach this object."""
        callers = self._callers
        if not callers:  # (private already)
            return
        if coefficients and self._coefficients is None:
            self.coefficients = self.coefficients  # (a new float64 array, cast on demand)
        elif coefficients and np.may_share_memory(self._coefficients, callers[0]):
            self._coefficients = self._coefficients.copy()
        if coefficients:
            self.raw_coefficients = self._coefficients
        if np.may_share_memory(self.steps, callers[1]):
            self.steps = self.steps.copy()
        self._callers = ()  # (no reference to the caller's arrays outlives the call)

    def coefficients_from(self, restore):
        """Drop this object's coefficients; ``restore()`` rebuilds them (the same values,
        ``(n_lhs, Tc, E, n)``) when something reads them. For a factorisation whose kernels
        keep a private copy of their own (the lanes' staged one): no second copy."""
        self._coefficients, self._restore_coefficients = None, restore
        self.raw_coefficients = None

    @property
    def bandwidth(self):
        return 2 if self.central else 1

    def kernel_scalars(self):
        return self.problem.kernel_scalars()

    def flat_rhs(self, rhs, init, batch):
        """Right-hand-side inputs flattened for the kernels, with their index maps over
        the full batch ``batch``: ``(rhs_flat, rhs_index, init_flat, init_index, lhs_index)``."""
        rhs_flat = _kernel_array(rhs, COMPUTE_DTYPE).reshape(
            (math.prod(rhs.shape[:-2]),) + rhs.shape[-2:])  # -1 fails for E = 0
        lhs_index = v.flat_batch_index(self.batch_shape, batch)
        rhs_index = v.flat_batch_index(rhs.shape[:-2], batch)
        if init.size:
            init_flat = _kernel_array(init, COMPUTE_DTYPE).reshape((-1,) + init.shape[-3:])
            init_index = v.flat_batch_index(init.shape[:-3], batch)
        else:  # no initial values: one empty row that every system points to
            init_flat = np.zeros((1, 0, self.n_dims, 0), dtype=COMPUTE_DTYPE)
            init_index = np.zeros_like(lhs_index)
        return rhs_flat, rhs_index, init_flat, init_index, lhs_index

    def assemble_rhs(self, rhs, init, batch):
        """``b`` ``(B, T, n)`` for the full batch ``batch``, and the flat rhs with the index
        maps that the gradient kernel needs: ``(b, lhs_index, rhs_flat, rhs_index)``."""
        rhs_flat, rhs_index, init_flat, init_index, lhs_index = self.flat_rhs(rhs, init, batch)
        b = np.empty((lhs_index.size, self.n_steps, self.block_size), dtype=COMPUTE_DTYPE)
        we, wi, _ = self.weights
        assemble_rhs_kernel.for_batch(*b.shape[:2])(
            self.coefficients, lhs_index, rhs_flat, rhs_index, init_flat, init_index,
            self.n_orders, float(we * we), float(wi * wi), b)
        return b, lhs_index, rhs_flat, rhs_index

    def empty_blocks(self):
        return np.empty((self.flat_coefficients_shape[0], self.n_steps, self.bandwidth + 1,
                         self.block_size, self.block_size), dtype=COMPUTE_DTYPE)



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


def factor(coefficients, steps, *, init_shape, check=None, **options):
    """Host ``smnn_factor``: check, flatten and factor; returns an
    :class:`SMNNFactorization`. ``options``: ``n_steps``, the weights,
    ``central_smoothness``; ``check`` the failure policy (default: raise)."""
    arrays = _problem.host_inputs(coefficients=coefficients, steps=steps)
    problem = _problem.describe_lhs(**arrays, init_shape=init_shape, **options)
    _problem.check_values(**arrays)
    lhs = _LeftHandSide(problem, arrays["coefficients"], arrays["steps"])
    _check_magnitudes(lhs)
    return _factor_lhs(lhs, host_check(check))


def _factor_lhs(lhs, check=True):
    lower = lhs.empty_blocks()
    info = np.zeros(lower.shape[0], dtype=np.int64)
    accurate_factor_kernel.for_batch(*lower.shape[:2])(
        lhs.coefficients, lhs.steps, *lhs.kernel_scalars(), lower, info)
    if check:
        _raise_if_failed(info, lhs.batch_shape)
    return SMNNFactorization(lhs, BlockCholesky._trusted(lower, lhs.batch_shape), info, check)


def _raise_if_failed(status, batch_shape):
    raise_if_failed(status, batch_shape, what="S-MNN normal matrix", hint=_SMNN_HINT)


def _check_magnitudes(lhs):
    """``ValueError`` naming the input whose normal-equation terms (squares of the rows'
    entries) would overflow float64: rows of that size cannot be rescaled without losing
    the others, so they are rejected rather than turned into NaN."""
    limit = 1e150  # squared and summed over a block: still far below float64's 1.8e308
    we, wi, ws = lhs.weights
    n_orders = lhs.n_orders
    # (coefficients that large make only their own systems fail: FactorizationError)
    for name, weight in (("weight_equation", we), ("weight_init", wi),
                         ("weight_smooth", ws)):
        if weight > limit:
            raise ValueError(f"{name} is {weight:.3g}: its square overflows in the normal "
                             "equations; use a smaller weight")
    if lhs.steps.size and n_orders > 1:
        largest = ws * max(1.0, float(np.max(lhs.steps))) ** (n_orders - 1)
        if largest > limit:
            raise ValueError(
                f"steps reach {float(np.max(lhs.steps)):.3g}: the Taylor rows' entries "
                f"(h^{n_orders - 1} times weight_smooth = {largest:.3g}) overflow float64 "
                "when squared; rescale time (smaller steps)")


def _rhs_scale(lhs, rhs_flat, init_flat):
    """A power of two ``s`` that brings ``we*rhs`` and ``wi*init`` below 2^400 (the
    problem is linear in them: solving for ``s*rhs, s*init`` gives ``s*u``); 1 when they
    already are."""
    we, wi, _ = lhs.weights
    exponent = -math.inf  # log2 of the largest weighted entry (w * |value| may overflow)
    for weight, values in ((we, rhs_flat), (wi, init_flat)):
        if values.size:
            largest = max_abs(values.reshape(-1))
            if largest > 0.0:
                exponent = max(exponent, math.log2(weight) + math.log2(largest))
    if exponent <= 400:
        return 1.0
    return 2.0 ** -math.ceil(exponent)





def _shape_solution(lhs, x, batch):
    """x ``(B, T, n)`` (float64, or the problem's dtype already) -> ``u`` ``(*batch, T, D, O)``
    in the problem's dtype."""
    return x.reshape(batch + (lhs.n_steps, lhs.n_dims, lhs.n_orders)).astype(
        lhs.dtype, copy=False)


class SMNNFactorization(_problem.FactorizationInfo):
    """The factored left-hand side of an S-MNN problem, reusable for many right-hand sides.

    Obtain it from :func:`smnn_factor`. Holds a float64 triangular factor ``L`` of the
    normal matrix (``M = L L^T``; ``cholesky``, a :class:`~bandsolve.BlockCholesky`, batch =
    the left-hand-side batch): the Cholesky factor of ``M``, or, for systems where that is
    not accurate enough, ``R^T`` from a QR factorisation of the rows. Solves refine with
    residuals formed from the rows, so they are as accurate as a backward-stable
    least-squares solve. Also keeps the flattened coefficients and steps needed for
    refinement and gradients. It is a plain value: keep it as long as the coefficients and
    steps are unchanged, drop it otherwise. Solving with it never changes its results.

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

    def __init__(self, lhs, cholesky, status=None, check=True):
        self._lhs = lhs
        self.cholesky = cholesky
        self._check_default = check
        self._owns_lower = True  # False: the caller's array (from_lower), copy before writing
        n_lhs = math.prod(lhs.batch_shape)
        self._info = (np.zeros(n_lhs, dtype=np.int64) if status is None
                      else np.asarray(status, dtype=np.int64).reshape(n_lhs))

    @property
    def lower(self):
        """The float64 factor ``L`` ``(..., T, p+1, n, n)`` (left-hand-side batch)."""
        return self.cholesky.lower

    @property
    def status(self):
        """Per-system status ``(...)`` int64 (left-hand-side batch): 0 for a usable factor,
        ``t + 1`` where the system is rank deficient at time step ``t``. Non-zero only
        with ``check=False``, which returns NaN for those systems instead of raising."""
        return self._info.reshape(self._lhs.batch_shape).copy()

    @classmethod
    def from_lower(cls, lower, coefficients, steps, *, init_shape, n_steps=None,
                   weight_equation=1.0, weight_init=1.0, weight_smooth=1.0,
                   central_smoothness=False, stream=None, algorithm="auto"):
        """Rebuild a factorisation from its ``lower`` factor (as returned by ``.lower``)
        and the same arguments as :func:`smnn_factor`, without refactoring. For adapters
        that must carry the factor between forward and backward passes as an array."""
        options = dict(init_shape=init_shape, n_steps=n_steps,
                       weight_equation=weight_equation, weight_init=weight_init,
                       weight_smooth=weight_smooth, central_smoothness=central_smoothness)
        device = _backend.device_call(stream, algorithm, lower=lower,
                                      coefficients=coefficients, steps=steps)
        if device is not None:
            driver, device_options = device
            return driver.from_lower(lower, coefficients, steps, **options, **device_options)
        return cls._host_from_lower(lower, coefficients, steps, **options)

    @classmethod
    def _host_from_lower(cls, lower, coefficients, steps, *, init_shape, n_steps,
                         weight_equation, weight_init, weight_smooth, central_smoothness):
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
        flat = _kernel_array(lower, dtype=COMPUTE_DTYPE).reshape((-1,) + expected[-4:])
        factorization = cls(lhs, BlockCholesky(flat, lhs.batch_shape))
        factorization._owns_lower = not np.shares_memory(factorization.cholesky._lower, lower)
        return factorization

    def __repr__(self):
        return f"SMNNFactorization({self._repr_fields()})"

    def _check(self, rhs, init):
        _require_host(rhs=rhs, init=init)
        arrays = _problem.host_inputs(rhs=rhs, init=init)
        problem = self._lhs.problem.with_rhs(arrays["rhs"], arrays["init"])
        _problem.check_values(**arrays)
        return arrays["rhs"], arrays["init"], problem.batch

    def _solve(self, rhs, init, batch, check=True):
        """``x`` ``(B, T, n)`` float64 (NaN for failed systems) and its per-system status."""
        lhs = self._lhs
        rhs_flat, rhs_index, init_flat, init_index, lhs_index = lhs.flat_rhs(rhs, init, batch)
        scale = _rhs_scale(lhs, rhs_flat, init_flat)
        if scale != 1.0:
            rhs_flat, init_flat = rhs_flat * scale, init_flat * scale
        x = np.empty((lhs_index.size, lhs.n_steps, lhs.block_size), dtype=COMPUTE_DTYPE)
        status = self._refined(rhs_flat, rhs_index, init_flat, init_index, lhs_index, x)
        if scale != 1.0:
            x /= scale
            status = self._overflowed(x, status)
        if check:
            _raise_if_failed(status, batch)
        return x, status

    @staticmethod
    def _overflowed(x, status):
        bad = ~np.isfinite(x).reshape(x.shape[0], -1).all(axis=1) & (status == 0)
        if bad.any():
            raise ValueError("the solution overflows float64: rhs/init are too large for "
                             "this system; rescale them")
        return status

    def _refined(self, rhs_flat, rhs_index, init_flat, init_index, lhs_index, x,
                 extra=None):
        """Solve (``extra`` None: the least-squares problem of rhs/init; else ``M y =
        extra``) into x with refinement; systems whose refinement does not converge with
        a Cholesky factor get the row QR factor and are solved again. Returns the status
        ``(B,)``: 0, the left-hand side's failure code, or -1 (not converged)."""
        lhs = self._lhs
        lower = self.cholesky._lower
        with_beta = extra is None
        extra_array = np.zeros((1, 1, 1)) if with_beta else extra
        status = np.zeros(x.shape[0], dtype=np.int64)
        refined_solve_kernel.for_batch(*x.shape[:2])(
            lhs.coefficients, lhs.steps, lhs_index, rhs_flat, rhs_index, init_flat,
            init_index, *lhs.kernel_scalars(), with_beta, extra_array, lower, x, status)
        lhs_failed = self._info[lhs_index] != 0
        retry = np.flatnonzero((status != 0) & ~lhs_failed)
        if retry.size:
            if not self._owns_lower:  # never write into the caller's factor
                self.cholesky = BlockCholesky._trusted(lower.copy(), lhs.batch_shape)
                lower = self.cholesky._lower
                self._owns_lower = True
            which = np.unique(lhs_index[retry])
            info = np.zeros(which.size, dtype=np.int64)
            qr_factor_kernel.for_batch(which.size, lhs.n_steps)(
                lhs.coefficients, lhs.steps, *lhs.kernel_scalars(), lower, which, info)
            self._info[which] = info
            again = np.zeros(retry.size, dtype=np.int64)
            sub_x = np.empty((retry.size,) + x.shape[1:], dtype=COMPUTE_DTYPE)
            sub_extra = extra_array if with_beta else np.ascontiguousarray(extra[retry])
            refined_solve_kernel.for_batch(*sub_x.shape[:2])(
                lhs.coefficients, lhs.steps, lhs_index[retry], rhs_flat, rhs_index[retry],
                init_flat, init_index[retry], *lhs.kernel_scalars(), with_beta, sub_extra,
                lower, sub_x, again)
            x[retry] = sub_x
            status[retry] = again
            lhs_failed = self._info[lhs_index] != 0
        status[lhs_failed] = self._info[lhs_index[lhs_failed]]
        x[status != 0] = np.nan
        return status

    def _shape_u(self, x, batch):
        return _shape_solution(self._lhs, x, batch)

    def solve(self, rhs, init, *, check=None):
        """Solve for new ``rhs`` ``(..., T or 1, E)`` and ``init`` ``(..., Ti, D, Oi)``.

        Their batch axes broadcast against the factorisation's. Returns ``u``
        ``(..., T, D, O)``. ``check=False``: NaN in the slices of failed systems instead of
        ``FactorizationError`` (default: the policy this factorisation was made with).
        """
        rhs, init, batch = self._check(rhs, init)
        x, _ = self._solve(rhs, init, batch, check=self._policy(check))
        return self._shape_u(x, batch)

    def solve_vjp(self, rhs, init, *, check=None):
        """Like :meth:`solve`, and also return ``vjp(ubar) -> (coefficients_bar, rhs_bar,
        init_bar, steps_bar)``, each the shape of its input, reusing this factorisation."""
        rhs, init, batch = self._check(rhs, init)
        return self._solve_vjp(rhs, init, batch, self._policy(check))

    def _policy(self, check):
        return self._check_default if check is None else host_check(check)

    def _solve_vjp(self, rhs, init, batch, check=True):
        x, _ = self._solve(rhs, init, batch, check=check)
        rhs = rhs.copy()  # the vjp must not see later changes to the caller's rhs or u
        return self._shape_u(x.copy(), batch), lambda ubar: self._backward(rhs, init, batch,
                                                                           x, ubar)

    def backward(self, rhs, init, u, ubar):
        """Gradients from a solution computed earlier, for frameworks that keep residuals
        as arrays (the PyTorch and JAX adapters): ``u = self.solve(rhs, init)``.

        Returns ``(coefficients_bar, rhs_bar, init_bar, steps_bar)`` of ``sum(ubar * u)``,
        each the shape of its input. No refactorisation: two substitutions and an
        O(T n^2) gradient sweep. A float32 ``u`` is not used as the solution: the
        gradient multiplies it into the equations' residual ``c.u - r``, which cancels,
        so float32 rounding of ``u`` would show in the gradient amplified by up to
        ``cond(M)``; the float64 solution is solved again from ``rhs`` and ``init``
        instead (``u`` is still checked).
        """
        rhs, init, batch = self._check(rhs, init)
        lhs = self._lhs
        u_shape = batch + (lhs.n_steps, lhs.n_dims, lhs.n_orders)
        _require_host(u=u)
        u = _host_values("u", u)
        if u.shape != u_shape:
            raise ValueError(f"u must have shape {u_shape}; got {u.shape}")
        if u.dtype == COMPUTE_DTYPE:
            x = _kernel_array(u).reshape(-1, lhs.n_steps, lhs.block_size)
        else:
            x, _ = self._solve(rhs, init, batch, False)  # failed systems: NaN, as u
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
        # y = M^{-1} ubar in place, refined like the forward solve (residual ubar - A^T A y),
        # in the calling thread's reusable scratch: y is a temporary of this call (the
        # gradients are new arrays), and a fresh u-sized array costs its page faults
        y = lanes.scratch("vjp_y", x.shape)
        np.copyto(y.reshape(u_shape), ubar)
        rhs_flat, rhs_index, init_flat, init_index, lhs_index = lhs.flat_rhs(rhs, init, batch)
        status = self._refined(rhs_flat, rhs_index, init_flat, init_index, lhs_index, y,
                               extra=y)
        forward_failed = ~finite_rows(x) if x.flags.c_contiguous else (
            ~np.isfinite(x).reshape(x.shape[0], -1).all(axis=1))
        if (status[~forward_failed] != 0).any():
            _raise_if_failed(np.where(forward_failed, 0, status), batch)
        y[forward_failed] = np.nan  # check=False: NaN gradients for the failed systems
        return self._gradients(x, y, batch, lhs_index, rhs_flat, rhs_index,
                               rhs.shape, init.shape)

    def _gradient_part(self, x, y, lhs_index, rhs_flat, rhs_index, part, coefficients_bar,
                       rhs_bar, steps_bar):
        """Per-system gradients of the systems ``part`` (a slice of the full batch) into
        coefficients_bar ``(m, Tc, E, n)``, rhs_bar ``(m, Tr, E)``, steps_bar ``(m, Th)``."""
        lhs = self._lhs
        we, _, ws = lhs.weights
        gradient_kernel.for_batch(coefficients_bar.shape[0], x.shape[1])(
            lhs.coefficients, lhs.steps, lhs_index[part], rhs_flat, rhs_index[part],
            x[part], y[part], lhs.n_orders, we * we, ws * ws, lhs.central,
            coefficients_bar, rhs_bar, steps_bar)

    def _gradients(self, x, y, batch, lhs_index, rhs_flat, rhs_index, rhs_shape, init_shape):
        lhs = self._lhs
        B = x.shape[0]
        we, wi, ws = lhs.weights
        n_lhs, n_rhs = lhs.flat_coefficients_shape[0], rhs_flat.shape[0]
        # The kernel writes per-system gradients. With a shared left-hand side (or rhs)
        # they are summed into the input's own batch chunk by chunk, so the full batch's
        # coefficients_bar (E times the size of u) is never allocated.
        chunk = B if n_lhs == n_rhs == B else max(
            n_lhs, 1, _GRADIENT_CHUNK_ELEMENTS // max(1, math.prod(
                lhs.flat_coefficients_shape[1:])))
        chunk = min(chunk, B)
        coefficients_bar = np.empty((chunk,) + lhs.flat_coefficients_shape[1:],
                                    dtype=COMPUTE_DTYPE)
        rhs_bar = np.empty((chunk,) + rhs_flat.shape[1:], dtype=COMPUTE_DTYPE)
        steps_bar = np.empty((chunk, lhs.steps.shape[1]), dtype=COMPUTE_DTYPE)
        sums = (coefficients_bar, rhs_bar, steps_bar)
        if chunk < B:
            sums = tuple(np.zeros((rows,) + a.shape[1:], dtype=COMPUTE_DTYPE) for rows, a in
                         zip((n_lhs, n_rhs, n_lhs), sums))
        for start in range(0, B, max(chunk, 1)):
            part = slice(start, min(start + chunk, B))
            m = part.stop - start
            self._gradient_part(x, y, lhs_index, rhs_flat, rhs_index, part,
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
        grads = (v.sum_to_shape(coefficients_bar.reshape(lhs_batch + lhs.coefficients_shape[-4:]),
                                lhs.coefficients_shape),
                 v.sum_to_shape(rhs_bar.reshape(rhs_batch + rhs_shape[-2:]), rhs_shape),
                 init_bar,
                 v.sum_to_shape(steps_bar.reshape(lhs_batch + lhs.steps_shape[-1:]),
                                lhs.steps_shape))
        return tuple(g.astype(lhs.dtype, copy=False) for g in grads)


class _HostFactorOnDemand(SMNNFactorization):
    """An :class:`SMNNFactorization` whose factor lives in the lane kernels' layout: the
    host block layout (``cholesky``) is made by :meth:`_host_cholesky_now` only when
    something asks for it (``lower``, new right-hand sides, systems the lanes could not
    solve)."""

    _host_cholesky = None

    @property
    def cholesky(self):
        if self._host_cholesky is None:
            self._host_cholesky = self._host_cholesky_now()
        return self._host_cholesky

    @cholesky.setter
    def cholesky(self, value):
        if value is not None:
            self._host_cholesky = value

    def _lanes_then_host(self, ok, redo_extra, rhs_flat, rhs_index, init_flat, init_index,
                         lhs_index, x):
        """x holding the lanes' solution of ``M x = extra``: the systems not ``ok``
        ``(B,)`` solved again by the host factorisation (their rows of ``extra``,
        ``redo_extra``); returns the status ``(B,)``."""
        redo = np.flatnonzero(~ok)
        status = np.zeros(x.shape[0], dtype=np.int64)
        if redo.size:
            redo_x = redo_extra.copy()
            status[redo] = SMNNFactorization._refined(
                self, rhs_flat, rhs_index[redo], init_flat, init_index[redo],
                lhs_index[redo], redo_x, redo_extra)
            x[redo] = redo_x
        return status


class _LaneFactorization(_HostFactorOnDemand):
    """The factorisation made by the lane kernels (one right-hand side per system): the
    VJP's second solve ``M y = ubar`` and its gradient sums run in their layout
    (:class:`bandsolve.cpu.lanes.solve.LaneFactor`)."""

    def __init__(self, lhs, lane_factor, status, check):
        self._lane_factor = lane_factor
        self._lanes_hold_y = False  # the last M y = ubar was solved in the lanes, all of it
        super().__init__(lhs, None, status, check)

    def _host_cholesky_now(self):
        return BlockCholesky._trusted(self._lane_factor.lower(), self._lhs.batch_shape)

    def _gradient_part(self, x, y, lhs_index, rhs_flat, rhs_index, part, coefficients_bar,
                       rhs_bar, steps_bar):
        n = self._lhs.flat_coefficients_shape[0]
        whole = (part.start == 0 and part.stop == n == x.shape[0] == rhs_flat.shape[0]
                 and np.array_equal(lhs_index, np.arange(n))
                 and np.array_equal(rhs_index, np.arange(n)))
        if whole and self._lanes_hold_y and not self._lane_factor.failed.size:
            # x and y are still in the lanes' layout there: the VJP's sums in the lanes
            self._lane_factor.gradients(coefficients_bar, rhs_bar, steps_bar)
            return
        super()._gradient_part(x, y, lhs_index, rhs_flat, rhs_index, part,
                               coefficients_bar, rhs_bar, steps_bar)

    def _refined(self, rhs_flat, rhs_index, init_flat, init_index, lhs_index, x,
                 extra=None):
        n_lhs = self._lhs.flat_coefficients_shape[0]
        if (extra is None or x.shape[0] != n_lhs
                or not np.array_equal(lhs_index, np.arange(n_lhs))):
            return super()._refined(rhs_flat, rhs_index, init_flat, init_index, lhs_index,
                                    x, extra)
        ok, redo_extra = self._lane_factor.solve(extra, x)  # (x may be extra)
        self._lanes_hold_y = bool(ok.all())
        return self._lanes_then_host(ok, redo_extra, rhs_flat, rhs_index, init_flat,
                                     init_index, lhs_index, x)


def _host_problem(coefficients, rhs, init, steps, private=True, defer_coefficients=False,
                  **options):
    """Validate a full host problem (structure, then values); returns
    ``(lhs, rhs, init, batch)`` with the flattened left-hand side, rhs and init in the
    problem's dtype, and the full broadcast batch shape. ``private``: see
    :class:`_LeftHandSide`.

    ``defer_coefficients``: the finiteness of ``coefficients`` (the largest input) is not
    checked here; returns ``(lhs, rhs, init, batch, check_coefficients)``, the last a
    function that raises the check's ``ValueError`` (or returns), for the caller to run
    before any solve kernel (the lane kernels' staging tests it on the way)."""
    arrays = _problem.host_inputs(rhs=rhs, coefficients=coefficients, steps=steps, init=init)
    problem = _problem.describe(**arrays, **options)
    values = dict(coefficients=arrays["coefficients"], steps=arrays["steps"],
                  rhs=arrays["rhs"], init=arrays["init"])
    if defer_coefficients:
        deferred = values.pop("coefficients")
    _problem.check_values(**values)
    lhs = _LeftHandSide(problem, arrays["coefficients"], arrays["steps"], private)
    rhs = arrays["rhs"].astype(problem.dtype, copy=False)
    init = arrays["init"].astype(problem.dtype, copy=False)
    if defer_coefficients:
        return lhs, rhs, init, problem.batch, lambda: _problem.check_values(
            coefficients=deferred)
    return lhs, rhs, init, problem.batch


def host_check(check):
    """The host's failure policy: ``check=None`` (the default) raises."""
    if check is None:
        return True
    if not isinstance(check, (bool, np.bool_)):
        raise TypeError(f"check must be True, False or None; got {check!r}")
    return bool(check)


def solve(coefficients, rhs, init, steps, *, with_vjp, check=None, **options):
    """Host ``smnn_solve`` (``with_vjp=False``: returns ``u``) and ``smnn_solve_vjp``
    (returns ``(u, vjp)``). ``options``: ``n_steps``, the weights,
    ``central_smoothness``; ``check`` the failure policy (default: raise)."""
    if with_vjp:  # private copies: the vjp must not see later changes to rhs or u
        rhs = v.as_host_array("rhs", rhs).copy()
    u, _, backward = _solve(coefficients, rhs, init, steps, check=check,
                            forward_only=not with_vjp, **options)
    return (u.copy(), backward) if with_vjp else u


def factor_solve(coefficients, rhs, init, steps, *, check=None, **options):
    """``(u, factorization)`` from the same fused pass as :func:`solve` (the adapters keep
    the factorisation for their backward pass)."""
    u, factorization, _ = _solve(coefficients, rhs, init, steps, check=check, **options)
    return u, factorization


def _solve(coefficients, rhs, init, steps, *, check=None, forward_only=False, **options):
    """Validate, factor and solve; returns ``(u, factorization, vjp)``.

    ``forward_only``: only ``u`` is wanted; large enough batches then go through the SIMD
    lane kernels (:mod:`bandsolve.cpu.lanes`), which keep no reusable factor
    (factorization and vjp are then None)."""
    check = host_check(check)
    # a forward-only solve keeps nothing past the call: no private copies of the inputs;
    # the lanes' kept factor keeps staged copies of its own (make_private otherwise)
    lhs, rhs, init, batch, check_coefficients = _host_problem(
        coefficients, rhs, init, steps, private=False, defer_coefficients=True, **options)
    _check_magnitudes(lhs)
    T = lhs.n_steps
    rhs_flat, rhs_index, init_flat, init_index, lhs_index = lhs.flat_rhs(rhs, init, batch)
    unscaled = _rhs_scale(lhs, rhs_flat, init_flat) == 1.0
    fused = batch == lhs.batch_shape and unscaled
    in_lanes = fused and lanes.applies(lhs, math.prod(batch))
    if not in_lanes:
        check_coefficients()  # (the lane solve checks them as it stages them)
    if not forward_only:  # (where the lanes keep their factor, they keep the coefficients)
        lhs.make_private(coefficients=not in_lanes)
    if not fused and unscaled and lanes.applies_shared(lhs, math.prod(batch)):
        x, factorization = _shared_lane_solve(lhs, rhs_flat, rhs_index, init_flat,
                                              init_index, lhs_index, batch, check)
        if forward_only:
            return _shape_solution(lhs, x, batch), None, None
    elif in_lanes and forward_only:
        x, info = lanes.lane_solve(lhs, rhs_flat, rhs_index, init_flat, init_index,
                                   check_coefficients=check_coefficients,
                                   out_dtype=lhs.dtype)
        if check:
            _raise_if_failed(info, lhs.batch_shape)
        return _shape_solution(lhs, x, batch), None, None
    elif in_lanes:
        x, info, lane_factor = lanes.lane_solve(lhs, rhs_flat, rhs_index, init_flat,
                                                init_index, keep=True,
                                                check_coefficients=check_coefficients)
        if check:
            _raise_if_failed(info, lhs.batch_shape)
        # the lanes hold the coefficients staged: the private copy is rebuilt from them
        # only when a host kernel needs it (lower(), new right-hand sides, failed systems)
        # (the function must not hold lhs: a reference cycle would keep the factor's
        # buffers from going back to the lanes' pool until the cyclic collector runs)
        shape = lhs.flat_coefficients_shape
        lhs.coefficients_from(lambda: lane_factor.coefficients().reshape(shape))
        factorization = _LaneFactorization(lhs, lane_factor, np.maximum(info, 0), check)
    elif fused:
        # one right-hand side per left-hand side: factor, solve and refine each system in
        # one pass while its factor is still in cache
        lower = lhs.empty_blocks()
        info = np.zeros(lower.shape[0], dtype=np.int64)
        x = np.empty((lower.shape[0], T, lhs.block_size), dtype=COMPUTE_DTYPE)
        accurate_factor_solve_kernel.for_batch(*lower.shape[:2])(
            lhs.coefficients, lhs.steps, rhs_flat, rhs_index, init_flat, init_index,
            *lhs.kernel_scalars(), lower, info, x)
        if check:
            _raise_if_failed(info, lhs.batch_shape)
        factorization = SMNNFactorization(lhs, BlockCholesky._trusted(lower, lhs.batch_shape),
                                          np.maximum(info, 0), check)
    else:
        factorization = _factor_lhs(lhs, check)
        x, _ = factorization._solve(rhs, init, batch, check)
    u = factorization._shape_u(x, batch)
    return u, factorization, lambda ubar: factorization._backward(rhs, init, batch, x, ubar)


def _shared_lane_solve(lhs, rhs_flat, rhs_index, init_flat, init_index, lhs_index, batch,
                       check):
    """``(x, factorization)``: x ``(B, T, n)`` of right-hand sides sharing left-hand
    sides by the lane kernels, and a :class:`_SharedLaneFactorization` for what comes
    after (the VJP, new right-hand sides). The systems the lanes could not solve (a
    left-hand side failing the pivot test, or a refinement failing) are solved by the
    host factorisation (row-QR fallback included), with the host path's errors and NaN."""
    x, lane_status = lanes.shared_lane_solve(lhs, rhs_flat, rhs_index, init_flat,
                                             init_index, lhs_index)
    factorization = _SharedLaneFactorization(lhs, check)
    retry = np.flatnonzero(lane_status != lanes.CONVERGED)
    status = np.zeros(x.shape[0], dtype=np.int64)
    if retry.size:
        sub_x = np.empty((retry.size,) + x.shape[1:], dtype=COMPUTE_DTYPE)
        status[retry] = factorization._refined(rhs_flat, rhs_index[retry], init_flat,
                                               init_index[retry], lhs_index[retry], sub_x)
        x[retry] = sub_x
    if check:
        _raise_if_failed(status, batch)
    return x, factorization


class _SharedLaneFactorization(_HostFactorOnDemand):
    """The factorisation behind right-hand sides solved by the shared-left-hand-side lane
    kernels: the host factorisation, made when something needs it (systems the lanes
    could not solve, the VJP, ``lower``, new right-hand sides), with the host path's
    errors (``check``). (The VJP's second solve stays on the host: in the lanes it would
    hold three more arrays the size of u.)"""

    def __init__(self, lhs, check):
        super().__init__(lhs, None, None, check)

    def _host_cholesky_now(self):
        host = _factor_lhs(self._lhs, self._check_default)
        self._info = host._info
        return host.cholesky


def normal_equations(coefficients, rhs, init, steps, **options):
    """Host ``smnn_normal_equations``: ``(M, b)``, ``M`` a :class:`BlockBanded` with the
    left-hand-side batch, ``b`` ``(..., T, n)`` with the full batch."""
    lhs, rhs, init, batch = _host_problem(coefficients, rhs, init, steps, **options)
    blocks = lhs.empty_blocks()
    assemble_kernel.for_batch(*blocks.shape[:2])(
        lhs.coefficients, lhs.steps, *lhs.kernel_scalars(), blocks)
    # assembled in float64 like the solve; returned in the inputs' dtype
    matrix = BlockBanded(blocks.reshape(lhs.batch_shape + blocks.shape[1:]).astype(
        lhs.dtype, copy=False))
    b, *_ = lhs.assemble_rhs(rhs, init, batch)
    return matrix, b.reshape(batch + (lhs.n_steps, lhs.block_size)).astype(lhs.dtype,
                                                                          copy=False)

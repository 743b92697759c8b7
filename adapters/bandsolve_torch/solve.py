"""Differentiable S-MNN solves on tensors: :func:`smnn_solve` and :class:`FrozenLHS`."""

import functools

import torch

import bandsolve
from bandsolve import _validation

from . import _ops


def _same_dtype_and_device(**tensors):
    """The tensors promoted to one floating dtype (autograd casts the gradients back);
    ``TypeError`` for non-tensors or tensors on different devices."""
    for name, tensor in tensors.items():
        if not isinstance(tensor, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor; got {type(tensor).__name__} "
                            f"(convert with torch.as_tensor)")
        if not tensor.dtype.is_floating_point:
            # no silent promotion of integer (or complex) tensors, as in the core
            raise TypeError(f"{name} has dtype {tensor.dtype}; bandsolve works in float32 or "
                            f"float64 (convert with .to(torch.float64) or .to(torch.float32))")
    devices = {name: t.device for name, t in tensors.items()}
    if len(set(devices.values())) > 1:
        listing = ", ".join(f"{name} on {device}" for name, device in devices.items())
        raise TypeError(f"inputs must be on one device; got {listing} (move them with .to(device))")
    dtype = functools.reduce(torch.promote_types, (t.dtype for t in tensors.values()))
    return [t.to(dtype) for t in tensors.values()]


def _options(n_steps, weight_equation, weight_init, weight_smooth, central_smoothness):
    """Custom-op arguments as plain Python scalars, checked by the core's rules (weights
    real and positive, the flag a bool, n_steps a true int)."""
    return (None if n_steps is None else _validation.check_count("n_steps", n_steps, 1),
            _validation.check_weight("weight_equation", weight_equation),
            _validation.check_weight("weight_init", weight_init),
            _validation.check_weight("weight_smooth", weight_smooth),
            _validation.check_flag("central_smoothness", central_smoothness))


def smnn_solve(coefficients, rhs, init, steps, *, n_steps=None, weight_equation=1.0,
               weight_init=1.0, weight_smooth=1.0, central_smoothness=False):
    """The S-MNN least-squares solve (``bandsolve.smnn_solve``) on tensors, differentiable
    in all four inputs.

    Parameters
    ----------
    coefficients : ``(..., T or 1, E, D, O)``
    rhs : ``(..., T or 1, E)``
    init : ``(..., Ti, D, Oi)`` (``Ti`` or ``Oi`` may be 0)
    steps : ``(..., T-1 or 1)``, positive
    n_steps, weight_equation, weight_init, weight_smooth, central_smoothness :
        as in ``bandsolve.smnn_solve`` (Python scalars; the weights are constants, not
        differentiated).

    Returns ``u`` ``(..., T, D, O)`` with the inputs' (promoted) dtype on their device.
    Leading batch axes broadcast; gradients are summed back to each input's shape. CPU
    tensors are solved by the NumPy core without copies, CUDA tensors by the GPU backend
    on PyTorch's current stream. Works under ``torch.compile(fullgraph=True)`` and the
    ``torch.func`` transforms ``vmap`` (a mapped axis becomes one more batch axis of a
    single core call), ``grad``, ``vjp`` and ``jacrev``, in any nesting. First derivatives
    only (no double backward, no forward mode). Raises the
    core's ``ValueError``/``TypeError`` for bad input and ``bandsolve.FactorizationError``
    when the normal matrix is not positive definite. CUDA tensors follow the GPU
    backend's contract instead: shapes and dtypes are checked, values are not (that would
    synchronise), and a system whose factorisation fails comes back as NaN.

    For coefficients and steps that stay fixed across many calls, :class:`FrozenLHS`
    factors them once.
    """
    tensors = _same_dtype_and_device(coefficients=coefficients, rhs=rhs, init=init,
                                     steps=steps)
    u, _ = _ops.SMNNSolve.apply(*tensors, *_options(
        n_steps, weight_equation, weight_init, weight_smooth, central_smoothness))
    return u


class FrozenLHS:
    """A factored left-hand side (coefficients and steps), reused for many right-hand sides.

    ``FrozenLHS(coefficients, steps, init_shape=(Ti, Oi), ...)`` factors the normal matrix
    once; ``.solve(rhs, init)`` then equals ``smnn_solve(coefficients, rhs, init, steps,
    ...)``, costs only substitutions, and is differentiable in ``rhs`` and ``init``. This is
    the frozen left-hand side of the Lorenz experiment: coefficients fixed, many
    right-hand sides, possibly with a larger batch (the factor broadcasts).

    Parameters
    ----------
    coefficients : ``(..., T or 1, E, D, O)``, must not require grad
    steps : ``(..., T-1 or 1)``, positive, must not require grad
    init_shape : ``(Ti, Oi)`` of the ``init`` that :meth:`solve` will receive (which
        entries carry initial values is part of the left-hand side).
    n_steps, weight_equation, weight_init, weight_smooth, central_smoothness :
        as in :func:`smnn_solve`.

    Invalidation: there is no cache to invalidate. The object is a value holding copies
    of ``coefficients`` and ``steps`` and their factor ``lower``
    ``(lhs_batch..., T, p+1, D*O, D*O)``, so later in-place changes to the tensors you
    passed never make it stale; when the coefficients or steps change (for example after
    an optimiser step), build a new ``FrozenLHS``, and drop the object to free it.
    Raises ``bandsolve.FactorizationError`` at construction if the matrix is not positive
    definite.
    """

    def __init__(self, coefficients, steps, *, init_shape, n_steps=None, weight_equation=1.0,
                 weight_init=1.0, weight_smooth=1.0, central_smoothness=False):
        for name, tensor in (("coefficients", coefficients), ("steps", steps)):
            if isinstance(tensor, torch.Tensor) and tensor.requires_grad:
                raise ValueError(
                    f"{name} requires grad, but a FrozenLHS is not differentiable in it; pass "
                    f"{name}.detach() to freeze it, or use bandsolve_torch.smnn_solve")
        coefficients, steps = _same_dtype_and_device(coefficients=coefficients, steps=steps)
        self.coefficients = coefficients.detach().clone()
        self.steps = steps.detach().clone()
        self.options = _options(n_steps, weight_equation, weight_init, weight_smooth,
                                central_smoothness)
        self.init_shape = _validation.check_init_shape(init_shape)
        with _ops._current_stream(self.device):
            factorization = bandsolve.smnn_factor(
                _ops._to_core(self.coefficients), _ops._to_core(self.steps),
                init_shape=self.init_shape,
                n_steps=n_steps, weight_equation=weight_equation, weight_init=weight_init,
                weight_smooth=weight_smooth, central_smoothness=central_smoothness)
            self.lower = _ops._lower_from_core(factorization.lower, self.device)

    @property
    def dtype(self):
        return self.coefficients.dtype

    @property
    def device(self):
        return self.coefficients.device

    def __repr__(self):
        return (f"FrozenLHS(coefficients={tuple(self.coefficients.shape)}, "
                f"steps={tuple(self.steps.shape)}, lower={tuple(self.lower.shape)}, "
                f"dtype={self.dtype}, device={self.device})")

    def solve(self, rhs, init):
        """``u`` ``(..., T, D, O)`` for ``rhs`` ``(..., T or 1, E)`` and ``init``
        ``(..., Ti, D, Oi)`` (the ``init_shape`` given at construction), differentiable in
        both. They must have this object's dtype and device; batch axes broadcast against
        the factor's."""
        for name, tensor in (("rhs", rhs), ("init", init)):
            if not isinstance(tensor, torch.Tensor):
                raise TypeError(f"{name} must be a torch.Tensor; got {type(tensor).__name__}")
            if tensor.dtype != self.dtype or tensor.device != self.device:
                raise TypeError(f"{name} is {tensor.dtype} on {tensor.device}; this FrozenLHS "
                                f"is {self.dtype} on {self.device} (use .to(...))")
        Ti, Oi = self.init_shape
        given = (init.shape[-3], init.shape[-1]) if init.dim() >= 3 else None
        if given != (Ti, Oi) and not (Ti * Oi == 0 and init.numel() == 0):
            # The factor depends on which entries carry initial values: a different
            # init_shape would silently use the wrong factor.
            raise ValueError(f"init must have shape (..., {Ti}, D, {Oi}) (the init_shape this "
                             f"FrozenLHS was built for); got {tuple(init.shape)}")
        return _ops.SMNNSolveFactored.apply(self.coefficients, rhs, init, self.steps,
                                            self.lower, *self.options)

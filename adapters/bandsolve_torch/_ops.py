"""The S-MNN solve as PyTorch custom operators (no mathematics here: arrays in, core out).

Three operators, registered under the ``bandsolve`` namespace with
:func:`torch.library.custom_op` so that they pass :func:`torch.library.opcheck` and trace
under ``torch.compile(fullgraph=True)``:

``bandsolve::smnn_solve(coefficients, rhs, init, steps, ...) -> (u, lower)``
    factor and solve; ``lower`` is the block Cholesky factor
    ``(lhs_batch..., T, p+1, n, n)``, returned only so that autograd can save it.
``bandsolve::smnn_solve_factored(coefficients, rhs, init, steps, lower, ...) -> u``
    solve with a factor computed earlier (the frozen left-hand side).
``bandsolve::smnn_solve_backward(coefficients, rhs, init, steps, lower, u, ubar, ...)
-> (coefficients_bar, rhs_bar, init_bar, steps_bar)``
    the vector-Jacobian product from the saved solution and factor, no refactorisation.

Each operator has a batching rule for ``torch.func.vmap`` (the mapped axis becomes a
leading batch axis of one core call). ``SMNNSolve`` and ``SMNNSolveFactored`` wrap the
operators as ``torch.autograd.Function``s, which is what ``torch.func.grad`` needs; the
public functions call those.

Every operator takes the options ``n_steps`` (int or None), ``weight_equation``,
``weight_init``, ``weight_smooth`` (floats) and ``central_smoothness`` (bool) last.

CPU tensors reach the NumPy core by zero-copy DLPack (``numpy.from_dlpack``) and results
come back by ``torch.from_numpy``. CUDA tensors are handed to the core as CuPy arrays
(``cupy.from_dlpack``) with CuPy's current stream set to PyTorch's current stream, so the
GPU backend runs in PyTorch's stream order with no host round trip; cupy is imported only
on that path, which this repository's CPU tests cannot reach (the GPU issue's device script
exercises it). Only first derivatives are supported (the backward operator has no
autograd formula of its own).
"""

import contextlib
from typing import Optional

import numpy as np
import torch
from torch import Tensor

import bandsolve
from bandsolve import _adapters


# --------------------------------------------------------------------------- array moves

def _to_core(tensor):
    """The tensor as an array the core accepts, sharing its memory (no copy)."""
    tensor = tensor.detach()
    if tensor.device.type == "cuda":
        import cupy  # only CUDA tensors need it
        return cupy.from_dlpack(tensor)
    return np.from_dlpack(tensor)


def _from_core(array, device):
    """A core result (NumPy or CuPy array) as a contiguous tensor on ``device``."""
    if device.type == "cuda":
        return torch.from_dlpack(array).contiguous()
    array = np.ascontiguousarray(array)
    if not array.flags.writeable:
        # a factorisation's read-only .lower, handed over: the tensor is its only user
        array = array.view()
        array.flags.writeable = True
    return torch.from_numpy(array)


def _lower_from_core(lower, device):
    """The factor as a tensor with the core's strides on CUDA: the thread kernels' factor is
    a strided view (system index innermost) that ``from_lower`` takes back as it is, so
    neither direction copies it. Its strides are those :func:`_lower_strides` predicts."""
    if device.type == "cuda":
        return torch.from_dlpack(lower)
    return _from_core(lower, device)


def _lower_strides(lower_shape, lhs_batch, device):
    """Element strides of the factor the operator returns (what the fake must declare):
    C order, except on CUDA for blocks the thread kernels factor (n <= 12)."""
    n = lower_shape[-1]
    if device.type != "cuda":
        return None
    from bandsolve.gpu import config  # CUDA only: imports numba.cuda
    from bandsolve.gpu.driver import thread_lower_strides

    if n > config.THREAD_MAX_BLOCK_SIZE:
        return None
    return thread_lower_strides(tuple(lower_shape), tuple(lhs_batch), 1)  # itemsize 1: elements


@contextlib.contextmanager
def _current_stream(device):
    """On CUDA, make PyTorch's current stream CuPy's current stream for the core call."""
    if device.type != "cuda":
        yield
        return
    import cupy
    stream = torch.cuda.current_stream(device)
    with cupy.cuda.Device(device.index), cupy.cuda.ExternalStream(stream.cuda_stream):
        yield


def _factor_n_steps(coefficients, rhs, steps, n_steps):
    """``smnn_factor`` sees only coefficients and steps: hand it ``T`` when the rhs alone
    carries the sequence length (step lengths of 1 broadcast). Rank errors are left to
    the core's checks."""
    if (n_steps is None and coefficients.ndim >= 4 and steps.ndim >= 1 and rhs.ndim >= 2
            and coefficients.shape[-4] == 1 and steps.shape[-1] == 1 and rhs.shape[-2] != 1):
        return rhs.shape[-2]
    return n_steps


def _factor_options(coefficients, rhs, init, steps, n_steps, we, wi, ws, central):
    return dict(init_shape=(init.shape[-3], init.shape[-1]) if init.ndim >= 3 else (0, 0),
                n_steps=_factor_n_steps(coefficients, rhs, steps, n_steps),
                weight_equation=we, weight_init=wi, weight_smooth=ws,
                central_smoothness=central)


def _rebuilt(c, r, g, s, lower, n_steps, we, wi, ws, central):
    return _adapters.from_lower(
        lower, c, s, **_factor_options(c, r, g, s, n_steps, we, wi, ws, central))


# --------------------------------------------------------------------------- operators

@torch.library.custom_op("bandsolve::smnn_solve", mutates_args=())
def smnn_solve_op(coefficients: Tensor, rhs: Tensor, init: Tensor, steps: Tensor,
                  n_steps: Optional[int], weight_equation: float, weight_init: float,
                  weight_smooth: float, central_smoothness: bool) -> tuple[Tensor, Tensor]:
    device = coefficients.device
    c, r, g, s = map(_to_core, (coefficients, rhs, init, steps))
    with _current_stream(device):
        u, factorization = bandsolve.smnn_factor_solve(
            c, r, g, s, n_steps=n_steps, weight_equation=weight_equation,
            weight_init=weight_init, weight_smooth=weight_smooth,
            central_smoothness=central_smoothness)
        return _from_core(u, device), _lower_from_core(factorization.lower, device)


@torch.library.custom_op("bandsolve::smnn_solve_factored", mutates_args=())
def smnn_solve_factored_op(coefficients: Tensor, rhs: Tensor, init: Tensor, steps: Tensor,
                           lower: Tensor, n_steps: Optional[int], weight_equation: float,
                           weight_init: float, weight_smooth: float,
                           central_smoothness: bool) -> Tensor:
    device = coefficients.device
    c, r, g, s, low = map(_to_core, (coefficients, rhs, init, steps, lower))
    with _current_stream(device):
        factorization = _rebuilt(c, r, g, s, low, n_steps, weight_equation, weight_init,
                                 weight_smooth, central_smoothness)
        return _from_core(factorization.solve(r, g), device)


@torch.library.custom_op("bandsolve::smnn_solve_backward", mutates_args=())
def smnn_solve_backward_op(coefficients: Tensor, rhs: Tensor, init: Tensor, steps: Tensor,
                           lower: Tensor, u: Tensor, ubar: Tensor, n_steps: Optional[int],
                           weight_equation: float, weight_init: float, weight_smooth: float,
                           central_smoothness: bool) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    device = coefficients.device
    c, r, g, s, low, x, xbar = map(_to_core, (coefficients, rhs, init, steps, lower, u, ubar))
    with _current_stream(device):
        factorization = _rebuilt(c, r, g, s, low, n_steps, weight_equation, weight_init,
                                 weight_smooth, central_smoothness)
        grads = factorization.backward(r, g, x, xbar)
        return tuple(_from_core(a, device) for a in grads)


# --------------------------------------------------------------------------- fake (meta)

def _shapes(coefficients, rhs, init, steps, n_steps, central):
    """``(u shape, lower shape)`` from the input shapes (for tracing only; the core
    checks everything when the operator runs)."""
    for name, tensor, rank in (("coefficients", coefficients, 4), ("rhs", rhs, 2),
                               ("init", init, 3), ("steps", steps, 1)):
        if tensor.dim() < rank:
            raise ValueError(f"{name} needs at least {rank} axes; got shape {tuple(tensor.shape)}")
    lengths = [coefficients.shape[-4], rhs.shape[-2], steps.shape[-1] + 1]
    T = n_steps if n_steps is not None else next((t for t in lengths if t != 1), None)
    if T is None:
        raise ValueError("cannot infer the number of time steps T; pass n_steps=T")
    _, _, D, O = coefficients.shape[-4:]
    lhs_batch = torch.broadcast_shapes(coefficients.shape[:-4], steps.shape[:-1])
    batch = torch.broadcast_shapes(lhs_batch, rhs.shape[:-2], init.shape[:-3])
    p = 2 if central else 1
    return (*batch, T, D, O), (*lhs_batch, T, p + 1, D * O, D * O)


@smnn_solve_op.register_fake
def _(coefficients, rhs, init, steps, n_steps, weight_equation, weight_init, weight_smooth,
      central_smoothness):
    u_shape, lower_shape = _shapes(coefficients, rhs, init, steps, n_steps, central_smoothness)
    lhs_batch = torch.broadcast_shapes(coefficients.shape[:-4], steps.shape[:-1])
    strides = _lower_strides(lower_shape, lhs_batch, coefficients.device)
    # the factor is float64 whatever the inputs' dtype (both backends compute in float64)
    lower_dtype = torch.float64
    lower = (coefficients.new_empty(lower_shape, dtype=lower_dtype) if strides is None else
             torch.empty_strided(lower_shape, strides, dtype=lower_dtype,
                                 device=coefficients.device))
    return coefficients.new_empty(u_shape), lower


@smnn_solve_factored_op.register_fake
def _(coefficients, rhs, init, steps, lower, n_steps, weight_equation, weight_init,
      weight_smooth, central_smoothness):
    u_shape, _ = _shapes(coefficients, rhs, init, steps, n_steps, central_smoothness)
    return coefficients.new_empty(u_shape)


@smnn_solve_backward_op.register_fake
def _(coefficients, rhs, init, steps, lower, u, ubar, n_steps, weight_equation, weight_init,
      weight_smooth, central_smoothness):
    return tuple(torch.empty_like(t, memory_format=torch.contiguous_format)
                 for t in (coefficients, rhs, init, steps))


# --------------------------------------------------------------------------- autograd

def _setup_solve(ctx, inputs, output):
    coefficients, rhs, init, steps, *options = inputs
    u, lower = output
    ctx.save_for_backward(coefficients, rhs, init, steps, lower, u)
    ctx.options = options
    ctx.mark_non_differentiable(lower)
    # lower's gradient is never used: without this autograd would fill a zero tensor the
    # size of the factor (B*T*(p+1)*n*n numbers) on every backward pass.
    ctx.set_materialize_grads(False)


def _backward_solve(ctx, ubar, _lower_bar):
    if ubar is None:  # u does not reach the loss
        return (None,) * 9
    grads = smnn_solve_backward_op(*ctx.saved_tensors, ubar, *ctx.options)
    return (*(g if need else None for g, need in zip(grads, ctx.needs_input_grad)),
            None, None, None, None, None)


smnn_solve_op.register_autograd(_backward_solve, setup_context=_setup_solve)


def _setup_factored(ctx, inputs, output):
    coefficients, rhs, init, steps, lower, *options = inputs
    ctx.save_for_backward(coefficients, rhs, init, steps, lower, output)
    ctx.options = options


def _backward_factored(ctx, ubar):
    if any(ctx.needs_input_grad[i] for i in (0, 3, 4)):
        raise RuntimeError(
            "bandsolve::smnn_solve_factored is differentiable in rhs and init only: its "
            "coefficients, steps and factor are frozen. Use bandsolve_torch.smnn_solve to "
            "differentiate through the left-hand side.")
    _, rhs_bar, init_bar, _ = smnn_solve_backward_op(*ctx.saved_tensors, ubar, *ctx.options)
    return (None, rhs_bar if ctx.needs_input_grad[1] else None,
            init_bar if ctx.needs_input_grad[2] else None, None, None,
            None, None, None, None, None)


smnn_solve_factored_op.register_autograd(_backward_factored, setup_context=_setup_factored)


# --------------------------------------------------------------------------- vmap
# Batching rules: a vmapped axis becomes one more leading batch axis of a single core
# call (never a loop). Every argument first gets the same number of batch axes (leading
# axes of length 1), so that NumPy broadcasting in the core lines the mapped axes up.

_CORE_NDIM = (4, 2, 3, 1, 4, 3, 3)  # coefficients, rhs, init, steps, lower, u, ubar


def _batch_first(batch_size, in_dims, tensors, expand):
    """Each tensor with the mapped axis first (``expand``: unmapped ones broadcast to
    ``batch_size``, else given a leading axis of length 1) and its per-example batch axes
    padded to a common count. Returns the tensors and their per-example batch ranks."""
    ranks = [t.dim() - (d is not None) - k for t, d, k in zip(tensors, in_dims, _CORE_NDIM)]
    common = max(ranks)
    moved = []
    for t, d, rank in zip(tensors, in_dims, ranks):
        t = t.unsqueeze(0) if d is None else t.movedim(d, 0)
        if expand and d is None:
            t = t.expand(batch_size, *t.shape[1:])
        moved.append(t.reshape(t.shape[0], *(1,) * (common - rank), *t.shape[1:]))
    return moved, ranks, common


def _unpad(t, rank, common):
    """Drop the padding axes that :func:`_batch_first` added after the mapped axis."""
    return t.reshape(t.shape[0], *t.shape[1 + common - rank:])


@smnn_solve_op.register_vmap
def _(info, in_dims, coefficients, rhs, init, steps, *options):
    (c, r, g, s), ranks, common = _batch_first(info.batch_size, in_dims[:4],
                                               (coefficients, rhs, init, steps), expand=False)
    u, lower = smnn_solve_op(c, r, g, s, *options)
    lower = _unpad(lower, max(ranks[0], ranks[3]), common)
    if in_dims[0] is None and in_dims[3] is None:  # the left-hand side is not mapped
        return (u, lower.squeeze(0)), (0, None)
    return (u, lower), (0, 0)


@smnn_solve_factored_op.register_vmap
def _(info, in_dims, coefficients, rhs, init, steps, lower, *options):
    tensors, _, _ = _batch_first(info.batch_size, in_dims[:5],
                                 (coefficients, rhs, init, steps, lower), expand=False)
    return smnn_solve_factored_op(*tensors, *options), 0


@smnn_solve_backward_op.register_vmap
def _(info, in_dims, coefficients, rhs, init, steps, lower, u, ubar, *options):
    # Every gradient is wanted per mapped element (even that of an unmapped input, as in
    # vmap over cotangents), so every argument is broadcast to the mapped size first; the
    # core would otherwise sum over a mapped axis of length 1.
    tensors, ranks, common = _batch_first(info.batch_size, in_dims[:7],
                                          (coefficients, rhs, init, steps, lower, u, ubar),
                                          expand=True)
    grads = smnn_solve_backward_op(*tensors, *options)
    return tuple(_unpad(g, rank, common) for g, rank in zip(grads, ranks)), (0, 0, 0, 0)


# --------------------------------------------------------------------------- torch.func
# torch.func.grad / vjp / jacrev need an autograd.Function with a setup_context method; the
# autograd formula that register_autograd attaches to a custom op is not one (PyTorch
# bug report 168393). These Functions call the same operators and backward operator;
# generate_vmap_rule lets vmap see through them to the operators' batching rules above.

def _below_autograd():
    # The Function is the autograd formula here: with grad mode off the operators skip
    # their own formula (registered above for direct calls), whose generated
    # autograd.Function refuses to run under torch.func transforms.
    return torch.no_grad()


class SMNNSolve(torch.autograd.Function):
    """``(u, lower)`` of :func:`smnn_solve_op`, differentiable under autograd and torch.func."""

    generate_vmap_rule = True

    @staticmethod
    def forward(coefficients, rhs, init, steps, *options):
        with _below_autograd():
            return smnn_solve_op(coefficients, rhs, init, steps, *options)

    @staticmethod
    def setup_context(ctx, inputs, output):
        _setup_solve(ctx, inputs, output)

    @staticmethod
    def backward(ctx, ubar, lower_bar):
        with _below_autograd():  # first derivatives only, as for the operator
            return _backward_solve(ctx, ubar, lower_bar)


class SMNNSolveFactored(torch.autograd.Function):
    """:func:`smnn_solve_factored_op`, differentiable in rhs and init under torch.func."""

    generate_vmap_rule = True

    @staticmethod
    def forward(coefficients, rhs, init, steps, lower, *options):
        with _below_autograd():
            return smnn_solve_factored_op(coefficients, rhs, init, steps, lower, *options)

    @staticmethod
    def setup_context(ctx, inputs, output):
        _setup_factored(ctx, inputs, output)

    @staticmethod
    def backward(ctx, ubar):
        with _below_autograd():
            return _backward_factored(ctx, ubar)

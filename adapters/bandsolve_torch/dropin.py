"""``ode_forward``: the call signature of the S-MNN reference implementation, on bandsolve.

Users of the paper's code switch by changing one import line::

    from smnn import ode_forward             # before
    from bandsolve_torch import ode_forward  # after

The function only moves axes and broadcasts, then calls :func:`smnn_solve` (or a cached
:class:`FrozenLHS`); no mathematics lives here.
"""

import collections
import functools
import operator
import threading

import torch

from .solve import FrozenLHS, _options, smnn_solve

#: At most this many frozen left-hand sides are kept (least recently used evicted first).
FROZEN_LHS_CACHE_SIZE = 8

_frozen = collections.OrderedDict()  # version -> (FrozenLHS, the options it was built with)
_frozen_lock = threading.Lock()

# Per-system rank of each argument: coefficients (T, E, D, O), rhs_equation (T, E),
# init_vars (Ti, D, Oi), steps (T-1,); the step axis is the first of these.
_CORE_NDIM = {"coefficients": 4, "rhs_equation": 2, "init_vars": 3, "steps": 1}
_LAYOUT = {
    False: {"coefficients": "(..., n_steps, n_equations, n_dims, n_orders)",
            "rhs_equation": "(..., n_steps, n_equations)",
            "init_vars": "(..., n_init_var_steps, n_dims, n_init_var_orders)",
            "steps": "(..., n_steps-1)"},
    True: {"coefficients": "(n_steps, ..., n_equations, n_dims, n_orders)",
           "rhs_equation": "(n_steps, ..., n_equations)",
           "init_vars": "(n_init_var_steps, ..., n_dims, n_init_var_orders)",
           "steps": "(n_steps-1, ...)"},
}


def ode_forward(coefficients, rhs_equation, init_vars, steps, n_steps=None,
                n_init_var_steps=None, is_step_dim_first=False, weight_equation=1.,
                weight_init_var=1., weight_smooth=1., enable_central_smoothness=False,
                prefer_cuda_graph=True, frozen_lhs_cache_version=0):
    """The S-MNN solve with the reference implementation's signature and meaning.

    Same argument order, names, defaults and shapes as ``ode_forward`` of the paper's
    reference code (``smnn.py``); the solve is :func:`smnn_solve` (``weight_init_var`` is
    its ``weight_init``, ``enable_central_smoothness`` its ``central_smoothness``).

    Parameters
    ----------
    coefficients : ``(..., n_steps or 1, n_equations, n_dims, n_orders)``
    rhs_equation : ``(..., n_steps or 1, n_equations)``
    init_vars : ``(..., n_init_var_steps or 1, n_dims, n_init_var_orders)``; a step axis
        of length 1 is broadcast to ``n_init_var_steps`` (the same values at each of the
        first ``n_init_var_steps`` steps). ``n_init_var_orders`` may be 0.
    steps : ``(..., n_steps-1 or 1)``, positive step sizes.
    n_steps : ``T``. Default: the length of the step axis of ``steps`` plus one (as in the
        reference); pass it when ``steps`` has step length 1. An input whose step axis has
        neither length ``T`` nor 1 is a ``ValueError`` (never a silent misreading).
    n_init_var_steps : default: the length of the step axis of ``init_vars``.
    is_step_dim_first : if True, the step axis is the FIRST axis of every input and of the
        result (``coefficients (n_steps, ..., n_equations, n_dims, n_orders)``,
        ``rhs_equation (n_steps, ..., n_equations)``, ``init_vars (n_init_var_steps, ...,
        n_dims, n_init_var_orders)``, ``steps (n_steps-1, ...)``); the batch axes follow it.
    weight_equation, weight_init_var, weight_smooth : positive row weights.
    enable_central_smoothness : add the central smoothness rows (needs ``n_orders >= 3``).
    prefer_cuda_graph : accepted for compatibility and ignored. The reference captures
        CUDA graphs to remove the launch cost of its Python loop over time steps;
        bandsolve's GPU backend factors and substitutes in a few kernel launches per call
        (one thread or thread block per system), on PyTorch's current stream, so there is
        no per-step launch cost to remove, and no graph memory is held between calls.
    frozen_lhs_cache_version : ``0`` (default): solve normally, differentiable in all four
        tensors. ``k > 0``: the left-hand side is frozen at the first call with version
        ``k``: that call factors ``coefficients`` and ``steps`` into a :class:`FrozenLHS`
        and keeps it in a small cache (at most ``FROZEN_LHS_CACHE_SIZE`` versions, least
        recently used evicted first); later calls with version ``k`` IGNORE the
        ``coefficients`` and ``steps`` they are given and solve their ``rhs_equation`` and
        ``init_vars`` against the frozen factor, until :func:`clear_frozen_lhs_cache` is
        called. Frozen calls are differentiable in ``rhs_equation`` and ``init_vars`` only
        (coefficients or steps that require grad are a ``ValueError``). Their other
        options (``n_steps``, ``n_init_var_steps``, weights, ``enable_central_smoothness``,
        the number of initial orders, dtype, device) must equal those of the first call.
        Holding a :class:`FrozenLHS` yourself does the same without a global cache.

    Returns
    -------
    u : ``(..., n_steps, n_dims, n_orders)`` (``(n_steps, ..., n_dims, n_orders)`` when
    ``is_step_dim_first``); ``u[..., d, o]`` is the ``o``-th derivative of state ``d``.

    Unlike the reference, bad input is an exception: ``ValueError``/``TypeError`` for
    shapes, NaN/Inf and non-positive steps, ``bandsolve.FactorizationError`` for a system
    that is not positive definite (CUDA tensors: NaN in that system's result instead, as
    for :func:`smnn_solve`).

    Example
    -------
    >>> T = 100
    >>> coefficients = torch.tensor([4.0, 0.3, 1.0], dtype=torch.float64).expand(1, 1, 1, 3)
    >>> u = ode_forward(coefficients, torch.zeros(1, 1, dtype=torch.float64),
    ...                 torch.tensor([[[1.0]]], dtype=torch.float64),
    ...                 torch.tensor([0.01], dtype=torch.float64), n_steps=T,
    ...                 is_step_dim_first=True)
    >>> u.shape                      # (n_steps, n_dims, n_orders)
    torch.Size([100, 1, 3])
    """
    for name, flag in (("is_step_dim_first", is_step_dim_first),
                       ("enable_central_smoothness", enable_central_smoothness),
                       ("prefer_cuda_graph", prefer_cuda_graph)):
        if not isinstance(flag, bool):
            raise TypeError(f"{name} must be a bool; got {flag!r}")
    version = _count("frozen_lhs_cache_version", frozen_lhs_cache_version)
    tensors = dict(coefficients=coefficients, rhs_equation=rhs_equation, init_vars=init_vars,
                   steps=steps)
    for name, tensor in tensors.items():
        if not isinstance(tensor, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor; got {type(tensor).__name__} "
                            f"(convert with torch.as_tensor)")
        if tensor.dim() < _CORE_NDIM[name]:
            raise ValueError(f"{name} must have shape {_LAYOUT[is_step_dim_first][name]}; "
                             f"got {tuple(tensor.shape)}")
    shapes = {name: tuple(t.shape) for name, t in tensors.items()}
    if is_step_dim_first:
        # step axis first -> the batch-first layout of smnn_solve
        tensors = {name: t.movedim(0, -_CORE_NDIM[name]) for name, t in tensors.items()}
    c, r, g, s = tensors.values()

    T = s.shape[-1] + 1 if n_steps is None else _count("n_steps", n_steps)
    if T < 2:
        raise ValueError(f"n_steps must be >= 2; got {T}")
    Ti = g.shape[-3] if n_init_var_steps is None else _count("n_init_var_steps",
                                                             n_init_var_steps)
    t_source = "n_steps" if n_steps is not None else "n_steps (inferred from steps)"
    for name, length, allowed, source in (
            ("coefficients", c.shape[-4], (T, 1), f"{t_source} = {T}"),
            ("rhs_equation", r.shape[-2], (T, 1), f"{t_source} = {T}"),
            ("steps", s.shape[-1], (T - 1, 1), f"{t_source} = {T}"),
            ("init_vars", g.shape[-3], (Ti, 1), f"n_init_var_steps = {Ti}")):
        if length not in allowed:
            axis = "first" if is_step_dim_first else f"step (-{_CORE_NDIM[name]})"
            raise ValueError(
                f"{name} has length {length} along its {axis} axis, but {source} allows "
                f"only {allowed[0]} or 1 there: {name} must have shape "
                f"{_LAYOUT[is_step_dim_first][name]}, got {shapes[name]}. Pass n_steps=T "
                f"when steps has step length 1, and is_step_dim_first=True when the step "
                f"axis is the first axis.")
    if g.shape[-3] != Ti:  # a step axis of length 1: the same values at each initial step
        g = g.expand(*g.shape[:-3], Ti, *g.shape[-2:])

    options = dict(n_steps=T, weight_equation=weight_equation, weight_init=weight_init_var,
                   weight_smooth=weight_smooth, central_smoothness=enable_central_smoothness)
    if version == 0:
        u = smnn_solve(c, r, g, s, **options)
    else:
        u = _frozen_solve(version, c, r, g, s, options)
    if is_step_dim_first:
        # the reference returns the step-first result as a contiguous tensor
        u = u.movedim(-3, 0).contiguous()
    return u


def clear_frozen_lhs_cache(version=None):
    """Forget the frozen left-hand side of ``version`` (default: of every version), so
    that the next :func:`ode_forward` call with that version factors its coefficients and
    steps again. Returns the number of entries removed."""
    with _frozen_lock:
        if version is None:
            removed = len(_frozen)
            _frozen.clear()
            return removed
        return 1 if _frozen.pop(_count("version", version), None) is not None else 0


def frozen_lhs_cache_versions():
    """The versions whose left-hand side is currently frozen, least recently used first."""
    with _frozen_lock:
        return list(_frozen)


def _count(name, value):
    if isinstance(value, bool):
        raise TypeError(f"{name} must be an integer; got {value!r}")
    try:
        count = operator.index(value)
    except TypeError:
        raise TypeError(f"{name} must be an integer; got {value!r}") from None
    if count < 0:
        raise ValueError(f"{name} must be >= 0; got {count}")
    return count


def _frozen_solve(version, coefficients, rhs, init, steps, options):
    for name, tensor in (("coefficients", coefficients), ("steps", steps)):
        if tensor.requires_grad and torch.is_grad_enabled():
            raise ValueError(
                f"frozen_lhs_cache_version={version} freezes coefficients and steps, so they "
                f"get no gradient, but {name} requires grad. Pass {name}.detach(), or "
                f"frozen_lhs_cache_version=0 to differentiate through the left-hand side.")
    dtype = functools.reduce(torch.promote_types, (t.dtype for t in (coefficients, rhs,
                                                                     init, steps)))
    key = dict(zip(("n_steps", "weight_equation", "weight_init_var", "weight_smooth",
                    "enable_central_smoothness"), _options(**options)),
               n_init_var_steps=init.shape[-3], n_init_var_orders=init.shape[-1],
               dtype=dtype, device=coefficients.device)
    with _frozen_lock:
        entry = _frozen.get(version)
        if entry is not None:
            _frozen.move_to_end(version)
    if entry is None:
        frozen = FrozenLHS(coefficients.detach().to(dtype), steps.detach().to(dtype),
                           init_shape=(init.shape[-3], init.shape[-1]), **options)
        with _frozen_lock:
            _frozen[version] = entry = (frozen, key)
            while len(_frozen) > FROZEN_LHS_CACHE_SIZE:
                _frozen.popitem(last=False)
    frozen, frozen_key = entry
    changed = [f"{name}={key[name]!r} (frozen with {frozen_key[name]!r})"
               for name in key if key[name] != frozen_key[name]]
    if changed:
        raise ValueError(
            f"frozen_lhs_cache_version={version} was first used with other options; got "
            f"{', '.join(changed)}. Use a new version for a new left-hand side, or call "
            f"bandsolve_torch.clear_frozen_lhs_cache({version}).")
    return frozen.solve(rhs.to(dtype), init.to(dtype))

"""``MechanisticLayer``: the S-MNN solve as a ``torch.nn.Module`` with learned step sizes."""

import math

import torch
from torch import nn

from bandsolve._validation import (check_count, check_flag, check_init_shape,
                                   check_weight)

from .solve import _options, smnn_solve


class MechanisticLayer(nn.Module):
    """A mechanistic (S-MNN) layer: a network predicts a linear ODE per sequence, the layer
    returns the discretised trajectory that best satisfies it.

    The network supplies, per batch element, time-varying ODE coefficients, right-hand
    sides and initial values; the layer owns the step sizes, learned and kept positive as
    ``softplus`` of a free parameter. Equation ``e`` at step ``t`` reads
    ``sum_{d,o} coefficients[t, e, d, o] * u[t, d, o] = rhs[t, e]``, where ``u[t, d, o]`` is
    the ``o``-th derivative of state ``d`` (see ``bandsolve.smnn_solve``).

    Parameters
    ----------
    n_steps : ``T``, time steps of the output.
    n_dims : ``D``, state dimensions.
    n_orders : ``O``, derivative orders per state (``O = 3``: value, first and second
        derivative).
    n_equations : ``E``, equations per step (default ``D``).
    init_shape : ``(Ti, Oi)``, initial values for the first ``Ti`` steps and orders
        ``o < Oi`` (default ``(1, O - 1)``: value and derivatives below the highest order).
    step_size : initial step size (every step).
    learn_steps : learn the step sizes (default) or keep them fixed at ``step_size``.
    shared_step : one step size for all steps instead of ``T - 1`` of them.
    weight_equation, weight_init, weight_smooth, central_smoothness : as in
        ``bandsolve_torch.smnn_solve``.

    Shapes
    ------
    ``forward(coefficients, rhs, init)``:

    - coefficients ``(..., T or 1, E, D, O)`` (step length 1: time-invariant ODE)
    - rhs ``(..., T or 1, E)``
    - init ``(..., Ti, D, Oi)``
    - returns u ``(..., T, D, O)``; ``u[..., 0]`` is the trajectory.

    ``split_features(features)`` cuts a flat network output ``(..., n_features)`` into
    those three tensors (time-varying coefficients and rhs).

    Example
    -------
    >>> layer = MechanisticLayer(n_steps=50, n_dims=2, n_orders=3)
    >>> head = torch.nn.Linear(16, layer.n_features, dtype=torch.float64)
    >>> features = head(torch.randn(8, 16, dtype=torch.float64))
    >>> u = layer(*layer.split_features(features))
    >>> u.shape                      # (batch, T, D, O)
    torch.Size([8, 50, 2, 3])
    >>> trajectory = u[..., 0]       # (batch, T, D)
    """

    def __init__(self, n_steps, n_dims, n_orders, n_equations=None, *, init_shape=None,
                 step_size=0.1, learn_steps=True, shared_step=False, weight_equation=1.0,
                 weight_init=1.0, weight_smooth=1.0, central_smoothness=False,
                 dtype=torch.float64, device=None):
        super().__init__()
        n_steps = check_count("n_steps", n_steps, minimum=1)
        n_dims = check_count("n_dims", n_dims, minimum=1)
        n_orders = check_count("n_orders", n_orders, minimum=1)
        self.n_steps, self.n_dims, self.n_orders = n_steps, n_dims, n_orders
        self.n_equations = n_dims if n_equations is None else check_count("n_equations",
                                                                          n_equations)
        self.init_shape = ((1, n_orders - 1) if init_shape is None
                           else check_init_shape(init_shape))
        if self.init_shape[0] > n_steps or self.init_shape[1] > n_orders:
            raise ValueError(f"init_shape {self.init_shape} exceeds (n_steps, n_orders) = "
                             f"{(n_steps, n_orders)}")
        for name, flag in (("learn_steps", learn_steps), ("shared_step", shared_step)):
            check_flag(name, flag)
        step_size = check_weight("step_size", step_size)
        self.solver_options = dict(
            n_steps=n_steps, weight_equation=weight_equation, weight_init=weight_init,
            weight_smooth=weight_smooth, central_smoothness=central_smoothness)
        _options(n_steps, weight_equation, weight_init, weight_smooth, central_smoothness)
        # softplus(raw) == step_size at initialisation
        raw = math.log(math.expm1(step_size))
        shape = (1,) if shared_step else (max(n_steps - 1, 1),)
        raw_steps = torch.full(shape, raw, dtype=dtype, device=device)
        if learn_steps:
            self.raw_steps = nn.Parameter(raw_steps)
        else:
            self.register_buffer("raw_steps", raw_steps)

    @property
    def steps(self):
        """The positive step sizes ``(T-1,)`` (or ``(1,)`` with ``shared_step``)."""
        return nn.functional.softplus(self.raw_steps)

    @property
    def n_features(self):
        """Length of the flat network output that :meth:`split_features` expects:
        ``T*E*D*O + T*E + Ti*D*Oi``."""
        T, E, D, O = self.n_steps, self.n_equations, self.n_dims, self.n_orders
        Ti, Oi = self.init_shape
        return T * E * D * O + T * E + Ti * D * Oi

    def split_features(self, features):
        """``(..., n_features)`` -> coefficients ``(..., T, E, D, O)``, rhs ``(..., T, E)``,
        init ``(..., Ti, D, Oi)`` (views of ``features``)."""
        T, E, D, O = self.n_steps, self.n_equations, self.n_dims, self.n_orders
        Ti, Oi = self.init_shape
        if features.shape[-1] != self.n_features:
            raise ValueError(f"features must have shape (..., {self.n_features}); "
                             f"got {tuple(features.shape)}")
        batch = features.shape[:-1]
        coefficients, rhs, init = features.split([T * E * D * O, T * E, Ti * D * Oi], dim=-1)
        return (coefficients.reshape(*batch, T, E, D, O), rhs.reshape(*batch, T, E),
                init.reshape(*batch, Ti, D, Oi))

    def forward(self, coefficients, rhs, init):
        """u ``(..., T, D, O)``; see the class docstring for the shapes."""
        steps = self.steps.to(coefficients.dtype)
        return smnn_solve(coefficients, rhs, init, steps, **self.solver_options)

    def extra_repr(self):
        return (f"n_steps={self.n_steps}, n_dims={self.n_dims}, n_orders={self.n_orders}, "
                f"n_equations={self.n_equations}, init_shape={self.init_shape}, "
                f"steps={tuple(self.raw_steps.shape)}")

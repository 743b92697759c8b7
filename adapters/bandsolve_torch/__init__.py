"""PyTorch adapter for bandsolve: the S-MNN solve on tensors, differentiable, compilable.

Public surface (re-exports only):

- :func:`smnn_solve`: ``bandsolve.smnn_solve`` on tensors (CPU or CUDA), differentiable in
  coefficients, rhs, init and steps; works under ``torch.compile(fullgraph=True)``
  and ``torch.func`` (``vmap``, ``grad``, ``vjp``, ``jacrev``).
- :class:`FrozenLHS`: coefficients and steps factored once, ``.solve(rhs, init)`` many times.
- :class:`MechanisticLayer`: an ``nn.Module`` with learned positive step sizes.
- :func:`ode_forward`: the reference implementation's ``ode_forward`` signature (a one-line
  switch for its users), with :func:`clear_frozen_lhs_cache` and
  :func:`frozen_lhs_cache_versions` for its ``frozen_lhs_cache_version`` cache.

The operators ``torch.ops.bandsolve.smnn_solve``, ``smnn_solve_factored`` and
``smnn_solve_backward`` are registered on import (see ``_ops``). No mathematics lives
here: tensors are handed to the core by DLPack and the core's solve and VJP do the work.
"""

from .dropin import clear_frozen_lhs_cache, frozen_lhs_cache_versions, ode_forward
from .layer import MechanisticLayer
from .solve import FrozenLHS, smnn_solve

__all__ = ["FrozenLHS", "MechanisticLayer", "clear_frozen_lhs_cache",
           "frozen_lhs_cache_versions", "ode_forward", "smnn_solve"]

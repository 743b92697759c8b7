"""bandsolve: batched block-banded SPD solves for Scalable Mechanistic Neural Networks.

Public surface (re-exports only):

- :func:`smnn_solve`, :func:`smnn_solve_vjp`: the S-MNN least-squares layer.
- :func:`smnn_factor` / :class:`SMNNFactorization`: factor a left-hand side once, solve
  many right-hand sides (the frozen left-hand side); :func:`smnn_factor_solve` solves and
  returns the factorisation (for adapters that keep the factor as an array; the adapters'
  plumbing lives in the internal ``bandsolve._adapters``).
- :func:`smnn_normal_equations`: the assembled block-banded normal equations.
- :class:`BlockBanded`, :func:`block_cholesky`, :class:`BlockCholesky`: any SPD
  block-banded system.
- :class:`FactorizationError`: numerical breakdown (a ``numpy.linalg.LinAlgError``).
"""

from .banded import BlockBanded, BlockCholesky, block_cholesky
from ._adapters import smnn_factor_solve
from .errors import FactorizationError
from .smnn import (
    SMNNFactorization,
    smnn_factor,
    smnn_normal_equations,
    smnn_solve,
    smnn_solve_vjp,
)

from ._version import __version__  # noqa: F401 (the package's version)

__all__ = [
    "BlockBanded",
    "BlockCholesky",
    "FactorizationError",
    "SMNNFactorization",
    "block_cholesky",
    "smnn_factor",
    "smnn_factor_solve",
    "smnn_normal_equations",
    "smnn_solve",
    "smnn_solve_vjp",
]

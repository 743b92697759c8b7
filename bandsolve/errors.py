"""Numerical failure as a typed exception.

Kernels never raise: each system reports a status code in an ``info`` array (0 for
success, ``t + 1`` for the first block row ``t`` whose pivot was not positive or not
finite). ``raise_if_failed`` turns that array into a ``FactorizationError``.
"""

import numpy as np

_MAX_LISTED = 10


class FactorizationError(np.linalg.LinAlgError):
    """The block Cholesky factorisation broke down for one or more systems.

    Attributes
    ----------
    batch_indices : list of tuple of int
        Indices (into the left-hand-side batch shape) of the systems that failed.
    steps : list of int
        For each failed system, the 0-based time step (block row) where it failed.
    """

    def __init__(self, message, batch_indices=(), steps=()):
        super().__init__(message)
        self.batch_indices = list(batch_indices)
        self.steps = list(steps)


def raise_if_failed(info, batch_shape, what="block-banded matrix"):
    """Raise ``FactorizationError`` if any entry of ``info`` ``(B,)`` is non-zero.

    ``batch_shape`` is the shape that ``info`` flattens, used to name the systems.
    """
    failed = np.flatnonzero(info)
    if failed.size == 0:
        return
    batch_indices = [tuple(int(i) for i in np.unravel_index(f, batch_shape)) for f in failed]
    steps = [int(info[f]) - 1 for f in failed]
    listed = ", ".join(
        f"batch index {index} at time step {step}"
        for index, step in zip(batch_indices[:_MAX_LISTED], steps[:_MAX_LISTED])
    )
    more = f" (and {failed.size - _MAX_LISTED} more)" if failed.size > _MAX_LISTED else ""
    raise FactorizationError(
        f"the {what} is not positive definite (or its factor is not finite) for "
        f"{failed.size} of {int(np.prod(batch_shape, dtype=np.int64))} systems: {listed}{more}. "
        "Likely causes: the constraints do not pin the solution down (no initial values "
        "and equations that leave a null space, e.g. all-zero coefficients), extreme "
        "step sizes or weights, or float32 for an ill-conditioned system (try float64).",
        batch_indices,
        steps,
    )

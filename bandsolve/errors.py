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


def raise_if_failed(info, batch_shape, what="block-banded matrix", hint=None):
    """Raise ``FactorizationError`` if any entry of ``info`` ``(B,)`` is non-zero.

    ``batch_shape`` is the shape that ``info`` flattens, used to name the systems. Codes:
    ``t + 1`` for a breakdown at block row ``t``; ``-1`` for a solve whose refinement did
    not converge (reported at the last time step). ``hint`` replaces the generic list of
    likely causes.
    """
    info = np.asarray(info)
    failed = np.flatnonzero(info)
    if failed.size == 0:
        return
    n_steps_hint = None
    batch_indices = [tuple(int(i) for i in np.unravel_index(f, batch_shape)) for f in failed]
    steps = [int(info[f]) - 1 if info[f] > 0 else n_steps_hint for f in failed]

    def where(index, step):
        if step is None:
            return f"batch index {index} (refinement did not converge at any time step)"
        return f"batch index {index} at time step {step}"

    listed = ", ".join(where(index, step)
                       for index, step in zip(batch_indices[:_MAX_LISTED], steps[:_MAX_LISTED]))
    more = f" (and {failed.size - _MAX_LISTED} more)" if failed.size > _MAX_LISTED else ""
    if hint is None:
        hint = ("Likely causes: the constraints do not pin the solution down (no initial "
                "values and equations that leave a null space, e.g. all-zero coefficients), "
                "extreme step sizes or weights, or float32 for an ill-conditioned system "
                "(try float64).")
    raise FactorizationError(
        f"the {what} is singular or not positive definite to working precision (or its "
        f"factor is not finite) for {failed.size} of "
        f"{int(np.prod(batch_shape, dtype=np.int64))} systems: {listed}{more}. {hint}",
        batch_indices,
        steps,
    )

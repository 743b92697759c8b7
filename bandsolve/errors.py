"""Numerical failure as a typed exception, and bad values located in an input.

Kernels never raise: each system reports a status code in an ``info`` array (0 for
success, ``t + 1`` for the first block row ``t`` whose pivot was not positive or not
finite). ``raise_if_failed`` turns that array into a ``FactorizationError``. A NaN, Inf
or non-positive step found in an input before any kernel runs is an ``InputValueError`` (a
``ValueError``) that carries the input's name and the index.
"""

import math

import numpy as np

_MAX_LISTED = 10


class InputValueError(ValueError):
    """A bad value (NaN, Inf, a non-positive step) inside an input array.

    Attributes
    ----------
    argument : str
        The input's name.
    index : tuple of int
        The first bad position, an index into that input.
    """

    def __init__(self, argument, index, template):
        self.argument, self.index, self.template = argument, tuple(index), template
        super().__init__(template.format(name=argument, index=self.index))

    def at(self, index):
        """The same error at another ``index`` (``bandsolve.dask``: chunk -> array)."""
        return type(self)(self.argument, index, self.template)

    def __reduce__(self):  # picklable (Dask moves errors between processes)
        return type(self), (self.argument, self.index, self.template)


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

    def __reduce__(self):  # picklable with its attributes (Dask moves errors between processes)
        return type(self), (str(self), self.batch_indices, self.steps)


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
    batch_indices = [tuple(int(i) for i in np.unravel_index(f, batch_shape)) for f in failed]
    steps = [int(info[f]) - 1 if info[f] > 0 else None for f in failed]
    raise factorization_error(batch_indices, steps, math.prod(batch_shape), what, hint)


def factorization_error(batch_indices, steps, n_systems, what="block-banded matrix",
                        hint=None):
    """The ``FactorizationError`` for systems ``batch_indices`` failing at ``steps`` (of
    ``n_systems``; a step of ``None``: refinement did not converge); ``bandsolve.dask``
    rebuilds it with whole-array indices. ``hint`` replaces the generic likely causes."""

    def where(index, step):
        if step is None:
            return f"batch index {index} (refinement did not converge at any time step)"
        return f"batch index {index} at time step {step}"

    listed = ", ".join(where(index, step)
                       for index, step in zip(batch_indices[:_MAX_LISTED], steps[:_MAX_LISTED]))
    n_failed = len(batch_indices)
    more = f" (and {n_failed - _MAX_LISTED} more)" if n_failed > _MAX_LISTED else ""
    if hint is None:
        hint = ("Likely causes: the constraints do not pin the solution down (no initial "
                "values and equations that leave a null space, e.g. all-zero coefficients), "
                "extreme step sizes or weights, or float32 for an ill-conditioned system "
                "(try float64).")
    return FactorizationError(
        f"the {what} is singular or not positive definite to working precision (or its "
        f"factor is not finite) for {n_failed} of {n_systems} systems: {listed}{more}. "
        f"{hint}",
        batch_indices,
        steps,
    )

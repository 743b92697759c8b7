"""A finiteness test of a whole array without a temporary (the input checks of large
arrays)."""

from .._jit import jit_reduction


@jit_reduction
def all_finite(flat):
    """Whether every entry of the 1-D array ``flat`` is finite: the sum of ``x * 0`` is 0
    for finite entries and NaN as soon as one is NaN or infinite (one vectorised pass,
    no boolean array)."""
    total = 0.0
    for i in range(flat.shape[0]):
        total += flat[i] * 0.0
    return total == 0.0

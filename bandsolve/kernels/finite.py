"""Passes over whole input arrays without temporaries (the input checks and the rhs
scale of large arrays)."""

import math

import numba
import numpy as np

from .._jit import jit_parallel_reduction, jit_reduction

# Pieces of this many entries per thread task in the threaded passes (~1 MB).
CHUNK = 1 << 17


@jit_reduction
def all_finite(flat):
    """Whether every entry of the 1-D array ``flat`` is finite: the sum of ``x * 0`` is 0
    for finite entries and NaN as soon as one is NaN or infinite (one vectorised pass,
    no boolean array)."""
    total = 0.0
    for i in range(flat.shape[0]):
        total += flat[i] * 0.0
    return total == 0.0


@jit_parallel_reduction
def _chunk_sums_of_zeros(flat, out):
    """``out[c]`` = the sum of ``x * 0`` over chunk ``c`` of ``flat`` (threaded)."""
    n = flat.shape[0]
    for c in numba.prange(out.shape[0]):
        total = 0.0
        for i in range(c * CHUNK, min(n, (c + 1) * CHUNK)):
            total += flat[i] * 0.0
        out[c] = total


@jit_parallel_reduction
def _chunk_max_abs(flat, out):
    """``out[c]`` = the largest ``|x|`` over chunk ``c`` of ``flat`` (threaded; finite
    inputs)."""
    n = flat.shape[0]
    for c in numba.prange(out.shape[0]):
        largest = 0.0
        for i in range(c * CHUNK, min(n, (c + 1) * CHUNK)):
            value = abs(flat[i])
            if value > largest:
                largest = value
        out[c] = largest


def _threaded(flat):
    return flat.size >= 8 * CHUNK and numba.get_num_threads() > 1


def all_finite_any_size(flat):
    """:func:`all_finite`, threaded over chunks for large arrays (a 65 MB input: ~13 ms
    on one core of the benchmark machine)."""
    if not _threaded(flat):
        return all_finite(flat)
    sums = np.empty(math.ceil(flat.size / CHUNK))
    _chunk_sums_of_zeros(flat, sums)
    return bool(np.all(sums == 0.0))


def max_abs(flat):
    """The largest ``|x|`` of the finite 1-D array ``flat`` (0 if empty), without the
    temporary ``np.abs`` makes (threaded over chunks for large arrays)."""
    if not flat.size:
        return 0.0
    if not _threaded(flat):
        return float(np.max(np.abs(flat)))
    out = np.empty(math.ceil(flat.size / CHUNK))
    _chunk_max_abs(flat, out)
    return float(out.max())


@jit_parallel_reduction
def _row_sums_of_zeros(rows, out):
    """``out[b]`` = the sum of ``x * 0`` over row ``b`` of ``rows`` ``(B, K)`` (threaded)."""
    for b in numba.prange(rows.shape[0]):
        total = 0.0
        for k in range(rows.shape[1]):
            total += rows[b, k] * 0.0
        out[b] = total


def finite_rows(rows):
    """``(B,)`` bool: whether every entry of each row of the C-contiguous ``rows``
    ``(B, ...)`` is finite (threaded, no boolean array of their size)."""
    flat = rows.reshape(rows.shape[0], -1)
    sums = np.empty(flat.shape[0])
    _row_sums_of_zeros(flat, sums)
    return sums == 0.0

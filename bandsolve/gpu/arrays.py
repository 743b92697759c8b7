"""Elementwise device kernels and array-level helpers: broadcast/cast copies, fills,
reductions over broadcast axes, and the opt-in value checks.

Index maps (``shape``/``strides`` tuples) come from ``_runtime.batch_maps`` and
``_runtime.reduce_map``; :func:`source_row` decodes them on the device.
"""

import math

import numba
import numpy as np
from numba import cuda

from .. import _validation as v
from . import config
from ._runtime import batch_maps, device_function, reduce_map, shape_of


def source_row(i, shape, strides):
    """Row of an input read by system ``i`` of the full batch: ``i`` is decomposed over
    the full (merged) batch ``shape`` in C order and recombined with the input's
    ``strides`` (0 along axes it broadcasts)."""
    row = 0
    for k in range(len(shape) - 1, -1, -1):
        extent = shape[k]
        row += (i % extent) * strides[k]
        i //= extent
    return row


_source_row = device_function(source_row)
_REDUCE_THREADS = config.REDUCE_THREADS  # a module constant: CUDA needs a literal size


@cuda.jit
def copy_broadcast_kernel(src, dst, shape, strides):
    """``dst[k] = src[source_row(k)]`` for flat dst ``(N,)`` and flat src (cast to dst's
    dtype on assignment)."""
    k = cuda.grid(1)
    if k < dst.shape[0]:
        dst[k] = src[_source_row(k, shape, strides)]


@cuda.jit
def fill_kernel(dst, value):
    """``dst[:] = value`` for flat dst ``(N,)``."""
    k = cuda.grid(1)
    if k < dst.shape[0]:
        dst[k] = value


@cuda.jit
def reduce_rows_kernel(full, out, extents, strides, keep):
    """``out[r, k] = sum full[row, k]`` over the rows ``row`` of ``full`` ``(R, K)`` that map
    to row ``r`` of ``out`` ``(R_out, K)``: axes with ``keep`` 0 are summed.

    One thread block per output entry (block index ``r * K + k``); its threads (a power of
    two, at most ``config.REDUCE_THREADS``) sum interleaved rows in float64, then a tree in
    shared memory adds the partial sums (a fixed order: the result is reproducible)."""
    idx = cuda.blockIdx.x
    tid = cuda.threadIdx.x
    n_threads = cuda.blockDim.x
    partial = cuda.shared.array(_REDUCE_THREADS, numba.float64)
    n_inner = out.shape[1]
    r = idx // n_inner
    col = idx % n_inner
    base = 0
    count = 1
    rest = r
    for a in range(len(extents) - 1, -1, -1):
        if keep[a]:
            base += (rest % extents[a]) * strides[a]
            rest //= extents[a]
        else:
            count *= extents[a]
    total = 0.0
    for m in range(tid, count, n_threads):
        row = base
        rest = m
        for a in range(len(extents) - 1, -1, -1):
            if not keep[a]:
                row += (rest % extents[a]) * strides[a]
                rest //= extents[a]
        total += full[row, col]
    partial[tid] = total
    cuda.syncthreads()
    width = n_threads // 2
    while width > 0:
        if tid < width:
            partial[tid] += partial[tid + width]
        cuda.syncthreads()
        width //= 2
    if tid == 0:
        out[r, col] = partial[0]


def reduce_threads(count):
    """Threads per output entry for summing ``count`` rows: the smallest power of two that
    covers them, at most ``config.REDUCE_THREADS``."""
    threads = 1
    while threads < count and threads < config.REDUCE_THREADS:
        threads *= 2
    return threads


@cuda.jit
def first_invalid_kernel(flat, positive, out):
    """``out[0] = min`` flat index whose value is NaN/Inf (or, if ``positive``, not > 0);
    ``out[0]`` must hold ``flat.size`` on entry."""
    k = cuda.grid(1)
    if k < flat.shape[0]:
        value = flat[k]
        bad = not (value > -math.inf and value < math.inf)
        if positive and not value > 0.0:
            bad = True
        if bad:
            cuda.atomic.min(out, 0, k)


# ----------------------------------------------------------------------------- helpers

def flat(view):
    """1-D view of a C-contiguous device array."""
    return view.reshape(view.size)


@cuda.jit
def factor_status_kernel(lower, info):
    """Per system ``s`` of lower ``(B, T, p+1, n, n)`` (a factor given by the caller):
    ``info[s]`` = 0, or ``t + 1`` for the first block row ``t`` with a non-finite read
    cell or a diagonal pivot that is not positive (the solves then give NaN)."""
    s = cuda.grid(1)
    if s >= info.shape[0]:
        return
    info[s] = 0
    n = lower.shape[3]
    for t in range(lower.shape[1]):
        for j in range(min(lower.shape[2], t + 1)):  # cells with t - j < 0 are never read
            for a in range(n):
                for b in range(n if j > 0 else a + 1):
                    if not math.isfinite(lower[s, t, j, a, b]):
                        info[s] = t + 1
                        return
        for a in range(n):
            if not lower[s, t, 0, a, a] > 0:
                info[s] = t + 1
                return


def copy_broadcast(device, src, shape, dtype):
    """A new C-contiguous device array of ``shape`` and ``dtype`` holding ``src``
    broadcast (NumPy rules) and cast. Returns ``(user_array, numba_view)``."""
    user, out = device.empty(shape, dtype)
    if out is not None and out.size:
        maps_shape, strides = batch_maps(shape, src=shape_of(src))
        device.launch(copy_broadcast_kernel, out.size, flat(src), flat(out), maps_shape,
                      strides["src"])
    return user, out


def as_dtype(device, view, dtype):
    """``view`` itself if it already has ``dtype``, else a cast copy (numba view)."""
    if view.dtype == dtype:
        return view
    return copy_broadcast(device, view, shape_of(view), dtype)[1]


def zeros(device, shape, dtype):
    """``(user_array, numba_view)`` of zeros."""
    user, out = device.empty(shape, dtype)
    if out is not None and out.size:
        device.launch(fill_kernel, out.size, flat(out), 0)
    return user, out


def reduce_to(device, full, full_rows, target_rows, n_inner, out):
    """Sum ``full`` (rows of shape ``full_rows``, ``n_inner`` entries each) into ``out``
    (rows of shape ``target_rows``) over the broadcast axes."""
    extents, strides, keep = reduce_map(full_rows, target_rows)
    out2 = out.reshape(out.size // n_inner, n_inner)
    full2 = full.reshape(full.size // n_inner, n_inner)
    count = (full.size // n_inner) // max(out.size // n_inner, 1)  # rows per output row
    device.launch_blocks(reduce_rows_kernel, out.size, reduce_threads(count), full2, out2,
                         extents, strides, keep)


# ----------------------------------------------------------------------------- value checks

def _first_invalid(device, view, positive):
    """Flat index of the first invalid entry, or ``None`` (synchronises)."""
    if view.size == 0:
        return None
    sentinel = np.array([view.size], dtype=np.int64)
    out = cuda.to_device(sentinel, stream=device.stream)
    device.launch(first_invalid_kernel, view.size, flat(view), positive, out)
    found = int(out.copy_to_host(stream=device.stream)[0])
    synchronize(device)
    return None if found == view.size else found


def synchronize(device):
    if device.stream != 0:
        device.stream.synchronize()


def check_finite(name, view, device):
    """``ValueError`` (the host path's message) if ``view`` holds NaN or Inf.

    Synchronises the stream and copies one integer to the host: opt-in only."""
    found = _first_invalid(device, view, False)
    if found is not None:
        where = tuple(int(i) for i in np.unravel_index(found, shape_of(view)))
        raise v.not_finite_error(name, where)


def check_positive(name, view, device):
    """``ValueError`` (the host path's message) unless every entry is positive and finite.

    Synchronises the stream and copies at most two numbers to the host: opt-in only."""
    check_finite(name, view, device)
    found = _first_invalid(device, view, True)
    if found is not None:
        where = tuple(int(i) for i in np.unravel_index(found, shape_of(view)))
        value = flat(view)[found:found + 1].copy_to_host(stream=device.stream)[0]
        synchronize(device)
        raise v.not_positive_error(name, value, where)

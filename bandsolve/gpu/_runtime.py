"""Device runtime: numba.cuda, device compilation of the core's helpers, streams, array
views and allocation, kernel launches and batch index maps.

Nothing in this module synchronises the device or copies data between host and device.
"""

import contextlib
import sys
import types

import numba
import numpy as np
from numba import cuda
from numba.core.registry import CPUDispatcher

from . import config

#: True under the Numba CUDA simulator (``NUMBA_ENABLE_CUDASIM=1`` before numba's import).
SIMULATOR = bool(numba.config.ENABLE_CUDASIM)

# ----------------------------------------------------------------------------- compile

_device_functions = {}  # python function -> device function; bounded by the package's helpers


def device_function(helper):
    """The CUDA device function compiled from the source of ``helper``.

    ``helper`` is a ``jit_helper`` (its ``.py_func`` is the plain source) or a plain
    function. The helpers it calls by global name (``jit_helper``s and plain functions of
    this package) are translated the same way, so the whole call tree is compiled from one
    source for both targets.
    """
    func = getattr(helper, "py_func", helper)
    compiled = _device_functions.get(func)
    if compiled is None:
        namespace = dict(func.__globals__)
        for name in func.__code__.co_names:
            value = namespace.get(name)
            if value is np or value is numba:
                raise TypeError(_NUMPY_IN_HELPER.format(
                    f"{func.__module__}.{func.__qualname__}", value.__name__, name))
            if isinstance(value, CPUDispatcher) or _is_package_function(value):
                namespace[name] = device_function(value)
            elif name in _DEVICE_BUILTINS and name not in func.__globals__:
                namespace[name] = _DEVICE_BUILTINS[name]
        clone = types.FunctionType(func.__code__, namespace, func.__name__,
                                   func.__defaults__, func.__closure__)
        clone.__doc__ = func.__doc__
        compiled = cuda.jit(device=True)(clone)
        _device_functions[func] = compiled
    return compiled


# The rule that makes a shared helper compile for both targets: it uses plain Python
# arithmetic, loops, `math` and other helpers, never NumPy or Numba functions (the CUDA
# target implements few of them, e.g. no np.reciprocal; the simulator accepts them all, so
# only this check or compile_check catches them on a machine without a GPU).
_NUMPY_IN_HELPER = ("{} refers to the module {} (as {!r}): helpers shared by the CPU and "
                    "CUDA kernels may use only plain arithmetic, loops, math and other "
                    "helpers (see bandsolve/gpu/_runtime.py::device_function)")


def _min2(a, b):
    return a if a <= b else b


def _max2(a, b):
    return a if a >= b else b


# Numba's CUDA target cannot compile the builtin min/max (their overloads take *args:
# "Signature mismatch" in numba 0.68); the helpers only ever call them with two arguments.
_DEVICE_BUILTINS = {"min": cuda.jit(device=True)(_min2), "max": cuda.jit(device=True)(_max2)}


def _is_package_function(value):
    return (isinstance(value, types.FunctionType)
            and getattr(value, "__module__", "").split(".")[0] == "bandsolve")


# ----------------------------------------------------------------------------- arrays

def is_cupy_array(value):
    return type(value).__module__.split(".")[0] == "cupy"


def _is_numba_array(value):
    # numba device arrays (and the simulator's FakeCUDAArray) expose copy_to_host
    return hasattr(value, "copy_to_host")


def numba_view(name, value, device=None):
    """A C-contiguous Numba device-array view of a device input, sharing its memory.

    CuPy inputs that are not C-contiguous are copied (on ``device``'s stream); other
    producers must hand in C-contiguous arrays (``ValueError`` otherwise).
    """
    if is_cupy_array(value) and not value.flags.c_contiguous:
        import cupy

        with device.cupy_stream() if device is not None else contextlib.nullcontext():
            value = cupy.ascontiguousarray(value)
    if not _is_numba_array(value):
        # sync=False: importing through __cuda_array_interface__ must not block the host;
        # ordering comes from launching on the caller's stream
        value = cuda.as_cuda_array(value, sync=False)
    if value.size and not value.is_c_contiguous():
        raise ValueError(
            f"{name} is a non-contiguous device array (shape {value.shape}); the device "
            "path needs C-contiguous inputs: copy it first (e.g. cupy.ascontiguousarray)")
    return value


def numba_view_strided(value):
    """A Numba device-array view of a device input with its own strides (no copy)."""
    if _is_numba_array(value):
        return value
    return cuda.as_cuda_array(value, sync=False)


class _Interface:
    """``__cuda_array_interface__`` of a strided view of ``base``'s memory (keeps it alive)."""

    def __init__(self, base, ptr, shape, strides, typestr):
        self._base = base
        # stream None: the consumer must not synchronise; ordering comes from the stream
        self.__cuda_array_interface__ = dict(shape=tuple(shape), strides=tuple(strides),
                                             data=(ptr, False), typestr=typestr, version=3,
                                             stream=None)


def device_pointer(view):
    """Device address of a Numba view's first element (0 for an empty array)."""
    return int(view.device_ctypes_pointer.value or 0)


def strided_view(view, shape, strides):
    """A Numba view of ``view``'s memory with ``shape`` and byte ``strides`` (no copy; the
    caller makes sure it stays inside ``view``)."""
    shape, strides = tuple(int(s) for s in shape), tuple(int(s) for s in strides)
    if SIMULATOR:
        array = np.lib.stride_tricks.as_strided(view._ary, shape, strides)
        return type(view)(array)
    return cuda.as_cuda_array(_Interface(view, device_pointer(view), shape, strides,
                                         np.dtype(view.dtype).str), sync=False)


def _extent_bytes(shape, strides, itemsize):
    if 0 in shape:
        return 0
    return itemsize + sum((n - 1) * abs(s) for n, s in zip(shape, strides))


def cupy_view(value):
    """A CuPy array sharing the memory of anything with ``__cuda_array_interface__``, without
    the stream synchronisation that ``cupy.asarray`` performs when the interface names a
    stream: the callers here work on that same stream, so ordering is already given."""
    import cupy

    desc = getattr(value, "__cuda_array_interface__", None)
    if desc is None:  # a DLPack-only producer: asked on CuPy's current stream, no wait
        return cupy.from_dlpack(value)
    shape = tuple(desc["shape"])
    dtype = np.dtype(desc["typestr"])
    strides = desc.get("strides")
    if strides is None:
        strides = _c_strides(shape, dtype.itemsize)
    ptr = int(desc["data"][0] or 0)
    size = _extent_bytes(shape, strides, dtype.itemsize)
    if size == 0:
        return cupy.empty(shape, dtype=dtype)
    memory = cupy.cuda.UnownedMemory(ptr, size, value, cupy.cuda.runtime.getDevice())
    return cupy.ndarray(shape, dtype, cupy.cuda.MemoryPointer(memory, 0), strides=strides)


def _c_strides(shape, itemsize):
    strides, stride = [], itemsize
    for extent in reversed(shape):
        strides.append(stride)
        stride *= max(int(extent), 1)
    return tuple(reversed(strides))


def shape_of(array):
    """``array.shape`` as a plain tuple of ints (the simulator's shapes are not tuples)."""
    return tuple(int(s) for s in array.shape)


def array_kind(*values):
    """``"cupy"`` if any input is a CuPy array (results are then CuPy), else ``"numba"``."""
    return "cupy" if any(is_cupy_array(v) for v in values) else "numba"


# ----------------------------------------------------------------------------- streams

def resolve_stream(stream, kind):
    """The Numba stream to launch on: ``stream`` if given (a Numba stream, a CuPy stream
    or a raw ``cudaStream_t`` as int), else CuPy's current stream for CuPy inputs, else
    Numba's default stream."""
    if SIMULATOR:
        return stream if stream is not None else 0
    if stream is None:
        if kind == "cupy":
            import cupy

            return _external(cupy.cuda.get_current_stream().ptr)
        return cuda.default_stream()
    if isinstance(stream, (int, np.integer)):
        return _external(int(stream))
    if hasattr(stream, "ptr"):  # cupy.cuda.Stream / ExternalStream
        return _external(int(stream.ptr))
    return stream


def _external(ptr):
    # 0 is the legacy default stream; Numba spells that one differently
    return cuda.legacy_default_stream() if ptr == 0 else cuda.external_stream(ptr)


def stream_ptr(stream):
    """``cudaStream_t`` of a Numba stream as an int (0 for the legacy default stream)."""
    if stream == 0 or stream is None:
        return 0
    handle = stream.handle
    value = getattr(handle, "value", handle)
    return int(value or 0)


class Device:
    """Per-call device context: the array kind of the results, the stream, allocation and
    launches. Allocation uses CuPy's memory pool whenever CuPy is installed, for Numba-array
    callers too (stream ordered, no implicit synchronisation; Numba's allocator frees
    memory in batches with ``cuMemFree``, which synchronises the device), and Numba's
    allocator otherwise."""

    def __init__(self, kind, stream):
        self.kind = kind
        self.stream = stream

    @classmethod
    def for_inputs(cls, values, stream=None):
        kind = array_kind(*values)
        return cls(kind, resolve_stream(stream, kind))

    def cupy_stream(self):
        """Context in which CuPy works on this call's stream (its memory pool is stream
        ordered): a no-op when that is CuPy's current stream already."""
        ptr = stream_ptr(self.stream)
        if ptr == stream_ptr_of_cupy_current():
            return contextlib.nullcontext()
        import cupy

        return cupy.cuda.ExternalStream(ptr)

    def empty(self, shape, dtype):
        """``(user_array, numba_view)`` of a new uninitialised device array."""
        shape = tuple(int(s) for s in shape)
        dtype = np.dtype(dtype)
        cupy = None if SIMULATOR else _cupy_or_none()
        if cupy is not None:
            # a Numba caller's device is Numba's current one, which CuPy need not share
            where = (contextlib.nullcontext() if self.kind == "cupy"
                     else cupy.cuda.Device(cuda.get_current_device().id))
            with where, self.cupy_stream():
                array = cupy.empty(shape, dtype=dtype)
            view = cuda.as_cuda_array(array, sync=False) if array.size else None
            if self.kind == "cupy":
                return array, view
            if view is None:  # Numba caller, empty result: nothing to keep alive
                view = cuda.device_array(shape, dtype=dtype, stream=self.stream)
            return view, view
        array = cuda.device_array(shape, dtype=dtype, stream=self.stream)
        return array, array

    def scratch(self, shape, dtype):
        """A numba view of a new device array that the caller never sees (at least one
        element, so that kernels always receive a valid pointer)."""
        shape = tuple(max(int(s), 1) for s in shape)
        return self.empty(shape, dtype)[1]

    def launch(self, kernel, n_threads, *args, threads=None):
        """One thread per item (``n_threads`` items), 1-D grid; nothing if there are none."""
        if n_threads <= 0:
            return
        threads = min(threads or config.THREADS_PER_BLOCK, n_threads)
        blocks = (n_threads + threads - 1) // threads
        kernel[blocks, threads, self.stream](*args)

    def launch_blocks(self, kernel, n_blocks, threads, *args):
        """One thread block per item: grid ``n_blocks``, ``threads`` threads per block."""
        if n_blocks <= 0:
            return
        kernel[n_blocks, threads, self.stream](*args)

    def as_user(self, view):
        """A numba view as an array of the caller's kind (zero-copy, no synchronisation)."""
        if self.kind == "cupy":
            return cupy_view(view)
        return view

    def strided(self, view, shape, strides):
        """``(user_array, numba_view)`` of ``view``'s memory with ``shape`` and byte
        ``strides``, no copy."""
        new_view = strided_view(view, shape, strides)
        if self.kind == "cupy":
            return cupy_view(new_view), new_view
        return new_view, new_view


def _cupy_or_none():
    cupy = sys.modules.get("cupy")
    if cupy is not None:
        return cupy
    try:
        import cupy
    except ImportError:
        return None
    return cupy


def stream_ptr_of_cupy_current():
    cupy = sys.modules.get("cupy")
    return cupy.cuda.get_current_stream().ptr if cupy is not None else 0


# ----------------------------------------------------------------------------- batch maps

def _merge_axes(full, patterns):
    """Merge adjacent axes of ``full`` (extents > 1) whose broadcast pattern (which inputs
    vary along them) is the same. Returns the merged extents and their patterns."""
    extents, merged_patterns = [], []
    for extent, pattern in zip(full, patterns):
        if extent == 1:
            continue
        if merged_patterns and merged_patterns[-1] == pattern:
            extents[-1] *= extent
        else:
            extents.append(extent)
            merged_patterns.append(pattern)
    return extents, merged_patterns


def batch_maps(full_batch, **input_batches):
    """Index maps from the flat index of a system of ``full_batch`` to the flat row of
    each input (whose batch shape broadcasts to ``full_batch``), for :func:`source_row`.

    Returns ``(shape, {name: strides})``, tuples of ``config.MAX_BATCH_AXES`` ints (the
    axes merged where the inputs broadcast alike, padded with extent 1). ``ValueError``
    if the broadcast pattern needs more axes than that.
    """
    full = tuple(int(s) for s in full_batch)
    names = list(input_batches)
    padded = {name: (1,) * (len(full) - len(shape)) + tuple(shape)
              for name, shape in input_batches.items()}
    patterns = [tuple(padded[name][a] != 1 for name in names) for a in range(len(full))]
    extents, merged = _merge_axes(full, patterns)
    rank = config.MAX_BATCH_AXES
    if len(extents) > rank:
        raise ValueError(
            f"the batch axes {full} broadcast in {len(extents)} independent groups across "
            f"the inputs; the device path supports at most {rank} (merge or materialise "
            "some batch axes first)")
    strides = {}
    for k, name in enumerate(names):
        stride, own = 1, []
        for extent, pattern in zip(reversed(extents), reversed(merged)):
            own.append(stride if pattern[k] else 0)
            stride *= extent if pattern[k] else 1
        own.reverse()
        strides[name] = (0,) * (rank - len(own)) + tuple(own)
    shape = (1,) * (rank - len(extents)) + tuple(extents)
    return shape, strides


def reduce_map(full_shape, target_shape):
    """Map for :func:`reduce_rows_kernel`: sum an array of row shape ``full_shape`` (batch
    and time axes) over the axes where ``target_shape`` (same rank after left-padding
    with 1) has extent 1. Returns ``(extents, strides, keep)`` tuples of
    ``config.MAX_BATCH_AXES + 1`` ints (strides: C-order strides of the full rows)."""
    full = tuple(int(s) for s in full_shape)
    target = (1,) * (len(full) - len(target_shape)) + tuple(int(s) for s in target_shape)
    patterns = [(target[a] != 1,) for a in range(len(full))]
    extents, merged = _merge_axes(full, patterns)
    rank = config.MAX_BATCH_AXES + 1
    if len(extents) > rank:
        raise ValueError(f"cannot reduce {full} to {target} on the device: too many "
                         f"alternating broadcast axes (at most {rank})")
    strides, stride = [], 1
    for extent in reversed(extents):
        strides.append(stride)
        stride *= extent
    strides.reverse()
    pad = rank - len(extents)
    return ((1,) * pad + tuple(extents), (0,) * pad + tuple(strides),
            (0,) * pad + tuple(int(m[0]) for m in merged))

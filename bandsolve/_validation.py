"""Input checks and batch broadcasting at the public boundary (``docs/design.md``, section 4).

Everything here runs before any kernel: structural misuse is a ``ValueError`` naming the
argument, the expected and the received shape or value; a wrong dtype is a ``TypeError``
saying how to fix it. Inputs are read, never written.
"""

import math
import operator

import numpy as np

SUPPORTED_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))


def is_device_array(value):
    """True for CuPy/Numba device arrays (``__cuda_array_interface__``) and for the Numba
    CUDA simulator's ``FakeCUDAArray``, which lacks that attribute."""
    if hasattr(value, "__cuda_array_interface__"):
        return True
    return type(value).__name__ == "FakeCUDAArray"


def backend_of(**arrays):
    """``"host"`` or ``"device"`` for the named inputs; ``TypeError`` when they are mixed."""
    kinds = {name: ("device" if is_device_array(a) else "host") for name, a in arrays.items()}
    if len(set(kinds.values())) > 1:
        listing = ", ".join(f"{name} on the {kind}" for name, kind in kinds.items())
        raise TypeError(
            f"inputs must all live on the host (NumPy) or all on the device (CuPy / CUDA "
            f"arrays); got {listing}. Move them with cupy.asarray(...) or cupy.asnumpy(...)."
        )
    return next(iter(kinds.values()))


def check_dtype(name, dtype):
    """``TypeError`` unless ``dtype`` is float32 or float64."""
    dtype = np.dtype(dtype)
    if dtype not in SUPPORTED_DTYPES:
        raise TypeError(
            f"{name} has dtype {dtype}; bandsolve works in float32 or float64 "
            f"(convert with .astype(numpy.float64) or .astype(numpy.float32))"
        )
    return dtype


def as_host_array(name, value):
    """``numpy.asarray(value)`` with a float32/float64 dtype check (no copy when possible)."""
    array = np.asarray(value)
    check_dtype(name, array.dtype)
    return array


def check_rank(name, array, min_ndim, layout):
    """``ValueError`` unless ``array`` has at least ``min_ndim`` axes."""
    if array.ndim < min_ndim:
        raise ValueError(
            f"{name} must have shape {layout} (at least {min_ndim} axes); got shape {array.shape}"
        )


def not_finite_error(name, where):
    """The error for NaN/Inf at index ``where`` (shared by the host and device checks)."""
    return ValueError(f"{name} contains NaN or Inf (first at index {where})")


def not_positive_error(name, value, where):
    """The error for a non-positive ``value`` at index ``where`` (host and device)."""
    return ValueError(f"{name} must be positive; got {value!r} at index {where}")


def check_finite(name, array):
    """``ValueError`` if ``array`` holds NaN or Inf, naming the first bad position."""
    finite = np.isfinite(array)
    if not finite.all():
        where = tuple(int(i) for i in np.argwhere(~finite)[0])
        raise not_finite_error(name, where)


def check_positive(name, array):
    """``ValueError`` unless every entry of ``array`` is positive (after ``check_finite``)."""
    if array.size and not (array > 0).all():
        where = tuple(int(i) for i in np.argwhere(~(array > 0))[0])
        raise not_positive_error(name, array[where], where)


def check_weight(name, value):
    """A positive, finite scalar weight as a Python float."""
    if np.ndim(value) != 0:
        raise ValueError(f"{name} must be a scalar; got shape {np.shape(value)}")
    if np.iscomplexobj(value) or isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{name} must be a real number; got {value!r}")
    weight = float(value)
    if not (math.isfinite(weight) and weight > 0.0):
        raise ValueError(f"{name} must be positive and finite; got {weight!r}")
    return weight


def check_count(name, value, minimum=0):
    """An integer ``>= minimum`` (``ValueError`` otherwise)."""
    try:
        count = operator.index(value)
    except TypeError:
        raise TypeError(f"{name} must be an integer; got {value!r}") from None
    if count < minimum:
        raise ValueError(f"{name} must be >= {minimum}; got {count}")
    return count


def broadcast_batch(**shapes):
    """NumPy broadcast of the named batch shapes; ``ValueError`` naming them if impossible."""
    try:
        return np.broadcast_shapes(*shapes.values())
    except ValueError:
        listing = ", ".join(f"{name} {shape}" for name, shape in shapes.items())
        raise ValueError(
            f"batch shapes do not broadcast (NumPy rules): {listing}"
        ) from None


def flat_batch_index(input_batch, full_batch):
    """For each system of ``full_batch`` (C order), the row of the flattened input with
    batch shape ``input_batch`` that it reads. Returns int64 ``(prod(full_batch),)``."""
    rows = np.arange(math.prod(input_batch), dtype=np.int64).reshape(input_batch)
    # a fresh writable copy: Numba compiles read-only arrays as a separate type
    return np.array(np.broadcast_to(rows, full_batch), order="C").reshape(-1)


def sum_to_shape(array, shape):
    """Sum ``array`` over the axes along which ``shape`` was broadcast to ``array.shape``."""
    extra = array.ndim - len(shape)
    if extra:
        array = array.sum(axis=tuple(range(extra)))
    axes = tuple(i for i, (have, want) in enumerate(zip(array.shape, shape)) if want == 1 and have != 1)
    if axes:
        array = array.sum(axis=axes, keepdims=True)
    return array.reshape(shape)

"""Input checks and batch broadcasting at the public boundary (``docs/design.md``, section 4).

Everything here runs before any kernel: structural misuse is a ``ValueError`` naming the
argument, the expected and the received shape or value; a wrong dtype is a ``TypeError``
saying how to fix it. Inputs are read, never written.
"""

import math
import numbers
import operator

import numpy as np

from .errors import InputValueError

SUPPORTED_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))

# Largest sequence length (and other count) accepted: beyond it no array fits in memory,
# and NumPy's own error ("Maximum allowed dimension exceeded") would not name the argument.
MAX_COUNT = 2**31 - 1


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
    if dtype.byteorder not in "=|" and dtype.newbyteorder("=") in SUPPORTED_DTYPES:
        raise TypeError(
            f"{name} has dtype {dtype.str}, a non-native byte order; bandsolve works in "
            f"native float32 or float64 (convert with .astype({dtype.newbyteorder('=').name}))")
    if dtype not in SUPPORTED_DTYPES:
        raise TypeError(
            f"{name} has dtype {dtype}; bandsolve works in float32 or float64 "
            f"(convert with .astype(numpy.float64) or .astype(numpy.float32))"
        )
    return dtype


def as_host_array(name, value):
    """``numpy.asarray(value)`` with a float32/float64 dtype check (no copy when possible).

    Masked arrays are a ``TypeError`` (the kernels would ignore the mask), so are tensors
    that require grad (use the torch adapter); ragged nested lists are a ``ValueError``;
    a byte-swapped (big-endian) float array is converted to native byte order (a copy).
    """
    if isinstance(value, np.ma.MaskedArray):
        raise TypeError(
            f"{name} is a numpy.ma.MaskedArray; bandsolve has no notion of masked entries "
            f"and would silently ignore the mask. Pass {name}.filled(value) or "
            f"numpy.asarray({name}) if the mask does not matter")
    if getattr(value, "requires_grad", False) is True:
        raise TypeError(
            f"{name} is a tensor that requires grad; the NumPy core cannot differentiate "
            f"it. Use bandsolve_torch.smnn_solve, or pass {name}.detach()")
    try:
        array = np.asarray(value)
    except (ValueError, TypeError, RuntimeError) as error:
        raise ValueError(
            f"{name} cannot be converted to an array (a ragged nested list, or an "
            f"unsupported object?): {error}") from None
    if array.dtype.byteorder not in "=|" and array.dtype.newbyteorder("=") in SUPPORTED_DTYPES:
        array = array.astype(array.dtype.newbyteorder("="))
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
    return InputValueError(name, where, "{name} contains NaN or Inf (first at index {index})")


def not_positive_error(name, value, where):
    """The error for a non-positive ``value`` at index ``where`` (host and device)."""
    value = value.item() if hasattr(value, "item") else value  # 0.5, not np.float64(0.5)
    shown = repr(value).replace("{", "{{").replace("}", "}}")
    return InputValueError(name, where, "{name} must be positive; got " + shown
                           + " at index {index}")


# Contiguous float arrays at least this large are tested in one compiled pass first
_FAST_TEST_SIZE = 4096


def check_finite(name, array):
    """``ValueError`` if ``array`` holds NaN or Inf, naming the first bad position."""
    if (array.dtype.kind == "f" and array.size >= _FAST_TEST_SIZE
            and array.flags.c_contiguous):
        from .kernels.finite import all_finite_any_size

        # no boolean temporary (and no BLAS call, whose threads keep spinning after it
        # and slow the kernels' own threads on a small machine)
        if all_finite_any_size(array.reshape(-1)):
            return
    finite = np.isfinite(array)
    if not finite.all():
        where = tuple(int(i) for i in np.argwhere(~finite)[0])
        raise not_finite_error(name, where)


def check_positive(name, array):
    """``ValueError`` unless every entry of ``array`` is positive (after ``check_finite``)."""
    if array.size and not (array > 0).all():
        where = tuple(int(i) for i in np.argwhere(~(array > 0))[0])
        raise not_positive_error(name, array[where], where)


def _real_number(name, value):
    """``value`` as a Python float if it is a real number (int or float, NumPy scalars
    and 0-d arrays of those included); ``TypeError`` for strings, None, bools, complex
    and other objects, ``ValueError`` for arrays with axes."""
    if isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{name} must be a real number; got the bool {value!r}")
    if isinstance(value, numbers.Real):
        return float(value)
    if hasattr(value, "shape") and hasattr(value, "dtype"):  # NumPy / CuPy / JAX arrays
        if len(value.shape) != 0:
            raise ValueError(f"{name} must be a scalar; got shape {tuple(value.shape)}")
        try:  # torch dtypes print as "torch.float64"
            kind = np.dtype(str(value.dtype).removeprefix("torch.")).kind
        except TypeError:
            kind = "O"
        if kind in "iuf":
            return float(value)
    raise TypeError(f"{name} must be a real number (int or float); got "
                    f"{type(value).__name__} {value!r}")


def check_weight(name, value):
    """A positive, finite scalar weight as a Python float (``TypeError`` unless it is a
    real number: not a string, None, bool or complex)."""
    weight = _real_number(name, value)
    if not (math.isfinite(weight) and weight > 0.0):
        raise ValueError(f"{name} must be positive and finite; got {weight!r}")
    return weight


def check_count(name, value, minimum=0, maximum=MAX_COUNT):
    """An integer in ``[minimum, maximum]`` as a Python int: ``TypeError`` unless it is a
    true integer (not a bool or float), ``ValueError`` if out of range."""
    if isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{name} must be an integer; got the bool {value!r}")
    try:
        count = operator.index(value)
    except TypeError:
        raise TypeError(f"{name} must be an integer; got {type(value).__name__} "
                        f"{value!r}") from None
    if count < minimum:
        raise ValueError(f"{name} must be >= {minimum}; got {count}")
    if count > maximum:
        raise ValueError(f"{name} must be <= {maximum}; got {count}")
    return count


def check_flag(name, value):
    """``value`` as a bool if it is ``True``/``False`` (``numpy.bool_`` included);
    ``TypeError`` for anything else (strings, numbers, arrays), which would otherwise be
    read by truthiness."""
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    raise TypeError(f"{name} must be True or False; got {type(value).__name__} {value!r}")


def check_init_shape(init_shape):
    """``(Ti, Oi)``: a tuple or list of two non-negative integers (``TypeError`` for
    anything else, ``ValueError`` for a wrong length or negative counts)."""
    if not isinstance(init_shape, (tuple, list)):
        raise TypeError(f"init_shape must be a pair (Ti, Oi) of non-negative integers; got "
                        f"{type(init_shape).__name__} {init_shape!r}")
    if len(init_shape) != 2:
        raise ValueError(f"init_shape must be a pair (Ti, Oi) of non-negative integers; got "
                         f"{len(init_shape)} entries {tuple(init_shape)!r}")
    return (check_count("init_shape[0] (Ti)", init_shape[0]),
            check_count("init_shape[1] (Oi)", init_shape[1]))


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

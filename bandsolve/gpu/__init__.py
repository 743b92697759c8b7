"""CUDA backend (Numba CUDA kernels on device arrays).

Users do not call this package directly: ``bandsolve.smnn_solve`` and friends dispatch here
when their inputs are CuPy arrays, Numba device arrays or any object with
``__cuda_array_interface__`` (and, under ``NUMBA_ENABLE_CUDASIM=1``, the simulator's arrays).
Importing it imports ``numba.cuda``.

Public names (re-exports):

- :class:`DeviceSMNNFactorization`: what ``bandsolve.smnn_factor`` returns for device inputs.
- :class:`Status`: per-system factorisation outcome kept on the device
  (``.check()`` synchronises and raises ``FactorizationError``).
- :func:`check_finite`, :func:`check_positive`: the opt-in value checks (they synchronise).
- :mod:`config`: tunables and the rule that picks the kernel shape.

Modules: ``thread`` (one thread per system), ``block`` (a thread block per system),
``partitioned`` (parallel in time), ``gradient`` (right-hand sides and gradient pieces),
``arrays`` (elementwise kernels and reductions), ``_runtime`` (compilation, streams, views).
"""

from . import config
from .driver import DeviceSMNNFactorization, Status


def check_finite(name, array, *, stream=None):
    """Raise ``ValueError`` (the host path's message) if device ``array`` holds NaN or Inf.

    Synchronises ``stream`` (default: CuPy's current stream for CuPy arrays, else Numba's
    default stream): call it where a synchronisation is acceptable.
    """
    from . import arrays
    from ._runtime import Device, numba_view

    device = Device.for_inputs((array,), stream)
    arrays.check_finite(name, numba_view(name, array, device), device)


def check_positive(name, array, *, stream=None):
    """Raise ``ValueError`` (the host path's message) unless every entry of device ``array``
    is positive and finite. Synchronises, like :func:`check_finite`."""
    from . import arrays
    from ._runtime import Device, numba_view

    device = Device.for_inputs((array,), stream)
    arrays.check_positive(name, numba_view(name, array, device), device)


__all__ = ["DeviceSMNNFactorization", "Status", "check_finite", "check_positive", "config"]

"""Which backend runs a call: the host (NumPy, :mod:`bandsolve.cpu.driver`) or the device
(CUDA arrays, :mod:`bandsolve.gpu.driver`).

The public functions ask :func:`device_call` once and hand the call to that backend's
driver; both drivers have the same ``factor`` / ``solve`` / ``factor_solve``
functions. The device driver is imported on first use, since it imports ``numba.cuda``.
"""

from . import _validation as v


def on_device(**arrays):
    """True for device inputs, False for host inputs, ``TypeError`` if they are mixed."""
    return v.backend_of(**arrays) == "device"


def gpu_driver():
    """The CUDA backend's driver (imported on first use: it imports ``numba.cuda``)."""
    from .gpu import driver

    return driver


def device_call(stream, algorithm, **arrays):
    """``(gpu_driver, device_options)`` for device inputs, ``None`` for host inputs (whose
    device-only keywords must keep their defaults). Callers hold the host driver
    themselves (``device_call(...) or (host_driver, {})``), so that the host driver can
    dispatch through this module too without an import cycle."""
    if on_device(**arrays):
        return gpu_driver(), {"stream": stream, "algorithm": algorithm}
    host_options(stream, algorithm)
    return None


def host_options(stream, algorithm):
    """The device-only keywords must keep their defaults for host inputs."""
    if stream is not None:
        raise TypeError("stream= applies to device (CuPy / CUDA) inputs; these inputs are "
                        "host (NumPy) arrays")
    if algorithm != "auto":
        raise ValueError(f"algorithm={algorithm!r} picks a CUDA kernel shape; host (NumPy) "
                         "inputs use the CPU solver (leave algorithm='auto')")

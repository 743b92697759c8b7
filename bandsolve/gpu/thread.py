"""One thread per system: the kernel shape for small blocks and large batches.

Each thread runs the CPU core's sequential recurrences (``kernels/assembly.py::assemble_block_row``
and ``kernels/banded.py``, compiled from the same source) on its own system. The factor is
stored with the system index innermost, so that the threads of a warp, working on the same
cell of their systems, touch consecutive addresses (coalesced)::

    lower[t, j, a, b, s] == L_s[t, t - j][a, b]          shape (T, p+1, n, n, Bl)

(the per-system view ``lower[..., s]`` is the ordinary ``(T, p+1, n, n)`` storage of
``bandsolve.banded``, with the same never-read cells). Right-hand sides and solutions keep
the caller's layout ``(B, T, n)``.
"""

import math

import numba
from numba import cuda

from ..kernels.assembly import assemble_block_row
from ..kernels.banded import backward_substitute, factor_block_row, forward_substitute
from . import config
from ._runtime import device_function
from .arrays import source_row

_assemble_block_row = device_function(assemble_block_row)
_factor_block_row = device_function(factor_block_row)
_forward_substitute = device_function(forward_substitute)
_backward_substitute = device_function(backward_substitute)
_source_row = device_function(source_row)

_SCRATCH = 2 * config.MAX_ORDERS


@cuda.jit
def factor_kernel(coefficients, steps, shape, c_strides, h_strides, n_orders, n_init_steps,
                  n_init_orders, we2, wi2, ws2, central, lower, info):
    """Assemble and factor system ``s = thread`` block row by block row.

    coefficients ``(Bc, Tc, E, n)``, steps ``(Bh, Th)`` with index maps from the
    left-hand-side batch; lower ``(T, p+1, n, n, Bl)``; info ``(Bl,)`` gets 0 or ``t + 1``.
    """
    s = cuda.grid(1)
    if s >= info.shape[0]:
        return
    rows = cuda.local.array((_SCRATCH, _SCRATCH), numba.float64)
    drows = cuda.local.array((_SCRATCH, _SCRATCH), numba.float64)
    system = lower[:, :, :, :, s]
    c = coefficients[_source_row(s, shape, c_strides)]
    h = steps[_source_row(s, shape, h_strides)]
    n_steps = system.shape[0]
    info[s] = 0
    for t in range(n_steps):
        _assemble_block_row(c, h, t, n_steps, n_orders, n_init_steps, n_init_orders,
                            we2, wi2, ws2, central, system[t], rows, drows)
        if _factor_block_row(system, t) != 0:
            info[s] = t + 1
            return


@cuda.jit
def solve_kernel(lower, info, shape, l_strides, skip, x):
    """``x[i] <- M^{-1} x[i]`` for right-hand side ``i = thread``; x ``(B, T, n)``.

    The factor of ``i`` is ``lower[..., source_row(i)]``; a failed factor gives NaN;
    ``x[i]`` is left alone where ``skip[i] != 0`` (``(B,)``: refinement has stopped)."""
    i = cuda.grid(1)
    if i >= x.shape[0]:
        return
    s = _source_row(i, shape, l_strides)
    v = x[i]
    if info[s] != 0:
        for t in range(v.shape[0]):
            for a in range(v.shape[1]):
                v[t, a] = math.nan
        return
    if skip[i] != 0:
        return
    system = lower[:, :, :, :, s]
    _forward_substitute(system, v)
    _backward_substitute(system, v)

"""Thread-per-system CUDA kernels specialised on ``(D, O, E)``: the CPU lane kernels'
straight-line step code (``bandsolve/kernels/codegen.py``, ``target="cuda"``) with one
CUDA thread per system instead of one vector lane.

The layout is the CPU lanes' with a single group as wide as the batch: quantity ``k`` of
step ``t`` of system ``w`` at ``array[0, (t*K + k)*W + w]``, so the threads of a warp read
and write consecutive addresses (coalesced), and the blocks of a step are named scalars
that live in registers instead of ``n``-sized loops over global memory.

``smnn_solve`` and ``smnn_solve_vjp`` on device arrays use them through
``bandsolve/gpu/lane_solve.py`` (``algorithm="auto"``, see :func:`lane_solve.applies`).
They pass the CUDA simulator against the least-squares oracle and finite differences
(``tests/gpu_lane_cases.py``) and compile for sm_90
(``bandsolve.gpu.compile_check.lane_report``: registers, spills); nothing here has run on a real GPU yet.
"""

import threading

from ..kernels import codegen

_modules = {}
_lock = threading.Lock()

_UNSIGNED = {"cs", "rs", "gs", "hs"}
_INTEGER = {"n_groups", "T", "n_init", "W", "max_steps"}
_SCALAR = {"we2", "ws", "tol", "first_limit"}
_VECTOR = {"pins", "previous"}
_STATE = {"status"}


def kernels(n_dims, n_orders, n_equations):
    """The generated CUDA module for shape ``(D, O, E)`` (one per process)."""
    key = (n_dims, n_orders, n_equations)
    with _lock:
        if key not in _modules:
            source = codegen.generate(*key, width=1, target="cuda")
            _modules[key] = codegen.load(source, "bandsolve_cuda_lanes_"
                                         + codegen.Layout(*key).key("cuda"))
        return _modules[key]


def argument_types(kernel):
    """Numba types of ``kernel``'s arguments, from their names (the generator's
    convention): strides ``uint64``, counts ``int64``, weights ``float64``, ``pins``
    and ``previous`` ``float64[::1]``, ``status`` ``int64[::1]``, every other array
    ``float64[:, ::1]``."""
    from numba import types

    names = kernel.py_func.__code__.co_varnames[:kernel.py_func.__code__.co_argcount]
    out = []
    for name in names:
        if name in _UNSIGNED:
            out.append(types.uint64)
        elif name in _INTEGER:
            out.append(types.int64)
        elif name in _SCALAR:
            out.append(types.float64)
        elif name in _VECTOR:
            out.append(types.float64[::1])
        elif name in _STATE:
            out.append(types.int64[::1])
        else:
            out.append(types.float64[:, ::1])
    return tuple(out)


KERNELS = ("factor_forward", "backward", "forward", "refine", "refine_plain")

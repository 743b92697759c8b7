"""Numba compilation policy in one place (STYLE habit: tunables in one module).

No ``fastmath``: it would let LLVM assume that NaN and Inf never occur, and the factorisation
relies on NaN failing the ``pivot > 0`` test. ``cache=True`` keeps import and first call fast
after the first run on a machine.
"""

import numba

JIT_OPTIONS = dict(cache=True, nogil=True, error_model="numpy")


def jit_helper(func):
    """Compile a small scalar/block helper for the CPU.

    The undecorated function stays reachable as ``.py_func`` so that the CUDA backend can
    compile the same source as a device function.
    """
    return numba.njit(**JIT_OPTIONS)(func)


def jit_kernel(func):
    """Compile a batch kernel whose outer loop is a ``numba.prange`` over systems."""
    return numba.njit(parallel=True, **JIT_OPTIONS)(func)

"""Numba compilation policy, in one place (all its tunables live in this module).

No ``fastmath``: it would let LLVM assume that NaN and Inf never occur, and the factorisation
relies on NaN failing the ``pivot > 0`` test. (The generated lane kernels of
``bandsolve/cpu/lanes`` allow FMA contraction only, ``fastmath={"contract"}``, which keeps
NaN and Inf semantics.) ``cache=True`` keeps import and first call fast
after the first run on a machine.

Where the cache goes: Numba writes it beside the installed sources (``__pycache__``), else
in the user's cache folder (``~/.cache/numba``), or wherever the ``NUMBA_CACHE_DIR``
environment variable says. When none of these is writable (a read-only container or
cluster node with a read-only home), Numba refuses ``cache=True`` at decoration time;
bandsolve then compiles without the disk cache (every process compiles on first use) and
warns once, naming ``NUMBA_CACHE_DIR``.
"""

import types
import warnings

import numba

JIT_OPTIONS = dict(cache=True, nogil=True, error_model="numpy")

_NO_CACHE_MESSAGE = (
    "bandsolve: Numba cannot write its on-disk cache (not beside the installed package, "
    "not in the home folder: {error}); the kernels are compiled in every new process "
    "instead (tens of seconds at first use). Set the environment variable NUMBA_CACHE_DIR "
    "to a writable folder to keep them between runs.")


class _CachePolicy:
    """Whether ``cache=True`` still works in this process; set off by the first refusal,
    so that one warning is given and later kernels do not try again."""

    enabled = True


def _njit(func, **options):
    """``numba.njit(**options, **JIT_OPTIONS)(func)``, without the disk cache if Numba has
    nowhere to write it."""
    if _CachePolicy.enabled:
        try:
            return numba.njit(**options, **JIT_OPTIONS)(func)
        except RuntimeError as error:
            if "cannot cache" not in str(error):
                raise
            _CachePolicy.enabled = False
            warnings.warn(_NO_CACHE_MESSAGE.format(error=error), RuntimeWarning, stacklevel=3)
    return numba.njit(**options, **dict(JIT_OPTIONS, cache=False))(func)

# Below this many block rows in a batch, kernels run on one thread (a few ms of work):
# on a busy machine a threaded launch can wait ~10-20 ms for a second core.
PARALLEL_MIN_BLOCK_ROWS = 8192


def jit_helper(func):
    """Compile a small scalar/block helper for the CPU.

    The undecorated function stays reachable as ``.py_func`` so that the CUDA backend can
    compile the same source as a device function. Inlined at Numba's IR level: helpers
    take array views, and a call boundary would keep the reference-count updates of
    every view (atomic operations, ~O(10) per block row) that inlining lets Numba prune.
    """
    return _njit(func, inline="always")


def jit_reduction(func, parallel=False):
    """Compile a reduction loop that LLVM may vectorise: the only fast-math flag is the
    reassociation of the sum (``fastmath={"reassoc"}``), so NaN and Inf keep their
    meaning (the flags that drop them are never set). ``parallel``: its ``prange`` loops
    run threaded (for passes over large inputs)."""
    return _njit(func, fastmath={"reassoc"}, parallel=parallel)


def jit_parallel_reduction(func):
    """:func:`jit_reduction` with threaded ``prange`` loops."""
    return jit_reduction(func, parallel=True)


class BatchKernel:
    """A kernel whose outer loop is a ``numba.prange`` over systems, compiled twice:
    threaded, and serial for a single system (waking the thread pool for one system costs
    more than it gives, and on a busy machine it waits for a second core).

    ``kernel(*args)`` runs threaded; ``kernel.for_batch(n, T)(*args)`` picks by the work:
    threaded only for at least two systems and ``PARALLEL_MIN_BLOCK_ROWS`` block rows in
    all (below that, waking and joining the thread pool costs more than it saves).
    """

    def __init__(self, func):
        self.py_func = func
        self.parallel = _njit(func, parallel=True)
        # a renamed copy, so the on-disk cache keeps the two compilations apart
        serial = types.FunctionType(func.__code__, func.__globals__, func.__name__ + "_serial",
                                    func.__defaults__, func.__closure__)
        serial.__qualname__ = func.__qualname__ + "_serial"
        serial.__doc__ = func.__doc__
        self.serial = _njit(serial)
        self.__doc__ = func.__doc__
        self.__name__ = func.__name__

    def __call__(self, *args):
        return self.parallel(*args)

    def for_batch(self, n_systems, n_steps):
        if n_systems < 2 or n_systems * n_steps < PARALLEL_MIN_BLOCK_ROWS:
            return self.serial
        return self.parallel


def jit_kernel(func):
    """Compile a batch kernel whose outer loop is a ``numba.prange`` over systems."""
    return BatchKernel(func)


def jit_routine(func):
    """Compile a per-system routine (a whole sweep, called once per system) for the CPU.

    Not inlined: the routine is large and called once per system, so a call boundary costs
    nothing measurable, while inlining it into every kernel would multiply compile time.
    ``.py_func`` stays reachable for the CUDA backend, as for :func:`jit_helper`.
    """
    return _njit(func)

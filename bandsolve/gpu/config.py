"""Tunables of the CUDA backend, in one place, and the rule that picks a kernel shape.

Constants marked *compile-time* are baked into the kernels when they are first compiled;
change them before the first device call. The thresholds are starting points to be
measured on the target GPU (``tools/gpu_check.sh`` times the paper's shapes and records
which kernel shape the rule picked for each).
"""

import math

#: Threads per block of the one-thread-per-item kernels.
THREADS_PER_BLOCK = 128

#: Threads per block of the one-block-per-system kernels (threads own block rows).
BLOCK_THREADS = 32

#: Threads per output entry of the reduction over broadcast axes (a power of two;
#: *compile-time*: the size of its shared-memory scratch).
REDUCE_THREADS = 128

#: Largest block size ``n = D*O`` factored by one thread per system; larger blocks get a
#: cooperating thread block per system.
THREAD_MAX_BLOCK_SIZE = 12

#: Batches (number of systems) below this use the parallel-in-time solver when ``T`` is
#: long enough: a batch this small cannot fill the GPU with one thread per system.
PARALLEL_IN_TIME_MAX_BATCH = 2048

#: The parallel-in-time solver needs at least this many steps per interior and at least
#: two interiors.
MIN_CHUNK = 8

#: The parallel-in-time solver aims at about this many concurrent interiors in total.
TARGET_PARALLELISM = 65536

#: Largest derivative order ``O`` on the device (*compile-time*: the Taylor-row scratch is
#: a fixed-size local array of ``2*MAX_ORDERS`` squared float64).
MAX_ORDERS = 8

#: Batch axes that broadcast independently across the inputs, after merging (the index
#: maps are fixed-length tuples; *compile-time*).
MAX_BATCH_AXES = 4

ALGORITHMS = ("auto", "thread", "block", "partitioned")

#: ``algorithm="auto"`` solves with the generated thread-per-system kernels
#: (``gpu/lane_solve.py``) where they apply; ``False`` keeps the ``"thread"`` kernels.
USE_LANES = True
#: Fewer systems than this use the ``"thread"`` kernels: one thread per system leaves
#: the GPU mostly idle either way, and a new shape costs its kernels' compilation.
LANES_MIN_SYSTEMS = 256
#: Threads per block of the lane kernels: small blocks spread a batch of a few thousand
#: systems over every SM (12,960 systems: 203 blocks of 64 on 132 SMs).
LANE_THREADS = 64


def chunk_length(n_steps, n_systems, bandwidth):
    """Interior length ``m`` of the parallel-in-time solver.

    About ``sqrt(T)`` balances the parallel interior sweeps (``~m`` steps each) against
    the sequential separator sweep (``~T/m`` steps); if that would give more interiors
    than ``TARGET_PARALLELISM`` in total, longer interiors do less redundant work.
    """
    m = max(MIN_CHUNK, bandwidth, math.isqrt(max(n_steps, 1)))
    wanted = math.ceil(n_steps * max(n_systems, 1) / TARGET_PARALLELISM)
    return max(m, wanted)


def choose_algorithm(block_size, n_steps, n_systems, bandwidth):
    """``"partitioned"`` for small batches of long sequences, else ``"thread"`` (one thread
    per system) for small blocks and ``"block"`` (a thread block per system) for larger."""
    if n_systems < PARALLEL_IN_TIME_MAX_BATCH:
        m = chunk_length(n_steps, n_systems, bandwidth)
        if n_steps >= 2 * m + bandwidth:  # at least two interiors
            return "partitioned"
    return choose_cholesky_algorithm(block_size)


def choose_cholesky_algorithm(block_size):
    """The block Cholesky kernel shape for block size ``n``: ``"thread"`` (one thread per
    system) up to ``THREAD_MAX_BLOCK_SIZE``, else ``"block"`` (a thread block per system)."""
    return "thread" if block_size <= THREAD_MAX_BLOCK_SIZE else "block"

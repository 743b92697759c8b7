"""Scheduling overhead of ``bandsolve.dask`` on a local 2-worker cluster, measured in one run.

Problem: ``B`` sequences of the well-posed coupled oscillators
(``bandsolve.problems.coupled_oscillators``), ``T`` steps, ``D = O = E = 3``, float64,
split into chunks of ``--chunk`` sequences; chunk ``i`` is generated from seed ``i``, so the
in-process arrays and the cluster's chunks are the same numbers.

Timed, median over rounds (cluster and in-process chunk loop interleaved round by round,
so that load from other processes hits them alike):

* ``in-process, whole batch``: ``bandsolve.smnn_solve`` on the full NumPy batch (Numba
  threads over all cores), the baseline; its own phase before the cluster starts, since
  it holds the factor of the whole batch (``B T 2 n^2`` doubles, 10.6 GB at the default
  size; skip with ``--no-whole``).
* ``in-process, chunk loop``: the same core call on one chunk after another.
* ``cluster forward``: ``bandsolve.dask.smnn_solve(...).persist()`` on a
  ``LocalCluster(n_workers=2, threads_per_worker=1)`` (``NUMBA_NUM_THREADS=1`` per worker:
  two single-threaded workers fill the two cores), inputs already persisted on the
  workers and the result left there (no transfer to the client in the timing).
* ``cluster backward``: the ``vjp(ubar)`` graph persisted (it refactors each chunk),
  next to ``in-process VJP, chunk loop``: the core's ``smnn_solve_vjp`` + ``vjp`` per
  chunk (factor once, reused), and the forward alone per chunk, for the cost of
  refactoring in the backward pass.

    python benchmarks/dask_overhead.py [--batch 8192] [--steps 1000] [--chunk 512]
                                       [--rounds 3] [--no-whole]
"""

from __future__ import annotations

import argparse
import gc
import statistics

import dask
import dask.array as da
import numpy as np
from distributed import Client, LocalCluster, wait

import bandsolve
import bandsolve.dask as bdask
from bandsolve.problems import coupled_oscillators
from bandsolve.apps.timing import seconds


def chunk_problem(size, T, D, O, E, seed):
    return coupled_oscillators(size, T, n_dims=D, n_orders=O, n_equations=E, seed=seed)


def chunk_sizes(batch, chunk):
    sizes = [chunk] * (batch // chunk)
    if batch % chunk:
        sizes.append(batch % chunk)
    return sizes


def local_chunks(args):
    return [chunk_problem(size, args.steps, args.dims, args.orders, args.equations, i)
            for i, size in enumerate(chunk_sizes(args.batch, args.chunk))]


def dask_problem(args):
    """The same chunks, generated on the workers."""
    sizes = chunk_sizes(args.batch, args.chunk)
    parts = [dask.delayed(chunk_problem, nout=4)(size, args.steps, args.dims, args.orders,
                                                   args.equations, i)
             for i, size in enumerate(sizes)]
    T, D, O, E = args.steps, args.dims, args.orders, args.equations
    Oi = min(2, O)
    tails = [(T, E, D, O), (T, E), (1, D, Oi), (T - 1,)]
    return [da.concatenate([da.from_delayed(p[k], shape=(size,) + tails[k], dtype=np.float64)
                            for p, size in zip(parts, sizes)])
            for k in range(4)]


def upstream(shape, i):
    """The upstream gradient of chunk ``i`` (the same in-process and on a worker)."""
    return np.random.default_rng(100 + i).standard_normal(shape)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=8192)
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--dims", type=int, default=3)
    parser.add_argument("--orders", type=int, default=3)
    parser.add_argument("--equations", type=int, default=3)
    parser.add_argument("--chunk", type=int, default=512)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--no-whole", action="store_true",
                        help="skip the whole-batch in-process solve (needs ~13 GB at B=8192)")
    args = parser.parse_args()
    print(f"B={args.batch} T={args.steps} D={args.dims} O={args.orders} E={args.equations} "
          f"float64, chunks of {args.chunk}, {args.rounds} rounds")

    times = {}

    def record(name, seconds):
        times.setdefault(name, []).append(seconds)

    chunks = local_chunks(args)
    bandsolve.smnn_solve(*chunks[0])  # compile / load the kernels
    if not args.no_whole:
        whole = [np.concatenate([c[k] for c in chunks]) for k in range(4)]
        bandsolve.smnn_solve(*[a[:64] for a in whole])
        for _ in range(args.rounds):
            record("in-process, whole batch", seconds(lambda: bandsolve.smnn_solve(*whole)))
            gc.collect()
        del whole
        gc.collect()

    u_shapes = [(c[0].shape[0], args.steps, args.dims, args.orders) for c in chunks]
    ubar_chunks = [upstream(shape, i) for i, shape in enumerate(u_shapes)]

    def loop_forward():
        for c in chunks:
            bandsolve.smnn_solve(*c)

    def loop_vjp():
        for c, ubar in zip(chunks, ubar_chunks):
            _, vjp = bandsolve.smnn_solve_vjp(*c)
            vjp(ubar)

    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                      dashboard_address=None, env={"NUMBA_NUM_THREADS": "1"},
                      silence_logs=40) as cluster, Client(cluster) as client:
        inputs = client.persist(dask_problem(args))
        wait(inputs)
        ubar = da.concatenate([da.from_delayed(dask.delayed(upstream)(shape, i), shape=shape,
                                               dtype=np.float64)
                               for i, shape in enumerate(u_shapes)]).persist()
        wait(ubar)
        # warm up every worker (compile or load the kernels)
        small = [a[:4] for a in inputs]
        for _ in range(2):
            u_small, vjp_small = bdask.smnn_solve_vjp(*[x.rechunk((1,) + x.chunks[1:])
                                                        for x in small])
            wait(client.persist([u_small, *vjp_small(ubar[:4].rechunk((1, -1, -1, -1)))]))

        def cluster_forward():
            u = bdask.smnn_solve(*inputs).persist()
            wait(u)
            del u

        def cluster_backward():
            _, vjp = bdask.smnn_solve_vjp(*inputs)
            grads = client.persist(list(vjp(ubar)))
            wait(grads)
            del grads

        for _ in range(args.rounds):
            record("in-process, chunk loop", seconds(loop_forward))
            record("cluster forward (2 workers)", seconds(cluster_forward))
            record("in-process VJP, chunk loop (factor reused)", seconds(loop_vjp))
            record("cluster backward (refactors)", seconds(cluster_backward))

        # check the cluster's answer on one chunk
        u = bdask.smnn_solve(*inputs)[: chunks[0][0].shape[0]].compute()
        assert np.array_equal(u, bandsolve.smnn_solve(*chunks[0]))

    median = {name: statistics.median(values) for name, values in times.items()}
    base_name = ("in-process, whole batch" if "in-process, whole batch" in median
                 else "in-process, chunk loop")
    base = median[base_name]
    best = {name: min(values) for name, values in times.items()}
    print("(other processes share the cores: the fastest round is the least disturbed)")
    print(f"{'variant':46s} {'median s':>9s} {'/ base':>7s} {'best s':>8s} {'/ base':>7s}"
          "   all rounds")
    for name, value in median.items():
        rounds = " ".join(f"{t:.2f}" for t in times[name])
        print(f"{name:46s} {value:9.3f} {value / base:7.2f} {best[name]:8.3f} "
              f"{best[name] / best[base_name]:7.2f}   {rounds}")
    print(f"baseline: {base_name}")
    for label, stat in (("median", median), ("best", best)):
        cluster = (stat["cluster backward (refactors)"]
                   / stat["cluster forward (2 workers)"])
        local = (stat["in-process VJP, chunk loop (factor reused)"]
                 / stat["in-process, chunk loop"])
        print(f"{label}: cluster backward / cluster forward {cluster:.2f}; "
              f"in-process forward+VJP / forward (chunk loop) {local:.2f}")


if __name__ == "__main__":
    main()

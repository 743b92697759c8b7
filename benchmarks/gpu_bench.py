"""GPU benchmarks of bandsolve at the S-MNN paper's shapes, with baselines in the same run.

    python benchmarks/gpu_bench.py RESULTS.jsonl [--reference PATH/smnn.py] [--budget SECONDS]
                              [--dtypes float32,float64] [--shapes sst,kdv,lorenz,long]

Run by ``tools/gpu_check.sh`` on a GPU machine (needs CuPy and numba-cuda; PyTorch and JAX
if present). Writes one JSON line per (shape, dtype, mode, method), flushed as it is
measured, so a run cut short keeps everything measured so far.

Shapes (``bandsolve.problems.coupled_oscillators``, E = D):

=======  ====================================  ======  ===  ===
name     batch                                 T       D    O
=======  ====================================  ======  ===  ===
sst      12,960                                208     1    3
kdv      8,192                                 10      1    5
lorenz   rhs (512, 3) = 1,536, lhs (1, 3) = 3  50      1    3
long     1                                     10^6    1    3
=======  ====================================  ======  ===  ===

Modes: ``forward`` (the solve) and ``forward+backward`` (solve, then the gradients of
``sum(u * ubar)`` with respect to all four inputs). Methods:

* ``core``: ``bandsolve.smnn_solve`` / ``smnn_solve_vjp`` on CuPy arrays (the generated
  lane kernels where they apply; ``achieved_GBps``: their modelled bytes moved,
  ``bandsolve.gpu.lane_solve.bytes_moved``, over the device time);
* ``thread``: the same with ``algorithm="thread"`` (the one-thread-per-system kernels);
* ``torch``, ``jax``: the adapters on CUDA tensors / JAX GPU arrays (``jax.jit``);
* ``reference``: the authors' ``ode_forward`` (``smnn.py`` of the S-MNN paper's code, loaded
  from ``--reference``; CUDA graphs on, as its default), whose relative difference from
  ``core`` is recorded as a second correctness check;
* ``cupy_dense``: the dense normal equations of the first few systems, formed and solved
  by ``cupy.linalg.solve`` (the dense rows are built on the host, not timed);
* ``host``: bandsolve on NumPy arrays (the Numba CPU kernels, all cores).

Timing: ``cupyx.profiler.benchmark`` after warm-up runs (compilation, memory pools, CUDA
graphs): ``device_ms`` is the median GPU time between CUDA events on the current (null)
stream, ``host_ms`` the median host time of a call (each ends with a synchronisation).
JAX runs on XLA's own streams, which null-stream events do not see: its ``device_ms`` is
left empty and ``host_ms`` is the wall time of ``block_until_ready``.
"""

import argparse
import importlib.util
import json
import math
import os
import sys
import time
import traceback

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
for path in (ROOT, os.path.join(ROOT, "adapters")):
    if path not in sys.path:
        sys.path.insert(0, path)

import bandsolve  # noqa: E402
from bandsolve.problems import coupled_oscillators  # noqa: E402

SHAPES = {
    "sst": dict(batch=(12960,), T=208, D=1, O=3, lhs_batch=None),
    "kdv": dict(batch=(8192,), T=10, D=1, O=5, lhs_batch=None),
    "lorenz": dict(batch=(512, 3), T=50, D=1, O=3, lhs_batch=(1, 3)),
    "long": dict(batch=(1,), T=10**6, D=1, O=3, lhs_batch=None),
}
METHODS = ("core", "thread", "torch", "jax", "reference", "cupy_dense", "host")
DENSE_SYSTEMS = 16       # systems of the dense baseline (where T * n is small enough)
DENSE_MAX_UNKNOWNS = 4096
REPEATS = 10


class Results:
    """One JSON line per record, flushed at once."""

    def __init__(self, path):
        self._file = open(path, "a", buffering=1)

    def write(self, **record):
        self._file.write(json.dumps(record, default=str) + "\n")
        self._file.flush()
        print("bench", json.dumps(record, default=str), flush=True)


def make_problem(name, dtype, shape=None):
    """The problem of ``SHAPES[name]`` (or of the given ``shape`` dict of that form)."""
    shape = SHAPES[name] if shape is None else shape
    c, r, g, h = coupled_oscillators(shape["batch"], shape["T"], n_dims=shape["D"],
                                     n_orders=shape["O"], dtype=dtype, seed=1)
    if shape["lhs_batch"] is not None:
        index = tuple(slice(0, s) for s in shape["lhs_batch"])
        c, h = np.ascontiguousarray(c[index]), np.ascontiguousarray(h[index])
    return c, r, g, h


def cupy_timed(fn, repeats=REPEATS):
    """``(device_ms, host_ms)`` medians from ``cupyx.profiler.benchmark`` after 2 warm-ups."""
    from cupyx.profiler import benchmark

    result = benchmark(fn, n_repeat=repeats, n_warmup=2)
    return (1e3 * float(np.median(result.gpu_times[0])),
            1e3 * float(np.median(result.cpu_times)))


def wall_timed(fn, repeats=REPEATS):
    """``(None, host_ms)``: the median wall time of ``fn()`` (which blocks) after 2 warm-ups."""
    for _ in range(2):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return None, 1e3 * float(np.median(times))


def rel_diff(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-300))


# ----------------------------------------------------------------------------- methods
# Each returns (function to time, how to time it, the solution u as NumPy or None, notes).

def core(problem, backward, algorithm="auto"):
    """bandsolve on CuPy arrays. ``algorithm="auto"`` takes the generated lane kernels where
    they apply (``notes["algorithm"] == "lanes"``, with the modelled bytes moved of the
    forward solve, ``model_bytes``); the ``thread`` method is the same call with
    ``algorithm="thread"``: the one-thread-per-system kernels they replace."""
    import cupy

    from bandsolve.gpu import config, lane_solve

    c, r = problem[0], problem[1]
    B, T = math.prod(r.shape[:-2]), r.shape[-2]
    E, D, O = c.shape[-3:]
    resolved = config.choose_algorithm(D * O, T, B, 1)
    notes = {"algorithm": resolved if algorithm == "auto" else algorithm}
    lanes = (algorithm == "auto" and resolved == "thread" and config.USE_LANES
             and D * O <= lane_solve.codegen.MAX_BLOCK and B >= config.LANES_MIN_SYSTEMS
             and math.prod(c.shape[:-4]) == B)
    if lanes:
        notes["algorithm"] = "lanes"
        if not backward:
            notes["model_bytes"] = lane_solve.bytes_moved(B, T, D, O, E, c.dtype.itemsize)
    inputs = [cupy.asarray(a) for a in problem]
    if not backward:
        def forward():
            return bandsolve.smnn_solve(*inputs, algorithm=algorithm)
        return forward, cupy_timed, lambda: cupy.asnumpy(forward()), notes
    u, _ = bandsolve.smnn_solve_vjp(*inputs, algorithm=algorithm)
    ubar = cupy.ones_like(u)

    def both():
        _, vjp = bandsolve.smnn_solve_vjp(*inputs, algorithm=algorithm)
        return vjp(ubar)
    return both, cupy_timed, None, notes


def thread(problem, backward):
    return core(problem, backward, algorithm="thread")


def torch_adapter(problem, backward):
    import torch

    import bandsolve_torch

    tensors = [torch.tensor(a, device="cuda", requires_grad=backward) for a in problem]
    if not backward:
        def forward():
            with torch.no_grad():
                return bandsolve_torch.smnn_solve(*tensors)
        return forward, cupy_timed, lambda: forward().cpu().numpy(), {}

    def both():
        u = bandsolve_torch.smnn_solve(*tensors)
        return torch.autograd.grad(u.sum(), tensors)
    return both, cupy_timed, None, {}


def jax_adapter(problem, backward):
    import jax

    import bandsolve_jax

    x64 = problem[0].dtype == np.float64  # JAX keeps float64 only with x64 enabled
    with jax.enable_x64(x64):
        arrays = [jax.device_put(a, jax.devices("gpu")[0]) for a in problem]
    forward = jax.jit(bandsolve_jax.smnn_solve)
    grad = jax.jit(jax.grad(lambda *a: bandsolve_jax.smnn_solve(*a).sum(),
                            argnums=(0, 1, 2, 3)))
    notes = {"device_ms": "not measured (XLA streams)"}

    def run_forward():
        with jax.enable_x64(x64):
            return forward(*arrays).block_until_ready()

    def run_both():
        with jax.enable_x64(x64):
            return jax.block_until_ready(grad(*arrays))

    if not backward:
        return run_forward, wall_timed, lambda: np.asarray(run_forward()), notes
    return run_both, wall_timed, None, notes


def load_reference(path):
    spec = importlib.util.spec_from_file_location("smnn_reference", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.ode_forward


def reference(problem, backward, ode_forward):
    import torch

    tensors = [torch.tensor(a, device="cuda", requires_grad=backward) for a in problem]
    T = problem[1].shape[-2]
    if not backward:
        def forward():
            with torch.no_grad():
                return ode_forward(*tensors, n_steps=T)
        return forward, cupy_timed, lambda: forward().cpu().numpy(), {}

    def both():
        u = ode_forward(*tensors, n_steps=T)
        return torch.autograd.grad(u.sum(), tensors)
    return both, cupy_timed, None, {}


def cupy_dense(problem, backward):
    """Dense normal equations of the first DENSE_SYSTEMS systems on the device."""
    import cupy

    c, r, g, h = problem
    T, E, D, O = c.shape[-4:]
    if T * D * O > DENSE_MAX_UNKNOWNS:
        return None, None, None, {"skipped": f"T*n = {T * D * O} unknowns per system: the "
                                             "dense matrix does not fit"}
    batch = r.shape[:-2]
    k = min(DENSE_SYSTEMS, math.prod(batch))
    normal, rhs = [], []
    for i in range(k):
        index = np.unravel_index(i, batch)
        pick = lambda a, lead: np.broadcast_to(a, batch + a.shape[len(a.shape) - lead:])[index]  # noqa: E731
        ci, ri, gi, hi = pick(c, 4), pick(r, 2), pick(g, 3), pick(h, 1)
        M, b = bandsolve.smnn_normal_equations(ci, ri, gi, hi, n_steps=T)
        normal.append(M.to_dense())
        rhs.append(b.reshape(-1))
    dtype = c.dtype
    M = cupy.asarray(np.stack(normal).astype(dtype))
    b = cupy.asarray(np.stack(rhs).astype(dtype))[..., None]
    n_rhs = 2 if backward else 1  # forward+backward: the solution and the adjoint solve

    def solve():
        # dense LU of the assembled normal matrix (the original MNN's O(T^3) cost)
        return cupy.linalg.solve(M, cupy.concatenate([b] * n_rhs, axis=-1))

    def u():
        return cupy.asnumpy(solve()[..., 0]).reshape((k, T, D, O))

    return solve, cupy_timed, (u if not backward else None), \
        {"systems": k, "note": "first systems only; normal equations assembled on the host "
                               "(not timed); gradient assembly not included"}


def host(problem, backward):
    if not backward:
        return (lambda: bandsolve.smnn_solve(*problem)), wall_timed, None, {}
    u, _ = bandsolve.smnn_solve_vjp(*problem)
    ubar = np.ones_like(u)

    def both():
        _, vjp = bandsolve.smnn_solve_vjp(*problem)
        return vjp(ubar)
    return both, wall_timed, None, {}


# ----------------------------------------------------------------------------- driver

def run(results, budget_s, *, reference_path=None, dtypes=("float32", "float64"),
        shapes=tuple(SHAPES), methods=METHODS):
    """Every case in order of importance (float32 first), each recorded as measured or as
    skipped when the budget is spent. Returns the number of failed cases."""
    deadline = time.perf_counter() + budget_s
    ode_forward = None
    if reference_path and "reference" in methods:
        try:
            ode_forward = load_reference(reference_path)
        except Exception as error:
            results.write(case="reference", error=f"cannot load {reference_path}: {error!r}")
    failures = 0
    # the paper's batched shapes in both dtypes first; the long sequence (slowest) last
    cases = ([(d, s) for d in dtypes for s in shapes if s != "long"]
             + [(d, s) for d in dtypes for s in shapes if s == "long"])
    for dtype, name in cases:
        problem = make_problem(name, np.dtype(dtype))
        core_u = None
        for mode in ("forward", "forward+backward"):
            for method in methods:
                record = dict(shape=name, dtype=dtype, mode=mode, method=method)
                left = deadline - time.perf_counter()
                if left < 5:
                    results.write(**record, skipped="time budget spent")
                    continue
                if method == "reference" and ode_forward is None:
                    results.write(**record, skipped="no --reference PATH given")
                    continue
                try:
                    backward = mode != "forward"
                    setup = {"core": core, "thread": thread, "torch": torch_adapter,
                             "jax": jax_adapter,
                             "cupy_dense": cupy_dense, "host": host}.get(method)
                    made = (reference(problem, backward, ode_forward)
                            if method == "reference" else setup(problem, backward))
                    fn, timer, solution, notes = made
                    if fn is None:
                        results.write(**record, **notes)
                        continue
                    repeats = 3 if name == "long" or method == "host" else REPEATS
                    device_ms, host_ms = timer(fn, repeats)
                    record.update(device_ms=device_ms, host_ms=host_ms, repeats=repeats)
                    record.update(notes)
                    if notes.get("model_bytes") and device_ms:
                        record["achieved_GBps"] = notes["model_bytes"] / device_ms / 1e6
                    if solution is not None:
                        u = solution()
                        flat = u.reshape((-1,) + u.shape[-3:])
                        if method == "core":
                            core_u = flat
                            record["nan_systems"] = int(
                                np.isnan(flat.reshape(len(flat), -1)).any(1).sum())
                        elif core_u is not None:  # cupy_dense: its first systems only
                            record["rel_diff_vs_core"] = rel_diff(flat,
                                                                  core_u[:len(flat)])
                    results.write(**record)
                except Exception as error:
                    failures += 1
                    results.write(**record, error=repr(error),
                                  traceback=traceback.format_exc()[-2000:])
                finally:
                    _free_pools()
    return failures


def _free_pools():
    cupy = sys.modules.get("cupy")
    if cupy is not None:
        cupy.get_default_memory_pool().free_all_blocks()
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available():
        torch.cuda.empty_cache()


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("results", help="JSON-lines file to append to")
    parser.add_argument("--reference", help="path of the authors' smnn.py (ode_forward)")
    parser.add_argument("--budget", type=float, default=150.0, help="seconds (default 150)")
    parser.add_argument("--dtypes", default="float32,float64")
    parser.add_argument("--shapes", default=",".join(SHAPES))
    parser.add_argument("--methods", default=",".join(METHODS))
    args = parser.parse_args(argv)
    failures = run(Results(args.results), args.budget, reference_path=args.reference,
                   dtypes=args.dtypes.split(","), shapes=args.shapes.split(","),
                   methods=args.methods.split(","))
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())

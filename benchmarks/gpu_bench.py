"""GPU benchmarks of bandsolve's CUDA backend against its baselines (run on a GPU machine).

    PYTHONPATH=. python3 benchmarks/gpu_bench.py OUTDIR [--budget SECONDS]

Writes ``OUTDIR/gpu_bench.json`` and ``OUTDIR/gpu_bench.md``. Installs nothing; needs CuPy
and Numba CUDA (numba-cuda), uses PyTorch if present.

Shapes (float32, no central smoothness, ``bandsolve.problems.coupled_oscillators``):

=============  ======  =======  ===  ===  ===  ==========================================
name           B       T        D    O    E    note
=============  ======  =======  ===  ===  ===  ==========================================
sst            12960   208      1    3    1    the paper's SST shape
long_batch     256     1727     2    3    2
single_long    1       10^6     3    3    3    batch of one: parallel in time
lorenz         512x3   50       1    3    1    left-hand-side batch (1, 3)
=============  ======  =======  ===  ===  ===  ==========================================

Methods, each timed for the forward solve and for forward + backward (VJP):

* ``gpu:<algorithm>`` bandsolve on CuPy arrays (``auto`` and every forced kernel shape);
* ``cpu`` the CPU backend on NumPy arrays (all cores);
* ``cupy_dense`` the normal matrix as a dense batch solved by ``cupy.linalg.solve`` (only
  where it fits in memory; forward+backward = one solve with two right-hand sides, the
  gradient assembly not counted; assembly of the dense matrix not timed);
* ``torch_loop`` a straightforward PyTorch block Cholesky that loops over T on the GPU
  (the structure of the published S-MNN implementation), given the assembled band (its
  assembly is not timed, which favours it); backward by autograd through the loop. For
  ``single_long`` it runs on the first 2000 steps and is extrapolated linearly in T
  (marked ``extrapolated``).

GPU timings: kernels compiled and memory pools warmed by untimed runs first; each
repetition ends with a device synchronisation; the median of the repetitions is
reported. Every section runs in try/except and records its failure in the output.
"""

import argparse
import json
import math
import os
import platform
import sys
import time
import traceback

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import bandsolve  # noqa: E402
from bandsolve.problems import coupled_oscillators  # noqa: E402

SHAPES = [
    dict(name="sst", batch=(12960,), T=208, D=1, O=3, E=1, lhs_batch=None),
    dict(name="lorenz", batch=(512, 3), T=50, D=1, O=3, E=1, lhs_batch=(1, 3)),
    dict(name="long_batch", batch=(256,), T=1727, D=2, O=3, E=2, lhs_batch=None),
    dict(name="single_long", batch=(1,), T=10**6, D=3, O=3, E=3, lhs_batch=None),
]
DTYPE = np.float32
TORCH_MAX_STEPS = 2000


class Budget:
    def __init__(self, seconds):
        self.deadline = time.perf_counter() + seconds

    def left(self):
        return self.deadline - time.perf_counter()


def timed(fn, sync, *, warmup=2, min_reps=3, max_reps=30, target=1.0, budget=None):
    """Median and minimum wall time (ms) of ``fn(); sync()`` after ``warmup`` untimed runs."""
    for _ in range(warmup):
        fn()
        sync()
    times = []
    start = time.perf_counter()
    while len(times) < max_reps:
        t0 = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - t0)
        elapsed = time.perf_counter() - start
        if len(times) >= min_reps and elapsed > target:
            break
        if budget is not None and budget.left() < 20 and len(times) >= 1:
            break
    return 1e3 * float(np.median(times)), 1e3 * float(np.min(times)), len(times)


def make_problem(shape):
    coefficients, rhs, init, steps = coupled_oscillators(
        shape["batch"], shape["T"], n_dims=shape["D"], n_orders=shape["O"],
        n_equations=shape["E"], dtype=DTYPE, seed=1)
    if shape["lhs_batch"] is not None:
        index = tuple(slice(0, s) for s in shape["lhs_batch"])
        coefficients = np.ascontiguousarray(coefficients[index])
        steps = np.ascontiguousarray(steps[index])
    return coefficients, rhs, init, steps


# ----------------------------------------------------------------------------- methods

def bench_gpu(problem, algorithm, budget, reps=30, warmup=2, small=None):
    """bandsolve on CuPy arrays. ``small``: a short problem of the same kinds, solved first
    so that every kernel is compiled before a (then unwarmed, single) timing of a long one."""
    import cupy

    from bandsolve.gpu import config
    from bandsolve.cpu.partitioned import n_chunks_for

    sync = cupy.cuda.get_current_stream().synchronize
    if small is not None:
        s_inputs = [cupy.asarray(a) for a in small]
        u, vjp = bandsolve.smnn_solve_vjp(*s_inputs, algorithm=algorithm)
        vjp(cupy.ones_like(u))
        sync()
    inputs = [cupy.asarray(a) for a in problem]
    holder = {}

    def forward():
        holder["u"] = bandsolve.smnn_solve(*inputs, algorithm=algorithm)

    forward_times = timed(forward, sync, warmup=warmup, max_reps=reps, budget=budget)
    ubar = cupy.ones_like(holder["u"])

    def both():
        _, vjp = bandsolve.smnn_solve_vjp(*inputs, algorithm=algorithm)
        vjp(ubar)

    both_times = timed(both, sync, warmup=warmup, max_reps=reps, budget=budget)
    u = cupy.asnumpy(holder["u"])
    coefficients = problem[0]
    T, n = u.shape[-3], coefficients.shape[-2] * coefficients.shape[-1]
    n_systems = math.prod(u.shape[:-3])
    chosen = algorithm
    if algorithm == "auto":
        chosen = config.choose_algorithm(n, T, n_systems, 1)
    info = dict(algorithm=chosen, nan_systems=int(np.isnan(u.reshape(n_systems, -1)).any(1).sum()))
    if chosen == "partitioned":
        chunk = config.chunk_length(T, n_systems, 1)
        info.update(interiors=n_chunks_for(T, 1, chunk), chunk=chunk)
    return forward_times, both_times, u, info


def bench_cpu(problem, budget, reps=10):
    forward = timed(lambda: bandsolve.smnn_solve(*problem), lambda: None, warmup=1,
                    max_reps=reps, budget=budget)
    u, vjp = bandsolve.smnn_solve_vjp(*problem)
    ubar = np.ones_like(u)

    def both():
        _, vjp = bandsolve.smnn_solve_vjp(*problem)
        vjp(ubar)

    backward = timed(both, lambda: None, warmup=1, max_reps=reps, budget=budget)
    return forward, backward, u


def _band(problem):
    matrix, b = bandsolve.smnn_normal_equations(*problem)
    return matrix.blocks, b  # (lhs batch..., T, p+1, n, n), (batch..., T, n)


def bench_cupy_dense(problem, shape, budget):
    import cupy

    blocks, b = _band(problem)
    lhs_batch = blocks.shape[:-4]
    T, width, n = blocks.shape[-4], blocks.shape[-3], blocks.shape[-1]
    N = T * n
    n_lhs = math.prod(lhs_batch)
    itemsize = np.dtype(DTYPE).itemsize
    free, _ = cupy.cuda.runtime.memGetInfo()
    need = 3 * n_lhs * N * N * itemsize + 4 * b.size * itemsize
    if need > 0.8 * free:
        return None, f"does not fit: needs ~{need / 2**30:.0f} GiB, {free / 2**30:.0f} GiB free"
    band = cupy.asarray(blocks.reshape((n_lhs, T, width, n, n)))
    dense = cupy.zeros((n_lhs, T, n, T, n), dtype=DTYPE)
    t = cupy.arange(T)
    dense[:, t, :, t, :] = band[:, :, 0].transpose(1, 0, 2, 3)
    for j in range(1, width):
        block = band[:, j:, j].transpose(1, 0, 2, 3)
        dense[:, t[j:], :, t[j:] - j, :] = block
        dense[:, t[j:] - j, :, t[j:], :] = block.transpose(0, 1, 3, 2)
    dense = dense.reshape(n_lhs, N, N)
    del band
    # right-hand sides as columns of their left-hand side's system
    rhs = cupy.asarray(b.reshape(b.shape[:-2] + (N,)))
    if lhs_batch == b.shape[:-2]:
        columns = rhs.reshape(n_lhs, N, 1)
    else:  # lorenz: lhs (1, 3) against (512, 3)
        columns = rhs.reshape(-1, n_lhs, N).transpose(1, 2, 0).copy()
    two = cupy.concatenate([columns, columns[..., ::-1]], axis=-1)
    sync = cupy.cuda.get_current_stream().synchronize
    forward = timed(lambda: cupy.linalg.solve(dense, columns), sync, warmup=1, max_reps=5,
                    target=0.5, budget=budget)
    backward = timed(lambda: cupy.linalg.solve(dense, two), sync, warmup=1, max_reps=5,
                     target=0.5, budget=budget)
    return (forward, backward), None


def torch_block_solve(torch, diagonal, sub, b):
    """Block Cholesky of a symmetric block-tridiagonal batch with torch ops, a Python loop
    over T. diagonal ``(B, T, n, n)`` (full), sub ``(B, T, n, n)`` (``sub[:, t] = M[t, t-1]``),
    b ``(B, T, n)``; returns x ``(B, T, n)``."""
    T = diagonal.shape[1]
    factors, couplings, z = [], [None], []
    for t in range(T):
        a = diagonal[:, t]
        rhs = b[:, t, :, None]
        if t:
            s = torch.linalg.solve_triangular(factors[-1], sub[:, t].mT, upper=False).mT
            a = a - s @ s.mT
            rhs = rhs - s @ z[-1]
            couplings.append(s)
        factor = torch.linalg.cholesky(a)
        factors.append(factor)
        z.append(torch.linalg.solve_triangular(factor, rhs, upper=False))
    x = [None] * T
    x[-1] = torch.linalg.solve_triangular(factors[-1].mT, z[-1], upper=True)
    for t in range(T - 2, -1, -1):
        rhs = z[t] - couplings[t + 1].mT @ x[t + 1]
        x[t] = torch.linalg.solve_triangular(factors[t].mT, rhs, upper=True)
    return torch.stack(x, 1)[..., 0]


def bench_torch(problem, shape, budget):
    import torch

    blocks, b = _band(problem)
    T = blocks.shape[-4]
    scale = 1.0
    if T > TORCH_MAX_STEPS:  # linear in T: time a prefix, extrapolate
        scale = T / TORCH_MAX_STEPS
        blocks = blocks[..., :TORCH_MAX_STEPS, :, :, :]
        b = b[..., :TORCH_MAX_STEPS, :]
    batch = b.shape[:-2]
    blocks = np.broadcast_to(blocks, batch + blocks.shape[-4:])
    n = blocks.shape[-1]
    device = torch.device("cuda")
    diagonal = torch.as_tensor(blocks[..., 0, :, :].reshape(-1, blocks.shape[-4], n, n),
                               device=device)
    sub = torch.as_tensor(blocks[..., 1, :, :].reshape(-1, blocks.shape[-4], n, n),
                          device=device)
    rhs = torch.as_tensor(b.reshape(-1, b.shape[-2], n), device=device)
    sync = torch.cuda.synchronize
    forward = timed(lambda: torch_block_solve(torch, diagonal, sub, rhs), sync, warmup=1,
                    max_reps=5, target=0.5, budget=budget)
    leaves = [t.clone().requires_grad_(True) for t in (diagonal, sub, rhs)]

    def both():
        x = torch_block_solve(torch, *leaves)
        x.sum().backward()

    backward = timed(both, sync, warmup=1, max_reps=5, target=0.5, budget=budget)
    if scale != 1.0:
        forward = tuple(v * scale if isinstance(v, float) else v for v in forward)
        backward = tuple(v * scale if isinstance(v, float) else v for v in backward)
    return forward, backward, scale


def free_cupy_pool():
    """The dense section leaves tens of GiB in CuPy's pool; give them back."""
    import cupy

    cupy.get_default_memory_pool().free_all_blocks()


def free_torch_cache():
    import torch

    torch.cuda.empty_cache()


# ----------------------------------------------------------------------------- driver

def environment():
    info = dict(python=platform.python_version(), numpy=np.__version__,
                bandsolve=bandsolve.__version__)
    for name in ("numba", "cupy", "torch", "jax"):
        try:
            module = __import__(name)
            info[name] = module.__version__
        except Exception as error:  # noqa: BLE001
            info[name] = f"unavailable: {error}"
    try:
        from numba import cuda

        info["numba_cuda"] = getattr(cuda, "implementation", "?")
        device = cuda.get_current_device()
        info["device"] = device.name.decode() if isinstance(device.name, bytes) else device.name
        info["compute_capability"] = list(device.compute_capability)
    except Exception as error:  # noqa: BLE001
        info["device"] = f"unavailable: {error}"
    return info


def run(out_dir, budget_seconds):
    budget = Budget(budget_seconds)
    report = dict(environment=environment(), dtype=np.dtype(DTYPE).name, shapes={},
                  errors=[])

    def attempt(where, fn):
        try:
            return fn()
        except Exception as error:  # noqa: BLE001
            report["errors"].append(dict(where=where, error=f"{type(error).__name__}: {error}",
                                         traceback=traceback.format_exc()[-3000:]))
            print(f"[{where}] FAILED: {error}", flush=True)
            return None

    for shape in SHAPES:
        name = shape["name"]
        entry = report["shapes"][name] = dict(
            shape={k: v for k, v in shape.items() if k != "name"}, results={}, notes=[])
        if budget.left() < 30:
            entry["notes"].append("skipped: time budget exhausted")
            continue
        problem = attempt(f"{name}: problem", lambda: make_problem(shape))
        if problem is None:
            continue
        results = entry["results"]
        u_cpu = None

        def record(method, forward, backward, **extra):
            results[method] = dict(forward_ms=forward[0], forward_min_ms=forward[1],
                                   forward_backward_ms=backward[0],
                                   forward_backward_min_ms=backward[1], reps=forward[2],
                                   **extra)
            print(f"{name:12s} {method:18s} fwd {forward[0]:10.3f} ms   "
                  f"fwd+bwd {backward[0]:10.3f} ms", flush=True)

        algorithms = ["auto", "thread", "block", "partitioned"]
        if name == "single_long":
            algorithms = ["auto", "partitioned", "thread"]  # the block shape: minutes
        for algorithm in algorithms:
            if budget.left() < 25:
                entry["notes"].append(f"gpu:{algorithm} skipped: time budget")
                continue
            if name == "single_long" and algorithm == "thread":  # seconds per call
                small = make_problem(dict(shape, T=64))
                run_gpu = lambda: bench_gpu(problem, algorithm, budget, reps=1, warmup=0,  # noqa: E731
                                            small=small)
            else:
                run_gpu = lambda: bench_gpu(problem, algorithm, budget)  # noqa: E731
            out = attempt(f"{name}: gpu:{algorithm}", run_gpu)
            if out is not None:
                forward, backward, u_gpu, info = out
                record(f"gpu:{algorithm}", forward, backward, **info)
                if algorithm == "auto":
                    entry["u_auto"] = u_gpu  # compared with the CPU below, then dropped
        if budget.left() > 25:
            out = attempt(f"{name}: cpu", lambda: bench_cpu(problem, budget,
                                                            reps=2 if name == "single_long" else 10))
            if out is not None:
                forward, backward, u_cpu = out
                record("cpu", forward, backward)
        u_auto = entry.pop("u_auto", None)
        if u_auto is not None and u_cpu is not None:
            err = float(np.linalg.norm(u_auto - u_cpu) / np.linalg.norm(u_cpu))
            entry["gpu_auto_vs_cpu_relative_error"] = err
        if budget.left() > 40 and name != "single_long":
            out = attempt(f"{name}: cupy_dense", lambda: bench_cupy_dense(problem, shape, budget))
            attempt(f"{name}: free cupy pool", free_cupy_pool)
            if out is not None:
                timings, why = out
                if timings is None:
                    entry["notes"].append(f"cupy_dense: {why}")
                else:
                    record("cupy_dense", *timings,
                           note="fwd+bwd = one solve with 2 right-hand sides")
        elif name == "single_long":
            entry["notes"].append("cupy_dense: does not fit (T*n = 9e6)")
        if budget.left() > 40:
            out = attempt(f"{name}: torch_loop", lambda: bench_torch(problem, shape, budget))
            attempt(f"{name}: free torch cache", free_torch_cache)
            if out is not None:
                forward, backward, scale = out
                note = (f"extrapolated from T={TORCH_MAX_STEPS} (x{scale:.0f})" if scale != 1
                        else "band given, assembly not timed")
                record("torch_loop", forward, backward, note=note)
        else:
            entry["notes"].append("torch_loop skipped: time budget")
        entry["ratios"] = ratios(results)
    if budget.left() > 30:
        attempt("chunk sweep", lambda: chunk_sweep(report, budget))
    report["targets"] = targets(report)
    return report


def ratios(results):
    out = {}
    auto = results.get("gpu:auto")
    if auto is None:
        return out
    for method in ("torch_loop", "cpu", "cupy_dense", "gpu:thread", "gpu:block"):
        if method in results:
            for key in ("forward_ms", "forward_backward_ms"):
                out[f"{method} / gpu:auto ({key[:-3]})"] = results[method][key] / auto[key]
    return out


def chunk_sweep(report, budget):
    """Partitioned solver at several interior lengths (informs config.chunk_length)."""
    from bandsolve.gpu import config

    sweep = report["chunk_sweep"] = {}
    original = config.chunk_length
    try:
        for shape in SHAPES:
            if shape["name"] not in ("single_long", "long_batch"):
                continue
            problem = make_problem(shape)
            rows = sweep[shape["name"]] = {}
            for m in (64, 256, 1000, 4000) if shape["name"] == "single_long" else (16, 41, 128):
                if budget.left() < 20:
                    return
                config.chunk_length = lambda T, B, p, m=m: m
                forward, backward, _, info = bench_gpu(problem, "partitioned", budget, reps=5)
                rows[m] = dict(forward_ms=forward[0], forward_backward_ms=backward[0], **info)
                print(f"chunk sweep {shape['name']} m={m}: fwd {forward[0]:.3f} ms, "
                      f"fwd+bwd {backward[0]:.3f} ms", flush=True)
    finally:
        config.chunk_length = original


def targets(report):
    shapes = report["shapes"]
    out = {}

    def get(name, method, key):
        return shapes.get(name, {}).get("results", {}).get(method, {}).get(key)

    sst = get("sst", "gpu:auto", "forward_backward_ms")
    out["sst forward+backward <= 1 ms"] = dict(value_ms=sst, met=sst is not None and sst <= 1.0)
    for name in shapes:
        for key in ("forward_ms", "forward_backward_ms"):
            ours, torch = get(name, "gpu:auto", key), get(name, "torch_loop", key)
            ratio = torch / ours if ours and torch else None
            out[f"{name} {key[:-3]}: >= 10x faster than torch_loop"] = dict(
                ratio=ratio, met=ratio is not None and ratio >= 10)
    for key in ("forward_ms", "forward_backward_ms"):
        seq, par = get("single_long", "gpu:thread", key), get("single_long", "gpu:partitioned", key)
        ratio = seq / par if seq and par else None
        out[f"single_long {key[:-3]}: partitioned >= 20x faster than sequential"] = dict(
            ratio=ratio, met=ratio is not None and ratio >= 20)
    return out


def markdown(report):
    env = report["environment"]
    lines = [f"# bandsolve GPU benchmark ({env.get('device', '?')}, {report['dtype']})", "",
             "Median wall time per call in ms (each call ends with a device synchronisation; "
             "compilation and warm-up excluded).", "",
             "| shape | method | forward ms | forward+backward ms | note |",
             "|---|---|---:|---:|---|"]
    for name, entry in report["shapes"].items():
        for method, r in entry["results"].items():
            note = r.get("note", "")
            if "algorithm" in r:
                note = f"ran {r['algorithm']}" + (f", {r['interiors']} interiors of {r['chunk']}"
                                                  if "interiors" in r else "")
            lines.append(f"| {name} | {method} | {r['forward_ms']:.3f} | "
                         f"{r['forward_backward_ms']:.3f} | {note} |")
        for note in entry["notes"]:
            lines.append(f"| {name} | | | | {note} |")
    lines += ["", "## Ratios (method time / gpu:auto time)", ""]
    for name, entry in report["shapes"].items():
        for key, value in entry.get("ratios", {}).items():
            lines.append(f"- {name}: {key} = {value:.1f}")
        if "gpu_auto_vs_cpu_relative_error" in entry:
            lines.append(f"- {name}: relative difference gpu:auto vs cpu = "
                         f"{entry['gpu_auto_vs_cpu_relative_error']:.2e}")
    lines += ["", "## Targets", ""]
    for key, value in report.get("targets", {}).items():
        shown = ", ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}"
                          for k, v in value.items())
        lines.append(f"- {key}: {shown}")
    if report.get("chunk_sweep"):
        lines += ["", "## Parallel-in-time interior length sweep", ""]
        for name, rows in report["chunk_sweep"].items():
            for m, r in rows.items():
                lines.append(f"- {name} m={m}: forward {r['forward_ms']:.3f} ms, "
                             f"forward+backward {r['forward_backward_ms']:.3f} ms")
    if report["errors"]:
        lines += ["", "## Errors", ""]
        lines += [f"- {e['where']}: {e['error']}" for e in report["errors"]]
    lines += ["", "## Environment", "", "```", json.dumps(env, indent=1), "```"]
    return "\n".join(lines) + "\n"


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("out_dir")
    parser.add_argument("--budget", type=float, default=330.0,
                        help="seconds for the whole benchmark (default 330)")
    args = parser.parse_args()
    os.makedirs(args.out_dir, exist_ok=True)
    report = None
    try:
        report = run(args.out_dir, args.budget)
    except Exception as error:  # noqa: BLE001
        report = dict(fatal=f"{type(error).__name__}: {error}", traceback=traceback.format_exc(),
                      shapes={}, errors=[], environment={}, dtype=np.dtype(DTYPE).name)
    finally:
        with open(os.path.join(args.out_dir, "gpu_bench.json"), "w") as f:
            json.dump(report, f, indent=1, default=str)
        with open(os.path.join(args.out_dir, "gpu_bench.md"), "w") as f:
            f.write(markdown(report) if "fatal" not in report else f"FATAL: {report['fatal']}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Compile every CUDA kernel for a real GPU target, on a machine without a GPU.

The Numba CUDA simulator runs kernels as Python and NumPy, so it accepts code that the
CUDA target rejects (NumPy functions, typing it cannot unify, unsupported builtins). This
check closes that gap::

    python -m bandsolve.gpu.compile_check            # sm_90; --arch sm_80 etc.
    python -m bandsolve.gpu.compile_check --lanes 1,3,1   # the generated kernels of one shape

1. *record* (a subprocess with ``NUMBA_ENABLE_CUDASIM=1``): small solves, VJPs,
   factorisations, rebuilt factors, broadcasting, mixed dtypes and value checks, for both
   dtypes, both smoothness forms and every algorithm, record each kernel launch as
   (kernel, Numba argument types): every signature the dispatch produces for them;
2. *compile* (this process, no simulator): each recorded (kernel, signature) to PTX with
   numba-cuda and NVVM, then ``ptxas -arch=sm_90 -v`` assembles it and reports registers,
   stack frame (``cuda.local`` arrays), spills and shared memory per kernel.

It prints one table row per (kernel, signature), ``N of N kernels compiled`` and exits
non-zero if any failed or if a kernel of ``bandsolve.gpu`` was never launched by step 1.
Needs the ``[cuda-compile]`` extra (numba-cuda, the NVVM/ptxas and NVRTC wheels); no driver.
"""

import argparse
import importlib
import importlib.util
import inspect
import os
import pickle
import re
import shutil
import subprocess
import sys
import tempfile
import time

#: Modules whose ``@cuda.jit`` kernels must all be covered.
KERNEL_MODULES = ("arrays", "thread", "block", "partitioned", "gradient", "refine",
                  "lane_solve")


# ----------------------------------------------------------------------------- step 1

def _problem(rng, batch, T, E, D, O, Ti, Oi, dtype, *, coef_batch=None, steps_batch=None,
             coef_T=None):
    """Random well-posed inputs ``(coefficients, rhs, init, steps)`` (values do not matter
    for the signatures; they only have to factor)."""
    cb = batch if coef_batch is None else coef_batch
    sb = batch if steps_batch is None else steps_batch
    coefficients = rng.standard_normal(cb + (coef_T or T, E, D, O)).astype(dtype)
    rhs = rng.standard_normal(batch + (T, E)).astype(dtype)
    init = rng.standard_normal(batch + (Ti, D, Oi)).astype(dtype)
    steps = rng.uniform(0.4, 0.9, sb + (T - 1,)).astype(dtype)
    return coefficients, rhs, init, steps


def _drive():
    """Calls that reach every kernel with every argument-type combination the dispatch
    produces (run under the simulator, with tiny shapes)."""
    import numpy as np
    from numba import cuda

    import bandsolve
    from bandsolve.gpu import config

    config.MIN_CHUNK = 1  # tiny problems still get several interiors
    rng = np.random.default_rng(0)

    def dev(*arrays):
        return [cuda.to_device(np.ascontiguousarray(a)) for a in arrays]

    for dtype in (np.float64, np.float32):
        for central in (False, True):
            for algorithm in ("thread", "block", "partitioned"):
                c, r, g, h = dev(*_problem(rng, (2,), 6, 2, 1, 3, 1, 2, dtype))
                u, vjp = bandsolve.smnn_solve_vjp(c, r, g, h, central_smoothness=central,
                                                  algorithm=algorithm)
                vjp(cuda.to_device(np.ones(u.shape, dtype)))
                # broadcasting: time-broadcast coefficients, batch-broadcast lhs, check=True
                c, r, g, h = dev(*_problem(rng, (2,), 6, 2, 1, 3, 1, 2, dtype, coef_batch=(),
                                           steps_batch=(1,), coef_T=1))
                u, vjp = bandsolve.smnn_solve_vjp(c, r, g, h, central_smoothness=central,
                                                  algorithm=algorithm, check=True)
                vjp(cuda.to_device(np.ones(u.shape[-3:], dtype)))
            for algorithm in ("thread", "block"):  # the adapters' path: .lower, from_lower
                c, r, g, h = dev(*_problem(rng, (2,), 6, 2, 1, 3, 1, 2, dtype))
                factor = bandsolve.smnn_factor(c, h, init_shape=(1, 2), n_steps=6,
                                               central_smoothness=central,
                                               algorithm=algorithm)
                u = factor.solve(r, g)
                rebuilt = bandsolve.SMNNFactorization.from_lower(
                    factor.lower, c, h, init_shape=(1, 2), n_steps=6,
                    central_smoothness=central)
                rebuilt.backward(r, g, u, cuda.to_device(np.ones(u.shape, dtype)))
                contiguous = cuda.to_device(np.ascontiguousarray(factor.lower.copy_to_host()))
                bandsolve.SMNNFactorization.from_lower(
                    contiguous, c, h, init_shape=(1, 2), n_steps=6,
                    central_smoothness=central, algorithm=algorithm).solve(r, g)
        # the generated thread-per-system kernels (algorithm="auto"), small batches let in
        lanes_min, batch_max = config.LANES_MIN_SYSTEMS, config.PARALLEL_IN_TIME_MAX_BATCH
        config.LANES_MIN_SYSTEMS, config.PARALLEL_IN_TIME_MAX_BATCH = 1, 0
        lane_inputs = dev(*_problem(rng, (3,), 6, 2, 1, 3, 1, 2, dtype))
        bandsolve.smnn_solve(*lane_inputs)
        u, vjp = bandsolve.smnn_solve_vjp(*lane_inputs)
        vjp(cuda.to_device(np.ones(u.shape, dtype)))
        config.LANES_MIN_SYSTEMS, config.PARALLEL_IN_TIME_MAX_BATCH = lanes_min, batch_max
        # mixed dtypes (device casts), T = 1, no initial values
        c, r, g, h = _problem(rng, (), 1, 2, 1, 2, 1, 1, dtype)
        bandsolve.smnn_solve(*dev(c.astype(np.float32), r, g, h))
        c, r, g, h = _problem(rng, (3,), 5, 3, 1, 2, 0, 0, dtype)
        bandsolve.smnn_solve(*dev(c, r, g, h))


def record(path):
    """Run :func:`_drive` under the simulator and pickle the launches to ``path``."""
    import numba

    if not numba.config.ENABLE_CUDASIM:
        raise RuntimeError("record runs under NUMBA_ENABLE_CUDASIM=1")
    from bandsolve.gpu import _runtime

    seen = set()

    def numba_type(value):
        return numba.typeof(getattr(value, "_ary", value))  # simulator arrays wrap NumPy

    def recorder(original, skip):
        def launch(self, kernel, *args, **kwargs):
            func = getattr(kernel, "fn", None) or kernel.py_func
            argtypes = tuple(numba_type(a) for a in args[skip:])
            seen.add((func.__module__, func.__name__, argtypes))
            return original(self, kernel, *args, **kwargs)
        return launch

    # launch(kernel, n_threads, *args); launch_blocks(kernel, n_blocks, threads, *args)
    _runtime.Device.launch = recorder(_runtime.Device.launch, 1)
    _runtime.Device.launch_blocks = recorder(_runtime.Device.launch_blocks, 2)
    _drive()
    with open(path, "wb") as f:
        pickle.dump(sorted(seen, key=str), f)


def _record_in_subprocess(path):
    env = dict(os.environ, NUMBA_ENABLE_CUDASIM="1", PYTHONWARNINGS="ignore")
    result = subprocess.run([sys.executable, "-m", "bandsolve.gpu.compile_check",
                             "--record", path], env=env, capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError("recording the kernel launches under the simulator failed:\n"
                           + result.stdout[-4000:] + result.stderr[-8000:])
    with open(path, "rb") as f:
        return pickle.load(f)


# ----------------------------------------------------------------------------- step 2

def find_ptxas():
    """``ptxas`` from ``$CUDA_HOME/bin``, ``PATH`` or the ``nvidia-cuda-nvcc`` wheel."""
    candidates = []
    if os.environ.get("CUDA_HOME"):
        candidates.append(os.path.join(os.environ["CUDA_HOME"], "bin", "ptxas"))
    if shutil.which("ptxas"):
        candidates.append(shutil.which("ptxas"))
    for entry in sys.path:
        for sub in ("cuda_nvcc", "cu13"):
            candidates.append(os.path.join(entry, "nvidia", sub, "bin", "ptxas"))
    for path in candidates:
        if os.path.isfile(path):
            if not os.access(path, os.X_OK):
                os.chmod(path, 0o755)  # wheels do not always keep the executable bit
            return path
    raise RuntimeError("ptxas not found: pip install 'bandsolve[cuda-compile]' or set "
                       "CUDA_HOME to a CUDA toolkit")


_PTXAS_ENTRY = re.compile(r"Compiling entry function '([^']+)'")
_PTXAS_FRAME = re.compile(r"(\d+) bytes stack frame, (\d+) bytes spill stores, "
                          r"(\d+) bytes spill loads")
_PTXAS_USED = re.compile(r"Used (\d+) registers(?:, used \d+ barriers)?(.*)")


def assemble(ptxas, ptx, arch, workdir):
    """Assemble ``ptx`` with ptxas; returns ``{registers, stack, spill_stores,
    spill_loads, shared}`` of its entry function (``RuntimeError`` with ptxas's output)."""
    source = os.path.join(workdir, "kernel.ptx")
    with open(source, "w") as f:
        f.write(ptx)
    result = subprocess.run([ptxas, f"-arch={arch}", "-v", source, "-o",
                             os.path.join(workdir, "kernel.cubin")],
                            capture_output=True, text=True)
    log = result.stdout + result.stderr
    if result.returncode != 0:
        raise RuntimeError(f"ptxas failed:\n{log[-4000:]}")
    info = dict(registers=None, stack=0, spill_stores=0, spill_loads=0, shared=0)
    entry = current = None
    for line in log.splitlines():
        found = _PTXAS_ENTRY.search(line)
        if found:
            entry = current = found.group(1)
        elif "Function properties for " in line:  # the entry's, or a called function's
            current = line.split("Function properties for ", 1)[1].strip()
        frame = _PTXAS_FRAME.search(line)
        if frame and current == entry:
            info["stack"], info["spill_stores"], info["spill_loads"] = map(int, frame.groups())
        used = _PTXAS_USED.search(line)
        if used and current == entry:
            info["registers"] = int(used.group(1))
            shared = re.search(r"(\d+) bytes smem", used.group(2))
            info["shared"] = int(shared.group(1)) if shared else 0
    if info["registers"] is None:
        raise RuntimeError(f"no register count in ptxas's output:\n{log[-4000:]}")
    return info


def _declared_kernels():
    """``{(module, name)}`` of every ``@cuda.jit`` kernel of the backend."""
    from numba.cuda.dispatcher import CUDADispatcher

    kernels = set()
    for short in KERNEL_MODULES:
        module = importlib.import_module(f"bandsolve.gpu.{short}")
        for name, value in inspect.getmembers(module):
            if isinstance(value, CUDADispatcher) and not value.targetoptions.get("device"):
                if value.py_func.__module__ == module.__name__:
                    kernels.add((module.__name__, name))
    return kernels


def _import(module):
    """A module of the package, or one of the generated kernel modules the recording
    process wrote to the cache folder (``kernels/codegen.py::load``)."""
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError:
        from ..kernels import codegen

        path = os.path.join(codegen.cache_folder(), module + ".py")
        if not os.path.exists(path):
            raise
        spec = importlib.util.spec_from_file_location(module, path)
        loaded = importlib.util.module_from_spec(spec)
        sys.modules[module] = loaded
        spec.loader.exec_module(loaded)
        return loaded


def _target(arch):
    """The compute capability of ``arch`` (``"sm_90"`` -> ``(9, 0)``), also made the one
    device functions are compiled for: Numba asks the driver for the current device's,
    and there is none here."""
    import types

    import numba.cuda.dispatcher as dispatcher

    cc = tuple(int(d) for d in arch.removeprefix("sm_"))
    dispatcher.get_current_device = lambda: types.SimpleNamespace(compute_capability=cc)
    return cc


def compile_all(entries, arch, out=sys.stdout):
    """Compile and assemble every (module, kernel, argtypes); returns the failure count."""
    import numba
    from numba import cuda

    if numba.config.ENABLE_CUDASIM:
        raise RuntimeError("compile without the simulator (unset NUMBA_ENABLE_CUDASIM)")
    if getattr(cuda, "implementation", "") != "NVIDIA":
        raise RuntimeError("the compile check needs numba-cuda (pip install "
                           "'bandsolve[cuda-compile]'); found numba's built-in CUDA target")
    ptxas = find_ptxas()
    cc = _target(arch)
    failures = []
    header = (f"{'kernel':<40} {'signature':<44} {'regs':>4} {'stack':>6} {'spill st/ld':>11} "
              f"{'smem':>6} {'s':>5}")
    print(header, file=out)
    print("-" * len(header), file=out, flush=True)
    with tempfile.TemporaryDirectory() as workdir:
        for module, name, argtypes in entries:
            kernel = getattr(_import(module), name)
            label = f"{module.rsplit('.', 1)[-1]}.{name}"
            signature = _short_signature(argtypes)
            start = time.perf_counter()
            try:
                ptx, _ = cuda.compile_ptx(kernel.py_func, argtypes, cc=cc)
                info = assemble(ptxas, ptx, arch, workdir)
            except Exception as error:  # report every failure, then fail
                failures.append(label)
                print(f"{label:<40} {signature:<44} FAILED\n    {type(error).__name__}: "
                      f"{str(error)[:3000]}", file=out, flush=True)
                continue
            spills = f"{info['spill_stores']}/{info['spill_loads']}"
            print(f"{label:<40} {signature:<44} {info['registers']:>4} {info['stack']:>6} "
                  f"{spills:>11} {info['shared']:>6} {time.perf_counter() - start:>5.1f}",
                  file=out, flush=True)
    compiled = len(entries) - len(failures)
    print(f"{compiled} of {len(entries)} kernels compiled for {arch} "
          "(stack: bytes of local memory per thread; spill st/ld: bytes of register spills)",
          file=out, flush=True)
    return len(failures)


def lane_report(n_dims, n_orders, n_equations, arch="sm_90"):
    """``{kernel: {registers, stack, spill_stores, spill_loads, shared}}`` of the generated
    lane kernels of shape ``(D, O, E)`` (``bandsolve.gpu.lanes``), each compiled to PTX
    with its argument types from the generator's naming convention and assembled by
    ptxas (no simulator, no GPU)."""
    from numba import cuda

    from .lanes import KERNELS, argument_types, kernels

    module = kernels(n_dims, n_orders, n_equations)
    ptxas = find_ptxas()
    cc = _target(arch)  # (refine calls the stopping rule, a device function)
    report = {}
    with tempfile.TemporaryDirectory() as workdir:
        for name in KERNELS:
            kernel = getattr(module, name)
            ptx, _ = cuda.compile_ptx(kernel.py_func, argument_types(kernel), cc=cc)
            report[name] = assemble(ptxas, ptx, arch, workdir)
    return report


def _short_signature(argtypes):
    """dtype and layout of the first array argument, e.g. ``float32 C 4d`` (enough to tell
    the signatures of one kernel apart in the table, with the argument count)."""
    arrays = [t for t in argtypes if hasattr(t, "dtype") and hasattr(t, "layout")]
    kinds = sorted({f"{t.dtype}" for t in arrays})
    layouts = "".join(sorted({t.layout for t in arrays}))
    return f"{len(argtypes)} args, {'/'.join(kinds)}, layout {layouts}"


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m bandsolve.gpu.compile_check",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--arch", default="sm_90", help="ptxas target (default sm_90)")
    parser.add_argument("--record", metavar="FILE", help=argparse.SUPPRESS)
    parser.add_argument("--lanes", metavar="D,O,E",
                        help="only the generated lane kernels of this shape (e.g. 1,3,1)")
    args = parser.parse_args(argv)
    if args.record:
        record(args.record)
        return 0
    if args.lanes:
        shape = tuple(int(k) for k in args.lanes.split(","))
        for name, info in lane_report(*shape, arch=args.arch).items():
            print(name, info)
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        entries = _record_in_subprocess(os.path.join(tmp, "launches.pkl"))
    failures = compile_all(entries, args.arch)
    missing = _declared_kernels() - {(m, n) for m, n, _ in entries}
    for module, name in sorted(missing):
        print(f"NOT COVERED: {module}.{name} was never launched by the recorder")
    return 1 if failures or missing else 0


if __name__ == "__main__":
    sys.exit(main())

"""Compile every CUDA kernel of bandsolve to PTX, without a GPU.

The Numba CUDA simulator runs kernels as plain Python, so it cannot catch code that the
real CUDA target rejects (typing, unsupported calls, local arrays). This tool closes that
gap on a machine without a GPU:

1. (``--record FILE``, run with ``NUMBA_ENABLE_CUDASIM=1``) drive a set of small solves,
   VJPs and factorisations that reach every kernel and record each launch as (module,
   kernel name, Numba argument types);
2. (default, run *without* the simulator) compile each recorded (kernel, signature) with
   ``numba.cuda.compile_ptx`` for compute capability 9.0, which needs NVVM but no driver.

NVVM comes from a CUDA toolkit or the ``nvidia-cuda-nvcc-cu12`` wheel: point ``CUDA_HOME``
at the directory holding ``nvvm/`` (e.g. ``site-packages/nvidia/cuda_nvcc``). Usage::

    python tools/gpu_ptx_check.py            # runs both steps in subprocesses

To compile with the separate ``numba-cuda`` package instead of Numba's built-in CUDA
target, install it (and ``cuda-bindings``, ``cuda-core``, ``cuda-pathfinder``) into a
directory and set ``BANDSOLVE_PTX_SITE`` to it; numba-cuda also needs ``libnvrtc`` on
``LD_LIBRARY_PATH`` (``nvidia-cuda-nvrtc-cu12`` wheel).

Exit status 0 if every kernel compiled; prints one line per (kernel, signature).
"""

import os
import pickle
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def record(path):
    import numpy as np
    import numba
    from numba import cuda

    assert numba.config.ENABLE_CUDASIM, "record under NUMBA_ENABLE_CUDASIM=1"
    sys.path.insert(0, os.path.join(ROOT, "tests"))
    import bandsolve
    from bandsolve.gpu import _runtime
    from helpers import make_problem

    seen = {}

    def numba_type(value):
        if hasattr(value, "_ary"):  # simulator device array
            return numba.typeof(value._ary)
        return numba.typeof(value)

    def recorder(original):
        def launch(self, kernel, *args, **kwargs):
            launch_args = args[1:] if original.__name__ == "launch" else args[2:]
            func = kernel.fn if hasattr(kernel, "fn") else kernel.py_func
            key = (func.__module__, func.__name__,
                   tuple(numba_type(a) for a in launch_args))
            seen[key] = True
            return original(self, kernel, *args, **kwargs)
        launch.__name__ = original.__name__
        return launch

    _runtime.Device.launch = recorder(_runtime.Device.launch)
    _runtime.Device.launch_blocks = recorder(_runtime.Device.launch_blocks)

    from bandsolve.gpu import config
    config.MIN_CHUNK = 1  # tiny problems still get several interiors
    for dtype in (np.float64, np.float32):
        for central in (False, True):
            for algorithm in ("thread", "block", "partitioned"):
                problem = make_problem(0, batch=(2,), T=6, E=2, D=1, O=3, Ti=1, Oi=2,
                                       dtype=dtype)
                dev = [cuda.to_device(a) for a in problem]
                u, vjp = bandsolve.smnn_solve_vjp(*dev, central_smoothness=central,
                                                  algorithm=algorithm)
                vjp(cuda.to_device(np.ones(u.shape, dtype)))
                # broadcasting: time-broadcast coefficients and steps, batch-broadcast lhs
                problem = make_problem(1, batch=(2,), T=6, E=2, D=1, O=3, Ti=1, Oi=2,
                                       dtype=dtype, coef_batch=(), steps_batch=(1,),
                                       coef_T=1, steps_T=1)
                dev = [cuda.to_device(a) for a in problem]
                u, vjp = bandsolve.smnn_solve_vjp(*dev, central_smoothness=central,
                                                  algorithm=algorithm, check=True)
                vjp(cuda.to_device(np.ones(u.shape[-3:], dtype)))
            factorization = bandsolve.smnn_factor(
                cuda.to_device(problem[0]), cuda.to_device(problem[3]), init_shape=(1, 2),
                n_steps=6, central_smoothness=central, algorithm="thread")
            lower = factorization.lower
            bandsolve.SMNNFactorization.from_lower(
                lower, cuda.to_device(problem[0]), cuda.to_device(problem[3]),
                init_shape=(1, 2), n_steps=6, central_smoothness=central)
        # mixed dtypes (device cast) and T = 1
        c, r, g, h = make_problem(2, T=1, E=2, D=1, O=2, Ti=1, Oi=1, dtype=dtype)
        bandsolve.smnn_solve(cuda.to_device(c.astype(np.float32)), cuda.to_device(r),
                             cuda.to_device(g), cuda.to_device(h))
    with open(path, "wb") as f:
        pickle.dump(sorted(seen, key=lambda k: (k[0], k[1], str(k[2]))), f)
    print(f"recorded {len(seen)} (kernel, signature) pairs")


def compile_all(path):
    import importlib
    import site
    import types

    if os.environ.get("BANDSOLVE_PTX_SITE"):  # e.g. a directory holding numba-cuda
        site.addsitedir(os.environ["BANDSOLVE_PTX_SITE"])
    import numba
    from numba import cuda
    import numba.cuda.dispatcher as dispatcher

    assert not numba.config.ENABLE_CUDASIM, "compile without the simulator"
    # device functions ask the current device for its compute capability; there is none
    dispatcher.get_current_device = lambda: types.SimpleNamespace(compute_capability=(9, 0))
    with open(path, "rb") as f:
        entries = pickle.load(f)
    failures = 0
    for module, name, argtypes in entries:
        kernel = getattr(importlib.import_module(module), name)
        label = f"{module}.{name}{tuple(str(t) for t in argtypes)}"
        try:
            ptx, _ = cuda.compile_ptx(kernel.py_func, argtypes, cc=(9, 0))
            print(f"ok   {label} ({len(ptx)} chars of PTX)")
        except Exception as error:  # report every failure, then fail
            failures += 1
            print(f"FAIL {label}\n     {type(error).__name__}: {str(error)[:2000]}")
    print(f"{len(entries) - failures} of {len(entries)} compiled")
    return failures


def main():
    if len(sys.argv) == 3 and sys.argv[1] == "--record":
        record(sys.argv[2])
        return 0
    if len(sys.argv) == 3 and sys.argv[1] == "--compile":
        return 1 if compile_all(sys.argv[2]) else 0
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "launches.pkl")
        env = dict(os.environ, NUMBA_ENABLE_CUDASIM="1", PYTHONPATH=ROOT)
        subprocess.run([sys.executable, __file__, "--record", path], env=env, check=True)
        env = {k: v for k, v in os.environ.items() if k != "NUMBA_ENABLE_CUDASIM"}
        env["PYTHONPATH"] = ROOT
        return subprocess.run([sys.executable, __file__, "--compile", path], env=env).returncode


if __name__ == "__main__":
    sys.exit(main())

"""The one-shot GPU check, in one process (so kernels compile once): run by
``tools/gpu_check.sh OUTDIR``, which sets the environment and the overall time cap.

Sections, each with a hard cap, each writing one JSON line per case to
``OUTDIR/results.jsonl`` as soon as it is known (a run cut short keeps everything so far):

1. ``preflight`` (<= 60 s): versions; a CUDA driver (else "no CUDA driver", exit 2 within
   seconds); NVVM (``CUDA_HOME`` set from the usual places if numba-cuda cannot find it);
   the device; one tiny solve per kernel shape (thread, block, parallel in time) and one
   through each adapter against a dense NumPy least-squares solve. Any failure stops the
   script (exit 2): the later sections would only repeat it.
2. ``tests`` (<= 150 s): ``tests/gpu_cases.py`` (the simulator cases, on the device),
   ``tests/gpu_hw_cases.py`` and ``tests/gpu_adapter_cases.py``.
3. ``bench`` (the time left, <= 150 s): ``gpu_bench.run`` (see that file).

``OUTDIR/summary.md`` is rewritten after each section. Exit status: 0 if every test
passed and every benchmark case ran, 1 otherwise, 2 if the preflight failed.
"""

import contextlib
import ctypes
import importlib.metadata
import json
import os
import signal
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
START = time.monotonic()
TOTAL_S = float(os.environ.get("GPU_CHECK_TOTAL_SECONDS", 375))
PREFLIGHT_S, TESTS_S, BENCH_S = 60, 150, 150
PACKAGES = ("numpy", "numba", "numba-cuda", "cuda-bindings", "cupy", "cupy-cuda12x",
            "cupy-cuda13x", "torch", "jax", "jaxlib", "jax-cuda12-plugin",
            "jax-cuda13-plugin", "nvidia-cuda-nvcc-cu12", "nvidia-nvvm")


class Report:
    def __init__(self, out_dir):
        self.out_dir = out_dir
        self._file = open(os.path.join(out_dir, "results.jsonl"), "a", buffering=1)
        self.sections = {}

    def write(self, **record):
        record.setdefault("t", round(time.monotonic() - START, 1))
        line = json.dumps(record, default=str)
        self._file.write(line + "\n")
        self._file.flush()
        print(line, flush=True)

    def summary(self):
        lines = ["# gpu_check summary", ""]
        for name, (status, seconds) in self.sections.items():
            lines.append(f"- {name}: {status} after {seconds:.0f} s")
        lines += ["", "| shape | dtype | mode | method | device ms | host ms | rel. diff "
                  "vs core | note |", "|---|---|---|---|---|---|---|---|"]
        path = os.path.join(self.out_dir, "results.jsonl")
        with open(path) as f:
            for line in f:
                r = json.loads(line)
                if r.get("section") != "bench" or "method" not in r:
                    continue
                note = r.get("error") or r.get("skipped") or r.get("note") or ""
                if not note and r.get("achieved_GBps"):
                    note = f"{r['algorithm']}: {r['achieved_GBps']:.0f} GB/s (modelled bytes)"
                lines.append("| " + " | ".join(str(x) for x in (
                    r["shape"], r["dtype"], r["mode"], r["method"], _ms(r.get("device_ms")),
                    _ms(r.get("host_ms")), _sci(r.get("rel_diff_vs_core")),
                    str(note)[:80])) + " |")
        with open(os.path.join(self.out_dir, "summary.md"), "w") as f:
            f.write("\n".join(lines) + "\n")


def _ms(value):
    return f"{value:.3f}" if isinstance(value, float) else (value or "")


def _sci(value):
    return f"{value:.1e}" if isinstance(value, float) else ""


class SectionTimeout(Exception):
    pass


@contextlib.contextmanager
def cap(seconds, what):
    """Raise SectionTimeout in the main thread after ``seconds``."""
    def expire(signum, frame):
        raise SectionTimeout(f"{what} exceeded its cap of {seconds:.0f} s")
    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, max(seconds, 1))
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


# ----------------------------------------------------------------------------- preflight

def versions():
    found = {}
    for name in PACKAGES:
        try:
            found[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            pass
    found["python"] = sys.version.split()[0]
    return found


def cuda_driver():
    """Path of a loadable libcuda, or None (ctypes only: seconds at most)."""
    for name in ("libcuda.so.1", "libcuda.so"):
        try:
            ctypes.CDLL(name)
            return name
        except OSError:
            continue
    return None


_NVVM_PROBE = "from numba.cuda.cudadrv import nvvm; print(nvvm.NVVM().get_version())"


def nvvm_candidates():
    homes = [os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH"), "/usr/local/cuda"]
    if os.path.isdir("/usr/local"):
        homes += sorted((os.path.join("/usr/local", d) for d in os.listdir("/usr/local")
                         if d.startswith("cuda-")), reverse=True)
    for entry in sys.path:
        homes += [os.path.join(entry, "nvidia", "cuda_nvcc"), os.path.join(entry, "nvidia", "cu13")]
    return [h for h in homes if h and os.path.isdir(os.path.join(h, "nvvm"))]


def find_nvvm():
    """Make sure numba-cuda finds NVVM, setting CUDA_HOME if it does not by itself."""
    env = dict(os.environ)
    probe = subprocess.run([sys.executable, "-c", _NVVM_PROBE], capture_output=True,
                           text=True, env=env, timeout=30)
    if probe.returncode == 0:
        return probe.stdout.strip(), os.environ.get("CUDA_HOME")
    for home in nvvm_candidates():
        env["CUDA_HOME"] = home
        probe = subprocess.run([sys.executable, "-c", _NVVM_PROBE], capture_output=True,
                               text=True, env=env, timeout=30)
        if probe.returncode == 0:
            os.environ["CUDA_HOME"] = home
            return probe.stdout.strip(), home
    raise RuntimeError("numba-cuda finds no NVVM (libnvvm), neither by itself nor under "
                       f"CUDA_HOME in {nvvm_candidates()}; install nvidia-cuda-nvcc-cu12 or "
                       "point CUDA_HOME at a CUDA toolkit")


def enable_disk_cache():
    """Switch on Numba's disk cache for every kernel of the backend (in this process only),
    so that a second run with the same NUMBA_CACHE_DIR skips compilation. Returns how many
    kernels use it."""
    import importlib

    from numba.cuda.dispatcher import CUDADispatcher

    count = 0
    for name in ("arrays", "thread", "block", "partitioned", "gradient", "refine"):
        module = importlib.import_module(f"bandsolve.gpu.{name}")
        for value in vars(module).values():
            if isinstance(value, CUDADispatcher) and not value.targetoptions.get("device"):
                value.enable_caching()
                count += 1
    return count


def _dense_reference(problem):
    """Least-squares solution of every system from the dense rows (NumPy, float64)."""
    import numpy as np

    from bandsolve.formulation import dense_rows

    c, r, g, h = problem
    out, conds = [], []
    for b in range(r.shape[0]):
        A, beta = dense_rows(c[b], r[b], g[b], h[b])
        out.append(np.linalg.lstsq(A, beta, rcond=None)[0])
        conds.append(np.linalg.cond(A))
    return np.stack(out).reshape(r.shape[:1] + (r.shape[1],) + c.shape[-2:]), max(conds)


def _check_close(report, what, actual, expected, cond):
    import numpy as np

    err = float(np.linalg.norm(np.asarray(actual, np.float64) - expected)
                / np.linalg.norm(expected))
    # the normal equations square the condition number: eps * cond(A)^2, with a margin
    tol = 100 * np.finfo(np.float64).eps * cond * cond
    ok = bool(err <= tol)
    report.write(section="preflight", case=what, rel_error=err, tolerance=tol, ok=ok)
    if not ok:
        raise RuntimeError(f"{what}: relative error {err:.2e} > {tol:.2e} against the dense "
                           "least-squares solve")


def preflight(report):
    report.write(section="preflight", case="versions", **versions())
    driver = cuda_driver()
    if driver is None:
        raise RuntimeError("no CUDA driver: libcuda.so.1 cannot be loaded, so this machine "
                           "has no usable NVIDIA GPU (nothing else was run)")
    version, home = find_nvvm()
    report.write(section="preflight", case="nvvm", version=version, cuda_home=home)
    import numpy as np
    from numba import cuda

    if not cuda.is_available():
        raise RuntimeError(f"no CUDA driver usable by numba ({driver} loads, but "
                           "numba.cuda.is_available() is False)")
    device = cuda.get_current_device()
    import cupy

    report.write(section="preflight", case="device", name=device.name,
                 compute_capability=device.compute_capability,
                 cuda_implementation=getattr(cuda, "implementation", "?"),
                 cupy_runtime=cupy.cuda.runtime.runtimeGetVersion(),
                 driver=cupy.cuda.runtime.driverGetVersion())
    import bandsolve
    from bandsolve.problems import coupled_oscillators

    report.write(section="preflight", case="disk cache", kernels=enable_disk_cache(),
                 folder=os.environ.get("NUMBA_CACHE_DIR"))

    problem = coupled_oscillators((2,), 24, n_dims=2, n_orders=3, seed=3)
    expected, cond = _dense_reference(problem)
    inputs = [cupy.asarray(a) for a in problem]
    for algorithm in ("thread", "block", "partitioned"):
        start = time.monotonic()
        u = bandsolve.smnn_solve(*inputs, algorithm=algorithm)
        _check_close(report, f"core {algorithm} (compile + solve "
                     f"{time.monotonic() - start:.1f} s)", cupy.asnumpy(u), expected, cond)
    import torch

    import bandsolve_torch

    if not torch.cuda.is_available():
        raise RuntimeError("torch sees no CUDA device")
    u = bandsolve_torch.smnn_solve(*(torch.tensor(a, device="cuda") for a in problem))
    _check_close(report, "torch adapter", u.cpu().numpy(), expected, cond)
    import jax

    import bandsolve_jax

    gpus = [d for d in jax.devices() if d.platform == "gpu"]
    if not gpus:
        raise RuntimeError(f"jax sees no GPU: {jax.devices()}")
    with jax.enable_x64(True):
        u = bandsolve_jax.smnn_solve(*(jax.device_put(a, gpus[0]) for a in problem))
        _check_close(report, "jax adapter", np.asarray(u), expected, cond)


# ----------------------------------------------------------------------------- tests, bench

class _TestRecorder:
    """pytest plugin: one JSON line per test; stops the session once the cap is reached."""

    def __init__(self, report, deadline):
        self.report = report
        self.deadline = deadline
        self.failed = 0
        self.passed = 0

    def pytest_runtest_setup(self, item):
        import pytest

        if time.monotonic() > self.deadline:
            pytest.exit("tests: time cap reached", returncode=1)

    def pytest_runtest_logreport(self, report):
        if report.when == "call" or report.outcome != "passed":
            if report.outcome == "failed":
                self.failed += 1
            elif report.when == "call":
                self.passed += 1
            self.report.write(section="tests", case=report.nodeid, when=report.when,
                              outcome=report.outcome, seconds=round(report.duration, 2),
                              error=str(report.longrepr)[-1500:] if report.failed else None)


def tests(report, seconds):
    import pytest

    recorder = _TestRecorder(report, time.monotonic() + seconds)
    files = [os.path.join(ROOT, "tests", name) for name in
             ("gpu_cases.py", "gpu_hw_cases.py", "gpu_adapter_cases.py")]
    with cap(seconds + 10, "tests"):
        status = pytest.main(["-q", "-p", "no:cacheprovider", "-rfE", "--junitxml",
                              os.path.join(report.out_dir, "tests.junit.xml"), *files],
                             plugins=[recorder])
    return int(status), recorder


def bench(report, seconds, reference):
    for folder in ("benchmarks", "tools"):
        if os.path.exists(os.path.join(ROOT, folder, "gpu_bench.py")):
            sys.path.insert(0, os.path.join(ROOT, folder))
            break
    import gpu_bench

    class Results:
        def write(self, **record):
            report.write(section="bench", **record)

    with cap(seconds + 15, "bench"):
        return gpu_bench.run(Results(), seconds, reference_path=reference)


def main(argv):
    out_dir = os.path.abspath(argv[0])
    reference = argv[argv.index("--reference") + 1] if "--reference" in argv else None
    report = Report(out_dir)
    status = 0
    start = time.monotonic()
    try:
        with cap(PREFLIGHT_S, "preflight"):
            preflight(report)
    except BaseException as error:  # any failure here stops the run
        report.write(section="preflight", error=f"{type(error).__name__}: {error}")
        report.sections["preflight"] = (f"FAILED: {error}", time.monotonic() - start)
        report.summary()
        print(f"gpu_check: preflight failed: {error}", file=sys.stderr, flush=True)
        return 2
    report.sections["preflight"] = ("ok", time.monotonic() - start)
    report.summary()

    start = time.monotonic()
    try:
        code, recorder = tests(report, min(TESTS_S, TOTAL_S - (start - START) - 40))
        outcome = f"pytest exit {code}, {recorder.passed} passed, {recorder.failed} failed"
        status |= code != 0
    except SectionTimeout as error:
        outcome, status = f"CUT: {error}", 1
    report.sections["tests"] = (outcome, time.monotonic() - start)
    report.summary()

    start = time.monotonic()
    left = min(BENCH_S, TOTAL_S - (start - START) - 10)
    try:
        failures = bench(report, left, reference)
        outcome = f"{failures} failed cases"
        status |= failures != 0
    except Exception as error:  # SectionTimeout or an import error
        outcome, status = f"FAILED: {type(error).__name__}: {error}", 1
    report.sections["bench"] = (outcome, time.monotonic() - start)
    report.summary()
    print(open(os.path.join(out_dir, "summary.md")).read(), flush=True)
    return 1 if status else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

"""The generated thread-per-system CUDA kernels: the simulator cases
(``tests/gpu_lane_cases.py``, in a subprocess with ``NUMBA_ENABLE_CUDASIM=1``) and a
compile for sm_90 with ptxas's register and spill counts (``[cuda-compile]`` extra)."""

import importlib.util
import os
import subprocess
import sys

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)


@pytest.mark.slow  # ~25-30 s of simulated threads (the README's test command stays < 6 min)
def test_generated_cuda_kernels_under_the_simulator():
    env = dict(os.environ, NUMBA_ENABLE_CUDASIM="1", PYTHONWARNINGS="ignore")
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
         os.path.join(HERE, "gpu_lane_cases.py")],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    report = result.stdout[-20000:] + result.stderr[-5000:]
    assert result.returncode == 0, report
    # (every case ran: none skipped or deselected; the count is gpu_lane_cases.py's)
    assert "20 passed" in report, report


@pytest.mark.skipif(importlib.util.find_spec("numba_cuda") is None and not os.environ.get("CI"),
                    reason="needs pip install -e '.[cuda-compile]' (CI installs it)")
def test_generated_cuda_kernels_compile_for_sm90_without_spills():
    env = {k: v for k, v in os.environ.items() if k != "NUMBA_ENABLE_CUDASIM"}
    code = ("from bandsolve.gpu.compile_check import lane_report; "
            "print(repr(lane_report(1, 3, 1)))")
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env,
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-5000:] + result.stderr[-5000:]
    report = eval(result.stdout.strip().splitlines()[-1])  # a dict literal we printed
    assert set(report) >= {"factor_forward", "backward", "forward", "refine", "refine_plain"}
    for name, info in report.items():
        assert info["spill_stores"] == 0 and info["spill_loads"] == 0, (name, info)
        assert 0 < info["registers"] <= 255, (name, info)

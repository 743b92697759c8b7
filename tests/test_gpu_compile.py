"""The CUDA kernels compile for a real GPU target (no GPU needed).

The simulator tests (``test_gpu.py``) run the kernels as Python, which accepts code that
the CUDA target rejects; here every kernel, with every signature the dispatch produces, is
compiled to PTX by numba-cuda and assembled by ``ptxas -arch=sm_90``
(``python -m bandsolve.gpu.compile_check``; needs the ``[cuda-compile]`` extra, which CI
installs: there a missing extra fails instead of skipping).
"""

import importlib.util
import os
import re
import subprocess
import sys

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def reciprocal_helper(x):  # what blocks.py once did: the simulator runs it, CUDA does not
    return np.reciprocal(x)


def test_shared_helpers_may_not_call_numpy():
    """The rule that keeps the CPU/CUDA helpers compilable for both targets is enforced when
    a helper is first compiled for the device, on any machine (also under the simulator)."""
    from bandsolve.gpu._runtime import device_function

    with pytest.raises(TypeError, match="reciprocal_helper refers to the module numpy"):
        device_function(reciprocal_helper)


def _have_numba_cuda():
    return importlib.util.find_spec("numba_cuda") is not None


@pytest.mark.slow  # about 110 s on 2 cores: NVVM and ptxas for every kernel, never cached
@pytest.mark.skipif(not _have_numba_cuda() and not os.environ.get("CI"),
                    reason="needs pip install -e '.[cuda-compile]' (CI installs it)")
def test_every_kernel_compiles_for_sm90():
    env = {k: v for k, v in os.environ.items() if k != "NUMBA_ENABLE_CUDASIM"}
    env["PYTHONPATH"] = os.pathsep.join([ROOT, os.path.join(ROOT, "adapters"),
                                         env.get("PYTHONPATH", "")])
    result = subprocess.run([sys.executable, "-m", "bandsolve.gpu.compile_check"],
                            cwd=ROOT, env=env, capture_output=True, text=True, timeout=1500)
    report = result.stdout[-20000:] + result.stderr[-5000:]
    assert result.returncode == 0, report
    found = re.search(r"^(\d+) of (\d+) kernels compiled for sm_90", result.stdout, re.M)
    assert found and found.group(1) == found.group(2), report
    # every kernel of bandsolve/gpu/ was launched by the scenarios and compiled (the
    # compute kernels in float64 only: the device computes in float64 for every dtype)
    kernels = 0
    for module in sorted(os.listdir(os.path.join(ROOT, "bandsolve", "gpu"))):
        if module.endswith(".py"):
            source = open(os.path.join(ROOT, "bandsolve", "gpu", module)).read()
            for name in re.findall(r"^@cuda\.jit\ndef (\w+)", source, re.M):
                assert f"{module[:-3]}.{name} " in result.stdout, (module, name, report)
                kernels += 1
    assert kernels >= 19, kernels  # the scan itself found the kernels
    assert "FAILED" not in result.stdout and "NOT COVERED" not in result.stdout, report

"""The CUDA backend, testable without a GPU.

1. The parallel-in-time algorithm (``bandsolve/kernels/partitioned.py``, compiled for the CPU
   here and for CUDA by ``bandsolve.gpu``) against dense solves, in this process
   (marked ``slow``: the cold compilation of the CPU build takes about a minute).
2. ``tests/gpu_cases.py``, the CUDA backend against the CPU backend and the dense oracle,
   under the Numba CUDA simulator. The simulator must be switched on before numba's first
   import and other test modules have imported numba already, so the cases run in a
   subprocess: ``NUMBA_ENABLE_CUDASIM=1 python -m pytest tests/gpu_cases.py`` (about
   a minute on two cores). On a GPU machine ``tools/gpu_check.sh`` runs the same file on
   the real device.
"""

import os
import subprocess
import sys

import numpy as np
import pytest

from bandsolve.cpu.partitioned import partitioned_cholesky_solve
from bandsolve.kernels.partitioned import n_chunks_for

from helpers import EPS, dense_to_lower_blocks, random_spd_block_banded

HERE = os.path.dirname(os.path.abspath(__file__))


# ----------------------------------------------------------------------------- host reference

# slow: the first call JIT-compiles the partitioned kernel for the CPU, 50-75 s cold on 2 cores,
# for an algorithm only the GPU backend runs (CI runs these; gpu_cases.py runs its float32 build)
@pytest.mark.slow
@pytest.mark.parametrize("p", [1, 2])
@pytest.mark.parametrize("T, n, chunk", [(1, 2, 2), (7, 2, 2), (13, 3, 2), (40, 2, 3),
                                         (17, 1, 5), (9, 3, 7)])
def test_partitioned_matches_dense_solve(p, T, n, chunk, dtype=np.float64):
    """Every interior length, including a single interior and a last interior longer than
    the others. NaN is planted in the storage cells that must never be read. M is well
    conditioned by construction (cond ~ 10, helpers.random_spd_block_banded), so the
    relative error is a few hundred eps at most. (float64 only: each dtype costs ~30 s of
    cold JIT compilation here; the float32 build of the same source runs in gpu_cases.)"""
    dense, _ = random_spd_block_banded(T * 7 + n + 10 * p, batch=(2,), T=T, n=n, p=p)
    blocks = dense_to_lower_blocks(dense, n, p, fill=np.nan).astype(dtype)
    b = np.random.default_rng(T).standard_normal((2, T, n)).astype(dtype)
    x, info = partitioned_cholesky_solve(blocks, b, chunk)
    assert info.tolist() == [0, 0]
    expected = np.linalg.solve(dense, b.reshape(2, T * n, 1).astype(np.float64)).reshape(2, T, n)
    err = np.linalg.norm(x - expected) / np.linalg.norm(expected)
    assert err < 1000 * EPS[np.dtype(dtype)], err
    assert np.all(np.isnan(blocks[:, :1, 1:]))  # the input storage is not modified


@pytest.mark.parametrize("p", [1, 2])
def test_partitioned_geometry(p):
    """Interiors of length m separated by p rows, the last one taking the remainder."""
    for T in range(1, 60):
        for m in range(p, 9):
            P = n_chunks_for(T, p, m)
            last = T - (P - 1) * (m + p)
            assert P >= 1 and last >= min(m, T), (T, m, P)
            if P > 1:
                assert last < 2 * m + p, (T, m, P)


@pytest.mark.slow  # the same compilation as test_partitioned_matches_dense_solve
def test_partitioned_reports_the_failed_system():
    """An Inf planted in block row 9 of system 1 (an interior row for m = 3, p = 1): the
    interior factorisation meets the non-finite pivot there; system 0 is unaffected."""
    T, n, p = 16, 2, 1
    dense, _ = random_spd_block_banded(5, batch=(2,), T=T, n=n, p=p)
    blocks = dense_to_lower_blocks(dense, n, p)
    blocks[1, 9, 0, 0, 0] = np.inf
    b = np.ones((2, T, n))
    x, info = partitioned_cholesky_solve(blocks, b, 3)
    assert info.tolist() == [0, 10]
    expected = np.linalg.solve(dense[0], b[0].reshape(-1)).reshape(T, n)
    np.testing.assert_allclose(x[0], expected, rtol=1e-12, atol=1e-12)


# ----------------------------------------------------------------------------- CUDA simulator

@pytest.mark.slow
def test_cuda_backend_under_the_simulator():
    """Runs tests/gpu_cases.py with NUMBA_ENABLE_CUDASIM=1 in a fresh interpreter; its
    report is shown on failure."""
    env = dict(os.environ, NUMBA_ENABLE_CUDASIM="1", PYTHONWARNINGS="ignore")
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
         os.path.join(HERE, "gpu_cases.py")],
        cwd=os.path.dirname(HERE), env=env, capture_output=True, text=True, timeout=1200)
    report = result.stdout[-20000:] + result.stderr[-5000:]
    assert result.returncode == 0, report
    assert " passed" in report and "skipped" not in report, report

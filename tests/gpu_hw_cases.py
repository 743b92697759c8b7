"""CUDA backend cases that need a real GPU and CuPy (the simulator has neither CuPy nor
``__cuda_array_interface__``). Run by ``tools/gpu_check.sh``; not collected by ``pytest``
(file name) and never run under the simulator.

Tolerances: device and CPU backends run the same recurrences in float64 on a well
conditioned problem (cond ~ 1e3), so they agree to ~1e-12 relative.
"""

import numba
import numpy as np
import pytest

import bandsolve

from helpers import make_problem

if numba.config.ENABLE_CUDASIM:
    raise RuntimeError("gpu_hw_cases.py needs a real GPU; unset NUMBA_ENABLE_CUDASIM")

cupy = pytest.importorskip("cupy")  # the device machine has it; its absence is reported

NAMES = ("coefficients", "rhs", "init", "steps")


def close(actual, expected, rtol=1e-11):
    actual = cupy.asnumpy(actual) if isinstance(actual, cupy.ndarray) else np.asarray(actual)
    err = np.linalg.norm(actual - expected)
    assert err <= rtol * np.linalg.norm(expected), err / np.linalg.norm(expected)


@pytest.mark.parametrize("algorithm", ["auto", "thread", "block", "partitioned"])
def test_cupy_in_cupy_out(algorithm):
    problem = make_problem(0, batch=(3, 2), T=40, E=2, D=2, O=3, Ti=1, Oi=2)
    u_cpu, vjp_cpu = bandsolve.smnn_solve_vjp(*problem)
    u, vjp = bandsolve.smnn_solve_vjp(*map(cupy.asarray, problem), algorithm=algorithm)
    assert isinstance(u, cupy.ndarray) and u.shape == u_cpu.shape
    close(u, u_cpu)
    ubar = np.random.default_rng(1).standard_normal(u.shape)
    for name, g, g_cpu in zip(NAMES, vjp(cupy.asarray(ubar)), vjp_cpu(ubar)):
        assert isinstance(g, cupy.ndarray), name
        close(g, g_cpu, 1e-9)
    factorization = bandsolve.smnn_factor(cupy.asarray(problem[0]), cupy.asarray(problem[3]),
                                          init_shape=(1, 2), algorithm=algorithm)
    assert isinstance(factorization.status.info, cupy.ndarray)
    factorization.check()


def test_runs_on_cupys_current_stream_and_an_explicit_stream():
    problem = make_problem(2, batch=(4,), T=30, E=2, D=1, O=3, Ti=1, Oi=2)
    expected = bandsolve.smnn_solve(*problem)
    stream = cupy.cuda.Stream(non_blocking=True)
    with stream:
        inputs = list(map(cupy.asarray, problem))
        u = bandsolve.smnn_solve(*inputs)
    stream.synchronize()
    close(u, expected)
    other = cupy.cuda.Stream(non_blocking=True)
    u = bandsolve.smnn_solve(*inputs, stream=other)
    other.synchronize()
    close(u, expected)


def test_non_contiguous_cupy_inputs():
    c, r, g, h = make_problem(3, batch=(4,), T=20, E=2, D=1, O=3, Ti=1, Oi=2)
    wide = cupy.asarray(np.concatenate([r, r], axis=-1))[..., ::2]  # strided view of r
    u = bandsolve.smnn_solve(cupy.asarray(c), wide, cupy.asarray(g), cupy.asarray(h))
    close(u, bandsolve.smnn_solve(c, r, g, h))


def test_numba_device_arrays_and_torch_tensors():
    from numba import cuda

    problem = make_problem(4, batch=(2,), T=20, E=2, D=1, O=3, Ti=1, Oi=2)
    expected = bandsolve.smnn_solve(*problem)
    u = bandsolve.smnn_solve(*map(cuda.to_device, problem))
    assert type(u).__name__ == "DeviceNDArray"
    close(u.copy_to_host(), expected)
    torch = pytest.importorskip("torch")
    u = bandsolve.smnn_solve(*(torch.as_tensor(a, device="cuda") for a in problem))
    close(u.copy_to_host(), expected)  # other producers get Numba device arrays


def test_no_host_transfer_on_the_default_path(monkeypatch):
    """smnn_solve_vjp and its vjp on CuPy inputs never copy to or from the host."""
    problem = list(map(cupy.asarray, make_problem(5, batch=(3,), T=30, E=2, D=1, O=3,
                                                  Ti=1, Oi=2)))
    u, vjp = bandsolve.smnn_solve_vjp(*problem)  # compile first
    vjp(cupy.ones_like(u))

    def forbidden(*args, **kwargs):
        raise AssertionError("host transfer on the device path")

    monkeypatch.setattr(cupy, "asnumpy", forbidden)  # (cupy.ndarray.get cannot be patched)
    from numba.cuda.cudadrv import devicearray

    monkeypatch.setattr(devicearray.DeviceNDArray, "copy_to_host", forbidden)
    monkeypatch.setattr(numba.cuda, "to_device", forbidden)
    u, vjp = bandsolve.smnn_solve_vjp(*problem)
    vjp(cupy.ones_like(u))


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_generated_lane_kernels(monkeypatch, dtype):
    """``algorithm="auto"`` with at least ``config.LANES_MIN_SYSTEMS`` systems (one
    right-hand side each) takes the generated thread-per-system kernels; forward and VJP
    agree with the CPU backend, and a rank-deficient system is named."""
    from bandsolve.gpu import config, lane_solve

    calls = []
    real = lane_solve.solve_lanes
    monkeypatch.setattr(lane_solve, "solve_lanes",
                        lambda *args: calls.append(1) or real(*args))
    B = max(300, config.LANES_MIN_SYSTEMS)
    problem = [a.astype(dtype) for a in make_problem(6, batch=(B,), T=20, E=1, D=1, O=3,
                                                     Ti=1, Oi=2)]
    u_cpu, vjp_cpu = bandsolve.smnn_solve_vjp(*problem)
    u, vjp = bandsolve.smnn_solve_vjp(*map(cupy.asarray, problem))
    assert calls, "the lane kernels were not used"
    # both compute in float64; float32 results differ by the final rounding at most
    rtol = 1e-11 if dtype == np.float64 else 1e-6
    close(u, u_cpu, rtol)
    ubar = np.random.default_rng(2).standard_normal(u.shape).astype(dtype)
    for name, g, g_cpu in zip(NAMES, vjp(cupy.asarray(ubar)), vjp_cpu(ubar)):
        close(g, g_cpu, 1e-9 if dtype == np.float64 else 1e-5)
    c, r, g, h = (a.copy() for a in problem)
    c[7] = 0.0
    g = np.ascontiguousarray(g[..., :0])  # no initial values: system 7 is rank deficient
    c[:, 0] += 1.0
    with pytest.raises(bandsolve.FactorizationError, match=r"batch index \(7,\)"):
        bandsolve.smnn_solve(*map(cupy.asarray, (c, r, g, h)), check=True)
    u = cupy.asnumpy(bandsolve.smnn_solve(*map(cupy.asarray, (c, r, g, h))))
    assert np.all(np.isnan(u[7])) and np.isfinite(np.delete(u, 7, axis=0)).all()

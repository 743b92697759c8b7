"""The PyTorch and JAX adapters on CUDA devices (issues 5 and 6). Need a real GPU: run by
``tools/gpu_check.sh``; not collected by ``pytest`` (file name), never under the simulator.

Each case runs the same problem through the adapter on the device and through the NumPy
core on the host, forward and backward. Both run the same recurrences in float64 on a
well-conditioned problem (cond ~ 1e3), so they agree to ~1e-10 relative.
"""

import numba
import numpy as np
import pytest

import bandsolve

from helpers import make_problem

if numba.config.ENABLE_CUDASIM:
    raise RuntimeError("gpu_adapter_cases.py needs a real GPU; unset NUMBA_ENABLE_CUDASIM")


def _close(actual, expected, rtol=1e-10):
    err = np.linalg.norm(np.asarray(actual) - expected)
    assert err <= rtol * np.linalg.norm(expected), err / np.linalg.norm(expected)


def _host_reference(problem, ubar):
    u, vjp = bandsolve.smnn_solve_vjp(*problem)
    return u, vjp(ubar)


def test_torch_cuda_tensors_forward_and_backward():
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.fail("torch sees no CUDA device")
    import bandsolve_torch

    problem = make_problem(3, batch=(4,), T=30, E=2, D=2, O=3, Ti=1, Oi=2)
    ubar = np.random.default_rng(5).standard_normal(problem[0].shape[:1] + (30, 2, 3))
    u_host, grads_host = _host_reference(problem, ubar)
    tensors = [torch.tensor(a, device="cuda", requires_grad=True) for a in problem]
    u = bandsolve_torch.smnn_solve(*tensors)
    assert u.is_cuda and u.dtype == torch.float64
    (u * torch.tensor(ubar, device="cuda")).sum().backward()
    _close(u.detach().cpu().numpy(), u_host)
    for tensor, expected in zip(tensors, grads_host):
        assert tensor.grad.is_cuda
        _close(tensor.grad.cpu().numpy(), expected)


def test_torch_cuda_ode_forward_and_func_vmap():
    """``ode_forward`` (the Lorenz call pattern, step axis first, frozen cache) and
    ``torch.func.vmap`` over ``smnn_solve`` on CUDA tensors, against the host core."""
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.fail("torch sees no CUDA device")
    import bandsolve_torch

    T, bs = 20, 8
    coefficients = np.zeros((1, 1, 3, 1, 1, 3))
    coefficients[..., 1] = 1.0
    rng = np.random.default_rng(6)
    rhs, init = rng.standard_normal((T, bs, 3, 1)), rng.standard_normal((1, bs, 3, 1, 1))
    steps = np.full((1, 1, 1), 0.05)
    u_host = bandsolve.smnn_solve(np.moveaxis(coefficients, 0, -4), np.moveaxis(rhs, 0, -2),
                                  np.moveaxis(init, 0, -3), np.moveaxis(steps, 0, -1),
                                  n_steps=T)
    cuda = [torch.tensor(a, device="cuda") for a in (coefficients, rhs, init, steps)]
    for version in (0, 1, 1):  # plain, then the frozen factor made and reused
        u = bandsolve_torch.ode_forward(*cuda, n_steps=T, is_step_dim_first=True,
                                        frozen_lhs_cache_version=version)
        assert u.device.type == "cuda"
        _close(u.movedim(0, -3).cpu().numpy(), u_host)
    bandsolve_torch.clear_frozen_lhs_cache()

    problem = make_problem(7, batch=(3,), T=12, E=2, D=2, O=3, Ti=1, Oi=2)
    c, r, g, h = (torch.tensor(a, device="cuda") for a in problem)
    u = torch.func.vmap(bandsolve_torch.smnn_solve, in_dims=(0, 0, 0, None))(c, r, g, h[0])
    _close(u.cpu().numpy(), bandsolve.smnn_solve(problem[0], problem[1], problem[2],
                                                 problem[3][0]))


def test_jax_gpu_arrays_forward_and_backward():
    jax = pytest.importorskip("jax")
    if not any(d.platform == "gpu" for d in jax.devices()):
        pytest.fail(f"jax sees no GPU: {jax.devices()}")
    import bandsolve_jax

    problem = make_problem(4, batch=(3,), T=25, E=2, D=1, O=3, Ti=1, Oi=2)
    ubar = np.random.default_rng(6).standard_normal(problem[0].shape[:1] + (25, 1, 3))
    u_host, grads_host = _host_reference(problem, ubar)
    with jax.enable_x64(True):
        arrays = [jax.device_put(a, jax.devices("gpu")[0]) for a in problem]
        loss = lambda *args: (bandsolve_jax.smnn_solve(*args) * ubar).sum()  # noqa: E731
        u = jax.jit(bandsolve_jax.smnn_solve)(*arrays)
        grads = jax.jit(jax.grad(loss, argnums=(0, 1, 2, 3)))(*arrays)
        _close(np.asarray(u), u_host)
        for g, expected in zip(grads, grads_host):
            _close(np.asarray(g), expected)

"""The generated thread-per-system CUDA kernels (``bandsolve.gpu.lanes``) under the CUDA
simulator, against the dense least-squares oracle.

Not collected by a plain ``pytest`` run: ``tests/test_gpu_lanes.py`` runs it in a
subprocess with ``NUMBA_ENABLE_CUDASIM=1`` (the simulator must be on before numba's first
import). Tiny shapes: the simulator runs every thread as a Python thread.

The kernels are driven here directly (the device driver does not use them yet): inputs
staged into the lane layout with NumPy, one thread per system.
"""

import numpy as np
import pytest
from numba import cuda

from bandsolve.gpu import lanes
from bandsolve.kernels import codegen
from exact import order_errors
from helpers import make_problem, oracle_solve

EPS = np.finfo(np.float64).eps
U = np.uint64


def _lanes_of(values, width):
    """``(W, ...)`` per-system values -> the lane layout ``(1, prod(...) * W)``."""
    return np.ascontiguousarray(values.reshape(width, -1).T).reshape(1, -1)


def _device_solve(problem, refine_steps):
    coefficients, rhs, init, steps = problem
    B, T, E, D, O = coefficients.shape
    n, Ti, Oi = D * O, init.shape[-3], init.shape[-1]
    lay = codegen.Layout(D, O, E)
    mod = lanes.kernels(D, O, E)
    g = np.zeros((B, max(Ti, 1), D, O))
    g[:, :Ti, :, :Oi] = init
    pins = np.zeros((T, D, O))
    pins[:Ti, :, :Oi] = 1.0
    staged = [cuda.to_device(_lanes_of(a, B)) for a in
              (coefficients.reshape(B, T, E * n), rhs, g.reshape(B, -1, n), steps)]
    inputs = (staged[0], U(E * n * B), staged[1], U(E * B), staged[2], U(n * B), max(Ti, 1),
              staged[3], U(B), cuda.to_device(pins.reshape(-1)), 1.0, 1.0)
    zeros = lambda size: cuda.to_device(np.zeros((1, size * B)))  # noqa: E731
    lower, ys, x, scale, v = (zeros(T * lay.n_packed), zeros((T + 1) * lay.n_y),
                              zeros(T * n), zeros(T * n), zeros(T * n))
    ok = cuda.to_device(np.ones((1, B)))
    grid = ((B + 31) // 32, 32)
    mod.factor_forward[grid](1, T, *inputs, 1e-10, lower, ys, x, scale, ok,
                             zeros(lay.n_packed), zeros(n), B)
    stats = zeros(3 * O + 1)
    mod.backward[grid](1, T, lower, ys, x, x, scale, stats, zeros(n), B)
    for _ in range(refine_steps):
        mod.residual_forward[grid](1, T, *inputs, x, x, lower, ys, v, zeros(n), zeros(n), B)
        mod.correction_backward[grid](1, T, lower, ys, v, x, scale, stats, zeros(n), B)
    solution = x.copy_to_host().reshape(T, n, B)
    return np.moveaxis(solution, -1, 0).reshape(B, T, D, O), ok.copy_to_host()[0]


@pytest.mark.parametrize("refine_steps", [0, 1])
def test_thread_per_system_kernels_solve_the_least_squares_problem(refine_steps):
    problem = make_problem(21, batch=(5,), T=4, E=2, D=2, O=2, Ti=1, Oi=2)
    u, ok = _device_solve(problem, refine_steps)
    assert np.all(ok == 1.0)
    ref, cond = oracle_solve(*problem)
    for b in range(5):
        errors = order_errors(u[b], ref[b])
        # plain Cholesky of M: eps * cond(M); refined: eps * cond(A); 100 for n and T
        bound = 100 * EPS * (cond[b] if refine_steps == 0 else np.sqrt(cond[b]))
        assert max(errors) <= max(bound, 1e-13), (b, errors, cond[b])


def test_rank_deficient_system_fails_the_pivot_test():
    c, r, g, h = make_problem(22, batch=(3,), T=4, E=2, D=1, O=2, Ti=1, Oi=2)
    c[1] = 0.0
    g = g[..., :0]  # no initial values: system 1 has straight lines free
    _, ok = _device_solve((c, r, g, h), 0)
    assert list(ok) == [1.0, 0.0, 1.0]

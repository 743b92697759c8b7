"""The JAX adapter: forward under jit against a dense solve, forward- and reverse-mode
derivatives against finite differences and each other, vmap against the batched call,
jit(grad) and vmap(grad) of training losses, no retracing, dtypes and errors.

Every test runs with ``jax_enable_x64`` on through the ``jax.enable_x64`` context (an
autouse fixture) rather than ``jax.config.update``, so the process-global flag that other
test modules see is left alone; the float32 tests pass explicit dtypes, and the x64-off
tests open their own context.
"""

import sys
import types

import numpy as np
import pytest

jax = pytest.importorskip("jax", reason="the JAX adapter needs the [jax] extra")
import jax.numpy as jnp  # noqa: E402
from jax.test_util import check_grads  # noqa: E402

import bandsolve  # noqa: E402
import bandsolve_jax  # noqa: E402
from bandsolve_jax import _callbacks  # noqa: E402

from helpers import (  # noqa: E402
    assert_normwise_close,
    checked_cond,
    make_full_rank_equations,
    make_problem,
    oracle_solve,
    solve_rtol,
)


@pytest.fixture(autouse=True)
def x64():
    with jax.enable_x64(True):
        yield


def _jax(problem):
    return tuple(jnp.asarray(a) for a in problem)


# Problems as (make_problem keywords, solve keywords). Shapes are tiny (T <= 6) so that the
# finite-difference gradient checks stay cheap.
CASES = {
    "batched": (dict(batch=(2,)), {}),
    "central+weights": (dict(batch=(2,), T=6, O=3),
                        dict(central_smoothness=True, weight_equation=1.5, weight_init=2.0,
                             weight_smooth=0.7)),
    "lhs broadcast": (dict(coef_batch=(1,), rhs_batch=(3,), init_batch=(3,), steps_batch=()),
                      {}),
    "step length 1": (dict(batch=(2,), coef_T=1, steps_T=1), {}),
}


def _case(name, seed=0, dtype=np.float64):
    problem_kw, solve_kw = CASES[name]
    return make_problem(seed, dtype=dtype, **problem_kw), solve_kw


# ------------------------------------------------------------------------------ forward

@pytest.mark.parametrize("name", CASES)
def test_forward_under_jit_matches_dense_solve(name):
    problem, kw = _case(name)
    u = jax.jit(lambda *a: bandsolve_jax.smnn_solve(*a, **kw))(*_jax(problem))
    expected, cond = oracle_solve(*problem, **kw)
    assert u.dtype == jnp.float64
    assert_normwise_close(u, expected, solve_rtol(np.float64, checked_cond(cond)),
                          batch_ndim=expected.ndim - 3)


def test_without_initial_values():
    """Ti = 0: the equations alone pin the solution down (full-rank coefficient blocks)."""
    c = make_full_rank_equations(3, batch=(2,), T=5, D=2, O=2)
    _, r, g, h = make_problem(3, batch=(2,), T=5, E=c.shape[-3], D=2, O=2, Ti=0, Oi=2)
    u = jax.jit(bandsolve_jax.smnn_solve)(*_jax((c, r, g, h)))
    expected, cond = oracle_solve(c, r, g, h)
    assert_normwise_close(u, expected, solve_rtol(np.float64, checked_cond(cond)), 1)
    check_grads(bandsolve_jax.smnn_solve, _jax((c, r, g, h)), order=1, modes=["rev"],
                eps=FD_EPS)  # init is empty: its gradient is an empty array


def test_float32_in_float32_out():
    problem, _ = _case("batched", dtype=np.float32)
    u = jax.jit(bandsolve_jax.smnn_solve)(*_jax(problem))
    assert u.dtype == jnp.float32
    expected, cond = oracle_solve(*problem)
    # solve_rtol is keyed by dtype: float32 rounding in the assembly and the factorisation.
    assert_normwise_close(u, expected, solve_rtol(np.float32, checked_cond(cond)), 1)


def test_mixed_precision_computes_in_float64():
    c, r, g, h = make_problem(4, batch=(2,))
    u = bandsolve_jax.smnn_solve(c.astype(np.float32), r, g, h)
    assert u.dtype == jnp.float64


def test_x64_off_float32_works_and_float64_is_refused():
    problem, _ = _case("batched", dtype=np.float32)
    with jax.enable_x64(False):
        u = bandsolve_jax.smnn_solve(*_jax(problem))
        assert u.dtype == jnp.float32
        c, r, g, h = problem
        with pytest.raises(TypeError, match="jax_enable_x64"):
            bandsolve_jax.smnn_solve(c.astype(np.float64), r, g, h)


# ---------------------------------------------------------------------------- gradients

FD_EPS = 1e-5  # see test_check_grads_forward_and_reverse_mode


@pytest.mark.parametrize("name", CASES)
def test_check_grads_forward_and_reverse_mode(name):
    """jax.test_util.check_grads compares jvp(t) with the finite-difference jvp(t), and
    <vjp(ct), t> with <ct, finite-difference jvp(t)>, along a random direction t, at its
    float64 tolerance 1e-5. The central difference has
    truncation error ~eps^2 |f'''|: with step length 1, the one shared coefficient block and
    step size move every row, and at check_grads' default eps=1e-4 that error reaches
    1.3e-5 relative (checked: it falls as eps^2, and the VJP agrees with 4th-order
    differences of the lstsq oracle to ~1e-9). FD_EPS=1e-5 brings it to ~1e-7, with
    rounding error ~1e-16 |f| / eps ~ 1e-11. All four inputs together, then one at a time,
    so that an error in one input's gradient cannot hide behind the others."""
    problem, kw = _case(name)
    args = _jax(problem)
    solve = jax.jit(lambda *a: bandsolve_jax.smnn_solve(*a, **kw))
    check_grads(solve, args, order=1, modes=["fwd", "rev"], eps=FD_EPS)
    for i in range(4):
        def only_i(x, i=i):
            return solve(*args[:i], x, *args[i + 1:])
        check_grads(only_i, (args[i],), order=1, modes=["fwd", "rev"], eps=FD_EPS)


def _network(weights, features):
    """A tiny 'network' predicting S-MNN coefficients ``(B, T, E, D, O)`` from features
    ``(B, T, F)``."""
    B, T, _ = features.shape
    return jnp.tanh(features @ weights).reshape(B, T, 2, 2, 3) + jnp.eye(2, 6).reshape(2, 2, 3)


def _training_problem(seed, B=3, T=5, F=4):
    rng = np.random.default_rng(seed)
    weights = 0.5 * rng.standard_normal((F, 12))
    features = rng.standard_normal((B, T, F))
    _, rhs, init, steps = make_problem(seed, batch=(B,), T=T, E=2, D=2, O=3)
    target = rng.standard_normal((B, T, 2))
    return weights, features, rhs, init, steps, target


def _loss(weights, features, rhs, init, steps, target):
    u = bandsolve_jax.smnn_solve(_network(weights, features), rhs, init, steps)
    return jnp.mean((u[..., 0] - target) ** 2)


def test_jit_grad_of_training_loss_matches_core_vjp():
    weights, features, rhs, init, steps, target = _training_problem(5)
    grads = jax.jit(jax.grad(_loss, argnums=(0, 2, 3, 4)))(
        weights, features, rhs, init, steps, target)

    # Reference: the NumPy core's VJP for the solve, JAX only for the network around it.
    coefficients, network_vjp = jax.vjp(lambda w: _network(w, features), weights)
    u, core_vjp = bandsolve.smnn_solve_vjp(np.asarray(coefficients), rhs, init, steps)
    ubar = np.zeros_like(u)
    ubar[..., 0] = 2 * (u[..., 0] - target) / target.size
    c_bar, r_bar, g_bar, h_bar = core_vjp(ubar)
    (w_bar,) = network_vjp(jnp.asarray(c_bar))
    # Same core arithmetic in both; only summation order in the network VJP differs.
    for got, want in zip(grads, (w_bar, r_bar, g_bar, h_bar)):
        np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-14)


def test_vmap_grad_gives_per_example_gradients():
    """Shared weights, per-example data: vmap(grad) equals a loop of single-example grads.
    The gradient with respect to the unmapped weights must be per example, not summed."""
    weights, features, rhs, init, steps, target = _training_problem(6)

    def single(w, x, r, g, h, y):
        return _loss(w, x[None], r[None], g[None], h[None], y[None])

    per_example = jax.vmap(jax.grad(single, argnums=(0, 2, 4)), in_axes=(None, 0, 0, 0, 0, 0))
    got = jax.jit(per_example)(weights, features, rhs, init, steps, target)
    one_example = jax.jit(jax.grad(single, argnums=(0, 2, 4)))
    for b in range(features.shape[0]):
        want = one_example(weights, features[b], rhs[b], init[b], steps[b], target[b])
        for g_all, g_one in zip(got, want):
            np.testing.assert_allclose(g_all[b], g_one, rtol=1e-10, atol=1e-14)


def test_grad_of_vmap_sums_over_the_mapped_axis():
    """Gradient of an unmapped input through vmap: the sum of the per-example gradients."""
    c, r, g, h = make_problem(7, batch=(4,))

    def total(c0, r, g):
        u = jax.vmap(bandsolve_jax.smnn_solve, in_axes=(None, 0, 0, None))(c0, r, g, h[0])
        return jnp.sum(u ** 2)

    got = jax.jit(jax.grad(total))(c[0], r, g)
    one_example = jax.jit(jax.grad(
        lambda c0, r, g: jnp.sum(bandsolve_jax.smnn_solve(c0, r, g, h[0]) ** 2)))
    want = sum(one_example(c[0], r[b], g[b]) for b in range(4))
    np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-14)


# --------------------------------------------------------------------------------- vmap

# vmap and the batched call run the same core arithmetic on the same systems; they may only
# differ if the core chose a different (equally accurate) path for a broadcast input.
VMAP_RTOL = 1e-12


def test_vmap_over_all_inputs_equals_batched_call():
    problem = _jax(make_problem(8, batch=(4,)))
    got = jax.jit(jax.vmap(bandsolve_jax.smnn_solve))(*problem)
    np.testing.assert_allclose(got, bandsolve_jax.smnn_solve(*problem), rtol=VMAP_RTOL)


def test_vmap_over_right_hand_sides_equals_broadcast_call():
    c, r, g, h = _jax(make_problem(9, coef_batch=(), rhs_batch=(4,), init_batch=(4,),
                                   steps_batch=()))
    got = jax.vmap(bandsolve_jax.smnn_solve, in_axes=(None, 0, 0, None))(c, r, g, h)
    np.testing.assert_allclose(got, bandsolve_jax.smnn_solve(c, r, g, h), rtol=VMAP_RTOL)


def test_nested_vmap_equals_batched_call():
    """Two mapped axes, one of them not leading, and inputs of different batch rank inside."""
    c, r, g, h = _jax(make_problem(10, coef_batch=(2, 3), rhs_batch=(2, 3), init_batch=(3,),
                                   steps_batch=(2, 1)))
    inner = jax.vmap(bandsolve_jax.smnn_solve, in_axes=(0, 0, 0, None))
    outer = jax.vmap(inner, in_axes=(1, 0, None, 0))
    got = outer(jnp.swapaxes(c, 0, 1), r, g, h)  # (2, 3, 1, T, D, O): h keeps its axis of 1
    np.testing.assert_allclose(got[:, :, 0], bandsolve_jax.smnn_solve(c, r, g, h),
                               rtol=VMAP_RTOL)


def _count_calls(monkeypatch, owner, name):
    """Record the first argument's shape of every call of ``owner.name``."""
    calls = []
    original = getattr(owner, name)  # a classmethod comes back bound to its class

    def counted(*args, **kwargs):
        calls.append(np.shape(args[0]))
        return original(*args, **kwargs)

    monkeypatch.setattr(owner, name, staticmethod(counted) if isinstance(owner, type) else counted)
    return calls


def test_vmap_is_one_core_call_not_a_loop(monkeypatch):
    c, r, g, h = _jax(make_problem(11, batch=(5,)))
    solves = _count_calls(monkeypatch, bandsolve, "smnn_solve")
    jax.vmap(bandsolve_jax.smnn_solve, in_axes=(None, 0, 0, 0))(c[0], r, g, h)
    assert solves == [(1,) + c.shape[1:]]  # one call; the unmapped lhs is not copied 5 times

    factors = _count_calls(monkeypatch, bandsolve, "smnn_factor_solve")
    backwards = _count_calls(monkeypatch, bandsolve.SMNNFactorization, "from_lower")
    jax.vmap(jax.grad(lambda *a: jnp.sum(bandsolve_jax.smnn_solve(*a) ** 2)))(c, r, g, h)
    assert factors == [c.shape] and len(backwards) == 1


def test_jitted_function_is_not_retraced():
    traces = []

    def loss(c, r, g, h):
        traces.append(1)
        return jnp.sum(bandsolve_jax.smnn_solve(c, r, g, h) ** 2)

    step = jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2, 3)))
    first = step(*_jax(make_problem(12, batch=(2,))))
    second = step(*_jax(make_problem(13, batch=(2,))))
    assert len(traces) == 1
    assert not np.allclose(first[0], second[0])  # new values really were computed
    step(*_jax(make_problem(13, batch=(3,))))  # a new shape does retrace
    assert len(traces) == 2


# ------------------------------------------------------------------------------- errors

def test_structural_errors_at_trace_time():
    c, r, g, h = _jax(make_problem(14, batch=(2,)))
    solve = jax.jit(bandsolve_jax.smnn_solve)
    with pytest.raises(ValueError, match="rhs must have shape"):
        solve(c, r[..., :1], g, h)
    with pytest.raises(ValueError, match="batch shapes do not broadcast"):
        solve(c, jnp.concatenate([r, r, r]), g, h)
    with pytest.raises(TypeError, match="dtype int"):
        solve(c, r, g, jnp.ones(h.shape, dtype=jnp.int32))
    with pytest.raises(TypeError, match="weight_smooth must be a Python number"):
        jax.jit(lambda w: bandsolve_jax.smnn_solve(c, r, g, h, weight_smooth=w))(1.0)


def test_value_errors_surface_at_run_time_with_the_core_message():
    c, r, g, h = _jax(make_problem(15, batch=(2,)))
    solve = jax.jit(bandsolve_jax.smnn_solve)
    with pytest.raises(jax.errors.JaxRuntimeError, match="rhs contains NaN"):
        solve(c, r.at[1, 2, 0].set(jnp.nan), g, h).block_until_ready()
    with pytest.raises(jax.errors.JaxRuntimeError, match="not positive definite"):
        # zero coefficients and no initial values leave the polynomials in the null space
        solve(jnp.zeros_like(c), r, g[..., :0, :, :], h).block_until_ready()


@pytest.mark.parametrize("name", ["central+weights", "lhs broadcast"])
def test_jacfwd_equals_jacrev(name):
    """Forward mode (core JVP, one solve per tangent batch) and reverse mode (core VJP)
    are independent code paths for the same Jacobian: equal to rounding (1e-12 relative,
    the Jacobian entries are O(1) and cond(M) <= 1e4 here)."""
    problem, kw = _case(name, seed=3)
    args = _jax(problem)
    for argnum in range(4):
        jac_fwd = jax.jit(jax.jacfwd(lambda *a: bandsolve_jax.smnn_solve(*a, **kw),
                                     argnums=argnum))(*args)
        jac_rev = jax.jacrev(lambda *a: bandsolve_jax.smnn_solve(*a, **kw),
                             argnums=argnum)(*args)
        scale = float(jnp.abs(jac_rev).max())
        assert float(jnp.abs(jac_fwd - jac_rev).max()) <= 1e-12 * scale, argnum


def test_jvp_reuses_the_forward_factor(monkeypatch):
    """jax.jvp factors once (the forward call) and its tangent solves with that factor."""
    calls = []
    for name in ("smnn_factor_solve", "smnn_factor", "smnn_solve"):
        core = getattr(bandsolve, name)
        monkeypatch.setattr(bandsolve, name,
                            lambda *a, _core=core, _name=name, **k: calls.append(_name)
                            or _core(*a, **k))
    c, r, g, h = _jax(make_problem(16))
    jax.jvp(lambda c: bandsolve_jax.smnn_solve(c, r, g, h), (c,), (c,))[1].block_until_ready()
    assert calls == ["smnn_factor_solve"]


def test_device_branch_plumbing_with_a_stand_in_cupy(monkeypatch):
    """The CUDA branch cannot run without a GPU; this checks only its plumbing, with NumPy
    standing in for CuPy: buffers that report a CUDA DLPack device are wrapped, the core
    runs inside XLA's stream, and the results land in the output buffers."""
    entered = []

    class ExternalStream:
        def __init__(self, ptr):
            self.ptr = ptr

        def __enter__(self):
            entered.append(self.ptr)

        def __exit__(self, *exc):
            entered.append("exit")

    fake_cupy = types.SimpleNamespace(asarray=np.asarray,
                                      cuda=types.SimpleNamespace(ExternalStream=ExternalStream))
    monkeypatch.setitem(sys.modules, "cupy", fake_cupy)

    class DeviceBuffer:  # what XLA hands a GPU callback, as far as the branch looks
        def __init__(self, array):
            self.array = array

        def __dlpack_device__(self):
            return (2, 0)  # kDLCUDA

        def __array__(self, dtype=None, copy=None):
            return self.array

    problem = make_problem(17, batch=(2,))
    static = _callbacks.Static(n_steps=5, init_shape=(1, 2), weight_equation=1.0,
                               weight_init=1.0, weight_smooth=1.0, central_smoothness=False)
    out = DeviceBuffer(np.zeros((2, 5, 2, 3)))
    _callbacks._Callback(_callbacks._run_solve, static)(
        types.SimpleNamespace(stream=1234), (out,), *map(DeviceBuffer, problem))
    assert entered == [1234, "exit"]
    np.testing.assert_array_equal(out.array, bandsolve.smnn_solve(*problem))


def test_x64_off_gradients_carry_the_factor_to_float64_digits(monkeypatch):
    """Without x64 the factor residual is float32 (hi, lo) pairs: the backward pass
    rebuilds the float64 factor to ~48 bits, so its refinement converges at once and never
    needs the QR factor. At h = 0.001 (the README oscillator, cond(M) ~ 1e12) a factor
    rounded to float32 would not do. Reference: the core's float64 VJP on the same
    float32-valued inputs (the backward pass solves for the float64 solution again rather
    than use the float32 u, whose rounding the gradient amplifies)."""
    T = 200
    c = np.zeros((T, 1, 1, 3), np.float32)
    c[...] = [4.0, 0.3, 1.0]
    r, g = np.zeros((T, 1), np.float32), np.array([[[1.0, 0.0]]], np.float32)
    h = np.full(T - 1, 0.001, np.float32)
    ubar = np.random.default_rng(2).standard_normal((T, 1, 3)).astype(np.float32)
    _, vjp = bandsolve.smnn_solve_vjp(c.astype(np.float64), r.astype(np.float64),
                                      g.astype(np.float64), h.astype(np.float64))
    expected = vjp(ubar.astype(np.float64))
    calls = []
    original = bandsolve.cpu.driver.qr_factor_kernel
    monkeypatch.setattr(bandsolve.cpu.driver, "qr_factor_kernel",
                        type("Counting", (), {"for_batch": lambda self, *a: (
                            calls.append(a), original.for_batch(*a))[1]})())
    with jax.enable_x64(False):
        def loss(c, r, g, h):
            return jnp.sum(bandsolve_jax.smnn_solve(c, r, g, h) * ubar)

        grads = jax.jit(jax.grad(loss, argnums=(0, 1, 2, 3)))(*_jax((c, r, g, h)))
    assert calls == []
    for got, want in zip(grads, expected):
        assert got.dtype == jnp.float32
        # float32 results of float64 gradients: a few float32 roundings
        err = np.linalg.norm(np.asarray(got) - want) / np.linalg.norm(want)
        assert err <= 1e-6, err  # ~10 float32 roundings (measured 2-5e-8; 1e-5 if the
        # factor were carried as plain float32)

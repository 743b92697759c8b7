"""The PyTorch adapter (``bandsolve_torch``), grouped by property.

References: the forward pass against the independent float64 lstsq oracle
(tests/helpers.py); gradients by ``torch.autograd.gradcheck`` (finite differences of the
adapter, whose forward pass is itself checked against the oracle); the custom operators by
``torch.library.opcheck``; compiled against eager; the frozen left-hand side against
refactoring; a training loop against a closed-form damped oscillator.
"""

import doctest
import math

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import bandsolve  # noqa: E402
import bandsolve_torch  # noqa: E402
from bandsolve_torch import FrozenLHS, MechanisticLayer, smnn_solve  # noqa: E402
from bandsolve_torch import _ops  # noqa: E402

from helpers import (  # noqa: E402
    assert_normwise_close,
    checked_cond,
    make_full_rank_equations,
    make_problem,
    oracle_solve,
    solve_rtol,
)

WEIGHTS = dict(weight_equation=1.7, weight_init=0.6, weight_smooth=1.3)

# Broadcast configurations: make_problem keywords, and whether n_steps must be passed.
BROADCASTS = {
    # time-invariant coefficients shared by the batch, one shared step size
    "shared_lhs": dict(batch=(2,), coef_batch=(1,), coef_T=1, steps_batch=(), steps_T=1,
                       init_batch=(1,)),
    # the rhs alone carries T (coefficients and steps have step length 1)
    "rhs_carries_T": dict(batch=(2,), coef_T=1, steps_T=1, rhs_batch=(3, 1)),
    # rhs constant in time, left-hand side with a larger batch than the rhs
    "rhs_broadcast": dict(batch=(2,), rhs_T=1, rhs_batch=(), init_batch=()),
}


# gradcheck's defaults (rtol 1e-3, atol 1e-5) would let a 0.01% gradient error through.
# Its central differences with eps = 1e-5 err by ~eps^2 * |third derivative of u|
# (truncation) plus ~1e-16 * |u| * cond(M) / eps (rounding, cond(M) <= 1e4 here): measured
# <= 4e-9 on these problems, well below atol; rtol 1e-5 still catches a 1e-4 relative error.
GRADCHECK = dict(eps=1e-5, rtol=1e-5, atol=1e-7)


def gradcheck(fn, inputs):
    return torch.autograd.gradcheck(fn, inputs, **GRADCHECK)


def tensors(arrays, requires_grad=False, dtype=None):
    return tuple(torch.tensor(a, dtype=dtype, requires_grad=requires_grad) for a in arrays)


def rtol_for(dtype, problem, **kw):
    _, cond = oracle_solve(*problem, **kw)
    checked_cond(cond)
    return solve_rtol(dtype, cond)


# --------------------------------------------------------------------------- forward


@pytest.mark.parametrize("central", [False, True])
@pytest.mark.parametrize("config", list(BROADCASTS), ids=str)
def test_forward_matches_oracle(config, central):
    problem = make_problem(11, T=5, E=2, D=2, O=3, Ti=1, Oi=2, **BROADCASTS[config])
    kw = dict(WEIGHTS, central_smoothness=central)
    u_ref, cond = oracle_solve(*problem, **kw)
    checked_cond(cond)
    u = smnn_solve(*tensors(problem), **kw)
    assert u.dtype == torch.float64 and u.device.type == "cpu"
    assert_normwise_close(u.numpy(), u_ref, solve_rtol(np.float64, cond), u_ref.ndim - 3)


def test_no_initial_values_and_n_steps():
    # Ti = 0 (no initial values): full-rank equations pin the solution down. Every input
    # has step length 1, so T comes from n_steps.
    T = 4
    coefficients = make_full_rank_equations(3, batch=(2,), T=1, D=2, O=2)
    rng = np.random.default_rng(3)
    rhs = rng.standard_normal((2, 1, coefficients.shape[-3]))
    init = np.zeros((2, 0, 2, 2))
    steps = np.array([0.7])
    problem = (coefficients, rhs, init, steps)
    u_ref, cond = oracle_solve(*problem, n_steps=T)
    checked_cond(cond)
    args = tensors(problem, requires_grad=True)
    u = smnn_solve(*args, n_steps=T)
    assert_normwise_close(u.detach().numpy(), u_ref, solve_rtol(np.float64, cond), 1)
    u.sum().backward()
    assert args[2].grad.shape == init.shape
    assert gradcheck(lambda c, r, h: smnn_solve(c, r, args[2], h, n_steps=T),
                                    (args[0], args[1], args[3]))


def test_float32_forward_and_backward():
    problem = make_problem(12, batch=(2,), T=6, E=2, D=2, O=3, Ti=1, Oi=2)
    rtol = rtol_for(np.float32, problem, **WEIGHTS)
    u_ref, _ = oracle_solve(*problem, **WEIGHTS)
    ubar = torch.tensor(np.random.default_rng(5).standard_normal(u_ref.shape))

    x64 = tensors(problem, requires_grad=True)
    smnn_solve(*x64, **WEIGHTS).backward(ubar)
    x32 = tensors(problem, requires_grad=True, dtype=torch.float32)
    u32 = smnn_solve(*x32, **WEIGHTS)
    assert u32.dtype == torch.float32
    u32.backward(ubar.float())
    assert_normwise_close(u32.detach().numpy(), u_ref, rtol, 1)
    for a32, a64 in zip(x32, x64):
        assert a32.grad.dtype == torch.float32
        # The gradient chains a second solve with the same factor (error ~ eps32 * cond,
        # as for u) and products with u and y, whose errors add: allow 10 times the
        # solution tolerance.
        err = torch.linalg.norm(a32.grad.double() - a64.grad)
        assert err <= 10 * rtol * torch.linalg.norm(a64.grad)


def test_mixed_dtypes_promote():
    c, r, g, h = tensors(make_problem(13, T=4), requires_grad=True)
    c32 = c.detach().float().requires_grad_()
    u = smnn_solve(c32, r, g, h)
    assert u.dtype == torch.float64
    u.sum().backward()
    assert c32.grad.dtype == torch.float32


def test_cpu_transfer_is_zero_copy():
    t = torch.arange(12, dtype=torch.float64).reshape(3, 4)
    a = _ops._to_core(t)
    assert isinstance(a, np.ndarray) and a.ctypes.data == t.data_ptr()
    back = _ops._from_core(a, t.device)
    assert back.data_ptr() == a.ctypes.data


# --------------------------------------------------------------------------- gradients


@pytest.mark.parametrize("central", [False, True])
def test_gradcheck_all_inputs(central):
    problem = make_problem(21, batch=(2,), T=5, E=2, D=2, O=3, Ti=1, Oi=2)
    kw = dict(WEIGHTS, central_smoothness=central)
    assert gradcheck(lambda *a: smnn_solve(*a, **kw),
                                    tensors(problem, requires_grad=True))


@pytest.mark.parametrize("config", list(BROADCASTS), ids=str)
def test_gradcheck_broadcast_inputs(config):
    # The core sums each gradient over the axes along which its input was broadcast.
    problem = make_problem(22, T=4, E=2, D=2, O=3, Ti=1, Oi=2, **BROADCASTS[config])
    args = tensors(problem, requires_grad=True)
    assert gradcheck(lambda *a: smnn_solve(*a, central_smoothness=True), args)


# --------------------------------------------------------------------------- operators


def test_opcheck_operators():
    problem = make_problem(31, T=4, E=2, D=2, O=3, Ti=1, Oi=2, **BROADCASTS["shared_lhs"])
    options = (None, 1.7, 0.6, 1.3, True)
    args = tensors(problem, requires_grad=True)
    torch.library.opcheck(torch.ops.bandsolve.smnn_solve.default, (*args, *options))

    plain = tensors(problem)
    u, lower = torch.ops.bandsolve.smnn_solve(*plain, *options)
    ubar = torch.randn_like(u)
    torch.library.opcheck(torch.ops.bandsolve.smnn_solve_backward.default,
                          (*plain, lower, u, ubar, *options))
    c, r, g, h = plain
    torch.library.opcheck(torch.ops.bandsolve.smnn_solve_factored.default,
                          (c, r.requires_grad_(), g.requires_grad_(), h, lower, *options))


def test_opcheck_float32_factor_is_float64():
    # float32 inputs: the host solve computes in float64, and so its factor is float64;
    # the fake (meta) implementation must declare that dtype, or torch.compile and opcheck
    # would trace a wrong one
    problem = [a.astype(np.float32) for a in make_problem(33, T=4, E=2, D=1, O=3, Ti=1,
                                                         Oi=2)]
    options = (None, 1.0, 1.0, 1.0, False)
    plain = tensors(problem)
    u, lower = torch.ops.bandsolve.smnn_solve(*plain, *options)
    assert u.dtype == torch.float32 and lower.dtype == torch.float64
    torch.library.opcheck(torch.ops.bandsolve.smnn_solve.default,
                          (*tensors(problem, requires_grad=True), *options))


def test_compile_fullgraph_forward_and_backward():
    # One compilation (the slow part of this file): forward and backward graphs.
    problem = make_problem(32, batch=(2,), T=5, E=2, D=2, O=3, Ti=1, Oi=2)
    weights = torch.tensor(np.random.default_rng(0).standard_normal((2, 5, 2, 3)))

    def loss(c, r, g, h):
        u = smnn_solve(c, r, g, 0.5 * h, central_smoothness=True, **WEIGHTS)
        return (weights * torch.tanh(u)).sum()

    compiled = torch.compile(loss, fullgraph=True)
    eager_args = tensors(problem, requires_grad=True)
    compiled_args = tensors(problem, requires_grad=True)
    eager_loss = loss(*eager_args)
    eager_loss.backward()
    compiled_loss = compiled(*compiled_args)
    compiled_loss.backward()
    # Same kernels on the same data; inductor may fuse the elementwise ops around the
    # solve differently, so allow a few ulps of float64.
    torch.testing.assert_close(compiled_loss, eager_loss, rtol=1e-12, atol=0)
    for a, b in zip(compiled_args, eager_args):
        torch.testing.assert_close(a.grad, b.grad, rtol=1e-12, atol=1e-14)


# --------------------------------------------------------------------------- frozen lhs


def lorenz_like_problem(seed):
    # A left-hand-side batch of (1, 3) against a right-hand-side batch of (4, 3).
    return make_problem(seed, T=6, E=3, D=3, O=2, Ti=1, Oi=1, coef_batch=(1, 3),
                        steps_batch=(1, 3), rhs_batch=(4, 3), init_batch=(4, 3))


@pytest.mark.parametrize("central", [False, True])
def test_frozen_lhs_equals_refactoring(central):
    O = 3 if central else 2
    problem = make_problem(41, T=6, E=3, D=3, O=O, Ti=1, Oi=1, coef_batch=(1, 3),
                           steps_batch=(1, 3), rhs_batch=(4, 3), init_batch=(4, 3))
    kw = dict(WEIGHTS, central_smoothness=central)
    c, r, g, h = tensors(problem)
    frozen = FrozenLHS(c, h, init_shape=(1, 1), **kw)
    rng = np.random.default_rng(7)
    for _ in range(2):  # the same factor serves several right-hand sides
        r = torch.tensor(rng.standard_normal(r.shape), requires_grad=True)
        g = torch.tensor(rng.standard_normal(g.shape), requires_grad=True)
        u = frozen.solve(r, g)
        ubar = torch.tensor(rng.standard_normal(u.shape))
        r_bar, g_bar = torch.autograd.grad(u, (r, g), ubar)
        u_ref = smnn_solve(c, r, g, h, **kw)
        r_ref, g_ref = torch.autograd.grad(u_ref, (r, g), ubar)
        # Same assembly and kernels, one factor instead of a fresh one: equal up to rounding.
        for got, want in ((u, u_ref), (r_bar, r_ref), (g_bar, g_ref)):
            torch.testing.assert_close(got, want, rtol=1e-13, atol=1e-13)


def test_frozen_lhs_is_a_value_and_differentiable():
    c, r, g, h = tensors(lorenz_like_problem(42))
    frozen = FrozenLHS(c, h, init_shape=(1, 1))
    before = frozen.solve(r, g)
    c.mul_(2.0)  # in-place change of the caller's tensor: the FrozenLHS keeps its copy
    torch.testing.assert_close(frozen.solve(r, g), before, rtol=0, atol=0)
    r = r[:2].clone().requires_grad_()
    g = g[:2].clone().requires_grad_()
    assert gradcheck(frozen.solve, (r, g))


def test_frozen_lhs_rejects_misuse():
    c, r, g, h = tensors(lorenz_like_problem(43))
    with pytest.raises(ValueError, match="requires grad"):
        FrozenLHS(c.clone().requires_grad_(), h, init_shape=(1, 1))
    frozen = FrozenLHS(c, h, init_shape=(1, 1))
    with pytest.raises(ValueError, match="init_shape"):
        frozen.solve(r, g.expand(4, 3, 2, 3, 1))
    with pytest.raises(TypeError, match="float32"):
        frozen.solve(r.float(), g)
    with pytest.raises(ValueError, match="init_shape"):
        FrozenLHS(c, h, init_shape=(7, 1))  # Ti > T, checked by the core


# --------------------------------------------------------------------------- torch.func
# The references are loops of eager calls (whose forward is checked against the oracle
# and whose gradients by gradcheck above): same core, same numbers, equal up to the
# rounding of the reductions (1e-12).

LOOP = dict(rtol=1e-12, atol=1e-12)


def func_problem(seed, B=3):
    """Per-example tensors with a batch axis (2,) and stacked versions for vmap (B, 2, ...)."""
    problem = make_problem(seed, batch=(B, 2), T=5, E=2, D=2, O=3, Ti=1, Oi=2)
    return tensors(problem)


# in_dims over (coefficients, rhs, init, steps): rhs only (a shared left-hand side, the
# common case), everything, and a mix with a mapped axis that is not the first.
IN_DIMS = {"rhs": (None, 0, None, None), "all": (0, 0, 0, 0), "mixed": (1, None, 0, None)}


def mapped(tensors_, in_dims, i):
    return [t.select(d, i) if d is not None else t.select(0, 0)
            for t, d in zip(tensors_, in_dims)]


def as_input(t, d):
    return t if d is not None else t.select(0, 0)


@pytest.mark.parametrize("which", list(IN_DIMS))
def test_func_vmap_equals_loop_in_one_core_call(which, monkeypatch):
    in_dims = IN_DIMS[which]
    stacked = list(func_problem(61))
    if which == "mixed":
        stacked[0] = stacked[0].movedim(0, 1).contiguous()
    args = [as_input(t, d) for t, d in zip(stacked, in_dims)]
    calls = []
    core = bandsolve.smnn_factor_solve
    monkeypatch.setattr(bandsolve, "smnn_factor_solve",
                        lambda *a, **k: calls.append(1) or core(*a, **k))
    u = torch.func.vmap(smnn_solve, in_dims=in_dims)(*args)
    assert len(calls) == 1
    loop = torch.stack([smnn_solve(*mapped(stacked, in_dims, i)) for i in range(3)])
    torch.testing.assert_close(u, loop, **LOOP)


def test_func_grad_equals_autograd():
    c, r, g, h = (t[0] for t in func_problem(62))
    weights = torch.randn(2, 5, 2, 3, dtype=torch.float64)
    loss = lambda c, r, g, h: (weights * torch.tanh(smnn_solve(c, r, g, h))).sum()  # noqa: E731
    got = torch.func.grad(loss, argnums=(0, 1, 2, 3))(c, r, g, h)
    leaves = [t.clone().requires_grad_() for t in (c, r, g, h)]
    want = torch.autograd.grad(loss(*leaves), leaves)
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, **LOOP)


@pytest.mark.parametrize("which", ["rhs", "all"])
def test_func_vmap_of_grad_gives_per_example_gradients(which):
    in_dims = IN_DIMS[which]
    stacked = func_problem(63)
    args = [as_input(t, d) for t, d in zip(stacked, in_dims)]
    loss = lambda c, r, g, h: (smnn_solve(c, r, g, h) ** 2).sum()  # noqa: E731
    per_example = torch.func.vmap(torch.func.grad(loss, argnums=(0, 1, 2, 3)),
                                  in_dims=in_dims)(*args)
    for i in range(3):
        leaves = [t.clone().requires_grad_() for t in mapped(stacked, in_dims, i)]
        want = torch.autograd.grad(loss(*leaves), leaves)
        for a, b in zip(per_example, want):
            torch.testing.assert_close(a[i], b, **LOOP)


def test_func_grad_of_vmap_sums_over_the_mapped_axis():
    c, r, g, h = func_problem(64)
    c0, h0 = c[0], h[0]
    loss = lambda c, h: (torch.func.vmap(smnn_solve, in_dims=(None, 0, 0, None))(  # noqa: E731
        c, r, g, h) ** 2).sum()
    got = torch.func.grad(loss, argnums=(0, 1))(c0, h0)
    leaves = [c0.clone().requires_grad_(), h0.clone().requires_grad_()]
    want = torch.autograd.grad(sum((smnn_solve(leaves[0], r[i], g[i], leaves[1]) ** 2).sum()
                                   for i in range(3)), leaves)
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, **LOOP)


def test_func_jacrev_equals_finite_differences():
    # jacrev = vmap over cotangents: the backward operator's batching rule. Central
    # differences with eps 1e-6 err by ~eps^2 |u'''| + 1e-16 |u| / eps, below 1e-8 here.
    c, r, g, h = (t[0, 0] for t in func_problem(65))
    jacobian = torch.func.jacrev(lambda h: smnn_solve(c, r, g, h))(h)
    eps = 1e-6
    for j in range(h.numel()):
        step = torch.zeros_like(h)
        step[j] = eps
        fd = (smnn_solve(c, r, g, h + step) - smnn_solve(c, r, g, h - step)) / (2 * eps)
        torch.testing.assert_close(jacobian[..., j], fd, rtol=1e-6, atol=1e-8)


def test_func_vmap_over_frozen_lhs_solve():
    c, r, g, h = (t[0] for t in func_problem(66))
    stacked_r = func_problem(66)[1]
    frozen = FrozenLHS(c, h, init_shape=(1, 2))
    u = torch.func.vmap(frozen.solve, in_dims=(0, None))(stacked_r, g)
    torch.testing.assert_close(u, torch.stack([frozen.solve(x, g) for x in stacked_r]), **LOOP)


# --------------------------------------------------------------------------- errors


def test_errors_reach_the_user():
    c, r, g, h = tensors(make_problem(51, T=4))
    with pytest.raises(TypeError, match="torch.Tensor"):
        smnn_solve(c.numpy(), r, g, h)
    with pytest.raises(TypeError, match="one device"):
        smnn_solve(c, r, g, h.to("meta"))
    with pytest.raises(ValueError, match="rhs"):  # names the argument (T=3 vs T=4)
        smnn_solve(c, r[..., :1, :1].expand(3, 1).clone(), g, h)
    bad = h.clone()
    bad[0] = float("nan")
    with pytest.raises(ValueError, match="steps contains NaN"):
        smnn_solve(c, r, g, bad)
    with pytest.raises(TypeError, match="dtype"):
        smnn_solve(c.int(), r.int(), g.int(), h.int())
    # Zero coefficients and no initial values leave constants in the null space.
    with pytest.raises(bandsolve.FactorizationError):
        smnn_solve(torch.zeros_like(c), r, g[..., :0, :, :], h)


# --------------------------------------------------------------------------- nn.Module


def test_mechanistic_layer_shapes_and_docstring():
    result = doctest.testmod(bandsolve_torch.layer, verbose=False)
    assert result.attempted > 0 and result.failed == 0
    layer = MechanisticLayer(n_steps=6, n_dims=2, n_orders=3, n_equations=3,
                             init_shape=(1, 2), step_size=0.3)
    torch.testing.assert_close(layer.steps, torch.full((5,), 0.3, dtype=torch.float64))
    features = torch.randn(4, layer.n_features, dtype=torch.float64)
    coefficients, rhs, init = layer.split_features(features)
    assert coefficients.shape == (4, 6, 3, 2, 3)
    assert rhs.shape == (4, 6, 3) and init.shape == (4, 1, 2, 2)
    u = layer(coefficients, rhs, init)
    assert u.shape == (4, 6, 2, 3)
    u.sum().backward()
    assert layer.raw_steps.grad is not None and layer.raw_steps.grad.shape == (5,)
    with pytest.raises(ValueError, match="features"):
        layer.split_features(features[..., 1:])


def oscillator(T, dt, stiffness, damping):
    """Closed-form x(t) of x'' + damping x' + stiffness x = 0, x(0) = 1, x'(0) = 0
    (underdamped)."""
    t = torch.arange(T, dtype=torch.float64) * dt
    wd = math.sqrt(stiffness - damping**2 / 4)
    return torch.exp(-damping * t / 2) * (torch.cos(wd * t) + damping / (2 * wd) * torch.sin(wd * t))


def fit(params, closure_loss, steps=3):
    optimizer = torch.optim.LBFGS(params, max_iter=50, line_search_fn="strong_wolfe",
                                  tolerance_grad=1e-12, tolerance_change=1e-14)

    def closure():
        optimizer.zero_grad()
        loss = closure_loss()
        loss.backward()
        return loss

    with torch.no_grad():
        first = float(closure_loss())
    for _ in range(steps):
        last = float(optimizer.step(closure).detach())
    return first, last


def test_training_fits_damped_oscillator():
    # Learn (stiffness, damping) of x'' + b x' + k x = 0 from the exact trajectory. The
    # layer's trajectory is the S-MNN discretisation (O = 3, central smoothness), whose
    # O(h^2) discretisation error at h = 0.1 biases the fit by a few percent.
    T, dt, k_true, b_true = 60, 0.1, 4.0, 0.4
    target = oscillator(T, dt, k_true, b_true)
    layer = MechanisticLayer(T, n_dims=1, n_orders=3, n_equations=1, init_shape=(1, 2),
                             step_size=dt, learn_steps=False, central_smoothness=True)
    theta = torch.nn.Parameter(torch.tensor([1.0, 0.1], dtype=torch.float64))
    rhs = torch.zeros(1, 1, dtype=torch.float64)
    init = torch.tensor([[[1.0, 0.0]]], dtype=torch.float64)

    def loss():
        c = torch.cat([theta, theta.new_ones(1)]).reshape(1, 1, 1, 3)  # k x + b x' + x''
        return ((layer(c, rhs, init)[:, 0, 0] - target) ** 2).mean()

    first, last = fit([theta], loss)
    assert last < 1e-4 * first
    k, b = theta.detach().tolist()
    assert abs(k - k_true) < 0.03 * k_true and abs(b - b_true) < 0.05 * b_true


def test_training_learns_step_size():
    # Self-consistent: the target is the layer's own trajectory at h = 0.1, so the learned
    # (softplus-positive, shared) step must converge to 0.1 up to the optimiser tolerance.
    T, k, b = 40, 4.0, 0.4
    coefficients = torch.tensor([k, b, 1.0], dtype=torch.float64).reshape(1, 1, 1, 3)
    rhs = torch.zeros(1, 1, dtype=torch.float64)
    init = torch.tensor([[[1.0, 0.0]]], dtype=torch.float64)
    truth = MechanisticLayer(T, 1, 3, 1, init_shape=(1, 2), step_size=0.1, shared_step=True)
    with torch.no_grad():
        target = truth(coefficients, rhs, init)[:, 0]
    layer = MechanisticLayer(T, 1, 3, 1, init_shape=(1, 2), step_size=0.13, shared_step=True)
    first, last = fit(list(layer.parameters()),
                      lambda: ((layer(coefficients, rhs, init)[:, 0] - target) ** 2).mean())
    assert last < 1e-10 * first
    assert abs(layer.steps.item() - 0.1) < 1e-5


def test_float32_gradients_match_the_float64_vjp():
    """float32 inputs at the README oscillator's step (cond(M) ~ 1e8): the gradients must
    be the float64 VJP's, rounded to float32. The backward pass solves for the float64
    solution rather than use the float32 u it saved: the gradient multiplies u into the
    equations' residual c.u - r, which cancels, and that amplified u's rounding to a 37%
    error here. Reference: the core's float64 VJP on the same float32-valued inputs."""
    T = 200
    c = np.zeros((T, 1, 1, 3), np.float32)
    c[...] = [4.0, 0.3, 1.0]
    r, g = np.zeros((T, 1), np.float32), np.array([[[1.0, 0.0]]], np.float32)
    h = np.full(T - 1, 0.01, np.float32)
    ubar = np.random.default_rng(2).standard_normal((T, 1, 3))
    _, vjp = bandsolve.smnn_solve_vjp(*(a.astype(np.float64) for a in (c, r, g, h)))
    expected = vjp(ubar)
    inputs = [torch.tensor(a, requires_grad=True) for a in (c, r, g, h)]
    u = smnn_solve(*inputs)
    (u * torch.tensor(ubar, dtype=torch.float32)).sum().backward()
    for tensor, want in zip(inputs, expected):
        got = tensor.grad.numpy()
        assert got.dtype == np.float32
        err = np.linalg.norm(got - want) / np.linalg.norm(want)
        assert err <= 1e-6, err  # ~10 float32 roundings

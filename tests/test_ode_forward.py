"""``bandsolve_torch.ode_forward``: the reference implementation's call signature.

The semantics are pinned without the reference file: for each call pattern of the paper's
notebooks (Lorenz discovery, noisy sine, KdV, the standalone linear ODEs; the shapes and
keywords as the notebooks pass them, sizes reduced), ``ode_forward`` equals
``bandsolve_torch.smnn_solve`` on the tensors moved to batch-first layout and broadcast by
hand, forward and backward. ``smnn_solve`` itself is checked against the dense lstsq
oracle in test_torch.py; one step-first case here is also checked against that oracle
directly. The two paths run the same core on the same numbers, so they agree to rounding
of the reductions (1e-12 relative, float64).
"""

import inspect

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import bandsolve_torch  # noqa: E402
from bandsolve_torch import dropin, ode_forward, smnn_solve  # noqa: E402

from helpers import assert_normwise_close, oracle_solve, solve_rtol  # noqa: E402

F64 = torch.float64
SAME = dict(rtol=1e-12, atol=1e-12)  # same core, same inputs: rounding only


@pytest.fixture(autouse=True)
def empty_frozen_cache():
    bandsolve_torch.clear_frozen_lhs_cache()
    yield
    bandsolve_torch.clear_frozen_lhs_cache()


def randn(*shape, seed, scale=1.0, grad=False):
    g = torch.Generator().manual_seed(seed)
    return (scale * torch.randn(*shape, generator=g, dtype=F64)).requires_grad_(grad)


def grads(output, inputs, seed=99):
    """Gradients of ``sum(w * output)`` for a fixed random ``w``."""
    w = randn(*output.shape, seed=seed)
    return torch.autograd.grad((w * output).sum(), inputs, retain_graph=True)


def assert_all_close(actual, expected):
    for a, e in zip(actual, expected):
        torch.testing.assert_close(a, e, **SAME)


def test_signature_is_the_reference_one():
    expected = [("coefficients", inspect.Parameter.empty), ("rhs_equation", inspect.Parameter.empty),
                ("init_vars", inspect.Parameter.empty), ("steps", inspect.Parameter.empty),
                ("n_steps", None), ("n_init_var_steps", None), ("is_step_dim_first", False),
                ("weight_equation", 1.0), ("weight_init_var", 1.0), ("weight_smooth", 1.0),
                ("enable_central_smoothness", False), ("prefer_cuda_graph", True),
                ("frozen_lhs_cache_version", 0)]
    parameters = inspect.signature(ode_forward).parameters.values()
    assert [(p.name, p.default) for p in parameters] == expected
    assert all(p.kind is inspect.Parameter.POSITIONAL_OR_KEYWORD for p in parameters)


# --------------------------------------------------------------- the notebooks' calls


def lorenz_inputs(bs=4, T=12, seed=0):
    """The Lorenz notebook's call: step axis first, a (1, 3) left-hand-side batch against
    a (bs, 3) right-hand side, one initial value broadcast from a step axis of length 1."""
    coeffs = torch.zeros(1, 3, 1, 1, 1, 3, dtype=F64)
    coeffs[..., 1] = 1.0
    rhs = randn(bs, T, 3, seed=seed, scale=5.0, grad=True)
    var = randn(bs, T, 3, seed=seed + 1, scale=5.0, grad=True)
    step_size = torch.full((1, 1, 1), 1e-2, dtype=F64)
    args = (coeffs[None, :, :, 0],                 # (1, 1, 3, 1, 1, 3)
            rhs.transpose(0, 1)[..., None],        # (T, bs, 3, 1)
            var[None, :, 0, :, None, None],        # (1, bs, 3, 1, 1)
            step_size)                             # (1, 1, 1)
    return args, (rhs, var), T


@pytest.mark.parametrize("version", [0, 1])
def test_lorenz_call(version):
    (c, r, g, h), leaves, T = lorenz_inputs()
    u = ode_forward(c, r, g, h, n_steps=T, is_step_dim_first=True,
                    enable_central_smoothness=False, frozen_lhs_cache_version=version)
    assert u.shape == (T, 4, 3, 1, 3) and u.is_contiguous()
    u_ref = smnn_solve(c.movedim(0, -4), r.movedim(0, -2), g.movedim(0, -3), h.movedim(0, -1),
                       n_steps=T).movedim(-3, 0)
    torch.testing.assert_close(u, u_ref, **SAME)
    assert_all_close(grads(u, leaves), grads(u_ref, leaves))


def test_lorenz_call_against_the_dense_oracle():
    (c, r, g, h), _, T = lorenz_inputs(bs=2, T=8)
    u = ode_forward(c, r, g, h, n_steps=T, is_step_dim_first=True, frozen_lhs_cache_version=1)
    to_numpy = lambda t, k: t.detach().movedim(0, -k).numpy()  # noqa: E731
    u_ref, cond = oracle_solve(to_numpy(c, 4), to_numpy(r, 2), to_numpy(g, 3), to_numpy(h, 1),
                               n_steps=T)
    assert_normwise_close(u.movedim(0, -3).detach().numpy(), u_ref,
                          solve_rtol(np.float64, cond), batch_ndim=2)


def test_noisy_sine_call():
    """Sine notebook: batch (1, 1), time-varying coefficients and steps that require grad,
    no initial values (n_init_var_steps = n_init_var_orders = 0), batch axes first."""
    T = 30
    coefficients = torch.rand(1, 1, T, 1, 1, 3, dtype=F64,
                              generator=torch.Generator().manual_seed(3)).requires_grad_()
    rhs_equation = torch.ones(1, 1, T, 1, dtype=F64)
    init_vars = torch.empty(1, 1, 0, 1, 0, dtype=F64)
    raw_steps = torch.tensor(0.1, dtype=F64).logit().repeat(1, 1, T - 1).requires_grad_()
    steps = raw_steps.sigmoid()
    u = ode_forward(coefficients, rhs_equation, init_vars, steps, is_step_dim_first=False,
                    enable_central_smoothness=False)
    u_ref = smnn_solve(coefficients, rhs_equation, init_vars, steps)
    assert u.shape == (1, 1, T, 1, 3)
    torch.testing.assert_close(u, u_ref, **SAME)
    assert_all_close(grads(u, (coefficients, raw_steps)), grads(u_ref, (coefficients, raw_steps)))


def test_kdv_call():
    """KdV notebook: batch (B, grid), fourth-order ODE (O=5) per grid point, four initial
    orders, per-element steps; everything requires grad."""
    B, N, T, O = 2, 3, 10, 5
    coefficients = randn(B, N, T, 1, 1, O, seed=4, grad=True)
    rhs_equation = randn(B, N, T, 1, seed=5, grad=True)
    init_vars = randn(B, N, 1, 1, O - 1, seed=6, grad=True)
    steps = (0.05 + 0.01 * randn(B, N, 1, seed=7).abs()).repeat(1, 1, T - 1).requires_grad_()
    args = (coefficients, rhs_equation, init_vars, steps)
    u = ode_forward(*args, is_step_dim_first=False, enable_central_smoothness=False)
    u_ref = smnn_solve(*args)
    assert u.shape == (B, N, T, 1, O)
    torch.testing.assert_close(u, u_ref, **SAME)
    assert_all_close(grads(u, args), grads(u_ref, args))


def test_standalone_linear_ode_call():
    """Standalone notebook: one time-invariant system, step axis first with every step
    axis of length 1 broadcast, n_steps given, then ``.permute(1, 2, 0)``."""
    T = 200
    coefficients = torch.tensor([[[[4.0, 0.3, 1.0]]]], dtype=F64)   # (1, E=1, D=1, O=3)
    rhs_equation = torch.tensor([[0.0]], dtype=F64)                  # (1, E)
    steps = torch.tensor([1e-2], dtype=F64)                          # (1,)
    init_vars = torch.tensor([1.0], dtype=F64)[None, ..., None]      # (1, D, 1)
    y = ode_forward(coefficients, rhs_equation, init_vars, steps, n_steps=T,
                    is_step_dim_first=True, enable_central_smoothness=False).permute(1, 2, 0)
    assert y.shape == (1, 3, T)
    u_ref = smnn_solve(coefficients, rhs_equation, init_vars, steps, n_steps=T)
    torch.testing.assert_close(y, u_ref.permute(1, 2, 0), **SAME)


# --------------------------------------------------------------- shape grammar


def test_init_step_axis_of_length_one_broadcasts_to_n_init_var_steps():
    T, Ti = 9, 3
    c, r = randn(2, T, 2, 2, 3, seed=10), randn(2, T, 2, seed=11)
    g = randn(2, 1, 2, 2, seed=12, grad=True)
    h = torch.full((T - 1,), 0.1, dtype=F64)
    u = ode_forward(c, r, g, h, n_init_var_steps=Ti)
    u_ref = smnn_solve(c, r, g.repeat(1, Ti, 1, 1), h)
    torch.testing.assert_close(u, u_ref, **SAME)
    assert_all_close(grads(u, (g,)), grads(u_ref, (g,)))


def test_weights_central_smoothness_and_expanded_inputs():
    """Keyword names map to smnn_solve's; stride-0 (expanded) rhs and init are read as
    their values."""
    T = 8
    c = randn(3, T, 2, 2, 3, seed=20)
    r = randn(3, T, 1, seed=21).expand(3, T, 2)
    g = randn(1, 1, 1, 2, seed=22).expand(3, 1, 2, 2)
    h = 0.1 + 0.02 * randn(3, T - 1, seed=23).abs()
    weights = dict(weight_equation=1.7, weight_init_var=0.6, weight_smooth=1.3)
    u = ode_forward(c, r, g, h, enable_central_smoothness=True, **weights)
    u_ref = smnn_solve(c, r.contiguous(), g.contiguous(), h, weight_equation=1.7,
                       weight_init=0.6, weight_smooth=1.3, central_smoothness=True)
    torch.testing.assert_close(u, u_ref, **SAME)


def test_positional_arguments_in_the_reference_order():
    (c, r, g, h), _, T = lorenz_inputs()
    u = ode_forward(c, r, g, h, T, None, True, 1.0, 1.0, 1.0, False, False, 0)
    torch.testing.assert_close(u, ode_forward(c, r, g, h, n_steps=T, is_step_dim_first=True))


def test_prefer_cuda_graph_is_accepted_and_changes_nothing():
    (c, r, g, h), _, T = lorenz_inputs()
    kw = dict(n_steps=T, is_step_dim_first=True)
    torch.testing.assert_close(ode_forward(c, r, g, h, prefer_cuda_graph=True, **kw),
                               ode_forward(c, r, g, h, prefer_cuda_graph=False, **kw))


def test_step_first_tensors_are_never_misread():
    """The Lorenz tensors without n_steps, or without is_step_dim_first, raise instead of
    returning a wrong answer of a plausible shape."""
    (c, r, g, h), _, T = lorenz_inputs()
    with pytest.raises(ValueError, match="n_steps"):
        ode_forward(c, r, g, h, is_step_dim_first=True)
    with pytest.raises(ValueError, match="is_step_dim_first"):
        ode_forward(c, r, g, h, n_steps=T)
    with pytest.raises(ValueError, match="coefficients"):
        ode_forward(c, r, g, h)


def test_bad_arguments_are_named():
    (c, r, g, h), _, T = lorenz_inputs()
    kw = dict(n_steps=T, is_step_dim_first=True)
    with pytest.raises(TypeError, match="is_step_dim_first"):
        ode_forward(c, r, g, h, n_steps=T, is_step_dim_first=1)
    with pytest.raises(TypeError, match="prefer_cuda_graph"):
        ode_forward(c, r, g, h, prefer_cuda_graph="yes", **kw)
    with pytest.raises(ValueError, match="frozen_lhs_cache_version"):
        ode_forward(c, r, g, h, frozen_lhs_cache_version=-1, **kw)
    with pytest.raises(TypeError, match="init_vars"):
        ode_forward(c, r, g.numpy(force=True), h, **kw)
    with pytest.raises(ValueError, match="steps"):
        ode_forward(c, r, g, h[0, 0, 0], **kw)  # no step axis
    with pytest.raises(ValueError, match="n_steps"):
        ode_forward(c, r, g, h, n_steps=1, is_step_dim_first=True)
    with pytest.raises(ValueError, match="n_init_var_steps"):
        ode_forward(c, r, g.expand(2, -1, -1, -1, -1), h, n_init_var_steps=3, **kw)
    with pytest.raises(ValueError, match="NaN"):  # the reference would return NaN
        ode_forward(c, r.detach() * float("nan"), g, h, **kw)


# --------------------------------------------------------------- frozen left-hand side


def small_problem(seed, scale=1.0):
    T = 7
    c = scale * randn(2, T, 2, 2, 3, seed=seed)
    h = torch.full((2, T - 1), 0.1, dtype=F64)
    return c, h


def test_frozen_cache_keeps_the_first_lhs_until_cleared():
    c1, h1 = small_problem(30)
    c2, h2 = small_problem(31, scale=2.0)
    r = randn(2, 7, 2, seed=32, grad=True)
    g = randn(2, 1, 2, 2, seed=33, grad=True)
    first = ode_forward(c1, r, g, h1, frozen_lhs_cache_version=5)
    torch.testing.assert_close(first, smnn_solve(c1, r, g, h1), **SAME)
    assert bandsolve_torch.frozen_lhs_cache_versions() == [5]

    # new coefficients and steps are ignored: the solution of the first left-hand side
    r_new = randn(2, 7, 2, seed=34, grad=True)
    frozen = ode_forward(c2, r_new, g, h2 * 3, frozen_lhs_cache_version=5)
    expected = smnn_solve(c1, r_new, g, h1)
    torch.testing.assert_close(frozen, expected, **SAME)
    assert_all_close(grads(frozen, (r_new, g)), grads(expected, (r_new, g)))
    # another version is another left-hand side
    torch.testing.assert_close(ode_forward(c2, r_new, g, h2, frozen_lhs_cache_version=6),
                               smnn_solve(c2, r_new, g, h2), **SAME)

    assert bandsolve_torch.clear_frozen_lhs_cache(5) == 1
    assert bandsolve_torch.frozen_lhs_cache_versions() == [6]
    torch.testing.assert_close(ode_forward(c2, r_new, g, h2, frozen_lhs_cache_version=5),
                               smnn_solve(c2, r_new, g, h2), **SAME)


def test_frozen_cache_is_bounded_least_recently_used(monkeypatch):
    monkeypatch.setattr(dropin, "FROZEN_LHS_CACHE_SIZE", 3)
    c, h = small_problem(40)
    r, g = randn(2, 7, 2, seed=41), randn(2, 1, 2, 2, seed=42)
    for version in (1, 2, 3):
        ode_forward(c, r, g, h, frozen_lhs_cache_version=version)
    ode_forward(c, r, g, h, frozen_lhs_cache_version=1)   # 1 is now the most recent
    ode_forward(c, r, g, h, frozen_lhs_cache_version=4)   # evicts 2
    assert bandsolve_torch.frozen_lhs_cache_versions() == [3, 1, 4]
    assert bandsolve_torch.clear_frozen_lhs_cache() == 3
    assert bandsolve_torch.frozen_lhs_cache_versions() == []


def test_frozen_cache_refuses_changed_options_and_lhs_gradients():
    c, h = small_problem(50)
    r, g = randn(2, 7, 2, seed=51), randn(2, 1, 2, 2, seed=52)
    ode_forward(c, r, g, h, frozen_lhs_cache_version=1)
    with pytest.raises(ValueError, match="weight_equation"):
        ode_forward(c, r, g, h, weight_equation=2.0, frozen_lhs_cache_version=1)
    with pytest.raises(ValueError, match="n_init_var_orders"):
        ode_forward(c, r, g[..., :1], h, frozen_lhs_cache_version=1)
    with pytest.raises(ValueError, match="requires grad"):
        ode_forward(c.clone().requires_grad_(), r, g, h, frozen_lhs_cache_version=2)
    with torch.no_grad():  # no gradient wanted: fine
        ode_forward(c.clone().requires_grad_(), r, g, h, frozen_lhs_cache_version=2)


def test_docstring_example_runs():
    import doctest

    result = doctest.testmod(dropin, verbose=False)
    assert result.attempted >= 1 and result.failed == 0

"""Bad input (DESIGN.md section 4): structural misuse is a ValueError/TypeError naming the
argument; a system that is not positive definite is a FactorizationError (a LinAlgError)
naming the failing batch elements and time steps; inputs are never modified in place."""

import re

import numpy as np
import pytest

import bandsolve
import bandsolve.cpu.driver

from helpers import (
    dense_to_lower_blocks,
    make_full_rank_equations,
    make_problem,
    random_spd_block_banded,
)

T, E, D, O, TI, OI = 4, 2, 2, 3, 1, 2


def base_problem(dtype=np.float64):
    return list(make_problem(300, T=T, E=E, D=D, O=O, Ti=TI, Oi=OI, dtype=dtype))


def _with(i, value):
    def modify(p, kw):
        p[i] = value(p[i]) if callable(value) else value
    return modify


def _set_entry(i, value):
    def modify(p, kw):
        x = p[i].copy()
        x.flat[x.size // 2] = value
        p[i] = x
    return modify


def _kw(**extra):
    def modify(p, kw):
        kw.update(extra)
    return modify


def _chain(*mods):
    def modify(p, kw):
        for m in mods:
            m(p, kw)
    return modify


C, R, I, S = 0, 1, 2, 3
rng = np.random.default_rng(301)

# (id, modification, exception, argument names of which the message must name one; for
# smnn_factor the initial-value shape arrives as init_shape)
VALUE_ERRORS = [
    # wrong rank
    ("coefficients_rank", _with(C, lambda c: c[0]), ValueError, ["coefficients"]),
    ("rhs_rank", _with(R, lambda r: r[0]), ValueError, ["rhs"]),
    ("init_rank", _with(I, lambda g: g[0]), ValueError, ["init"]),
    ("steps_rank", _with(S, lambda h: h[0]), ValueError, ["steps"]),
    # shape mismatch
    ("rhs_E", _with(R, rng.standard_normal((T, E + 1))), ValueError, ["rhs", "coefficients"]),
    ("rhs_T", _with(R, rng.standard_normal((T + 1, E))), ValueError, ["rhs", "coefficients", "steps"]),
    ("init_D", _with(I, rng.standard_normal((TI, D + 1, OI))), ValueError, ["init", "coefficients"]),
    ("steps_T", _with(S, np.full(T - 2, 0.5)), ValueError, ["steps"]),
    ("steps_T_long", _with(S, np.full(T, 0.5)), ValueError, ["steps"]),
    ("Ti_gt_T", _with(I, rng.standard_normal((T + 1, D, OI))), ValueError, ["init", "init_shape"]),
    ("Oi_gt_O", _with(I, rng.standard_normal((TI, D, O + 1))), ValueError, ["init", "init_shape"]),
    (
        "central_O_lt_3",
        _chain(_with(C, lambda c: c[..., :2]), _with(I, lambda g: g[..., :1]),
               _kw(central_smoothness=True)),
        ValueError,
        ["central_smoothness", "O"],
    ),
    # non-positive or non-finite steps
    ("steps_zero", _set_entry(S, 0.0), ValueError, ["steps"]),
    ("steps_negative", _set_entry(S, -0.5), ValueError, ["steps"]),
    ("steps_nan", _set_entry(S, np.nan), ValueError, ["steps"]),
    ("steps_inf", _set_entry(S, np.inf), ValueError, ["steps"]),
    # NaN / Inf in the other inputs
    ("coefficients_nan", _set_entry(C, np.nan), ValueError, ["coefficients"]),
    ("coefficients_inf", _set_entry(C, -np.inf), ValueError, ["coefficients"]),
    ("rhs_nan", _set_entry(R, np.nan), ValueError, ["rhs"]),
    ("rhs_inf", _set_entry(R, np.inf), ValueError, ["rhs"]),
    ("init_nan", _set_entry(I, np.nan), ValueError, ["init"]),
    ("init_inf", _set_entry(I, np.inf), ValueError, ["init"]),
    # incompatible batch shapes
    (
        "batch_mismatch",
        _chain(_with(C, lambda c: np.stack([c, c])), _with(R, lambda r: np.stack([r, r, r]))),
        ValueError,
        ["batch", "coefficients", "rhs"],
    ),
    # T that cannot be inferred, or contradicts the inputs
    (
        "T_not_inferable",
        _chain(_with(C, lambda c: c[:1]), _with(R, lambda r: r[:1]), _with(S, lambda h: h[:1])),
        ValueError,
        ["n_steps", "T"],
    ),
    ("n_steps_conflict", _kw(n_steps=T + 1), ValueError, ["n_steps", "coefficients", "rhs", "steps"]),
]
for _name in ("weight_equation", "weight_init", "weight_smooth"):
    for _label, _value in (("zero", 0.0), ("negative", -1.0), ("nan", np.nan), ("inf", np.inf)):
        VALUE_ERRORS.append((f"{_name}_{_label}", _kw(**{_name: _value}), ValueError, [_name]))

TYPE_ERRORS = [
    ("coefficients_int", _with(C, lambda c: np.round(c).astype(np.int64)), TypeError, ["coefficients"]),
    ("coefficients_int32", _with(C, lambda c: np.round(c).astype(np.int32)), TypeError, ["coefficients"]),
    ("rhs_bool", _with(R, lambda r: r > 0), TypeError, ["rhs"]),
    ("init_complex", _with(I, lambda g: g.astype(np.complex128)), TypeError, ["init"]),
    ("steps_int", _with(S, lambda h: np.ones(h.shape, dtype=np.int64)), TypeError, ["steps"]),
    ("coefficients_complex64", _with(C, lambda c: c.astype(np.complex64)), TypeError, ["coefficients"]),
]

ENTRY_POINTS = ["smnn_solve", "smnn_solve_vjp", "smnn_normal_equations", "smnn_factor"]


def call(entry, p, kw):
    c, r, g, h = p
    if entry == "smnn_factor":
        init_shape = (g.shape[-3], g.shape[-1]) if np.ndim(g) >= 3 else (TI, OI)
        factor = bandsolve.smnn_factor(c, h, init_shape=init_shape, **kw)
        return factor.solve(r, g)
    return getattr(bandsolve, entry)(c, r, g, h, **kw)


@pytest.mark.parametrize("entry", ENTRY_POINTS)
@pytest.mark.parametrize("case", VALUE_ERRORS + TYPE_ERRORS, ids=lambda c: c[0])
def test_bad_input_raises(case, entry):
    name, modify, exc, names = case
    p, kw = base_problem(), {}
    call(entry, list(p), dict(kw))  # the unmodified problem is fine
    modify(p, kw)
    with pytest.raises(exc) as info:
        call(entry, p, kw)
    assert not isinstance(info.value, bandsolve.FactorizationError)
    msg = str(info.value)
    assert any(re.search(rf"\b{re.escape(n)}\b", msg, re.IGNORECASE) for n in names), (
        f"message does not name any of {names}: {msg!r}"
    )


def test_n_steps_needed_only_when_missing():
    """The T_not_inferable problem with n_steps given is valid (the error above is about T,
    not about step-length-1 inputs)."""
    c, r, g, h = base_problem()
    u = bandsolve.smnn_solve(c[:1], r[:1], g, h[:1], n_steps=T)
    assert u.shape == (T, D, O)


def test_factorization_error_is_linalg_error():
    assert issubclass(bandsolve.FactorizationError, np.linalg.LinAlgError)


def _mentions_index(msg, idx):
    """The message names the batch index: its numbers in order, comma separated, as in
    "(1, 2)" or "[1, 2]"."""
    pattern = r"(?<!\d)" + r"\s*,\s*".join(str(i) for i in idx) + r"(?!\d)"
    return re.search(pattern, msg) is not None


# ---------------------------------------------------------------------------------------
# Singular systems in S-MNN problems
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("entry", ["smnn_solve", "smnn_solve_vjp", "smnn_factor"])
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_singular_batch_element_is_named(entry, dtype):
    """T = 1 (no smoothness rows) and no initial values: element (1, 2) of a (2, 3) batch
    has zero coefficients, so its normal matrix is exactly zero and the very first pivot is
    0; the other elements have full-rank equations (SPD)."""
    Tn, Dn, On = 1, 2, 2
    coefficients = make_full_rank_equations(310, batch=(2, 3), T=Tn, D=Dn, O=On, dtype=dtype)
    coefficients[1, 2] = 0.0
    rhs = np.ones((2, 3, Tn, Dn * On + 1), dtype=dtype)
    init = np.zeros((0, Dn, 0), dtype=dtype)
    steps = np.zeros((0,), dtype=dtype)
    # The problem minus the bad element is fine.
    call(entry, [coefficients[:1], rhs[:1], init, steps], {})
    with pytest.raises(bandsolve.FactorizationError) as info:
        call(entry, [coefficients, rhs, init, steps], {})
    err = info.value
    assert isinstance(err, np.linalg.LinAlgError)
    assert [tuple(i) for i in err.batch_indices] == [(1, 2)]
    assert list(err.steps) == [0]
    assert _mentions_index(str(err), (1, 2)), str(err)


def test_singular_index_is_into_the_lhs_batch():
    """Left-hand side batch (1, 3) against right-hand side batch (5, 3): the failing system
    is named by its index into the left-hand side's batch, (0, 2)."""
    Tn, Dn, On = 1, 1, 2
    coefficients = make_full_rank_equations(312, batch=(1, 3), T=Tn, D=Dn, O=On)
    coefficients[0, 2] = 0.0
    rhs = np.ones((5, 3, Tn, Dn * On + 1))
    init = np.zeros((0, Dn, 0))
    steps = np.zeros((0,))
    for entry in ("smnn_solve", "smnn_factor"):
        with pytest.raises(bandsolve.FactorizationError) as info:
            call(entry, [coefficients, rhs, init, steps], {})
        assert [tuple(i) for i in info.value.batch_indices] == [(0, 2)], entry
        assert list(info.value.steps) == [0]


def test_overflowing_system_is_an_error_not_nan():
    """Finite inputs whose normal matrix overflows (1e200**2 = inf in float64) must not give
    a silent NaN: the factor is non-finite, so FactorizationError names element 1."""
    coefficients, rhs, init, steps = make_problem(311, batch=(3,), T=4, E=2, D=1, O=3, Ti=1, Oi=2)
    coefficients[1, 2] *= 1e200
    with pytest.raises(bandsolve.FactorizationError) as info:
        bandsolve.smnn_solve(coefficients, rhs, init, steps)
    assert [tuple(i) for i in info.value.batch_indices] == [(1,)]


# ---------------------------------------------------------------------------------------
# block_cholesky of an indefinite BlockBanded at known steps
# ---------------------------------------------------------------------------------------


def _indefinite_at(dense, L, n, where):
    """Make the Schur complement of step k negative definite for each (batch idx, k):
    with M = L L^T the Schur complement at step k is exactly L_kk L_kk^T, so subtracting
    (lambda_max + 1) I from the diagonal block M_kk leaves steps < k untouched and makes
    step k the first that fails."""
    dense = dense.copy()
    for idx, k in where:
        Lkk = L[idx][k * n:(k + 1) * n, k * n:(k + 1) * n]
        lam = np.linalg.eigvalsh(Lkk @ Lkk.T).max()
        dense[idx][k * n:(k + 1) * n, k * n:(k + 1) * n] -= (lam + 1.0) * np.eye(n)
    return dense


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("p", [1, 2])
def test_block_cholesky_indefinite_reports_steps(p, dtype):
    Tn, n = 8, 2
    dense, L = random_spd_block_banded(320 + p, batch=(4,), T=Tn, n=n, p=p)
    bad = [((1,), 3), ((3,), 6)]
    dense = _indefinite_at(dense, L, n, bad).astype(dtype)
    blocks = dense_to_lower_blocks(dense, n, p, fill=np.nan)
    # The good elements factor fine.
    bandsolve.block_cholesky(bandsolve.BlockBanded(blocks[[0, 2]])).solve(np.ones((Tn, n), dtype))
    with pytest.raises(bandsolve.FactorizationError) as info:
        bandsolve.block_cholesky(bandsolve.BlockBanded(blocks)).solve(np.ones((Tn, n), dtype))
    err = info.value
    assert [tuple(i) for i in err.batch_indices] == [(1,), (3,)]
    assert list(err.steps) == [3, 6]
    msg = str(err)
    assert _mentions_index(msg, (1,)) and _mentions_index(msg, (3,)), msg
    assert re.search(r"\b3\b", msg) and re.search(r"\b6\b", msg), msg


@pytest.mark.parametrize("k", [0, 2, 5])
def test_block_cholesky_indefinite_unbatched(k):
    Tn, n, p = 6, 3, 1
    dense, L = random_spd_block_banded(330, T=Tn, n=n, p=p)
    dense = _indefinite_at(dense, L, n, [((), k)])
    with pytest.raises(bandsolve.FactorizationError) as info:
        bandsolve.block_cholesky(bandsolve.BlockBanded.from_dense(dense, n, p))
    err = info.value
    assert [tuple(i) for i in err.batch_indices] == [()]
    assert list(err.steps) == [k]
    assert re.search(rf"\b{k}\b", str(err)), str(err)


# ---------------------------------------------------------------------------------------
# Inputs are never modified in place
# ---------------------------------------------------------------------------------------


def _assert_unchanged(arrays, copies):
    for a, c in zip(arrays, copies):
        assert a.dtype == c.dtype and a.shape == c.shape
        np.testing.assert_array_equal(a, c)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("central", [False, True])
def test_inputs_not_modified(central, dtype):
    problem = list(make_problem(340, batch=(2,), T=5, E=2, D=2, O=3, Ti=1, Oi=2, dtype=dtype,
                                coef_batch=(1,), coef_T=1))
    copies = [a.copy() for a in problem]
    kw = dict(central_smoothness=central, weight_init=1.5)
    bandsolve.smnn_solve(*problem, **kw)
    _assert_unchanged(problem, copies)
    u, vjp = bandsolve.smnn_solve_vjp(*problem, **kw)
    ubar = np.ones_like(u)
    ubar_copy = ubar.copy()
    vjp(ubar)
    _assert_unchanged(problem + [ubar], copies + [ubar_copy])
    bandsolve.smnn_normal_equations(*problem, **kw)
    _assert_unchanged(problem, copies)
    c, r, g, h = problem
    factor = bandsolve.smnn_factor(c, h, init_shape=(1, 2), **kw)
    factor.solve(r, g)
    u2, vjp2 = factor.solve_vjp(r, g)
    vjp2(ubar)
    _assert_unchanged(problem + [ubar], copies + [ubar_copy])


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_block_banded_inputs_not_modified(dtype):
    Tn, n, p = 5, 2, 2
    dense, _ = random_spd_block_banded(341, batch=(2,), T=Tn, n=n, p=p, dtype=dtype)
    blocks = dense_to_lower_blocks(dense, n, p, fill=np.nan)
    blocks_copy, dense_copy = blocks.copy(), dense.copy()
    b = np.ones((2, Tn, n), dtype)
    b_copy = b.copy()
    M = bandsolve.BlockBanded(blocks)
    M.matvec(b)
    M.to_dense()
    chol = bandsolve.block_cholesky(M)
    chol.solve(b)
    chol.logdet()
    bandsolve.block_cholesky(bandsolve.BlockBanded.from_dense(dense, n, p)).solve(b)
    np.testing.assert_array_equal(blocks, blocks_copy)  # NaN == NaN here
    np.testing.assert_array_equal(dense, dense_copy)
    np.testing.assert_array_equal(b, b_copy)


# ---------------------------------------------------------------------------------------
# Arguments that are not arrays: weights, flags, counts, init_shape (issue 15)
# ---------------------------------------------------------------------------------------

SCALAR_ERRORS = []
for _name in ("weight_equation", "weight_init", "weight_smooth"):
    for _label, _value, _exc in (("str", "2", TypeError), ("none", None, TypeError),
                                 ("object", object(), TypeError), ("bool", True, TypeError),
                                 ("numpy_bool", np.bool_(True), TypeError),
                                 ("complex", 1 + 0j, TypeError),
                                 ("vector", np.array([1.0, 2.0]), ValueError)):
        SCALAR_ERRORS.append((f"{_name}_{_label}", _kw(**{_name: _value}), _exc, [_name]))
for _label, _value in (("str", "no"), ("int", 2), ("float", 1.5), ("none", None),
                       ("array", np.array([True, False]))):
    SCALAR_ERRORS.append((f"central_{_label}", _kw(central_smoothness=_value), TypeError,
                          ["central_smoothness"]))
for _label, _value, _exc in (("bool", True, TypeError), ("float", 6.0, TypeError),
                             ("str", "6", TypeError), ("huge", 10**30, ValueError),
                             ("zero", 0, ValueError)):
    SCALAR_ERRORS.append((f"n_steps_{_label}", _chain(
        _with(C, lambda c: c[:1]), _with(R, lambda r: r[:1]), _with(S, lambda h: h[:1]),
        _kw(n_steps=_value)), _exc, ["n_steps"]))

# arrays that NumPy would accept but the caller did not mean
ARRAY_ERRORS = [
    ("coefficients_masked", _with(C, lambda c: np.ma.masked_array(c, mask=c > 1)), TypeError,
     ["coefficients", "mask"]),
    ("rhs_masked", _with(R, lambda r: np.ma.masked_array(r, mask=np.zeros_like(r, bool))),
     TypeError, ["rhs", "mask"]),
    ("rhs_ragged", _with(R, [[1.0, 2.0], [1.0]] * 2), ValueError, ["rhs"]),
    ("steps_ragged", _with(S, [[0.5], [0.5, 0.5]]), ValueError, ["steps"]),
    ("init_object", _with(I, lambda g: g.astype(object)), TypeError, ["init"]),
]


@pytest.mark.parametrize("entry", ENTRY_POINTS)
@pytest.mark.parametrize("case", SCALAR_ERRORS + ARRAY_ERRORS, ids=lambda c: c[0])
def test_bad_scalar_or_array_raises(case, entry):
    test_bad_input_raises(case, entry)


@pytest.mark.parametrize("init_shape, exc", [
    ((1,), ValueError), ((1, 2, 3), ValueError), (None, TypeError), (5, TypeError),
    ({}, TypeError), ("12", TypeError), ((1.0, 2), TypeError), ((True, 2), TypeError),
    ((-1, 2), ValueError), ((T + 1, 2), ValueError)])
def test_init_shape_is_a_pair_of_counts(init_shape, exc):
    c, r, g, h = base_problem()
    with pytest.raises(exc, match="init_shape"):
        bandsolve.smnn_factor(c, h, init_shape=init_shape)


def test_n_steps_true_is_not_one():
    """bool is an int subclass: n_steps=True must not be taken as T = 1."""
    c, r, g, h = base_problem()
    with pytest.raises(TypeError, match="n_steps"):
        bandsolve.smnn_solve(c[:1], r[:1], g[:1], h[:1], n_steps=True)


def test_weights_accept_numpy_and_int_scalars():
    c, r, g, h = base_problem()
    expected = bandsolve.smnn_solve(c, r, g, h, weight_init=2.0, central_smoothness=True)
    u = bandsolve.smnn_solve(c, r, g, h, weight_init=np.float32(2), weight_equation=np.int64(1),
                             weight_smooth=np.array(1.0), central_smoothness=np.bool_(True))
    np.testing.assert_array_equal(u, expected)


def test_big_endian_input_is_converted():
    """Byte-swapped float64 (e.g. from a FITS or network file) gives the native result."""
    c, r, g, h = base_problem()
    expected = bandsolve.smnn_solve(c, r, g, h)
    swapped = [a.astype(a.dtype.newbyteorder(">")) for a in (c, r, g, h)]
    u = bandsolve.smnn_solve(*swapped)
    np.testing.assert_array_equal(u, expected)
    assert u.dtype == np.float64 and u.dtype.isnative


def test_tensor_requiring_grad_is_named():
    torch = pytest.importorskip("torch")
    c, r, g, h = base_problem()
    with pytest.raises(TypeError, match=r"coefficients .*requires grad.*bandsolve_torch"):
        bandsolve.smnn_solve(torch.tensor(c, requires_grad=True), r, g, h)


# ---------------------------------------------------------------------------------------
# The block-banded layer: public constructors validate (issue 15)
# ---------------------------------------------------------------------------------------


def test_block_cholesky_constructor_cannot_index_out_of_bounds():
    """A factor of one system declared as 100000 systems used to segfault in the solve."""
    lower = bandsolve.block_cholesky(np.eye(3)[None, None].repeat(5, 0)[None]).lower
    with pytest.raises(ValueError, match=r"lower must have shape .*\(100000,"):
        bandsolve.BlockCholesky(lower, (100000,))
    with pytest.raises(TypeError, match="batch_shape"):
        bandsolve.BlockCholesky(lower, 1)
    with pytest.raises(ValueError, match="batch_shape"):
        bandsolve.BlockCholesky(lower, (-1,))
    factor = bandsolve.BlockCholesky(lower, (1,))  # a valid factor is accepted
    np.testing.assert_allclose(factor.solve(np.ones((5, 3))), np.ones((1, 5, 3)))
    v = np.ones((4, 5, 3))
    with pytest.raises(ValueError, match="lhs_index"):
        factor.solve_flat_in_place(v, np.array([0, 0, 0, 1], dtype=np.int64))
    with pytest.raises(ValueError, match="lhs_index"):
        factor.solve_flat_in_place(v, np.array([0, -1, 0, 0], dtype=np.int64))
    with pytest.raises(ValueError, match=r"\bv\b"):
        factor.solve_flat_in_place(np.ones((4, 6, 3)), np.zeros(4, dtype=np.int64))


@pytest.mark.parametrize("bad", ["nan", "zero_pivot", "negative_pivot"])
def test_block_cholesky_constructor_checks_the_factor(bad):
    dense, _ = random_spd_block_banded(330, T=4, n=2, p=1)
    lower = bandsolve.block_cholesky(dense_to_lower_blocks(dense, 2, 1)).lower.copy()
    lower[2, {"nan": 1, "zero_pivot": 0, "negative_pivot": 0}[bad], 1, 1 if bad != "nan" else 0] = (
        {"nan": np.nan, "zero_pivot": 0.0, "negative_pivot": -1.0}[bad])
    with pytest.raises(ValueError, match=r"\blower\b"):
        bandsolve.BlockCholesky(lower[None], (1,))


def test_unread_cells_of_a_given_factor_may_hold_nan():
    dense, _ = random_spd_block_banded(331, T=4, n=2, p=1)
    factor = bandsolve.block_cholesky(dense_to_lower_blocks(dense, 2, 1))
    lower = factor.lower.copy()
    lower[0, 1] = np.nan  # block (0, -1): never read
    lower[1, 0, 0, 1] = np.nan  # strict upper triangle of a diagonal block
    b = np.ones((4, 2))
    np.testing.assert_array_equal(bandsolve.BlockCholesky(lower, ()).solve(b), factor.solve(b))


def test_lower_is_read_only():
    """Writing into .lower would corrupt later solves: it is a read-only view."""
    c, r, g, h = base_problem()
    f = bandsolve.smnn_factor(c, h, init_shape=(TI, OI))
    expected = f.solve(r, g)
    for lower in (f.lower, f.cholesky.lower):
        with pytest.raises(ValueError, match="read-only"):
            lower[...] = 0.0
    np.testing.assert_array_equal(f.solve(r, g), expected)


@pytest.mark.parametrize("bad", ["nan", "zero_pivot"])
def test_from_lower_checks_the_factor(bad):
    c, r, g, h = base_problem()
    f = bandsolve.smnn_factor(c, h, init_shape=(TI, OI))
    lower = f.lower.copy()
    if bad == "nan":
        lower[1, 1, 0, 0] = np.nan
    else:
        lower[2, 0, 3, 3] = 0.0
    with pytest.raises(ValueError, match=r"\blower\b"):
        bandsolve.SMNNFactorization.from_lower(lower, c, h, init_shape=(TI, OI))
    rebuilt = bandsolve.SMNNFactorization.from_lower(f.lower, c, h, init_shape=(TI, OI))
    np.testing.assert_array_equal(rebuilt.solve(r, g), f.solve(r, g))


@pytest.mark.parametrize("call, exc, names", [
    (lambda M: bandsolve.BlockBanded.from_dense(M, 0, 1), ValueError, ["block_size"]),
    (lambda M: bandsolve.BlockBanded.from_dense(M, 2, -1), ValueError, ["bandwidth"]),
    (lambda M: bandsolve.BlockBanded.from_dense(M, 2.0, 1), TypeError, ["block_size"]),
    (lambda M: bandsolve.BlockBanded.from_dense(M, 2, True), TypeError, ["bandwidth"]),
    (lambda M: bandsolve.BlockBanded.from_dense(M, 4, 1), ValueError, ["dense"]),
    (lambda M: bandsolve.BlockBanded.from_dense(M[0], 2, 1), ValueError, ["dense"]),
    (lambda M: bandsolve.BlockBanded.from_dense(np.zeros((0, 0)), 2, 1), ValueError, ["dense"]),
    (lambda M: bandsolve.block_cholesky(np.zeros((0, 2, 3, 3))), ValueError, ["blocks", "T"]),
    (lambda M: bandsolve.block_cholesky(np.zeros((3, 2, 0, 0))), ValueError, ["blocks", "n"]),
    (lambda M: bandsolve.block_cholesky(np.zeros((3, 0, 3, 3))), ValueError, ["blocks", "p"]),
    (lambda M: bandsolve.block_cholesky([[[[1.0]]], [[[1.0, 2.0]]]]), ValueError, ["blocks"]),
    (lambda M: bandsolve.BlockBanded.from_dense(M, 2, 1).matvec(np.ones((4, 2))), ValueError,
     ["x"]),
    (lambda M: bandsolve.BlockBanded.from_dense(M, 2, 1).matvec(np.ones(6)), ValueError, ["x"]),
    (lambda M: bandsolve.BlockBanded.from_dense(np.stack([M] * 3), 2, 1).matvec(
        np.ones((2, 3, 2))), ValueError, ["x"]),
    (lambda M: bandsolve.block_cholesky(np.ma.masked_array(np.ones((3, 2, 1, 1)))), TypeError,
     ["blocks"]),
])
def test_block_banded_bad_arguments(call, exc, names):
    M = np.eye(6)
    with pytest.raises(exc) as info:
        call(M)
    msg = str(info.value)
    assert all(re.search(rf"\b{re.escape(n)}\b", msg) for n in names), msg


# ---------------------------------------------------------------------------------------
# No equations (E = 0): initial values and smoothness alone (issue 15)
# ---------------------------------------------------------------------------------------


def test_no_equations_is_a_least_squares_problem():
    """With E = 0 the Taylor rows leave the polynomials of degree < O free; initial values
    of every order (Oi = O) pin them, so the problem is SPD: compare with the dense oracle
    (cond from the oracle, tolerance from eps and cond, helpers.solve_rtol)."""
    from helpers import assert_normwise_close, checked_cond, oracle_solve, solve_rtol

    c, r, g, h = make_problem(340, batch=(2,), T=6, E=0, D=2, O=3, Ti=1, Oi=3)
    assert c.shape == (2, 6, 0, 2, 3) and r.shape == (2, 6, 0)
    expected, cond = oracle_solve(c, r, g, h)
    checked_cond(cond)
    u = bandsolve.smnn_solve(c, r, g, h)
    assert_normwise_close(u, expected, solve_rtol(np.float64, cond), batch_ndim=1)
    u2, vjp = bandsolve.smnn_solve_vjp(c, r, g, h)
    grads = vjp(np.ones_like(u2))
    assert [x.shape for x in grads] == [a.shape for a in (c, r, g, h)]
    assert all(np.all(np.isfinite(x)) for x in grads)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_no_equations_with_too_few_initial_values_is_singular(dtype):
    """E = 0 with initial values of orders < 2 only (O = 3): the quadratic of the Taylor
    rows' null space is free, so the least-squares solution is not unique; it must raise
    FactorizationError (a pivot test relative to the column norms), not return one of the
    infinitely many solutions."""
    c, r, g, h = (a.astype(dtype) for a in make_problem(341, T=6, E=0, D=1, O=3, Ti=1, Oi=2))
    with pytest.raises(bandsolve.FactorizationError, match="initial value"):
        bandsolve.smnn_solve(c, r, g, h)


# ---------------------------------------------------------------------------------------
# The VJP does not change when the caller mutates its arrays (issue 15)
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("how", ["smnn_solve_vjp", "factor_solve_vjp"])
def test_vjp_does_not_see_later_mutation(how):
    c, r, g, h = base_problem()
    ubar = np.random.default_rng(350).standard_normal((T, D, O))

    def run():
        args = [a.copy() for a in (c, r, g, h)]
        if how == "smnn_solve_vjp":
            u, vjp = bandsolve.smnn_solve_vjp(*args)
        else:
            u, vjp = bandsolve.smnn_factor(args[0], args[3], init_shape=(TI, OI)).solve_vjp(
                args[1], args[2])
        return args, u, vjp

    _, _, vjp = run()
    expected = vjp(ubar)
    args, u, vjp = run()
    u += 100.0
    for a in args:
        a += 5.0
    for got, want in zip(vjp(ubar), expected):
        np.testing.assert_array_equal(got, want)


# ---------------------------------------------------------------------------------------
# Memory: a shared left-hand side's VJP never holds the full batch's coefficients_bar
# ---------------------------------------------------------------------------------------


@pytest.mark.slow  # the full-batch comparison runs the lane kernels: ~40 s to compile cold
def test_shared_lhs_vjp_memory_is_bounded_by_the_lhs_batch(monkeypatch):
    """coefficients (1, T, E, D, O) shared by 2048 right-hand sides: a per-system
    coefficients_bar for the whole batch would be 2048 * T*E*D*O*8 bytes (E = 8 times the
    size of u). The VJP's NumPy-traced peak must stay well below it: it holds ubar's copy,
    the second solve y and the small gradients (about 3 u's), not E u's. The chunk size
    (a tunable, 2**21 numbers by default) is lowered so that this small case is chunked."""
    import tracemalloc

    monkeypatch.setattr(bandsolve.cpu.driver, "_GRADIENT_CHUNK_ELEMENTS", 2**12)

    B, Tn, En, Dn, On = 2048, 8, 8, 2, 2
    c, r, g, h = make_problem(360, batch=(B,), coef_batch=(1,), steps_batch=(1,), T=Tn,
                              E=En, D=Dn, O=On, Ti=1, Oi=2)
    u, vjp = bandsolve.smnn_solve_vjp(c, r, g, h)
    ubar = np.ones_like(u)
    vjp(ubar)  # compile outside the measurement
    full_coefficients_bar = B * c[0].size * 8
    tracemalloc.start()
    try:
        grads = vjp(ubar)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 0.5 * full_coefficients_bar, (peak, full_coefficients_bar)
    # the chunked reduction is the same sum as per-system gradients summed afterwards
    # (coefficients and steps given for every system: no reduction inside the core)
    c_full = np.broadcast_to(c, (B,) + c.shape[1:]).copy()
    h_full = np.broadcast_to(h, (B,) + h.shape[1:]).copy()
    full = bandsolve.smnn_solve_vjp(c_full, r, g, h_full)[1](ubar)
    np.testing.assert_allclose(grads[0], full[0].sum(axis=0, keepdims=True), rtol=1e-10)
    np.testing.assert_allclose(grads[3], full[3].sum(axis=0, keepdims=True), rtol=1e-10)
    for got, want in zip(grads[1:3], full[1:3]):
        np.testing.assert_allclose(got, want, rtol=1e-12)


# ---------------------------------------------------------------------------------------
# Dask: errors raised inside a task name whole-array indices (issue 15)
# ---------------------------------------------------------------------------------------


def test_dask_errors_name_array_indices():
    da = pytest.importorskip("dask.array")
    import bandsolve.dask as bdask

    c, r, g, h = make_problem(370, batch=(40,), T=6, E=2, D=2, O=3, Ti=1, Oi=2)
    r[27, 4, 1] = np.nan
    u = bdask.smnn_solve(da.from_array(c, chunks=(10, 6, 2, 2, 3)),
                         da.from_array(r, chunks=(10, 6, 2)), g, h)
    with pytest.raises(ValueError, match=re.escape("rhs contains NaN or Inf (first at index "
                                                   "(27, 4, 1))")):
        u.compute(scheduler="synchronous")
    # a broadcast input keeps its own (length-1) index; the chunked axis gets the offset
    g2 = np.broadcast_to(g[:1], (1,) + g.shape[1:]).copy()
    h2 = np.abs(h[None, :1]) + 0.1
    h2[0, 0, 3] = -1.0
    u = bdask.smnn_solve(da.from_array(np.stack([c] * 2), chunks=(1, 10, 6, 2, 2, 3)),
                         np.nan_to_num(r), g2, h2)
    with pytest.raises(ValueError, match=re.escape("steps must be positive; got -1.0 at "
                                                   "index (0, 0, 3)")):
        u.compute(scheduler="synchronous")


def test_dask_factorization_error_names_array_batch_index():
    da = pytest.importorskip("dask.array")
    import bandsolve.dask as bdask

    coefficients = make_full_rank_equations(371, batch=(40,), T=1, D=2, O=2)
    coefficients[23] = 0.0
    rhs = np.ones((40, 1, 5))
    init, steps = np.zeros((0, 2, 0)), np.zeros((0,))
    u = bdask.smnn_solve(da.from_array(coefficients, chunks=(10, 1, 5, 2, 2)), rhs, init, steps)
    with pytest.raises(bandsolve.FactorizationError) as info:
        u.compute(scheduler="synchronous")
    assert info.value.batch_indices == [(23,)] and info.value.steps == [0]
    assert "batch index (23,) at time step 0" in str(info.value)
    assert "1 of 40 systems" in str(info.value)


# ---------------------------------------------------------------------------------------
# The adapters follow the same rules (issue 15)
# ---------------------------------------------------------------------------------------

ADAPTER_CASES = [
    ("weight_equation_bool", dict(weight_equation=True), TypeError, "weight_equation"),
    ("weight_equation_str", dict(weight_equation="2"), TypeError, "weight_equation"),
    ("weight_smooth_str", dict(weight_smooth="2"), TypeError, "weight_smooth"),
    ("central_str", dict(central_smoothness="no"), TypeError, "central_smoothness"),
    ("n_steps_float", dict(n_steps=6.0), TypeError, "n_steps"),
    ("n_steps_bool", dict(n_steps=True), TypeError, "n_steps"),
]


@pytest.mark.parametrize("case", ADAPTER_CASES, ids=lambda c: c[0])
def test_torch_adapter_bad_scalars(case):
    torch = pytest.importorskip("torch")
    import bandsolve_torch

    _, kw, exc, name = case
    c, r, g, h = (torch.from_numpy(a) for a in base_problem())
    with pytest.raises(exc, match=rf"\b{name}\b"):
        bandsolve_torch.smnn_solve(c, r, g, h, **kw)
    with pytest.raises(exc, match=rf"\b{name}\b"):
        bandsolve_torch.FrozenLHS(c, h, init_shape=(TI, OI), **kw)


def test_torch_adapter_bad_tensors_and_sizes():
    torch = pytest.importorskip("torch")
    import bandsolve_torch

    c, r, g, h = (torch.from_numpy(a) for a in base_problem())
    with pytest.raises(TypeError, match=r"steps has dtype torch.int64"):
        bandsolve_torch.smnn_solve(c, r, g, torch.ones(T - 1, dtype=torch.int64))
    for init_shape in (None, (1,), 5):
        with pytest.raises((TypeError, ValueError), match="init_shape"):
            bandsolve_torch.FrozenLHS(c, h, init_shape=init_shape)
    for kw, name in ((dict(n_orders=0), "n_orders"), (dict(n_dims=0), "n_dims"),
                     (dict(n_steps=2.0), "n_steps"), (dict(init_shape=(9, 1)), "init_shape"),
                     (dict(step_size="0.1"), "step_size"), (dict(learn_steps="yes"), "learn_steps"),
                     (dict(weight_init=None), "weight_init")):
        args = dict(n_steps=5, n_dims=2, n_orders=3)
        args.update(kw)
        with pytest.raises((TypeError, ValueError), match=rf"\b{name}\b"):
            bandsolve_torch.MechanisticLayer(**args)


@pytest.mark.parametrize("case", ADAPTER_CASES, ids=lambda c: c[0])
def test_jax_adapter_bad_scalars(case):
    jax = pytest.importorskip("jax")
    import bandsolve_jax

    _, kw, exc, name = case
    with jax.enable_x64(True):
        with pytest.raises(exc, match=rf"\b{name}\b"):
            bandsolve_jax.smnn_solve(*base_problem(), **kw)
        with pytest.raises(TypeError, match="MaskedArray"):
            c, r, g, h = base_problem()
            bandsolve_jax.smnn_solve(np.ma.masked_array(c), r, g, h)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_finiteness_check_of_large_arrays(dtype):
    """Arrays of at least 4,096 entries are tested in one compiled pass first: NaN and
    Inf are still named at their first position, and the largest finite values pass."""
    from bandsolve import _validation

    big = np.ones((70, 64, 3), dtype=dtype)
    _validation.check_finite("coefficients", big)
    _validation.check_finite("coefficients", big * np.finfo(dtype).max)  # finite
    for bad in (np.nan, np.inf, -np.inf):
        a = big.copy()
        a[12, 5, 1] = bad
        a[40, 0, 0] = bad
        with pytest.raises(ValueError, match=r"coefficients.*\(12, 5, 1\)"):
            _validation.check_finite("coefficients", a)

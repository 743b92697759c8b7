"""Property-based fuzzing of the public entry points (hypothesis, bounded for CI).

1. Random valid problems (shapes, broadcasts, step length 1, weights, central rows, float32
   and float64): the result is finite and equals the independent dense least-squares solve
   (``helpers.oracle_solve``) to a tolerance from eps and cond; the inputs are unchanged; a
   batched call equals a loop over the batch.
2. Random invalid arguments at every public entry point (host functions, the torch and JAX
   adapters, Dask): a ``ValueError`` or ``TypeError`` whose message names the argument,
   never another exception type, a crash or a silent result.

Every test is derandomized (the same examples on every run) with small ``max_examples``
and no per-example deadline (the first examples compile kernels), so the file adds well
under a minute to the test command once the kernels are cached.
"""

import re

import numpy as np
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

import bandsolve

from helpers import assert_normwise_close, oracle_solve, solve_rtol

FUZZ = settings(max_examples=25, deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])
FUZZ_BAD = settings(FUZZ, max_examples=30)

NAMES = ("coefficients", "rhs", "init", "steps")
CORE_NDIM = {"coefficients": 4, "rhs": 2, "init": 3, "steps": 1}

# cond(M) above which a random problem is discarded: the tolerance 50 eps cond(M) of
# helpers.solve_rtol stays meaningful (float64: <= 1e-7; float32: <= 6e-2)
COND_LIMIT = {np.dtype(np.float64): 1e8, np.dtype(np.float32): 1e4}


# ----------------------------------------------------------------------------- valid problems

@st.composite
def problems(draw):
    """A random well-formed problem ``(arrays, kw)``: each input's batch axes are a random
    broadcastable version of one full batch (axes dropped from the left or set to 1), and
    coefficients, rhs or steps may have step length 1."""
    T = draw(st.integers(1, 6))
    E = draw(st.integers(0, 3))
    D = draw(st.integers(1, 2))
    O = draw(st.integers(1, 3))
    Ti = draw(st.integers(0, min(T, 2)))
    Oi = draw(st.integers(0, O))
    if E == 0:  # only the initial values can pin the polynomials of degree < O
        Ti, Oi = max(Ti, 1), O
    central = O >= 3 and T >= 3 and draw(st.booleans())
    dtype = np.dtype(draw(st.sampled_from([np.float64, np.float64, np.float32])))
    batch = tuple(draw(st.lists(st.integers(1, 3), max_size=2)))

    def batch_of():
        keep = draw(st.integers(0, len(batch)))
        return tuple(s if draw(st.booleans()) else 1 for s in batch[len(batch) - keep:])

    T_of = {name: T if T == 1 or not draw(st.booleans()) else 1
            for name in ("coefficients", "rhs", "steps")}
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    steps_T = max(T - 1, 0) if T_of["steps"] != 1 else min(1, max(T - 1, 0))
    arrays = (
        rng.standard_normal(batch_of() + (T_of["coefficients"], E, D, O)),
        rng.standard_normal(batch_of() + (T_of["rhs"], E)),
        rng.standard_normal(batch_of() + (Ti, D, Oi)),
        rng.uniform(0.3, 0.9, size=batch_of() + (steps_T,)),
    )
    kw = dict(weight_equation=draw(st.sampled_from([1.0, 0.5, 2.0])),
              weight_init=draw(st.sampled_from([1.0, 3.0])),
              weight_smooth=draw(st.sampled_from([1.0, 0.7])),
              central_smoothness=central)
    carried = (T_of["coefficients"] != 1 or T_of["rhs"] != 1 or steps_T != 1)
    if not carried or draw(st.booleans()):
        kw["n_steps"] = T
    return tuple(a.astype(dtype) for a in arrays), kw


@FUZZ
@given(problems())
def test_valid_problem_matches_dense_oracle(problem):
    arrays, kw = problem
    dtype = arrays[0].dtype
    expected, cond = oracle_solve(*arrays, **kw)
    assume(np.all(cond < COND_LIMIT[dtype]))
    copies = [a.copy() for a in arrays]
    u = bandsolve.smnn_solve(*arrays, **kw)
    assert u.dtype == dtype and u.shape == expected.shape
    assert np.all(np.isfinite(u))
    for a, copy in zip(arrays, copies):  # inputs never modified
        np.testing.assert_array_equal(a, copy)
    batch_ndim = u.ndim - 3
    rtol = solve_rtol(dtype, cond)
    assert_normwise_close(u, expected, rtol, batch_ndim)
    # batched == looped: each system solved alone (its inputs sliced from the broadcast)
    batch = u.shape[:batch_ndim]
    for index in np.ndindex(batch):
        alone = [np.broadcast_to(a, batch + a.shape[a.ndim - CORE_NDIM[name]:])[index]
                 for name, a in zip(NAMES, arrays)]
        one = bandsolve.smnn_solve(*alone, **kw)
        assert_normwise_close(one, u[index], rtol, 0, what=f"u{index} alone")


# ----------------------------------------------------------------------------- invalid arguments

def _base(dtype=np.float64, batch=(2,)):
    rng = np.random.default_rng(7)
    T, E, D, O, Ti, Oi = 5, 2, 2, 3, 1, 2
    return [rng.standard_normal(batch + (T, E, D, O)).astype(dtype),
            rng.standard_normal(batch + (T, E)).astype(dtype),
            rng.standard_normal(batch + (Ti, D, Oi)).astype(dtype),
            rng.uniform(0.4, 0.9, batch + (T - 1,)).astype(dtype)]


def _drop_core_axis(name, a):
    """The array with one core axis fewer (wrong rank)."""
    return a[(0,) * (a.ndim - CORE_NDIM[name] + 1)]


def _set_at(a, flat_index, value):
    """A copy of ``a`` with one entry (position drawn by hypothesis) set to ``value``."""
    a = a.copy()
    a.flat[flat_index % a.size] = value
    return a


# label: (f(name, array, drawn int) -> bad value, found only when the values are read?)
# Value classes are found at compute time under Dask and never while JAX traces.
ARRAY_CLASSES = {
    "rank": (lambda name, a, k: _drop_core_axis(name, a), False),
    "int_dtype": (lambda name, a, k: np.round(a).astype(np.int64), False),
    "complex": (lambda name, a, k: a.astype(np.complex128), False),
    "bool_dtype": (lambda name, a, k: a > 0, False),
    "string": (lambda name, a, k: "abc", False),
    "none": (lambda name, a, k: None, False),
    "masked": (lambda name, a, k: np.ma.masked_array(a, mask=np.zeros(a.shape, bool)), False),
    "ragged": (lambda name, a, k: [a.tolist(), a.tolist()[:1]] if a.ndim == 1
               else [a.tolist(), a[:1].tolist()], False),
    "nan": (lambda name, a, k: _set_at(a, k, np.nan), True),
    "inf": (lambda name, a, k: _set_at(a, k, -np.inf), True),
}
STEP_CLASSES = {
    "zero_step": (lambda name, a, k: _set_at(a, k, 0.0), True),
    "negative_step": (lambda name, a, k: _set_at(a, k, -0.5), True),
}
WEIGHT_BAD = ["2", None, True, np.bool_(False), 1 + 1j, object(), -1.0, 0.0, np.nan, np.inf,
              np.array([1.0, 2.0])]
FLAG_BAD = ["no", "False", 2, 1.5, 0, None, np.array([True, False])]
N_STEPS_BAD = [True, 6.0, "5", -1, 0, 10**30, 7]  # 7: contradicts the inputs (T = 5)
SCALARS = {
    "weight_equation": WEIGHT_BAD, "weight_init": WEIGHT_BAD, "weight_smooth": WEIGHT_BAD,
    "central_smoothness": FLAG_BAD, "n_steps": N_STEPS_BAD,
}


@st.composite
def bad_arguments(draw, array_classes=None, values=True):
    """``(argument name, label, arrays, kw)`` with exactly one bad argument."""
    arrays, kw = _base(), {}
    kind = draw(st.sampled_from(["array", "scalar"]))
    if kind == "array":
        name = draw(st.sampled_from(NAMES))
        classes = dict(array_classes or ARRAY_CLASSES)
        if name == "steps":
            classes.update(STEP_CLASSES)
        if not values:
            classes = {k: c for k, c in classes.items() if not c[1]}
        label = draw(st.sampled_from(sorted(classes)))
        i = NAMES.index(name)
        arrays[i] = classes[label][0](name, arrays[i], draw(st.integers(0, 10**6)))
        return name, label, arrays, kw
    name = draw(st.sampled_from(sorted(SCALARS)))
    value = draw(st.sampled_from(SCALARS[name]))
    kw[name] = value
    return name, repr(value), arrays, kw


def assert_names(error, name, label):
    """A ValueError/TypeError (never a FactorizationError) whose message names ``name``."""
    assert isinstance(error, (ValueError, TypeError)), (label, type(error), error)
    assert not isinstance(error, bandsolve.FactorizationError), (label, error)
    assert re.search(rf"\b{re.escape(name)}\b", str(error)), (name, label, str(error))


def _raises(call):
    try:
        call()
    except Exception as error:  # noqa: BLE001 - the type is what is being tested
        return error
    raise AssertionError("no exception for a bad argument")


def _host_call(entry, arrays, kw):
    c, r, g, h = arrays
    if entry == "smnn_factor":
        init_shape = (1, 2)
        return bandsolve.smnn_factor(c, h, init_shape=init_shape, **kw).solve(r, g)
    if entry == "smnn_solve_vjp":
        u, vjp = bandsolve.smnn_solve_vjp(c, r, g, h, **kw)
        return vjp(np.ones_like(u))
    return getattr(bandsolve, entry)(c, r, g, h, **kw)


@FUZZ_BAD
@given(st.sampled_from(["smnn_solve", "smnn_solve_vjp", "smnn_factor",
                        "smnn_normal_equations"]), bad_arguments())
def test_host_entry_points_name_the_bad_argument(entry, bad):
    name, label, arrays, kw = bad
    assert_names(_raises(lambda: _host_call(entry, arrays, kw)), name, label)


# torch: every array must be a tensor; the classes that make sense for tensors
TORCH_CLASSES = {k: ARRAY_CLASSES[k] for k in ("rank", "int_dtype", "complex", "bool_dtype",
                                              "string", "none", "nan", "inf")}


@FUZZ_BAD
@given(st.sampled_from(["smnn_solve", "FrozenLHS"]), bad_arguments(TORCH_CLASSES))
def test_torch_entry_points_name_the_bad_argument(entry, bad):
    torch = pytest.importorskip("torch")
    import bandsolve_torch

    name, label, arrays, kw = bad
    tensors = [torch.from_numpy(a) if isinstance(a, np.ndarray) else a for a in arrays]
    c, r, g, h = tensors
    if entry == "FrozenLHS":
        def call():
            return bandsolve_torch.FrozenLHS(c, h, init_shape=(1, 2), **kw).solve(r, g)
    else:
        def call():
            return bandsolve_torch.smnn_solve(c, r, g, h, **kw)
    assert_names(_raises(call), name, label)


@FUZZ_BAD
@given(bad_arguments(values=False))
def test_jax_entry_point_names_the_bad_argument(bad):
    """Structural misuse only: value errors surface at run time as JaxRuntimeError
    (documented in bandsolve_jax.smnn_solve)."""
    jax = pytest.importorskip("jax")
    import bandsolve_jax

    name, label, arrays, kw = bad
    with jax.enable_x64(True):
        assert_names(_raises(lambda: bandsolve_jax.smnn_solve(*arrays, **kw)), name, label)


@settings(FUZZ_BAD, max_examples=15)
@given(bad_arguments())
def test_dask_entry_point_names_the_bad_argument(bad):
    """Structural errors when the graph is built, value errors when it is computed; both
    name the argument (value errors with whole-array indices, tested in test_errors)."""
    da = pytest.importorskip("dask.array")
    import bandsolve.dask as bdask

    name, label, arrays, kw = bad
    chunked = [da.from_array(a, chunks=(1,) + a.shape[1:])
               if isinstance(a, np.ndarray) and a.ndim == CORE_NDIM[n] + 1 else a
               for n, a in zip(NAMES, arrays)]
    assert_names(_raises(lambda: bdask.smnn_solve(*chunked, **kw).compute(
        scheduler="synchronous")), name, label)


@FUZZ_BAD
@given(st.sampled_from(["block_cholesky", "from_dense", "BlockCholesky", "matvec"]),
       st.integers(0, 10**6))
def test_block_banded_entry_points_name_the_bad_argument(entry, k):
    """The general lower layer: one bad argument per call, drawn from a catalogue."""
    rng = np.random.default_rng(k)
    T, n, p = 3, 2, 1
    blocks = np.zeros((T, p + 1, n, n))
    blocks[:, 0] = 2 * np.eye(n)  # block diagonal, SPD
    good = bandsolve.block_cholesky(blocks)
    cases = {
        "block_cholesky": [("blocks", np.zeros((0, p + 1, n, n))), ("blocks", np.zeros((T, 0, n, n))),
                           ("blocks", np.zeros((T, p + 1, 0, 0))), ("blocks", np.zeros((T, 2, 2, 3))),
                           ("blocks", "abc"), ("blocks", np.ones((T, 2, 2, 2), dtype=int)),
                           ("blocks", [[[[1.0]]], [[[1.0, 2.0]]]])],
        "from_dense": [("block_size", 0), ("block_size", 2.5), ("block_size", None),
                       ("bandwidth", -1), ("bandwidth", True), ("dense", np.ones(6)),
                       ("dense", np.ones((6, 5)))],
        "BlockCholesky": [("lower", good.lower[None] * np.nan), ("batch_shape", (10**5,)),
                          ("batch_shape", "x"), ("lower", -good.lower[None]),
                          ("lower", np.ones((1, T, p + 1, n, n + 1)))],
        "matvec": [("x", np.ones((T + 1, n))), ("x", np.ones(n)), ("x", "abc"),
                   ("x", np.ones((T, n), dtype=complex))],
    }[entry]
    name, value = cases[rng.integers(len(cases))]
    dense = np.eye(T * n)

    def call():
        if entry == "block_cholesky":
            return bandsolve.block_cholesky(value)
        if entry == "from_dense":
            args = dict(dense=dense, block_size=n, bandwidth=p)
            args[name] = value
            return bandsolve.BlockBanded.from_dense(args["dense"], args["block_size"],
                                                    args["bandwidth"])
        if entry == "BlockCholesky":
            args = dict(lower=good.lower[None], batch_shape=(1,))
            args[name] = value
            return bandsolve.BlockCholesky(args["lower"], args["batch_shape"])
        return bandsolve.BlockBanded.from_dense(dense, n, p).matvec(value)

    assert_names(_raises(call), name, f"{entry}({name}={value!r})")

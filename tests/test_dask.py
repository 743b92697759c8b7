"""``bandsolve.dask``: S-MNN solves and VJPs of Dask arrays on a 2-process LocalCluster.

References: the in-process core (``bandsolve.smnn_solve`` / ``smnn_solve_vjp`` on the
whole NumPy batch), itself checked against dense lstsq and finite differences in
test_solve.py / test_grad.py, and for one chunking the float64 lstsq oracle directly.
Each chunk runs the same kernels on the same systems as the in-process solve, so the
solutions agree to the last bit in practice; we allow rounding (a few ulps of the largest
entry) so that a different but equally valid summation order would not fail the test.
Gradients of inputs broadcast over several chunks are sums of per-chunk sums, a different
summation order from the core's single sum: rounding again. "The same kernels" holds
because the core picks its serial or threaded compilation by the batch's size
(``bandsolve._jit.PARALLEL_MIN_BLOCK_ROWS``), and the two round differently (up to
~eps * cond(M)): the small problems here stay below that size whole and chunked, and the
large ones are compared with the in-process solve of the same chunks.

The cluster (2 worker processes, 1 thread each) is started once for the module; the
workers compile (or load from Numba's on-disk cache) the kernels in a warm-up.
"""

from __future__ import annotations

import os
import signal
import time

import numpy as np
import pytest

da = pytest.importorskip("dask.array")
distributed = pytest.importorskip("distributed")

import dask  # noqa: E402

import bandsolve  # noqa: E402
import bandsolve.dask as bdask  # noqa: E402
from bandsolve._jit import PARALLEL_MIN_BLOCK_ROWS  # noqa: E402
from bandsolve.problems import coupled_oscillators  # noqa: E402

from helpers import assert_normwise_close, make_problem, oracle_solve, solve_rtol  # noqa: E402

CORE_NDIM = (4, 2, 3, 1)  # coefficients, rhs, init, steps
WEIGHTS = dict(weight_equation=1.7, weight_init=0.6, weight_smooth=1.3)

# Same kernels on the same systems: differences are rounding at most (see module doc).
# 64 ulps of the largest entry covers re-associated sums over a handful of chunks.
ULPS = 64


def assert_rounding_close(actual, expected):
    expected = np.asarray(expected)
    assert actual.shape == expected.shape and actual.dtype == expected.dtype
    eps = np.finfo(expected.dtype).eps
    scale = max(float(np.max(np.abs(expected), initial=0.0)), 1.0)
    np.testing.assert_allclose(actual, expected, rtol=0, atol=ULPS * eps * scale)


@pytest.fixture(scope="module")
def client():
    # One thread per worker and NUMBA_NUM_THREADS=1: each worker solves one chunk at a
    # time on one core, so two workers fill the two cores without Numba's thread pools
    # (one per process, each the size of the machine) oversubscribing them.
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                  dashboard_address=None, env={"NUMBA_NUM_THREADS": "1"},
                                  silence_logs=50) as cluster, \
            distributed.Client(cluster) as client:
        warm_up(client)
        yield client


def warm_up(client):
    """Compile the serial kernels used below in this process (which writes Numba's on-disk
    cache), then in every worker (which loads it instead of compiling again): float64
    solve and VJP with one left-hand side per system and with a shared one, float32 solve."""
    options = dict(n_steps=4, **WEIGHTS, central_smoothness=False)
    for case in ({}, dict(coef_batch=(1,), steps_batch=())):
        arrays = make_problem(0, batch=(2,), T=4, **case)
        args = (*arrays, np.ones((2, 4, 2, 3)))
        n_lead = tuple(2 - a.ndim + k for a, k in zip(arrays, CORE_NDIM))
        bdask._vjp_chunk(*args, options=options, n_lead=n_lead)
        client.run(bdask._vjp_chunk, *args, options=options, n_lead=n_lead)
    arrays = [a.astype(np.float32) for a in make_problem(0, batch=(2,), T=4)]
    bdask._solve_chunk(*arrays, options=options)
    client.run(bdask._solve_chunk, *arrays, options=options)


def chunked(arrays, batch_chunks):
    """Dask arrays of ``arrays`` chunked along their batch axes by ``batch_chunks`` (one
    entry per axis of the full batch, right-aligned; length-1 axes stay one chunk)."""
    out = []
    for array, k in zip(arrays, CORE_NDIM):
        n_batch = array.ndim - k
        batch = batch_chunks[len(batch_chunks) - n_batch:] if n_batch else ()
        chunks = tuple(c if size != 1 else 1
                       for c, size in zip(batch, array.shape[:n_batch])) + (-1,) * k
        out.append(da.from_array(array, chunks=chunks))
    return out


# batch (7, 3): one chunk, uneven last chunks, one system per chunk, both axes split
CHUNKINGS = {
    "single": ((7,), (3,)),
    "uneven": ((3, 3, 1), (2, 1)),
    "per_system": ((1,) * 7, (1, 1, 1)),
    "first_axis": ((4, 3), (3,)),
}


def problem(dtype=np.float64, T=12):
    """Well-posed float64/float32 problem with batch (7, 3)."""
    return coupled_oscillators((7, 3), T, dtype=dtype, seed=3)


# ----------------------------------------------------------------------------- solve

@pytest.mark.parametrize("chunking", CHUNKINGS)
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_solve_equals_in_process(client, chunking, dtype):
    arrays = problem(dtype)
    expected = bandsolve.smnn_solve(*arrays, **WEIGHTS)
    u = bdask.smnn_solve(*chunked(arrays, CHUNKINGS[chunking]), **WEIGHTS)
    assert isinstance(u, da.Array)
    assert u.shape == expected.shape and u.dtype == dtype
    assert u.chunks == CHUNKINGS[chunking] + ((12,), (3,), (3,))
    assert type(u._meta) is np.ndarray
    actual = client.compute(u).result()
    assert actual.dtype == dtype
    assert_rounding_close(actual, expected)


def test_solve_matches_lstsq_oracle(client):
    arrays = make_problem(5, batch=(5,), T=6)
    expected, cond = oracle_solve(*arrays, **WEIGHTS)
    u = bdask.smnn_solve(*chunked(arrays, ((2, 2, 1),)), **WEIGHTS)
    assert_normwise_close(client.compute(u).result(), expected,
                          solve_rtol(np.float64, cond), batch_ndim=1)


# make_problem keywords; the left-hand side (coefficients, steps) is shared in the first
BROADCASTS = {
    # one left-hand side for all sequences, a constant step size
    "shared_lhs": dict(batch=(7, 3), coef_batch=(), steps_batch=(1, 1), steps_T=1),
    # coefficients shared along the first batch axis, rhs constant in time
    "lhs_per_column": dict(batch=(7, 3), coef_batch=(1, 3), rhs_T=1, init_batch=(3,)),
    # central smoothness, no initial values
    "central_no_init": dict(batch=(7, 3), O=3, Ti=0, Oi=0, rhs_batch=(7, 1)),
}


@pytest.mark.parametrize("case", BROADCASTS)
def test_broadcast_solve_equals_in_process(client, case):
    central = case == "central_no_init"
    arrays = make_problem(11, T=8, **BROADCASTS[case])
    expected = bandsolve.smnn_solve(*arrays, central_smoothness=central, **WEIGHTS)
    u = bdask.smnn_solve(*chunked(arrays, CHUNKINGS["uneven"]), central_smoothness=central,
                         **WEIGHTS)
    assert u.chunks[:2] == CHUNKINGS["uneven"]
    assert_rounding_close(client.compute(u).result(), expected)


def _threaded_problem():
    """Three chunks large enough for the core's threaded kernels (the in-process reference
    runs the same kernels on the same chunks)."""
    T = 100
    chunk = PARALLEL_MIN_BLOCK_ROWS // T + 1
    arrays = coupled_oscillators(3 * chunk, T, seed=8)
    parts = [[a[i:i + chunk] for a in arrays] for i in range(0, 3 * chunk, chunk)]
    dask_arrays = [da.from_array(a, chunks=(chunk,) + (-1,) * (a.ndim - 1)) for a in arrays]
    return T, chunk, parts, dask_arrays


@pytest.mark.slow  # its chunks go through the SIMD lane kernels: ~40 s to compile them cold
def test_threaded_scheduler_equals_in_process():
    """The same graph on Dask's default threaded scheduler (no cluster), with chunks large
    enough for the core's threaded kernels, which several Dask threads then call
    concurrently. Reference: the in-process core on the same chunks (same compilation)."""
    _, _, parts, dask_arrays = _threaded_problem()
    expected = np.concatenate([bandsolve.smnn_solve(*part) for part in parts])
    u = bdask.smnn_solve(*dask_arrays)
    assert_rounding_close(u.compute(scheduler="threads", num_workers=3), expected)


@pytest.mark.slow  # compiling the threaded gradient kernels costs ~30 s on a cold cache
def test_threaded_scheduler_vjp_equals_in_process():
    """The forward and the VJP of the graph above on the threaded scheduler."""
    T, chunk, parts, dask_arrays = _threaded_problem()
    ubar = np.random.default_rng(9).standard_normal((3 * chunk, T, 3, 3))
    expected_u, expected_grads = [], []
    for i, part in enumerate(parts):
        u_part, vjp_part = bandsolve.smnn_solve_vjp(*part)
        expected_u.append(u_part)
        expected_grads.append(vjp_part(ubar[i * chunk:(i + 1) * chunk]))
    u, vjp = bdask.smnn_solve_vjp(*dask_arrays)
    computed = dask.compute(u, *vjp(ubar), scheduler="threads", num_workers=3)
    assert_rounding_close(computed[0], np.concatenate(expected_u))
    for k, actual in enumerate(computed[1:]):
        assert_rounding_close(actual, np.concatenate([g[k] for g in expected_grads]))


def test_differently_chunked_inputs_are_unified(client):
    """Inputs chunking the same batch axis differently: Dask's common refinement."""
    arrays = problem()
    chunks = [(3, 4), (4, 3), (7,), (2, 5)]
    dask_arrays = [da.from_array(a, chunks=(c,) + (-1,) * (a.ndim - 1))
                   for a, c in zip(arrays, chunks)]
    u = bdask.smnn_solve(*dask_arrays, **WEIGHTS)
    assert u.chunks[0] == (2, 1, 1, 3)
    assert_rounding_close(client.compute(u).result(), bandsolve.smnn_solve(*arrays, **WEIGHTS))


def test_shared_lhs_is_one_graph_key(client):
    """A NumPy left-hand side shared by all sequences is a single key that every chunk's
    task depends on (so each worker receives it once), not a copy per chunk."""
    coefficients, rhs, init, steps = make_problem(2, batch=(7, 3), T=8, coef_batch=(),
                                                  steps_batch=())
    dask_rhs = da.from_array(rhs, chunks=(1, 1, -1, -1))
    dask_init = da.from_array(init, chunks=(1, 1, -1, -1, -1))
    u = bdask.smnn_solve(coefficients, dask_rhs, dask_init, steps)
    graph = u.__dask_graph__()
    deps = graph.get_all_dependencies()
    solve_keys = [key for key in graph if isinstance(key, tuple) and key[0] == u.name]
    assert len(solve_keys) == 21
    holding = [key for key, value in graph.items()
               if isinstance(key, tuple) and key[0] != u.name and _holds(value, coefficients)]
    assert len(holding) == 1, holding
    assert all(holding[0] in deps[key] for key in solve_keys)
    assert_rounding_close(client.compute(u).result(),
                          bandsolve.smnn_solve(coefficients, rhs, init, steps))


def _holds(value, array):
    """Whether a graph value is (or wraps) ``array`` itself."""
    data = getattr(value, "value", value)  # a dask DataNode wraps its value
    return (isinstance(data, np.ndarray) and data.shape == array.shape
            and np.array_equal(data, array))


# ----------------------------------------------------------------------------- gradients

@pytest.mark.parametrize("chunking", ["single", "uneven", "per_system"])
def test_vjp_equals_in_process(client, chunking):
    arrays = problem(T=10)
    u_expected, vjp_expected = bandsolve.smnn_solve_vjp(*arrays, **WEIGHTS)
    ubar = np.random.default_rng(4).standard_normal(u_expected.shape)
    expected = vjp_expected(ubar)

    dask_arrays = chunked(arrays, CHUNKINGS[chunking])
    u, vjp = bdask.smnn_solve_vjp(*dask_arrays, **WEIGHTS)
    grads = vjp(da.from_array(ubar, chunks=CHUNKINGS[chunking] + (-1, -1, -1)))
    for grad, array in zip(grads, dask_arrays):
        assert isinstance(grad, da.Array) and grad.chunks == array.chunks
    computed = client.compute((u,) + grads, sync=True)
    assert_rounding_close(computed[0], u_expected)
    for actual, want in zip(computed[1:], expected):
        assert_rounding_close(actual, want)


@pytest.mark.parametrize("case", BROADCASTS)
def test_broadcast_vjp_equals_in_process(client, case):
    """Gradients of inputs broadcast over several chunks are summed across chunks (a lazy
    reduction on the workers) to the input's shape."""
    central = case == "central_no_init"
    arrays = make_problem(12, T=8, **BROADCASTS[case])
    u_expected, vjp_expected = bandsolve.smnn_solve_vjp(*arrays, central_smoothness=central,
                                                       **WEIGHTS)
    ubar = np.random.default_rng(5).standard_normal(u_expected.shape)
    expected = vjp_expected(ubar)
    _, vjp = bdask.smnn_solve_vjp(*chunked(arrays, CHUNKINGS["uneven"]),
                                  central_smoothness=central, **WEIGHTS)
    grads = vjp(ubar)
    for grad, array in zip(grads, arrays):
        assert grad.shape == array.shape
    for actual, want in zip(client.compute(grads, sync=True), expected):
        assert_rounding_close(actual, want)


def test_vjp_of_numpy_inputs_has_their_shapes(client):
    arrays = make_problem(13, batch=(4,), T=6, coef_batch=())
    u_expected, vjp_expected = bandsolve.smnn_solve_vjp(*arrays)
    ubar = np.ones_like(u_expected)
    _, vjp = bdask.smnn_solve_vjp(*arrays)
    for actual, want in zip(client.compute(vjp(ubar), sync=True), vjp_expected(ubar)):
        assert_rounding_close(actual, want)


# ----------------------------------------------------------------------------- failures

def generated_problem(n_chunks, chunk, T):
    """Dask inputs generated on the workers (chunk ``i`` from seed ``i``) and the same
    chunks built in this process (a list of ``(coefficients, rhs, init, steps)``)."""
    parts = [dask.delayed(coupled_oscillators, nout=4)(chunk, T, seed=i)
             for i in range(n_chunks)]
    local = [coupled_oscillators(chunk, T, seed=i) for i in range(n_chunks)]
    dask_arrays = [da.concatenate([da.from_delayed(p[k], shape=a.shape, dtype=a.dtype)
                                   for p in parts])
                   for k, a in enumerate(local[0])]
    return dask_arrays, local


@pytest.mark.slow  # about 12 s even with the kernels cached: 40 chunks of T = 1500 on two workers
def test_worker_killed_mid_solve(client):
    """SIGKILL one worker process while the solve runs: the scheduler recomputes its tasks
    on the remaining worker (and the nanny's replacement) and the result is unchanged."""
    dask_arrays, local = generated_problem(n_chunks=40, chunk=12, T=1500)
    expected = np.concatenate([bandsolve.smnn_solve(*part) for part in local])
    u = bdask.smnn_solve(*dask_arrays)
    pids = client.run(os.getpid)

    future = client.compute(u)
    deadline = time.monotonic() + 60
    while True:  # wait until some chunks are solved and held by a worker
        held = {addr: [k for k in keys if u.name in str(k)]
                for addr, keys in client.has_what().items()}
        victim = max(held, key=lambda addr: len(held[addr]))
        if len(held[victim]) >= 2 or future.done() or time.monotonic() > deadline:
            break
        time.sleep(0.005)
    assert not future.done(), "the solve finished before a worker could be killed"
    os.kill(pids[victim], signal.SIGKILL)

    actual = future.result(timeout=120)
    assert pids[victim] not in client.run(os.getpid).values()  # the kill took effect
    # bitwise: every chunk runs the same kernels on the same systems
    np.testing.assert_array_equal(actual, expected)


# ----------------------------------------------------------------------------- bad input

def test_chunked_core_axis_is_an_error_before_scheduling():
    arrays = problem()
    coefficients = da.from_array(arrays[0], chunks=(7, 3, 6, -1, -1, -1))  # T split
    others = [da.from_array(a) for a in arrays[1:]]
    with dask.config.set(scheduler=_no_scheduler):
        with pytest.raises(ValueError, match=r"coefficients axis 2 \(T\) has chunks \(6, 6\)"
                           r".*rechunk=True"):
            bdask.smnn_solve(coefficients, *others)
        steps = da.from_array(arrays[3], chunks=(7, 3, 5))
        with pytest.raises(ValueError,
                           match=r"steps axis 2 \(T-1\).*steps.rechunk\(\{2: -1\}\)"):
            bdask.smnn_solve_vjp(*arrays[:3], steps)
        _, vjp = bdask.smnn_solve_vjp(*arrays)
        with pytest.raises(ValueError, match=r"ubar axis 4 \(O\)"):
            vjp(da.ones((7, 3, 12, 3, 3), chunks=(7, 3, 12, 3, 1)))


def test_rechunk_true_merges_core_axes(client):
    arrays = problem()
    dask_arrays = [da.from_array(a, chunks=(4, 1) + (2,) * (a.ndim - 2)) for a in arrays]
    u = bdask.smnn_solve(*dask_arrays, rechunk=True, **WEIGHTS)
    assert u.chunks == ((4, 3), (1, 1, 1), (12,), (3,), (3,))
    assert_rounding_close(client.compute(u).result(), bandsolve.smnn_solve(*arrays, **WEIGHTS))


def _no_scheduler(*args, **kwargs):
    raise AssertionError("nothing may be scheduled while the graph is being built")


@pytest.mark.parametrize("mutate, error, match", [
    (lambda c, r, g, h: (c, r[..., :2], g, h), ValueError, "rhs must have shape"),
    (lambda c, r, g, h: (c, r, g, h[:4]), ValueError, "do not broadcast"),
    (lambda c, r, g, h: (c.astype(np.int64), r, g, h), TypeError,
     "coefficients has dtype int64"),
    (lambda c, r, g, h: (c, r, g[..., :2, :], h), ValueError, "init must have shape"),
])
def test_bad_input_is_an_error_before_scheduling(mutate, error, match):
    arrays = [da.from_array(a, chunks=(3,) + (-1,) * (a.ndim - 1)) for a in problem()]
    with dask.config.set(scheduler=_no_scheduler):
        with pytest.raises(error, match=match):
            bdask.smnn_solve(*mutate(*arrays))


def test_bad_weight_is_an_error_before_scheduling():
    arrays = [da.from_array(a) for a in problem()]
    with dask.config.set(scheduler=_no_scheduler):
        with pytest.raises(ValueError, match="weight_smooth must be positive"):
            bdask.smnn_solve(*arrays, weight_smooth=-1.0)


def test_nan_input_raises_at_compute(client):
    """Values are checked by the core inside each task, when the result is computed."""
    arrays = list(problem())
    arrays[1] = arrays[1].copy()
    arrays[1][5, 2, 3, 0] = np.nan
    u = bdask.smnn_solve(*chunked(arrays, CHUNKINGS["uneven"]))
    with pytest.raises(ValueError, match="rhs contains NaN or Inf"):
        client.compute(u).result()

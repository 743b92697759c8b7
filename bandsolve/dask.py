"""S-MNN solves of batches sharded over a Dask cluster (the ``[dask]`` extra).

:func:`smnn_solve` and :func:`smnn_solve_vjp` take the arguments of
:func:`bandsolve.smnn_solve` as Dask arrays (NumPy arrays are accepted too and become
single-chunk Dask arrays) chunked along the batch axes only, and return lazy Dask arrays.
Each chunk of whole sequences is one task that calls the core (:func:`bandsolve.smnn_solve`:
the Numba CPU kernels for NumPy chunks, the CUDA kernels for CuPy chunks), so the same
code runs on the threaded scheduler, a ``LocalCluster`` or a multi-machine cluster: only
the ``dask.distributed.Client`` the user connects decides where the tasks run.

Chunking
--------
::

    coefficients (..., T or 1, E, D, O)     the batch axes ``...`` may be chunked freely;
    rhs          (..., T or 1, E)           the core axes (right of ``...``) must each be
    init         (..., Ti, D, Oi)           a single chunk, else a ValueError is raised
    steps        (..., T-1 or 1)            before anything is scheduled (or pass
    u            (..., T, D, O)             ``rechunk=True`` to merge them)

Batch axes broadcast by NumPy rules. An input whose batch axis has length 1 (or that lacks
the axis) keeps it as one chunk and the core broadcasts it inside every task: a left-hand
side shared by all sequences is one key of the graph, which the distributed scheduler moves
to each worker once (not once per chunk), and each task factors it once for its chunk.
Where two inputs chunk the same batch axis differently, Dask unifies the chunks (it
rechunks to the common refinement), and ``u`` has those chunks.

What is checked when
--------------------
Shapes, ranks, dtypes, weights, ``n_steps`` and the chunking are checked when the graph is
built (``ValueError`` / ``TypeError``, nothing scheduled). Values (NaN/Inf, non-positive
steps) and the factorisation are checked by the core inside each task, at compute time;
the errors raised there name indices into the whole arrays (each task also receives the
array positions of its chunk's batch entries, to translate the core's chunk-local ones).

Gradients: refactor in the backward pass
----------------------------------------
``vjp(ubar)`` builds, per chunk, one task that calls the core's ``smnn_solve_vjp`` on that
chunk and then its ``vjp(ubar_chunk)``: the chunk's left-hand side is factored again in the
backward pass instead of being kept from the forward pass. Keeping the factor would mean
carrying it as a Dask array (``T (p+1) n^2`` numbers per system, 18 times ``u`` for
``D = O = 3``) between the two graphs, or pinning it in worker memory between two
``compute`` calls, for a saving of one forward solve. ``benchmarks/dask_overhead.py``
measures the cost: at B=8192, T=1000, D=O=E=3 (float64, chunks of 512, 2 workers) the
backward graph (refactor, solve, two substitutions and the gradient sweep) took 1.8 times
the forward graph, the same ratio as the core's forward+VJP to its forward; a kept factor
would make it about 0.8 forwards instead. Nothing is gathered to the client: per-chunk gradients of an input that was
broadcast over a batch axis are summed over that axis by a lazy Dask tree reduction on the
workers.

On a multi-machine cluster
--------------------------
Nothing changes in the calls: start a scheduler (``dask scheduler``) and workers on each
machine (``dask worker tcp://HOST:8786``; or ``dask-jobqueue`` on SLURM/PBS, Kubernetes,
...), with the same ``bandsolve`` and ``dask`` versions installed everywhere, connect
``distributed.Client("tcp://HOST:8786")``, and build the inputs on the workers (e.g.
``xarray.open_zarr(...)`` / ``da.from_zarr`` chunked along the batch axes) rather than
from client memory. Each machine compiles the kernels once (Numba's on-disk cache). The
kernels release the GIL: run either one single-threaded worker process per core or one
worker per machine with ``--nthreads`` equal to its cores, in both cases with
``NUMBA_NUM_THREADS=1`` in the workers' environment, since Dask already runs one chunk
per core and Numba's default pool (one thread per core in every process) would
oversubscribe the cores. GPU workers (``dask-cuda-worker``) would solve CuPy chunks
(``x.map_blocks(cupy.asarray)``) with the CUDA kernels; this path is written but was not
run (no GPU in the test environment).

Worker failures
---------------
Every task is a pure function of its input chunks, so when a worker dies the distributed
scheduler recomputes its lost tasks on the remaining workers (``distributed.scheduler.
allowed-failures`` retries per task) and the result is bitwise the one of an undisturbed
run.
"""

from __future__ import annotations

import operator

import dask.array as da
import numpy as np
from dask.array.utils import meta_from_array
from dask.base import tokenize
from dask.highlevelgraph import HighLevelGraph

import contextlib

import bandsolve
from bandsolve import _validation as v
from bandsolve import _problem
from bandsolve.errors import FactorizationError, InputValueError, factorization_error

__all__ = ["smnn_solve", "smnn_solve_vjp"]

# Argument order of the core, and each input's number of core (trailing, unchunked) axes.
_NAMES = ("coefficients", "rhs", "init", "steps")
_CORE_NDIM = {"coefficients": 4, "rhs": 2, "init": 3, "steps": 1, "ubar": 3}
_CORE_AXIS_NAMES = {
    "coefficients": ("T", "E", "D", "O"),
    "rhs": ("T", "E"),
    "init": ("Ti", "D", "Oi"),
    "steps": ("T-1",),
    "ubar": ("T", "D", "O"),
}


# ----------------------------------------------------------------------------- planning

def _as_dask(name, value):
    """A Dask array as is; anything else as a single-chunk Dask array (one graph key, so
    the distributed scheduler sends it to each worker at most once). Masked arrays (or
    chunks) are a ``TypeError`` naming ``name``, as in the core."""
    if not isinstance(value, da.Array):
        if not (hasattr(value, "shape") and hasattr(value, "dtype")) or isinstance(
                value, np.ma.MaskedArray):
            value = v.as_host_array(name, value)
        value = da.from_array(value, chunks=value.shape if value.ndim else ())
    if isinstance(value._meta, np.ma.MaskedArray):
        v.as_host_array(name, value._meta)
    return value


def _check_known_shape(name, array):
    if any(np.isnan(s) for s in array.shape):
        raise ValueError(f"{name} has unknown chunk sizes (shape {array.shape}); call "
                         f"{name}.compute_chunk_sizes() first")


def _core_chunk_problems(name, array):
    """Descriptions of the core axes of ``array`` that are split into several chunks."""
    k = _CORE_NDIM[name]
    problems = []
    for j, label in enumerate(_CORE_AXIS_NAMES[name]):
        axis = array.ndim - k + j
        if len(array.chunks[axis]) > 1:
            problems.append(f"{name} axis {axis} ({label}) has chunks {array.chunks[axis]}")
    return problems


def _merge_core_axes(name, array):
    """The ``rechunk`` argument that makes the core axes of ``array`` single chunks."""
    return {axis: -1 for axis in range(array.ndim - _CORE_NDIM[name], array.ndim)}


def _single_core_chunks(arrays, rechunk):
    """``arrays`` (name -> Dask array) with their core axes merged into one chunk each when
    ``rechunk``; otherwise a ``ValueError`` listing every split core axis."""
    problems = [p for name, a in arrays.items() for p in _core_chunk_problems(name, a)]
    if not problems:
        return arrays
    if rechunk:
        return {name: a.rechunk(_merge_core_axes(name, a)) for name, a in arrays.items()}
    fixes = ", ".join(f"{name}.rechunk({_merge_core_axes(name, a)})"
                      for name, a in arrays.items() if _core_chunk_problems(name, a))
    raise ValueError(
        "bandsolve.dask solves whole sequences per chunk, so only the batch axes may be "
        "split into chunks; the time, equation, dimension and order axes must each be a "
        "single chunk, but " + "; ".join(problems) + ". Rechunk them (" + fixes + ") or "
        "pass rechunk=True to let bandsolve.dask do it.")


class _Plan:
    """Validated Dask inputs and the index bookkeeping for ``blockwise`` (internal)."""

    def __init__(self, coefficients, rhs, init, steps, n_steps, weight_equation, weight_init,
                 weight_smooth, central_smoothness, rechunk):
        arrays = {name: _as_dask(name, value) for name, value in
                  zip(_NAMES, (coefficients, rhs, init, steps))}
        for name, array in arrays.items():
            _check_known_shape(name, array)
        # host (NumPy) or device (CuPy) chunks, never both
        v.backend_of(**{name: a._meta for name, a in arrays.items()})
        # The core's structural checks read only shapes and dtypes (values are checked
        # by the core inside each task).
        problem = _problem.describe(
            *arrays.values(), n_steps=n_steps, weight_equation=weight_equation,
            weight_init=weight_init, weight_smooth=weight_smooth,
            central_smoothness=central_smoothness)
        T, weights = problem.n_steps, problem.weights
        self.dtype = problem.dtype
        self.arrays = _single_core_chunks(arrays, rechunk)
        self.rechunk = rechunk
        self.batch = v.broadcast_batch(**{
            name: a.shape[:a.ndim - _CORE_NDIM[name]] for name, a in self.arrays.items()})
        self.n_steps = T
        _, _, self.n_dims, self.n_orders = self.arrays["coefficients"].shape[-4:]
        self.options = dict(n_steps=T, weight_equation=weights[0], weight_init=weights[1],
                            weight_smooth=weights[2], central_smoothness=central_smoothness)
        self.batch_index = tuple(f"b{i}" for i in range(len(self.batch)))
        self.meta_source = self.arrays["coefficients"]._meta
        # array positions along each batch axis, chunked with the inputs by blockwise:
        # a task turns the core's chunk-local error indices into whole-array ones
        self.positions = [da.arange(n, chunks=max(n, 1)) for n in self.batch]
        self.shapes = {name: a.shape for name, a in self.arrays.items()}

    @property
    def u_shape(self):
        return self.batch + (self.n_steps, self.n_dims, self.n_orders)

    def index(self, name, array):
        """``blockwise`` indices of an input: the batch indices it has (right-aligned),
        then core indices of its own, which are not in the output (single chunks)."""
        n_batch = array.ndim - _CORE_NDIM[name]
        batch = self.batch_index[len(self.batch_index) - n_batch:]
        return batch + tuple(f"{name}_{j}" for j in range(_CORE_NDIM[name]))

    def blockwise_args(self, extra=None):
        """The inputs (and ``extra``), then the position arrays of the batch axes."""
        arrays = dict(self.arrays, **(extra or {}))
        args = []
        for name, array in arrays.items():
            args += [array, self.index(name, array)]
        for index, positions in zip(self.batch_index, self.positions):
            args += [positions, (index,)]
        return args


# ----------------------------------------------------------------------------- tasks

def _writable(array):
    """``array``, copied if it is a read-only NumPy array. Chunks that a worker received
    over the network are often read-only, and Numba compiles (and caches) a separate
    specialisation of every kernel for read-only arguments: without the copy each worker
    would compile kernels that the client process has already compiled and cached."""
    if isinstance(array, np.ndarray) and not array.flags.writeable:
        return array.copy()
    return array


def _array_index(local, shape, n_core, positions):
    """A chunk-local index into an input (or batch) of whole-array ``shape`` whose last
    ``n_core`` axes are not chunked, as an index into the whole array. ``positions`` are
    the chunk's array positions along every axis of the full batch (right-aligned)."""
    n_batch = len(shape) - n_core
    offset = len(positions) - n_batch
    return tuple(
        int(i) if a >= n_batch or shape[a] == 1 else int(positions[offset + a][i])
        for a, i in enumerate(local))


@contextlib.contextmanager
def _whole_array_errors(shapes, positions):
    """Re-raise the core's located errors with whole-array indices: a bad value in input
    ``name`` (``shapes[name]``), a failed system of the left-hand-side batch (``shapes``
    None: a chunk called on its own, indices left as they are)."""
    try:
        yield
    except InputValueError as error:
        if shapes is None or error.argument not in shapes:
            raise
        raise error.at(_array_index(error.index, shapes[error.argument],
                                    _CORE_NDIM[error.argument], positions)) from None
    except FactorizationError as error:
        if shapes is None:
            raise
        lhs_batch = v.broadcast_batch(coefficients=shapes["coefficients"][:-4],
                                      steps=shapes["steps"][:-1])
        indices = [_array_index(i, lhs_batch, 0, positions) for i in error.batch_indices]
        raise factorization_error(indices, error.steps, int(np.prod(lhs_batch)),
                                  what="S-MNN normal matrix") from None


def _solve_chunk(coefficients, rhs, init, steps, *positions, options, shapes=None):
    """One task of the forward graph: the core solve of one chunk of whole sequences."""
    with _whole_array_errors(shapes, positions):
        return bandsolve.smnn_solve(*map(_writable, (coefficients, rhs, init, steps)),
                                    **options)


def _vjp_chunk(coefficients, rhs, init, steps, ubar, *positions, options, n_lead,
               shapes=None):
    """One task of the backward graph: refactor, solve, and the core's VJP of one chunk.

    Returns the four gradients, each summed by the core over the axes its input broadcast
    within the chunk, with ``n_lead[i]`` leading length-1 axes added so that every
    gradient has the full number of batch axes."""
    with _whole_array_errors(shapes, positions):
        _, vjp = bandsolve.smnn_solve_vjp(*map(_writable, (coefficients, rhs, init, steps)),
                                          **options)
        grads = vjp(_writable(ubar))
    return tuple(g.reshape((1,) * lead + g.shape) for g, lead in zip(grads, n_lead))


# ----------------------------------------------------------------------------- public API

def smnn_solve(coefficients, rhs, init, steps, *, n_steps=None, weight_equation=1.0,
               weight_init=1.0, weight_smooth=1.0, central_smoothness=False, rechunk=False):
    """:func:`bandsolve.smnn_solve` on Dask arrays chunked along the batch axes.

    Parameters
    ----------
    coefficients : ``(..., T or 1, E, D, O)``
    rhs : ``(..., T or 1, E)``
    init : ``(..., Ti, D, Oi)``
    steps : ``(..., T-1 or 1)``
        Dask arrays (or NumPy/CuPy arrays, taken as one chunk) whose core axes (right of
        ``...``) are single chunks; batch axes broadcast by NumPy rules.
    n_steps, weight_equation, weight_init, weight_smooth, central_smoothness :
        as in :func:`bandsolve.smnn_solve`.
    rechunk : bool
        Merge split core axes into single chunks instead of raising ``ValueError``.

    Returns
    -------
    u : lazy Dask array ``(..., T, D, O)``, the inputs' common dtype, chunked like the
        (unified) batch chunks of the inputs and one chunk along ``T, D, O``; its chunks
        are NumPy (or CuPy) arrays like the inputs'.

    Raises ``ValueError``/``TypeError`` for bad shapes, dtypes, weights or chunking when
    called (nothing is scheduled); value errors and ``FactorizationError`` surface when the
    result is computed.
    """
    plan = _Plan(coefficients, rhs, init, steps, n_steps, weight_equation, weight_init,
                 weight_smooth, central_smoothness, rechunk)
    return _forward(plan)


def _forward(plan):
    out_index = plan.batch_index + ("t", "d", "o")
    return da.blockwise(
        _solve_chunk, out_index, *plan.blockwise_args(),
        new_axes={"t": plan.n_steps, "d": plan.n_dims, "o": plan.n_orders},
        concatenate=True, dtype=plan.dtype,
        meta=meta_from_array(plan.meta_source, ndim=len(out_index), dtype=plan.dtype),
        name="smnn_solve-" + tokenize(plan.arrays, plan.options),
        options=plan.options, shapes=plan.shapes)


def smnn_solve_vjp(coefficients, rhs, init, steps, *, n_steps=None, weight_equation=1.0,
                   weight_init=1.0, weight_smooth=1.0, central_smoothness=False,
                   rechunk=False):
    """:func:`smnn_solve` and its vector-Jacobian product, both lazy.

    Returns ``(u, vjp)``. ``vjp(ubar)``, with ``ubar`` a Dask (or NumPy) array of ``u``'s
    shape whose ``T, D, O`` axes are single chunks, returns lazy Dask arrays
    ``(coefficients_bar, rhs_bar, init_bar, steps_bar)``, each the shape of its input
    (summed over the axes it was broadcast along, by a tree reduction on the workers) and
    chunked like it when it was a Dask array. The backward graph refactors each chunk's
    left-hand side (see the module docstring for why and what it costs); nothing is
    gathered to the client.
    """
    plan = _Plan(coefficients, rhs, init, steps, n_steps, weight_equation, weight_init,
                 weight_smooth, central_smoothness, rechunk)
    inputs_were_dask = [isinstance(x, da.Array) for x in (coefficients, rhs, init, steps)]
    return _forward(plan), lambda ubar: _backward(plan, ubar, inputs_were_dask)


def _backward(plan, ubar, inputs_were_dask):
    ubar = _as_dask("ubar", ubar)
    _check_known_shape("ubar", ubar)
    if ubar.shape != plan.u_shape:
        raise ValueError(f"ubar must have the shape of u, {plan.u_shape}; got {ubar.shape}")
    v.check_dtype("ubar", ubar.dtype)
    ubar = _single_core_chunks({"ubar": ubar}, plan.rechunk)["ubar"]

    n_batch = len(plan.batch)
    n_lead = tuple(n_batch - (a.ndim - _CORE_NDIM[name]) for name, a in plan.arrays.items())
    token = tokenize(plan.arrays, plan.options, ubar)
    chunk_grads = da.blockwise(
        _vjp_chunk, plan.batch_index, *plan.blockwise_args({"ubar": ubar}),
        concatenate=True, meta=np.empty((0,) * n_batch, dtype=object),
        name="smnn_solve_vjp-" + token, options=plan.options, n_lead=n_lead,
        shapes=dict(plan.shapes, ubar=ubar.shape))
    batch_chunks = chunk_grads.chunks
    keys = _flat_keys(chunk_grads)

    grads = []
    for i, (name, array) in enumerate(plan.arrays.items()):
        lead = n_lead[i]
        core_shape = array.shape[array.ndim - _CORE_NDIM[name]:]
        padded_batch = (1,) * lead + array.shape[:array.ndim - _CORE_NDIM[name]]
        # batch axes this input was broadcast along: one length-1 gradient per chunk there
        broadcast = tuple(j for j in range(n_batch)
                          if padded_batch[j] == 1 and plan.batch[j] != 1)
        chunks = tuple((1,) * len(batch_chunks[j]) if j in broadcast else batch_chunks[j]
                       for j in range(n_batch)) + tuple((s,) for s in core_shape)
        leaf = f"smnn_solve_vjp-{name}-{token}"
        core_zeros = (0,) * len(core_shape)
        layer = {(leaf,) + key[1:] + core_zeros: (operator.getitem, key, i) for key in keys}
        graph = HighLevelGraph.from_collections(leaf, layer, dependencies=[chunk_grads])
        meta = meta_from_array(plan.meta_source, ndim=len(chunks), dtype=plan.dtype)
        grad = da.Array(graph, leaf, chunks=chunks, dtype=plan.dtype, meta=meta)
        if broadcast:
            grad = grad.sum(axis=broadcast, keepdims=True, dtype=plan.dtype)
        grad = grad[(0,) * lead] if lead else grad
        if inputs_were_dask[i] and grad.chunks != array.chunks:
            grad = grad.rechunk(array.chunks)
        grads.append(grad)
    return tuple(grads)


def _flat_keys(array):
    """The keys of ``array``'s blocks as a flat list (C order)."""
    keys = array.__dask_keys__()
    if isinstance(keys, tuple):  # no batch axes: a single key
        return [keys]
    while keys and isinstance(keys[0], list):
        keys = [k for sub in keys for k in sub]
    return keys


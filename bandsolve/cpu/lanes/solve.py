"""The accurate least-squares solve of a batch of S-MNN systems with the lane kernels.

``lane_solve`` does what ``accurate_factor_solve_kernel`` does for each system (Cholesky
with the relative pivot test, refinement with row residuals until the correction stops
shrinking, the row-QR factor where either fails), for ``W`` systems at a time:

1. stage the inputs into lane layout (``array[g, (t*K + k)*W + w]``, NumPy copies) and
   the smoothness rows of every step size (scaled by ``ws``);
2. ``factor_forward`` + ``backward``: ``x = M^{-1} b``;
3. up to ``CHOLESKY_MAX_STEPS`` refinement steps ``x += M^{-1} A^T (beta - A x)``
   (``residual_forward`` + ``correction_backward``), each lane stopped by the host's
   rule (:func:`bandsolve.cpu.accurate.refine`), applied here per lane with NumPy;
4. lanes whose pivot test or refinement failed are solved again, one system at a time,
   by the host kernel (whose row-QR fallback handles them).

The generated source of each shape is written to a cache folder and imported from there,
so that Numba's disk cache keeps its compilation between processes: the folder given by
the environment variable ``BANDSOLVE_CACHE_DIR``, else ``~/.cache/bandsolve``, else a
temporary folder (then every process compiles again).
"""

import hashlib
import importlib.util
import math
import os
import sys
import tempfile
import threading

import numba
import numpy as np

from ..._jit import jit_kernel
from ...formulation import taylor_rows
from ...kernels.banded import CHOLESKY_PIVOT_TOL
from ...kernels.residual import ACCEPT_CORRECTION
from ..accurate import (CHOLESKY_FIRST_CORRECTION, CHOLESKY_MAX_STEPS, EPS, INVISIBLE_ORDER,
                        accurate_factor_solve_kernel)
from . import codegen
from .codegen import W

# Largest block the generated code is made for: the straight-line code of one step grows
# like n^3 (n = 9: ~1.5k statements per kernel, ~30 s to compile once per machine).
MAX_BLOCK = 10
# Fewer systems than this leave most lanes of the only group empty; below this many block
# rows in all, the one-time compilation of a new shape is not worth it.
MIN_SYSTEMS = W
MIN_BLOCK_ROWS = 4096

_modules = {}
_lock = threading.Lock()


def cache_folder():
    """Where generated kernel sources (and so Numba's cache of them) are kept."""
    for folder in (os.environ.get("BANDSOLVE_CACHE_DIR"),
                   os.path.join(os.path.expanduser("~"), ".cache", "bandsolve")):
        if not folder:
            continue
        try:
            os.makedirs(folder, exist_ok=True)
            if os.access(folder, os.W_OK):
                return folder
        except OSError:
            continue
    return tempfile.mkdtemp(prefix="bandsolve-")


def kernels(n_dims, n_orders, n_equations):
    """The generated module for shape ``(D, O, E)`` (generated, written and imported
    once per process; compiled once per machine)."""
    key = (n_dims, n_orders, n_equations)
    with _lock:
        if key not in _modules:
            source = codegen.generate(*key)
            digest = hashlib.sha1(source.encode()).hexdigest()[:12]
            name = f"bandsolve_lanes_{codegen.Layout(*key).key()}_{digest}"
            path = os.path.join(cache_folder(), name + ".py")
            if not os.path.exists(path):  # never rewritten: its mtime keys Numba's cache
                partial = f"{path}.{os.getpid()}.tmp"
                with open(partial, "w") as handle:
                    handle.write(source)
                os.replace(partial, path)
            spec = importlib.util.spec_from_file_location(name, path)
            module = importlib.util.module_from_spec(spec)
            sys.modules[name] = module
            spec.loader.exec_module(module)
            _modules[key] = module
        return _modules[key]


def applies(lhs, n_systems):
    """Whether the lane kernels take this problem (``n_systems`` systems, one right-hand
    side each)."""
    return (not lhs.central and n_systems >= MIN_SYSTEMS
            and n_systems * lhs.n_steps >= MIN_BLOCK_ROWS and lhs.block_size <= MAX_BLOCK)


@jit_kernel
def _taylor_table(steps, n_orders, ws, row_of, col_of, out):
    """``out[b, i, s] = ws * rows[row_of[s], col_of[s]]`` of step ``steps[b, i]`` (the
    non-zero Taylor rows' entries in the lane kernels' order), recomputed only when the
    step size changes."""
    n_k = n_orders
    for b in numba.prange(steps.shape[0]):
        rows = np.empty((2 * n_k, 2 * n_orders))
        drows = np.empty_like(rows)
        last = np.nan
        for i in range(steps.shape[1]):
            h = steps[b, i]
            if h != last:
                taylor_rows(h, n_orders, n_k, rows, drows)
                last = h
            for s in range(row_of.shape[0]):
                out[b, i, s] = ws * rows[row_of[s], col_of[s]]


def _lanes(array, n_groups):
    """``(G*W, ...)`` -> lane layout ``(G, prod(...)*W)``: quantity-major, lane last."""
    shaped = array.reshape((n_groups, W) + array.shape[1:])
    moved = np.moveaxis(shaped, 1, -1)
    return np.ascontiguousarray(moved).reshape(n_groups, -1)


def _from_lanes(array, n_groups, shape):
    """Inverse of :func:`_lanes` for per-system shape ``shape``."""
    shaped = array.reshape((n_groups,) + shape + (W,))
    return np.moveaxis(shaped, -1, 1).reshape((n_groups * W,) + shape)


def _relative_correction(stats, n_orders):
    """Per lane ``(G, W)``: the host's ``_relative_correction`` from the maxima the
    correction sweep gathered (stats ``(G, 3*O + 1, W)``)."""
    g_max = stats[:, :n_orders]
    x_max = stats[:, n_orders:2 * n_orders]
    seen_o = stats[:, 2 * n_orders:3 * n_orders]
    seen = seen_o.max(axis=1, keepdims=True)
    visible = (g_max > 0.0) & (seen_o > INVISIBLE_ORDER * seen)
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = np.where(visible, g_max / x_max, 0.0)
    worst = ratio.max(axis=1)
    finite = (stats[:, 3 * n_orders] == 1.0) & (worst < math.inf)
    return np.where(finite, worst, math.inf)


RUNNING, CONVERGED, FAILED = 0, 1, 2


def lane_solve(lhs, rhs_flat, rhs_index, init_flat, init_index):
    """``(x, info)`` for a batch whose left-hand-side batch is the full batch: x
    ``(B, T, n)`` float64 (NaN for failed systems), info ``(B,)`` as the host kernel's."""
    O, Ti, Oi, we2, wi2, ws2, central = lhs.kernel_scalars()
    coefficients, steps = lhs.coefficients, lhs.steps
    B, Tc, E, n = coefficients.shape
    T, D = lhs.n_steps, n // O
    mod = kernels(D, O, E)
    lay = codegen.Layout(D, O, E)
    G = -(-B // W)
    pad = np.minimum(np.arange(G * W), B - 1)  # the last system repeated
    U = np.uint64

    c_l = _lanes(coefficients[pad].reshape(G * W, Tc, E * n), G)
    cs = U(E * n * W if Tc > 1 else 0)
    r_sys = rhs_flat[rhs_index[pad]]
    r_l = _lanes(r_sys, G)
    rs = U(E * W if r_sys.shape[1] > 1 else 0)
    n_init = max(Ti, 1)
    g_sys = np.zeros((G * W, n_init, D, O))
    if Ti and Oi:
        g_sys[:, :Ti, :, :Oi] = init_flat[init_index[pad]][:, :Ti, :, :Oi]
    g_l = _lanes(g_sys.reshape(G * W, n_init, n), G)
    gs = U(n * W)
    pins = np.zeros((T, D, O))
    pins[:Ti, :, :Oi] = wi2
    pins = pins.reshape(-1)
    row_of = np.array([q for q, entries in enumerate(lay.taylor) for _ in entries])
    col_of = np.array([c for entries in lay.taylor for c, _ in entries])
    Th = steps.shape[1]
    table = np.zeros((B, max(Th, 1), lay.n_taylor))
    if Th:
        _taylor_table.for_batch(B, Th)(steps, O, math.sqrt(ws2), row_of, col_of, table)
    t_l = _lanes(table[pad], G)
    hs = U(lay.n_taylor * W if Th > 1 else 0)

    lower = np.empty((G, T * lay.n_packed * W))
    ys = np.zeros((G, (T + 1) * lay.n_y * W))  # step T: zero (the backward sweep's start)
    x = np.empty((G, T * n * W))
    scale = np.empty((G, T * n * W))
    ok = np.ones((G, W))
    carry_l = np.zeros((G, lay.n_packed * W))
    carry_z = np.zeros((G, n * W))
    inputs = (c_l, cs, r_l, rs, g_l, gs, n_init, t_l, hs, pins, we2)
    # every sweep starts from zero carries (no step before the first / after the last)
    mod.factor_forward(G, T, *inputs, CHOLESKY_PIVOT_TOL, lower, ys, x, scale, ok, carry_l,
                       carry_z)
    stats = np.zeros((G, (3 * O + 1) * W))
    carry_z[:] = 0.0
    mod.backward(G, T, lower, ys, x, x, scale, stats, carry_z)

    status = np.where(ok == 1.0, RUNNING, FAILED)
    v = np.empty_like(x)
    carry_g = np.zeros((G, n * W))
    previous = np.full((G, W), math.inf)
    correction = np.zeros((G, W))
    for step in range(CHOLESKY_MAX_STEPS):
        carry_g[:] = 0.0
        carry_z[:] = 0.0
        mod.residual_forward(G, T, *inputs, x, x, lower, ys, v, carry_g, carry_z)
        carry_z[:] = 0.0
        stats[:] = 0.0
        stats.reshape(G, -1, W)[:, 3 * O] = 1.0
        mod.correction_backward(G, T, lower, ys, v, x, scale, stats, carry_z)
        correction = np.where(status == RUNNING,
                              _relative_correction(stats.reshape(G, -1, W), O), correction)
        running = status == RUNNING
        status = np.where(running & (correction == math.inf), FAILED, status)
        apply = (status == RUNNING).astype(np.float64)
        x.reshape(G, -1, W)[:] += v.reshape(G, -1, W) * apply[:, None, :]
        running = status == RUNNING
        if step == 0:
            status = np.where(running & (correction > CHOLESKY_FIRST_CORRECTION), FAILED,
                              status)
            rate = correction
        else:
            with np.errstate(divide="ignore", invalid="ignore"):
                rate = correction / previous
        running = status == RUNNING
        done = running & ((rate * correction <= EPS)
                          | ((step > 0) & (rate > 0.5) & (correction <= ACCEPT_CORRECTION)))
        status = np.where(done, CONVERGED, status)
        previous = np.where(status == RUNNING, correction, previous)
        if not np.any(status == RUNNING):
            break
    status = np.where(status == RUNNING,
                      np.where(correction <= ACCEPT_CORRECTION, CONVERGED, FAILED), status)

    x_sys = _from_lanes(x, G, (T, n))[:B]
    lane_status = status.reshape(-1)[:B]
    info = np.zeros(B, dtype=np.int64)
    failed = np.flatnonzero(lane_status != CONVERGED)
    if failed.size:
        x_sys = np.array(x_sys)
        sub_lower = np.empty((failed.size, T, lhs.bandwidth + 1, n, n))
        sub_info = np.zeros(failed.size, dtype=np.int64)
        sub_x = np.empty((failed.size, T, n))
        sub_index = np.arange(failed.size)
        accurate_factor_solve_kernel.for_batch(failed.size, T)(
            coefficients[failed], steps[failed],
            rhs_flat[rhs_index[failed]], sub_index, init_flat[init_index[failed]], sub_index,
            O, Ti, Oi, we2, wi2, ws2, central, sub_lower, sub_info, sub_x)
        x_sys[failed] = sub_x
        info[failed] = sub_info
    return x_sys, info

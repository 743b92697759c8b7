"""Accuracy on the device: the row-QR fallback for factors that cannot be trusted, and
refinement ``x += M^{-1} A^T (beta - A x)`` (corrected semi-normal equations) with the
residual formed from the rows, one thread per (system, time step).

Fallback (``thread_fallback_kernel`` / ``block_fallback_kernel``, one thread per system,
right after the Cholesky kernels, no synchronisation): a system whose Cholesky failed, or
whose factor has a pivot with ``L_kk^2 <= CHOLESKY_PIVOT_TOL * M_kk``, is refactored by
the Householder QR sweep over its rows (``kernels/row_qr.py``, the host's fallback too),
whose ``L = R^T`` has errors of order ``eps * cond(A)`` instead of ``eps * cond(A)^2``; its
status becomes that sweep's (0, or ``t + 1`` where the rows are rank deficient to working
precision).

The normal equations square the condition number: a float64 Cholesky solve of ``M`` has
a relative error of about ``eps * cond(A)^2``. Each refinement step multiplies that error
by about the same factor, down to the floor ``eps * cond(A)`` of the row residual
(``kernels/residual.py::residual_step``, the gathered form of the host's residual).

Refinement follows the host's rule (``bandsolve/cpu/accurate.py::refine``), decided on
the device per right-hand side without synchronising: after each step the relative
correction per derivative order (``kernels/residual.py::relative_correction_of``, the
host's definition, invisible orders left out) decides whether the system has
converged (the predicted next correction is below rounding, or corrections below
``ACCEPT_CORRECTION`` stagnate), goes on, or has failed (a correction that is not
finite, or one still above ``ACCEPT_CORRECTION`` after ``MAX_REFINE_STEPS``). Every step's
kernels return at once for systems that are no longer refining, so a batch that has
converged costs only the launches. Per-system state, ``(B,)`` int64 on the device:
``REFINING``, ``CONVERGED``, ``FAILED`` (its solution NaN; the driver then sets its
factor's status to ``-1``) or ``RETRY`` (failed with a parallel-in-time factor, which is
then redone sequentially: ``bandsolve/gpu/partitioned.py``).

The measure needs the maximum over all ``T`` steps of each system: a first kernel folds
spans of about ``sqrt(T)`` steps (``spans_for``) into partial records, one thread per
(system, span), and the decision kernel, one thread per system, merges that system's
``~sqrt(T)`` records. At ``T = 1e6`` that is 1000 threads of 1000 steps each and one of
1000 records per system, instead of one thread reading 1e6 steps.
"""

import math

import numba
import numpy as np
from numba import cuda

from ..kernels.banded import CHOLESKY_PIVOT_TOL, diagonal_of_product, weak_pivot_step
from ..kernels.residual import (
    add_correction_span,
    clear_correction_record,
    merge_correction_records,
    relative_correction_of,
    residual_step,
)
from ..kernels.row_qr import QR_PIVOT_TOL, row_qr_factor, row_qr_work_rows
from . import config
from ._runtime import device_function
from .arrays import source_row

# Most refinement steps after the first solve, as on the host's Cholesky route
# (CHOLESKY_MAX_STEPS). A factor that passed the relative pivot test, or the QR factor,
# contracts the error fast enough: measured under the simulator for cond(A) 2e4 to 2e10
# (tests/gpu_cases.py), no system needed more than three steps (a kept Cholesky factor
# at cond(A) 1.1e7: 1e-2 per step). Each step costs about 5 launches (8 for the
# parallel-in-time solver) even where every system has converged and the kernels
# return at once, so the limit is not larger than it needs to be.
MAX_REFINE_STEPS = 4

# Per-system refinement state
REFINING = 0
CONVERGED = 1
FAILED = 2
RETRY = 3  # failed with a parallel-in-time factor: solved again with a sequential one

# A correction whose square is below this is rounding noise (the host's EPS)
EPS = float(np.finfo(np.float64).eps)

_source_row = device_function(source_row)
_residual_step = device_function(residual_step)
_diagonal_of_product = device_function(diagonal_of_product)
_clear_correction_record = device_function(clear_correction_record)
_add_correction_span = device_function(add_correction_span)
_merge_correction_records = device_function(merge_correction_records)
_relative_correction_of = device_function(relative_correction_of)

_SCRATCH = 2 * config.MAX_ORDERS

# Scratch of the QR sweep: at most this many float64 (256 MiB); larger batches are swept
# in several launches over slices of the systems.
QR_SCRATCH_ELEMENTS = 2**25


def qr_scratch_shape(n_systems, n_equations, n_dims, n_orders, central):
    """``(systems per launch, work rows, work columns)`` of the QR fallback's scratch."""
    rows = row_qr_work_rows(n_equations, n_dims, n_orders, central)
    width = ((2 if central else 1) + 1) * n_dims * n_orders
    return max(1, min(n_systems, QR_SCRATCH_ELEMENTS // (rows * width))), rows, width


def fallback(coefficients, steps, n_orders, n_init_steps, n_init_orders, we, wi, ws,
             central, system, work, colsq, rows, drows, status):
    """The status of one system after the accuracy checks, refactoring ``system``
    ``(T, p+1, n, n)`` by the row QR sweep when its Cholesky factor failed or is weak."""
    if status == 0 and weak_pivot_step(system, CHOLESKY_PIVOT_TOL) == 0:
        return 0
    return row_qr_factor(coefficients, steps, n_orders, n_init_steps, n_init_orders, we, wi,
                         ws, central, QR_PIVOT_TOL, system, work, colsq, rows, drows)


_fallback = device_function(fallback)


@cuda.jit
def thread_fallback_kernel(coefficients, steps, shape, c_strides, h_strides, n_orders,
                           n_init_steps, n_init_orders, we, wi, ws, central, first, lower,
                           work, colsq, info):
    """:func:`fallback` for system ``s = first + thread`` of the thread kernels' factor
    ``(T, p+1, n, n, Bl)``; work ``(S, rows, width)``, colsq ``(S, width)`` for the ``S``
    systems of this launch; unsquared weights."""
    k = cuda.grid(1)
    s = first + k
    if k >= work.shape[0] or s >= info.shape[0]:
        return
    rows = cuda.local.array((_SCRATCH, _SCRATCH), numba.float64)
    drows = cuda.local.array((_SCRATCH, _SCRATCH), numba.float64)
    info[s] = _fallback(coefficients[_source_row(s, shape, c_strides)],
                        steps[_source_row(s, shape, h_strides)], n_orders, n_init_steps,
                        n_init_orders, we, wi, ws, central, lower[:, :, :, :, s], work[k],
                        colsq[k], rows, drows, info[s])


@cuda.jit
def block_fallback_kernel(coefficients, steps, shape, c_strides, h_strides, n_orders,
                          n_init_steps, n_init_orders, we, wi, ws, central, first, lower,
                          work, colsq, info):
    """The same for the per-system layout ``(Bl, T, p+1, n, n)``."""
    k = cuda.grid(1)
    s = first + k
    if k >= work.shape[0] or s >= info.shape[0]:
        return
    rows = cuda.local.array((_SCRATCH, _SCRATCH), numba.float64)
    drows = cuda.local.array((_SCRATCH, _SCRATCH), numba.float64)
    info[s] = _fallback(coefficients[_source_row(s, shape, c_strides)],
                        steps[_source_row(s, shape, h_strides)], n_orders, n_init_steps,
                        n_init_orders, we, wi, ws, central, lower[s], work[k], colsq[k],
                        rows, drows, info[s])


@cuda.jit
def residual_kernel(coefficients, steps, rhs, init, shape, c_strides, h_strides, r_strides,
                    g_strides, n_orders, n_init_steps, n_init_orders, we2, wi2, ws2, central,
                    with_beta, state, x, extra, g):
    """``g[i, t] = [A_i^T (beta_i - A_i x_i)]_t`` (thread ``i * T + t``); x, g ``(B, T, n)``,
    inputs as in ``gradient.rhs_kernel`` plus steps ``(Bh, Th)``. Without ``with_beta``:
    ``g = extra - M x``, the plain system ``M x = extra`` (``(B, T, n)``) of the VJP.
    Systems whose state ``(B,)`` is not ``REFINING`` are left alone."""
    k = cuda.grid(1)
    n_steps = x.shape[1]
    if k >= x.shape[0] * n_steps:
        return
    i = k // n_steps
    t = k % n_steps
    if state[i] != REFINING:
        return
    rows = cuda.local.array((_SCRATCH, _SCRATCH), numba.float64)
    drows = cuda.local.array((_SCRATCH, _SCRATCH), numba.float64)
    _residual_step(coefficients[_source_row(i, shape, c_strides)],
                   steps[_source_row(i, shape, h_strides)],
                   rhs[_source_row(i, shape, r_strides)],
                   init[_source_row(i, shape, g_strides)],
                   x[i], t, n_orders, n_init_steps, n_init_orders, we2, wi2, ws2, central,
                   with_beta, g[i, t], rows, drows)
    if not with_beta:
        for a in range(g.shape[2]):
            g[i, t, a] += extra[i, t, a]


def spans_for(n_steps):
    """``(span, n_spans)``: the convergence measure folds spans of ``span ~ sqrt(T)`` steps
    in parallel, then merges ``n_spans`` records per system."""
    span = max(1, math.isqrt(max(n_steps - 1, 0)) + 1)
    return span, -(-n_steps // span)


@cuda.jit
def start_kernel(shape, l_strides, info, state, applied, last):
    """``state[i]``: ``REFINING``, or ``FAILED`` where the factor of right-hand side ``i``
    failed (its solves give NaN; its status is kept); ``applied[i] = last[i] = 0`` (see
    :func:`decision_kernel`)."""
    i = cuda.grid(1)
    if i < state.shape[0]:
        state[i] = REFINING if info[_source_row(i, shape, l_strides)] == 0 else FAILED
        applied[i] = 0
        last[i] = 0


@cuda.jit
def thread_column_norms_kernel(lower, scale):
    """``scale[s, t, k] = sqrt(M_kk)`` (the norm of unknown ``k``'s column of the rows)
    from the thread kernels' factor ``(T, p+1, n, n, Bl)`` (``M = L L^T``), thread
    ``s * T + t``; scale ``(Bl, T, n)``."""
    k = cuda.grid(1)
    n_steps = scale.shape[1]
    if k >= scale.shape[0] * n_steps:
        return
    s = k // n_steps
    t = k % n_steps
    system = lower[:, :, :, :, s]
    for a in range(scale.shape[2]):
        scale[s, t, a] = math.sqrt(_diagonal_of_product(system, t, a))


@cuda.jit
def block_column_norms_kernel(lower, scale):
    """The same from the per-system layout ``(Bl, T, p+1, n, n)``."""
    k = cuda.grid(1)
    n_steps = scale.shape[1]
    if k >= scale.shape[0] * n_steps:
        return
    s = k // n_steps
    t = k % n_steps
    for a in range(scale.shape[2]):
        scale[s, t, a] = math.sqrt(_diagonal_of_product(lower[s], t, a))


@cuda.jit
def correction_spans_kernel(x, g, scale, shape, l_strides, state, n_orders, span, records):
    """Partial convergence records (``kernels/residual.py::add_correction_span``) of span
    ``c`` of right-hand side ``i`` (thread ``i * n_spans + c``): x, g ``(B, T, n)``,
    scale ``(Bl, T, n)`` (factor index map), records ``(B, n_spans, 3 O + 1)``."""
    k = cuda.grid(1)
    n_spans = records.shape[1]
    if k >= x.shape[0] * n_spans:
        return
    i = k // n_spans
    c = k % n_spans
    if state[i] != REFINING:
        return
    record = records[i, c]
    _clear_correction_record(record)
    first = c * span
    stop = first + span if first + span < x.shape[1] else x.shape[1]
    _add_correction_span(x[i], g[i], scale[_source_row(i, shape, l_strides)], n_orders,
                         first, stop, record)


@cuda.jit
def decision_kernel(records, n_orders, step, max_steps, limit, tag, state, applied, last,
                    previous):
    """The host's rule after refinement step ``step`` (0-based) of right-hand side
    ``i = thread``: merges its records ``(B, n_spans, 3 O + 1)`` into the relative
    correction. If this step's correction is to be added: ``last[i] = tag`` (this
    launch's number, for ``apply_kernel``) and ``applied[i] += 1``. ``state`` becomes
    ``CONVERGED`` (rounding reached, or stagnation below ``limit``), ``FAILED`` (not
    finite, or still above ``limit`` after ``max_steps``) or stays ``REFINING``;
    previous ``(B,)`` keeps the last correction."""
    i = cuda.grid(1)
    if i >= state.shape[0] or state[i] != REFINING:
        return
    record = records[i, 0]
    for c in range(1, records.shape[1]):
        _merge_correction_records(record, records[i, c])
    correction = _relative_correction_of(record, n_orders)
    if correction == math.inf:
        state[i] = FAILED
        return
    applied[i] += 1
    last[i] = tag
    rate = correction if step == 0 else correction / previous[i]
    previous[i] = correction
    if rate * correction <= EPS:
        state[i] = CONVERGED
    elif step > 0 and rate > 0.5 and correction <= limit:
        # stagnation at the rounding floor (~eps*cond(A)), as on the host
        state[i] = CONVERGED
    elif step == max_steps - 1:
        state[i] = CONVERGED if correction <= limit else FAILED


@cuda.jit
def apply_kernel(x, g, state, last, tag):
    """``x[i] += g[i]`` where the correction of step ``tag`` was accepted
    (``last[i] == tag``), ``x[i] = NaN`` where the system failed (thread per entry of
    x, g ``(B, T, n)``)."""
    k = cuda.grid(1)
    per_system = x.shape[1] * x.shape[2]
    if k >= x.shape[0] * per_system:
        return
    i = k // per_system
    rest = k % per_system
    t = rest // x.shape[2]
    a = rest % x.shape[2]
    if state[i] == FAILED:
        x[i, t, a] = math.nan
    elif last[i] == tag:
        x[i, t, a] += g[i, t, a]


@cuda.jit
def restart_kernel(x, state):
    """``x[i] = 0`` for the right-hand sides in state ``RETRY`` (thread per entry of x
    ``(B, T, n)``): the first refinement step from zero is the solve itself."""
    k = cuda.grid(1)
    per_system = x.shape[1] * x.shape[2]
    if k >= x.shape[0] * per_system:
        return
    i = k // per_system
    if state[i] == RETRY:
        rest = k % per_system
        x[i, rest // x.shape[2], rest % x.shape[2]] = 0.0


@cuda.jit
def resume_kernel(state, shape, l_strides, info, tag, applied, last):
    """``RETRY`` becomes ``REFINING`` with no correction counted yet and the solve from
    zero (step ``tag``) to be added, or ``FAILED`` if the new factor failed too."""
    i = cuda.grid(1)
    if i < state.shape[0] and state[i] == RETRY:
        applied[i] = 0
        last[i] = tag
        state[i] = REFINING if info[_source_row(i, shape, l_strides)] == 0 else FAILED


@cuda.jit
def finish_kernel(state, shape, l_strides, info):
    """The status of a factor one of whose right-hand sides failed refinement becomes
    ``-1`` (a factor that failed already keeps its ``t + 1``)."""
    i = cuda.grid(1)
    if i < state.shape[0] and state[i] == FAILED:
        s = _source_row(i, shape, l_strides)
        if info[s] == 0:
            info[s] = -1

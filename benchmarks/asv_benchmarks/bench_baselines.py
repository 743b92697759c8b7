"""Baselines on the same, already assembled normal equations (assembly excluded), one
system (B = 1): LAPACK's banded Cholesky and a dense Cholesky (the original MNN's cost
class). Compare with ``bench_smnn.Forward`` at ``B = 1`` (and ``B x`` these for a batch).

Both solvers consume their inputs (``overwrite_*=True``, their fastest form); ``setup``,
which asv re-runs before every timed call, hands them fresh copies.
"""

import numpy as np

import bandsolve
from bandsolve.apps.bench import dense_solve, lapack_band, lapack_solve
from bandsolve.problems import coupled_oscillators

from .common import (
    CENTRAL_VALUES,
    DENSE_MAX_UNKNOWNS,
    DTYPE_VALUES,
    N_ORDERS,
    N_VALUES,
    T_VALUES,
    cached,
    reset_peak_memory,
    skip_if_too_big,
    warm_once,
)


def _assembled(T, n, central, dtype):
    """``(ab, kd, dense-or-None, b)`` of one system, cached across re-runs of setup."""

    def build():
        D = n // N_ORDERS  # built here, not cached: only the baseline's input stays alive
        args = coupled_oscillators(1, T, n_dims=D, n_orders=N_ORDERS, n_equations=D,
                                   dtype=np.dtype(dtype), seed=0)
        matrix, b = bandsolve.smnn_normal_equations(*args, central_smoothness=central)
        ab, kd = lapack_band(matrix)
        dense = matrix.to_dense()[0] if T * n <= DENSE_MAX_UNKNOWNS else None
        return ab, kd, dense, b.reshape(-1)

    return cached("assembled", (T, n, central, dtype), build)


class _Baseline:
    params = (T_VALUES, N_VALUES, CENTRAL_VALUES, DTYPE_VALUES)
    param_names = ["T", "n", "central", "dtype"]
    timeout = 600
    repeat = (1, 5, 20.0)
    rounds = 1
    warmup_time = 0.0


class Lapack(_Baseline):
    """``scipy.linalg.solveh_banded`` (``?pbtrf`` + ``?pbtrs``), narrowest band
    (``kd = n + 2`` without central smoothness, ``2 n`` with it; see
    ``bandsolve.apps.bench.lapack_band``)."""

    def setup(self, T, n, central, dtype):
        skip_if_too_big(1, T, n, central, dtype, copies_of_solution=3)
        ab, _, _, b = _assembled(T, n, central, dtype)
        warm_once(("Lapack", T, n, central, dtype),
                  lambda: lapack_solve(ab.copy(order="F"), b.copy()))
        self.ab, self.b = ab.copy(order="F"), b.copy()
        reset_peak_memory()

    def time_solveh_banded(self, T, n, central, dtype):
        lapack_solve(self.ab, self.b)

    def peakmem_solveh_banded(self, T, n, central, dtype):
        lapack_solve(self.ab, self.b)


class DenseCholesky(_Baseline):
    """``scipy.linalg.cho_factor`` + ``cho_solve`` of the dense ``(T n, T n)`` matrix,
    only where ``T n <= 3000`` (O((T n)^3) time)."""

    def setup(self, T, n, central, dtype):
        if T * n > DENSE_MAX_UNKNOWNS:
            raise NotImplementedError(f"dense solve only for T*n <= {DENSE_MAX_UNKNOWNS}")
        _, _, dense, b = _assembled(T, n, central, dtype)
        warm_once(("Dense", T, n, central, dtype), lambda: dense_solve(dense.copy(), b.copy()))
        self.dense, self.b = dense.copy(), b.copy()
        reset_peak_memory()

    def time_cho_solve(self, T, n, central, dtype):
        dense_solve(self.dense, self.b)

    def peakmem_cho_solve(self, T, n, central, dtype):
        dense_solve(self.dense, self.b)

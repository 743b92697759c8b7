"""bandsolve's S-MNN solve: forward, forward+backward, reused factorisation.

``time_*`` report wall time, ``peakmem_*`` the peak resident set of the benchmark process
(the problem built in ``setup`` included; see ``common.py`` for what else). Parameters:
see ``common.py``.
"""

import numpy as np

import bandsolve

from .common import (
    B_VALUES,
    CENTRAL_VALUES,
    DTYPE_VALUES,
    N_VALUES,
    T_VALUES,
    cached,
    make_problem,
    reset_peak_memory,
    skip_if_too_big,
    warm_once,
)

PARAMS = (T_VALUES, B_VALUES, N_VALUES, CENTRAL_VALUES, DTYPE_VALUES)
PARAM_NAMES = ["T", "B", "n", "central", "dtype"]


class _Grid:
    """Shared set-up: skip what exceeds the memory budget, build the problem, warm up."""

    params = PARAMS
    param_names = PARAM_NAMES
    timeout = 600
    # one call per sample; setup warms up, so asv's own warm-up would only cost time
    repeat = (1, 5, 20.0)
    rounds = 1
    warmup_time = 0.0
    copies_of_solution = 2

    def setup(self, T, B, n, central, dtype):
        skip_if_too_big(B, T, n, central, dtype, self.copies_of_solution)
        self.central = central
        self._prepare(make_problem(B, T, n, dtype), (T, B, n, central, dtype))
        warm_once((type(self).__name__, T, B, n, central, dtype), self._call)
        reset_peak_memory()

    def _prepare(self, args, key):
        self.args = args


class Forward(_Grid):
    """``smnn_solve`` (validation, assembly, factorisation, substitution)."""

    def _call(self):
        bandsolve.smnn_solve(*self.args, central_smoothness=self.central)

    def time_forward(self, T, B, n, central, dtype):
        self._call()

    def peakmem_forward(self, T, B, n, central, dtype):
        self._call()


class ForwardBackward(_Grid):
    """``smnn_solve_vjp`` and its ``vjp`` (the training step of an S-MNN layer)."""

    copies_of_solution = 4  # u, ubar, y and the coefficient gradient's share

    def _prepare(self, args, key):
        self.args = args
        shape = args[0].shape[:-3] + args[0].shape[-2:]  # (B, T, D, O)
        self.ubar = cached("ubar", key, lambda: np.random.default_rng(1)
                           .standard_normal(shape).astype(args[0].dtype))

    def _call(self):
        u, vjp = bandsolve.smnn_solve_vjp(*self.args, central_smoothness=self.central)
        vjp(self.ubar)

    def time_forward_backward(self, T, B, n, central, dtype):
        self._call()

    def peakmem_forward_backward(self, T, B, n, central, dtype):
        self._call()


class ReusedFactor(_Grid):
    """``smnn_factor(...).solve`` for a new right-hand side and initial values (the
    frozen left-hand side): substitutions only, no refactorisation."""

    copies_of_solution = 3

    def _prepare(self, args, key):
        coefficients, rhs, init, steps = args
        self.factor = cached("factor", key, lambda: bandsolve.smnn_factor(
            coefficients, steps, init_shape=(1, init.shape[-1]),
            central_smoothness=self.central))
        # a new right-hand side and new initial values (cheap to derive, never seen)
        self.rhs = 0.5 * rhs + 1.0
        self.init = -init

    def _call(self):
        self.factor.solve(self.rhs, self.init)

    def time_solve_new_rhs(self, T, B, n, central, dtype):
        self._call()

    def peakmem_solve_new_rhs(self, T, B, n, central, dtype):
        self._call()

"""Seeded S-MNN problems for the accuracy suite and ``tools/accuracy_table.py``.

Nothing here imports ``bandsolve``. Every problem is generated with float32-representable
values (drawn in float64, rounded to float32, held as float64), so the float32 and the
float64 run of a case solve exactly the same least-squares problem and share one exact
reference (``tests/exact.py`` caches by value).

A :class:`Case` is hashable and names itself; :meth:`Case.arrays` gives
``(coefficients (T, E, D, O), rhs (T, E), init (Ti, D, Oi), steps (T-1,))`` in a dtype.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


def _f32(a):
    """Round to float32-representable values, held as float64."""
    return np.asarray(a, dtype=np.float64).astype(np.float32).astype(np.float64)


@dataclass(frozen=True)
class Case:
    """One system. ``kind``: ``"random"`` (Gaussian coefficients, rhs and initial
    values), ``"oscillator"`` (u'' + 0.3 u' + 4 u = 0, u(0) = 1, u'(0) = 0, at any order
    O >= 3: the higher-order coefficients are zero). ``vary``: steps ``h * U(0.5, 1.5)``
    instead of uniform. ``init``: one initial step with ``min(2, O)`` orders given;
    ``full_init``: initial values at every step and order instead (with a small
    ``wi`` they barely change the problem, and ``init_bar`` then exposes all of
    ``y = M^{-1} ubar``)."""

    kind: str = "random"
    T: int = 12
    D: int = 1
    E: int = 1
    O: int = 3
    h: float = 0.1
    vary: bool = False
    init: bool = True
    central: bool = False
    seed: int = 0
    we: float = 1.0
    wi: float = 1.0
    ws: float = 1.0
    full_init: bool = False

    @property
    def name(self):
        if self.kind == "oscillator":
            return f"oscillator O={self.O} h={self.h:g} T={self.T}" + (" central" if self.central else "")
        return (f"{'central' if self.central else 'taylor'} O={self.O} h={self.h:g}"
                f"{'~' if self.vary else ''} D={self.D} E={self.E} "
                f"{'fullinit' if self.full_init else 'init' if self.init else 'noinit'} "
                f"T={self.T} s{self.seed}" + (f" wi={self.wi:g}" if self.wi != 1 else ""))

    @property
    def weights(self):
        """Keyword arguments for ``bandsolve.smnn_solve``."""
        return {"weight_equation": self.we, "weight_init": self.wi, "weight_smooth": self.ws,
                    "central_smoothness": self.central}

    @property
    def exact_kw(self):
        """Keyword arguments for ``exact.exact_solution``."""
        return {"we": self.we, "wi": self.wi, "ws": self.ws, "central": self.central}

    def arrays(self, dtype=np.float64):
        T, D, E, O = self.T, self.D, self.E, self.O
        rng = np.random.default_rng(self.seed)
        if self.kind == "oscillator":
            c = np.zeros((T, 1, 1, O))
            c[..., :3] = [4.0, 0.3, 1.0]
            r = np.zeros((T, 1))
            g = np.array([[[1.0, 0.0]]])
        else:
            c = rng.standard_normal((T, E, D, O))
            r = rng.standard_normal((T, E))
            g = (rng.standard_normal((1, D, min(2, O))) if self.init
                 else np.zeros((0, D, 0)))
            if self.full_init:  # every entry has an initial-value row: init_bar = wi^2 y
                g = rng.standard_normal((T, D, O))
        h = np.full(T - 1, self.h)
        if self.vary:
            h = h * rng.uniform(0.5, 1.5, T - 1)
        return tuple(np.asarray(_f32(a), dtype=dtype) for a in (c, r, g, h))


def grid_cases():
    """The parametrised grid: both smoothness modes, O = 1..6 (central: 3..6), h from 0.2
    to 1e-3; D, E, initial values and uniform/varying steps cycle with the index, so each
    value of each occurs across the grid (50 systems, T = 12)."""
    cases = []
    i = 0
    for central in (False, True):
        for O in range(3 if central else 1, 7):
            for h in (0.2, 0.05, 0.01, 0.003, 0.001):
                i += 1
                cases.append(Case(T=12, D=1 + i % 2, E=1 + (i // 2) % 2, O=O, h=h,
                                  vary=(i // 3) % 2 == 1, init=(i // 4) % 2 == 0,
                                  central=central, seed=i))
    return cases


def weighted_cases():
    """A few systems with non-unit weights (powers of two, exact in float32)."""
    return [Case(T=10, D=2, E=2, O=3, h=0.05, we=4.0, wi=0.5, ws=2.0, seed=101),
            Case(T=10, D=1, E=2, O=4, h=0.01, we=0.25, wi=8.0, ws=1.0, central=True,
                 seed=102)]


README_CASE = Case(kind="oscillator", T=1000, O=3, h=0.01)


def issue_cases():
    """The cases named in the accuracy issue: the README oscillator, and O=5 at three
    steps, as the oscillator and as a random system (D=1, E=1, initial values)."""
    return [README_CASE] + [
        Case(kind=kind, T=T, O=5, h=h, seed=200)
        for kind, T in (("oscillator", 100), ("random", 50)) for h in (0.01, 0.003, 0.001)]


def random_sweep_cases(n, seed=0):
    """``n`` random full-rank systems of random shape (T 8-20, D 1-2, E 1-3, O 2-5, h
    0.02-0.3, with initial values), for the float32 sweep: cond(A) mostly 1e2-1e5, the
    range where float32 must be accurate."""
    rng = np.random.default_rng(seed)
    cases = []
    for k in range(n):
        O = int(rng.integers(2, 6))
        cases.append(Case(T=int(rng.integers(8, 21)), D=int(rng.integers(1, 3)),
                          E=int(rng.integers(1, 4)), O=O, h=float(rng.uniform(0.02, 0.3)),
                          vary=bool(rng.integers(0, 2)), init=True,
                          central=bool(O >= 3 and rng.integers(0, 2)), seed=1000 + k))
    return cases

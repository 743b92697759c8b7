"""``bandsolve demo``: standalone validation on linear ODEs and a short speed comparison.

Two parts, both printed as aligned tables (``run_demo``):

1. **Standalone validation.** Linear ODEs with closed-form solutions (the linear systems of
   Strogatz's textbook that ODEBench uses: an RC circuit, exponential population growth,
   a language-death model, harmonic and damped harmonic oscillators, a third-order
   system), plus a 2-D linear system, are solved directly by :func:`bandsolve.smnn_solve`
   from their initial values only (no data, no training): step 0.01, 1000 steps, 3
   derivative orders, central smoothness. The maximum error of ``u``, ``u'`` and ``u''``
   is measured against the closed form and against ``scipy.integrate.solve_ivp`` (DOP853,
   rtol 1e-10); a second table gives the error against the step size and the observed
   order of convergence ``log2(err(2h) / err(h))``.
2. **Speed.** Damped-oscillator systems (``D = 1``, ``O = 3``, central smoothness, so the
   normal matrix is block pentadiagonal with 3 x 3 blocks), one system at several lengths
   and two batches, solved by ``bandsolve.smnn_solve`` (everything included), by
   ``bandsolve.block_cholesky`` on the pre-assembled band, by LAPACK's banded Cholesky on
   the same band (``scipy.linalg.solveh_banded``; a Python loop over a batch), and, for
   small ``T``, by the MNN-dense baseline (:func:`bandsolve.baselines.mnn_dense_solve`,
   O(T^3)). Best of repeats after warm-up calls, with ratios measured in the same run.

How each ODE is written in 3 orders (``u[t, d, 0..2]`` = value, first and second
derivative): a second-order ODE is one equation on orders 0..2. A first-order system
``y' = A y + b`` (``D`` states) is written as ``D`` equations ``u_d' - (A u)_d = b_d``
plus their time derivatives ``u_d'' - (A u')_d = 0``, so that the ODE governs every order
(otherwise ``u''`` is set by the smoothness rows alone and is least accurate at the ends:
about 1e-3 at the first step for h = 0.01). The third-order ODE is its companion
first-order system with ``D = 3``.

The functions here are also used by ``examples/linear_odes.py``.
"""

import math
import time
from dataclasses import dataclass

import numpy as np
import scipy.linalg
from scipy.integrate import solve_ivp

from ..banded import block_cholesky
from ..baselines import mnn_dense_solve
from ..smnn import smnn_normal_equations, smnn_solve
from .bench import lapack_band
from .timing import best_times

# --------------------------------------------------------------------------- the systems


@dataclass(frozen=True)
class LinearSystem:
    """A linear ODE with a closed-form solution, written for the S-MNN solver.

    coefficients ``(E, D, 3)``, rhs ``(E,)``, init ``(1, D, Oi)`` (constant in time);
    ``matrix`` ``(m, m)``, ``offset`` ``(m,)``, ``y0`` ``(m,)`` give the first-order form
    ``y' = matrix @ y + offset`` for ``solve_ivp``, whose component 0 is the observed
    ``x``. ``exact(t)`` returns ``(len(t), 3)``: ``x, x', x''`` in closed form.
    """

    name: str
    equation: str
    coefficients: np.ndarray
    rhs: np.ndarray
    init: np.ndarray
    matrix: np.ndarray
    offset: np.ndarray
    y0: np.ndarray
    exact: object


def _exponential_sum(constant, amplitudes, rates):
    """Closed form ``x(t) = constant + Re(sum_j a_j exp(lambda_j t))`` and its first two
    derivatives ``Re(sum_j a_j lambda_j^k exp(lambda_j t))``; returns ``exact(t)``."""
    a = np.asarray(amplitudes, dtype=complex)
    lam = np.asarray(rates, dtype=complex)

    def exact(t):
        modes = a * np.exp(np.outer(t, lam))  # (T, J)
        out = np.stack([(modes * lam**k).sum(axis=1).real for k in range(3)], axis=1)
        out[:, 0] += constant
        return out

    return exact


def _first_order(name, equation, matrix, offset, y0, exact):
    """A first-order system ``y' = A y + b`` in 3 orders: ``D`` equations and their time
    derivatives (``E = 2D``), initial values of the states only (``Oi = 1``)."""
    A = np.atleast_2d(np.asarray(matrix, dtype=float))
    b = np.atleast_1d(np.asarray(offset, dtype=float))
    D = A.shape[0]
    coefficients = np.zeros((2 * D, D, 3))
    for d in range(D):
        coefficients[d, :, 0] = -A[d]          # u_d' - (A u)_d = b_d
        coefficients[d, d, 1] += 1.0
        coefficients[D + d, :, 1] = -A[d]      # u_d'' - (A u')_d = 0
        coefficients[D + d, d, 2] += 1.0
    rhs = np.concatenate([b, np.zeros(D)])
    init = np.asarray(y0, dtype=float).reshape(1, D, 1)
    return LinearSystem(name, equation, coefficients, rhs, init, A, b,
                        np.asarray(y0, dtype=float), exact)


def _second_order(name, equation, stiffness, damping, x0, v0, exact):
    """``x'' + damping x' + stiffness x = 0``: one equation on orders 0..2, ``Oi = 2``."""
    coefficients = np.array([[[stiffness, damping, 1.0]]])
    return LinearSystem(name, equation, coefficients, np.zeros(1),
                        np.array([[[x0, v0]]]), np.array([[0.0, 1.0], [-stiffness, -damping]]),
                        np.zeros(2), np.array([x0, v0]), exact)


def linear_systems():
    """The six standalone-validation systems (parameters chosen here; they are not claimed
    to match ODEBench's constants)."""
    systems = []
    # RC circuit charging towards the source voltage: V' = (Vs - V) / (R C).
    tau, vs, v_init = 2.0, 5.0, 0.0
    systems.append(_first_order(
        "RC circuit", "V' = (5 - V)/2, V(0) = 0", -1.0 / tau, vs / tau, [v_init],
        _exponential_sum(vs, [v_init - vs], [-1.0 / tau])))
    # Exponential population growth: N' = r N.
    r, n0 = 0.23, 4.78
    systems.append(_first_order(
        "population growth", "N' = 0.23 N, N(0) = 4.78", r, 0.0, [n0],
        _exponential_sum(0.0, [n0], [r])))
    # Language death (fraction x speaking one language): x' = a (1 - x) - b x.
    a, b, x0 = 0.32, 0.28, 0.14
    fixed = a / (a + b)
    systems.append(_first_order(
        "language death", "x' = 0.32 (1 - x) - 0.28 x, x(0) = 0.14", -(a + b), a, [x0],
        _exponential_sum(fixed, [x0 - fixed], [-(a + b)])))
    # Harmonic oscillator: x'' + w^2 x = 0, x = Re((x0 - i v0/w) e^{i w t}).
    w2, x0, v0 = 2.1, 1.0, 0.5
    w = math.sqrt(w2)
    systems.append(_second_order(
        "harmonic oscillator", "x'' + 2.1 x = 0, x(0) = 1, x'(0) = 0.5", w2, 0.0, x0, v0,
        _exponential_sum(0.0, [x0 - 1j * v0 / w], [1j * w])))
    # Damped harmonic oscillator: x'' + g x' + w^2 x = 0 (underdamped).
    w2, g, x0, v0 = 4.5, 0.43, 1.0, 0.5
    wd = math.sqrt(w2 - g * g / 4)
    systems.append(_second_order(
        "damped oscillator", "x'' + 0.43 x' + 4.5 x = 0, x(0) = 1, x'(0) = 0.5", w2, g,
        x0, v0,
        _exponential_sum(0.0, [x0 - 1j * (v0 + g * x0 / 2) / wd], [-g / 2 + 1j * wd])))
    # Third order: x''' + 3 x'' + 4 x' + 2 x = 0 = (D + 1)(D^2 + 2 D + 2) x, roots -1, -1 +- i.
    # x = p e^{-t} + Re(q e^{(-1+i) t}); p, q from x(0) = 1, x'(0) = 0, x''(0) = 0.
    y0 = np.array([1.0, 0.0, 0.0])
    lam = -1.0 + 1.0j
    # rows: derivative k at t = 0 of [e^{-t}, Re(e^{lam t}), Re(i e^{lam t})]
    basis = np.array([[(-1.0) ** k, (lam**k).real, (1j * lam**k).real] for k in range(3)])
    p, q_re, q_im = np.linalg.solve(basis, y0)  # x = p e^{-t} + Re((q_re + i q_im) e^{lam t})
    systems.append(_first_order(
        "third-order system", "x''' + 3 x'' + 4 x' + 2 x = 0, x(0) = 1, x'(0) = x''(0) = 0",
        [[0, 1, 0], [0, 0, 1], [-2, -4, -3]], [0, 0, 0], y0,
        _exponential_sum(0.0, [p, q_re + 1j * q_im], [-1.0, lam])))
    return systems


def linear_2d_system():
    """A 2-D linear system ``y' = A y`` (damped rotation) with its closed form."""
    A = np.array([[-0.5, 2.0], [-2.0, -0.5]])
    y0 = np.array([1.0, 0.5])
    # x = y[0] = e^{-t/2} (cos 2t + 0.5 sin 2t) = Re((1 - 0.5 i) e^{(-1/2 + 2i) t})
    return _first_order("2-D linear system", "y' = [[-0.5, 2], [-2, -0.5]] y, y(0) = (1, 0.5)",
                        A, [0.0, 0.0], y0,
                        _exponential_sum(0.0, [1.0 - 0.5j], [-0.5 + 2.0j]))


# --------------------------------------------------------------------------- solving


def solve_bandsolve(system, step, n_steps, central_smoothness=True):
    """``x, x', x''`` ``(n_steps, 3)`` of ``system`` from bandsolve (constant step)."""
    u = smnn_solve(system.coefficients[None], system.rhs[None], system.init, np.array([step]),
                   n_steps=n_steps, central_smoothness=central_smoothness)
    return u[:, 0, :]


def solve_reference(system, t):
    """``x, x', x''`` ``(len(t), 3)`` from ``scipy.integrate.solve_ivp`` (DOP853, rtol 1e-10,
    atol 1e-12); the derivatives come from the ODE applied to the integrated state."""
    A, b = system.matrix, system.offset
    solution = solve_ivp(lambda _, y: A @ y + b, (t[0], t[-1]), system.y0, t_eval=t,
                         method="DOP853", rtol=1e-10, atol=1e-12)
    if not solution.success:
        raise RuntimeError(f"solve_ivp failed on {system.name}: {solution.message}")
    y = solution.y
    dy = A @ y + b[:, None]
    return np.stack([y[0], dy[0], (A @ dy)[0]], axis=1)


def validate(systems, step=0.01, n_steps=1000, central_smoothness=True):
    """Maximum errors of ``u, u', u''`` against the closed form and ``solve_ivp``.

    Returns one dict per system: ``name``, ``equation``, ``exact`` (3 errors),
    ``solve_ivp`` (3 errors), ``scale`` (max ``|x|, |x'|, |x''|``) and
    ``reference_error`` (``solve_ivp`` against the closed form, 3 numbers).
    """
    t = np.arange(n_steps) * step
    rows = []
    for system in systems:
        u = solve_bandsolve(system, step, n_steps, central_smoothness)
        exact = system.exact(t)
        reference = solve_reference(system, t)
        rows.append(dict(
            name=system.name, equation=system.equation,
            exact=np.abs(u - exact).max(axis=0).tolist(),
            solve_ivp=np.abs(u - reference).max(axis=0).tolist(),
            scale=np.abs(exact).max(axis=0).tolist(),
            reference_error=np.abs(reference - exact).max(axis=0).tolist()))
    return rows


def convergence(systems, steps=(0.04, 0.02, 0.01, 0.005), t_end=10.0,
                central_smoothness=True):
    """Maximum error of ``u`` (against the closed form) on ``[0, t_end]`` for each step
    size, and the observed orders ``log2(err(h_i) / err(h_{i+1}))`` (steps halving).

    Returns one dict per system: ``name``, ``errors`` (one per step), ``orders``.
    """
    rows = []
    for system in systems:
        errors = []
        for h in steps:
            n_steps = int(round(t_end / h)) + 1
            t = np.arange(n_steps) * h
            u = solve_bandsolve(system, h, n_steps, central_smoothness)
            errors.append(float(np.abs(u[:, 0] - system.exact(t)[:, 0]).max()))
        ratios = np.asarray(errors[:-1]) / np.asarray(errors[1:])
        orders = (np.log(ratios) / np.log(np.asarray(steps[:-1]) / np.asarray(steps[1:])))
        rows.append(dict(name=system.name, errors=errors, orders=orders.tolist()))
    return rows


# --------------------------------------------------------------------------- speed


def _speed_problem(n_steps, batch=1, step=0.01):
    """Damped oscillators (one per batch element, stiffness 4.5 + 0.01 b) as S-MNN inputs
    with a batch axis of length ``batch``."""
    c = np.zeros((batch, 1, 1, 1, 3))
    c[:, 0, 0, 0] = [4.5, 0.43, 1.0]
    c[:, 0, 0, 0, 0] += 0.01 * np.arange(batch)
    return (c, np.zeros((batch, 1, 1)), np.tile([[[1.0, 0.5]]], (batch, 1, 1, 1)),
            np.full((batch, n_steps - 1), step))


def speed(lengths=(1000, 10_000, 100_000), dense_max=1000, repeats=3, batches=()):
    """Seconds per solve, best of repeats after warm-up calls, for one system of each
    length in ``lengths`` and for each ``(batch, length)`` in ``batches`` (LAPACK then
    loops over the systems in Python):

    - ``bandsolve_s``: :func:`bandsolve.smnn_solve` (validation, assembly, factorisation,
      substitution);
    - ``bandsolve_factor_s``: :func:`bandsolve.block_cholesky` and ``.solve`` on the
      pre-assembled band, the same work as LAPACK's;
    - ``lapack_s``: ``scipy.linalg.solveh_banded`` (``pbsv``) on the pre-assembled band in
      LAPACK storage;
    - ``dense_s``: the MNN-dense baseline (assembly, dense Cholesky, solve), one cold call,
      only for ``T <= dense_max``.

    Also records how far the solutions are apart. Returns one dict per length.
    """
    rows = []
    cases = [(1, n) for n in lengths] + [tuple(case) for case in batches]
    for batch, n_steps in cases:
        problem = _speed_problem(n_steps, batch)
        kw = dict(central_smoothness=True)
        u = smnn_solve(*problem, **kw)
        matrix, b = smnn_normal_equations(*problem, **kw)
        bands = [lapack_band(matrix, i, tight=False)[0] for i in range(batch)]
        rhs = b.reshape(batch, -1)

        def lapack():
            return [scipy.linalg.solveh_banded(bands[i], rhs[i], lower=True,
                                               check_finite=False) for i in range(batch)]

        x_lapack = np.stack(lapack())
        # interleaved, so that the ratios see the same disturbances of a shared machine
        t_band, t_factor, t_lapack = best_times(
            [(lambda: smnn_solve(*problem, **kw), None),
             (lambda: block_cholesky(matrix).solve(b), None), (lapack, None)],
            repeat=repeats)
        row = dict(batch=batch, n_steps=n_steps, bandsolve_s=t_band,
                   bandsolve_factor_s=t_factor, lapack_s=t_lapack,
                   lapack_difference=float(np.abs(x_lapack - u.reshape(batch, -1)).max()),
                   dense_s=None, dense_difference=None)
        if batch == 1 and n_steps <= dense_max:
            start = time.perf_counter()
            u_dense = mnn_dense_solve(*problem)
            row["dense_s"] = time.perf_counter() - start
            row["dense_difference"] = float(np.abs(u_dense - u).max())
        rows.append(row)
    return rows


# --------------------------------------------------------------------------- printing


def format_table(header, rows, align=None):
    """Aligned plain-text table; ``rows`` are lists of strings, ``align`` a string of
    ``'<'``/``'>'`` per column (default: first column left, the rest right)."""
    align = align or "<" + ">" * (len(header) - 1)
    widths = [max(len(str(r[i])) for r in [header] + rows) for i in range(len(header))]

    def line(cells):
        return "  ".join(f"{str(c):{a}{w}}" for c, a, w in zip(cells, align, widths)).rstrip()

    rule = "  ".join("-" * w for w in widths)
    return "\n".join([line(header), rule] + [line(r) for r in rows])


def _e(value):
    return "-" if value is None else f"{value:.1e}"


def validation_text(rows, step, n_steps):
    header = ["system", "|u-exact|", "|u'-exact|", "|u''-exact|",
              "|u-ivp|", "|u'-ivp|", "|u''-ivp|", "max|u|", "relative"]
    body = [[r["name"], *map(_e, r["exact"]), *map(_e, r["solve_ivp"]), f"{r['scale'][0]:.3g}",
             _e(relative_error(r))] for r in rows]
    title = (f"Standalone validation: max error over {n_steps} steps of h = {step} "
             "(3 orders, initial values only; ivp = solve_ivp DOP853 rtol 1e-10;\n"
             "relative = max over u, u', u'' of |error| / max |exact|)")
    return title + "\n" + format_table(header, body)


def relative_error(row):
    """max over ``u, u', u''`` of the error against the closed form divided by the
    maximum of the exact ``|x|, |x'|, |x''|``."""
    return max(e / s for e, s in zip(row["exact"], row["scale"]))


def convergence_text(rows, steps):
    header = ["system"] + [f"h={h:g}" for h in steps] + ["observed order"]
    body = [[r["name"], *map(_e, r["errors"]), " ".join(f"{o:.2f}" for o in r["orders"])]
            for r in rows]
    return ("Error of u against the step size on [0, 10] (observed order = "
            "log2(err(2h)/err(h)))\n" + format_table(header, body))


def _ms(seconds):
    return "-" if seconds is None else f"{1e3 * seconds:.3g}"


def speed_text(rows):
    header = ["batch x T", "smnn_solve", "block_cholesky", "LAPACK pbsv", "MNN-dense",
              "LAPACK/block_cholesky", "MNN-dense/smnn_solve"]
    body = []
    for r in rows:
        dense_ratio = "-" if r["dense_s"] is None else f"{r['dense_s'] / r['bandsolve_s']:.0f}x"
        body.append([f"{r['batch']} x {r['n_steps']}", _ms(r["bandsolve_s"]),
                     _ms(r["bandsolve_factor_s"]), _ms(r["lapack_s"]), _ms(r["dense_s"]),
                     f"{r['lapack_s'] / r['bandsolve_factor_s']:.2f}x", dense_ratio])
    note = ("Damped-oscillator systems (D=1, O=3, central smoothness: block-pentadiagonal, "
            "3x3 blocks), milliseconds, best of repeats.\n"
            "smnn_solve: validation + assembly + factorisation + solve. block_cholesky and "
            "LAPACK pbsv (scipy solveh_banded):\nfactorisation + solve of the same "
            "pre-assembled band. MNN-dense: the original MNN's formulation\n"
            "(one slack variable for all smoothness rows, so its solution differs slightly) "
            "solved by a dense Cholesky,\nO(T^3), one run, small T only ('-'). Batches: "
            "bandsolve factors all systems in one parallel call,\nLAPACK in a Python loop. "
            "The times are from this machine, now: on a busy machine they vary\nfrom run "
            "to run, and a ratio can fall below 1.")
    worst = max(r["lapack_difference"] for r in rows)
    dense = [r["dense_difference"] for r in rows if r["dense_difference"] is not None]
    check = verdict("bandsolve and LAPACK solve the same normal equations",
                    f"max |bandsolve - LAPACK| = {worst:.1e}", "< 1e-8 (rounding only)",
                    worst < LAPACK_AGREEMENT)
    if dense:
        check += "\n" + verdict(
            "the MNN-dense solution differs only through its slack variable",
            f"max |bandsolve - MNN-dense| = {max(dense):.1e}", "< 1e-6",
            max(dense) < DENSE_AGREEMENT)
    return ("Speed (ratios > 1: bandsolve faster)\n" + note + "\n" +
            format_table(header, body) + "\n" + check)


# what the demo expects, with the tolerances that tests/test_examples.py checks
RELATIVE_ERROR_LIMIT = 1e-3   # second-order scheme at h = 0.01: errors of order h^2 / 10
EXPECTED_ORDER, ORDER_TOLERANCE = 2.0, 0.1
LAPACK_AGREEMENT = 1e-8       # same matrix: rounding, about cond(M) * eps
DENSE_AGREEMENT = 1e-6        # a slightly different least-squares problem


def verdict(claim, observed, expected, held):
    """One line: what was expected, what was observed, and whether it held."""
    return f"{'held' if held else 'NOT HELD'}: {claim}: expected {expected}, observed {observed}"


def validation_verdict(rows):
    worst = max(relative_error(r) for r in rows)
    return verdict("every system matches its closed form and solve_ivp",
                   f"largest relative error {worst:.1e}", f"< {RELATIVE_ERROR_LIMIT:g}",
                   worst < RELATIVE_ERROR_LIMIT and all(
                       max(e / s for e, s in zip(r["solve_ivp"], r["scale"]))
                       < RELATIVE_ERROR_LIMIT for r in rows))


def convergence_verdict(rows):
    orders = [o for r in rows for o in r["orders"]]
    return verdict("second-order convergence (halving h divides the error by 4)",
                   f"orders {min(orders):.2f} to {max(orders):.2f}",
                   f"{EXPECTED_ORDER:g} +- {ORDER_TOLERANCE:g}",
                   all(abs(o - EXPECTED_ORDER) < ORDER_TOLERANCE for o in orders))


def warm_up(out=print):
    """Compile (first run) or load from Numba's disk cache the kernels the demo uses,
    saying so: a cold first run is silent for tens of seconds otherwise."""
    started = time.perf_counter()
    out("compiling kernels (first run only, ~30-60 s; later runs load them from Numba's "
        "disk cache in about a second) ...", flush=True)
    small = _speed_problem(8, batch=2)
    smnn_solve(*small, central_smoothness=True)
    smnn_solve(*_speed_problem(8), central_smoothness=True)
    matrix, b = smnn_normal_equations(*small, central_smoothness=True)
    block_cholesky(matrix).solve(b)
    out(f"kernels ready ({time.perf_counter() - started:.1f} s)", flush=True)


def run_demo(quick=False, out=print):
    """Print the demo tables with a verdict under each; returns the measured numbers as a
    dict. ``out`` is called like ``print`` (with ``flush=True`` for progress lines)."""
    started = time.perf_counter()
    warm_up(out)
    out("")
    step, n_steps = 0.01, 1000
    systems = linear_systems() + [linear_2d_system()]
    out(f"[1/3] solving {len(systems)} linear ODEs from their initial values ...", flush=True)
    rows = validate(systems, step, n_steps)
    out(validation_text(rows, step, n_steps))
    out(validation_verdict(rows))
    out("")
    steps = (0.04, 0.02, 0.01) if quick else (0.04, 0.02, 0.01, 0.005)
    out(f"[2/3] the same ODEs at {len(steps)} step sizes ...", flush=True)
    conv = convergence(systems, steps)
    out(convergence_text(conv, steps))
    out(convergence_verdict(conv))
    out("")
    lengths = (1000, 10_000) if quick else (300, 1000, 10_000, 100_000)
    batches = ((64, 1000),) if quick else ((64, 1000), (1024, 100))
    out("[3/3] timing bandsolve, LAPACK and the MNN-dense baseline ...", flush=True)
    timing = speed(lengths, dense_max=1000, repeats=2 if quick else 3, batches=batches)
    out(speed_text(timing))
    out(f"\n(demo took {time.perf_counter() - started:.1f} s)")
    return dict(validation=rows, convergence=conv, speed=timing)

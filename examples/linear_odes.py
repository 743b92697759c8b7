"""Standalone validation: linear ODEs solved directly by bandsolve, no training.

The linear systems of Strogatz's textbook used by ODEBench (an RC circuit, exponential
population growth, a language-death model, a harmonic oscillator, a damped harmonic
oscillator, a third-order system; parameters chosen here, printed by the script) are
solved by ``bandsolve.smnn_solve`` from their initial values only: step 0.01, 1000 steps,
3 derivative orders (value, first and second derivative), central smoothness. The script
prints the maximum error of ``u``, ``u'`` and ``u''`` against the closed-form solution and
against ``scipy.integrate.solve_ivp`` (DOP853, rtol 1e-10), and the error of ``u`` against
the step size with the observed order of convergence (the S-MNN discretisation is second
order). See ``bandsolve/apps/demo.py`` for how each ODE is written in 3 orders.

    python examples/linear_odes.py [--quick] [--json PATH] [--plot PATH]

``--json`` holds, per system, ``exact`` and ``solve_ivp`` (the three maximum errors),
``scale`` (the maximum of ``|x|, |x'|, |x''|``), and the convergence table.
"""

import numpy as np

from _common import parse_args, progress, pyplot, save_figure, write_json

from bandsolve.apps.demo import (
    convergence,
    convergence_text,
    linear_systems,
    solve_bandsolve,
    validate,
    validation_text,
)

STEP, N_STEPS = 0.01, 1000


def main(argv=None):
    args = parse_args(__doc__.splitlines()[0], argv, extra=lambda p: p.add_argument(
        "--no-central", action="store_true",
        help="Taylor smoothness rows only (no central rows)"))
    central = not args.no_central
    systems = linear_systems()
    progress(f"solving {len(systems)} linear ODEs, h = {STEP}, {N_STEPS} steps, "
             f"central smoothness {'on' if central else 'off'}")
    for system in systems:
        print(f"  {system.name:<20} {system.equation}")
    rows = validate(systems, STEP, N_STEPS, central_smoothness=central)
    print(validation_text(rows, STEP, N_STEPS), flush=True)

    steps = (0.04, 0.02, 0.01) if args.quick else (0.04, 0.02, 0.01, 0.005, 0.0025)
    progress(f"convergence study, h = {', '.join(map(str, steps))}")
    conv = convergence(systems, steps, central_smoothness=central)
    print(convergence_text(conv, steps), flush=True)

    write_json(args.json, dict(step=STEP, n_steps=N_STEPS, central_smoothness=central,
                               systems=rows, convergence=dict(steps=list(steps), systems=conv)))
    if args.plot:
        plot(systems, conv, steps, central, args.plot)


def plot(systems, conv, steps, central, path):
    plt = pyplot()
    fig, axes = plt.subplots(2, 4, figsize=(15, 6.5))
    t = np.arange(N_STEPS) * STEP
    for ax, system in zip(axes.flat, systems):
        u = solve_bandsolve(system, STEP, N_STEPS, central)
        ax.plot(t, system.exact(t)[:, 0], color="0.6", lw=3, label="closed form")
        ax.plot(t[::40], u[::40, 0], "o", ms=3, color="C0", label="bandsolve")
        ax.set_title(system.name, fontsize=10)
        ax.set_xlabel("t")
        ax.set_ylabel("u(t)")
    axes.flat[0].legend(fontsize=8)
    ax = axes.flat[len(systems)]
    for row in conv:
        ax.loglog(steps, row["errors"], "o-", ms=3, label=row["name"])
    h = np.asarray(steps)
    ax.loglog(h, 0.5 * conv[0]["errors"][0] * (h / h[0]) ** 2, "k--", lw=1, label="slope 2")
    ax.set_xticks(steps)
    ax.set_xticklabels([f"{step:g}" for step in steps], fontsize=7)
    ax.xaxis.set_minor_formatter(plt.NullFormatter())
    ax.set_xlabel("step h")
    ax.set_ylabel("max |u - exact|")
    ax.set_title("convergence", fontsize=10)
    axes.flat[len(systems) + 1].axis("off")
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.02, 1.0))
    fig.suptitle(f"bandsolve on linear ODEs from initial values only (h = {STEP}, 3 orders)")
    fig.tight_layout()
    save_figure(fig, path)


if __name__ == "__main__":
    main()

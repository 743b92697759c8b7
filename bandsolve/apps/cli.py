"""The ``bandsolve`` command (also ``python -m bandsolve``).

Subcommands:

- ``bandsolve demo [--quick] [--json PATH]``: the standalone validation on linear ODEs and
  a short speed comparison against LAPACK's banded solve and the MNN-dense baseline,
  printed as tables (under a minute on a laptop CPU; see :mod:`bandsolve.apps.demo`).
- ``bandsolve bench [ARGS...]``: the benchmark suite, :func:`bandsolve.apps.bench.main` called
  with ``ARGS``; imported only when asked for, so a missing or broken benchmark module
  never breaks ``demo``.
"""

import argparse
import importlib
import json
import sys

from bandsolve._version import __version__


def _demo(args):
    from .demo import run_demo

    results = run_demo(quick=args.quick)
    if args.json:
        with open(args.json, "w", encoding="utf-8") as handle:
            json.dump(results, handle, indent=2)
            handle.write("\n")
        print(f"metrics written to {args.json}")
    return 0


def _bench(bench_args):
    try:
        bench = importlib.import_module("bandsolve.apps.bench")
    except ModuleNotFoundError as error:
        if error.name not in ("bandsolve.apps.bench", "bandsolve.apps", "bandsolve"):
            raise  # the module exists but one of its own imports is missing: show that
        print("bandsolve bench: the benchmark module bandsolve.apps.bench is not available in "
              "this installation, so there is nothing to run. `bandsolve demo` gives a "
              "short speed comparison.", file=sys.stderr)
        return 2
    main = getattr(bench, "main", None)
    if main is None:
        print("bandsolve bench: bandsolve.apps.bench has no main(argv) function.", file=sys.stderr)
        return 2
    status = main(list(bench_args))
    return 0 if status is None else int(status)


def build_parser():
    parser = argparse.ArgumentParser(
        prog="bandsolve",
        description="Batched block-banded SPD solves for Scalable Mechanistic Neural Networks.")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    demo = commands.add_parser(
        "demo", help="validate on linear ODEs and compare speed (under a minute)",
        description="Standalone validation on linear ODEs (errors against closed forms and "
                    "scipy's solve_ivp, observed order of convergence) and a short speed "
                    "comparison against LAPACK's banded solve and the MNN-dense baseline.")
    demo.add_argument("--quick", action="store_true", help="fewer step sizes and lengths")
    demo.add_argument("--json", metavar="PATH", help="also write the numbers to PATH")
    demo.set_defaults(run=_demo)
    bench = commands.add_parser(
        "bench", help="run the benchmark suite (bandsolve.apps.bench)", add_help=False,
        description="Run bandsolve.apps.bench.main(ARGS); `bandsolve bench --help` for its options.")
    bench.add_argument("bench_args", nargs="*", metavar="ARGS")
    return parser


def main(argv=None):
    """Entry point of the ``bandsolve`` console script; returns the exit status."""
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv and argv[0] == "bench":
        # everything after `bench` belongs to the benchmark module, options included
        return _bench(argv[1:])
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    return args.run(args)

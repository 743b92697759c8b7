"""Command line, progress and output helpers shared by the example scripts.

Every example accepts ``--quick`` (a CPU run of a few minutes at most), ``--json PATH``
(its metrics) and ``--plot PATH`` (a PNG), and prints progress on long runs.
"""

import argparse
import json
import sys
import time

import numpy as np

_START = time.perf_counter()


def parse_args(description, argv=None, extra=None):
    """The examples' common arguments; ``extra(parser)`` may add more."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--quick", action="store_true",
                        help="a smaller CPU run (a few minutes at most)")
    parser.add_argument("--json", metavar="PATH", help="write the metrics to PATH as JSON")
    parser.add_argument("--plot", metavar="PATH", help="write a figure to PATH (PNG)")
    if extra is not None:
        extra(parser)
    return parser.parse_args(argv)


def progress(message):
    """Print a progress line with the elapsed time, flushed at once."""
    print(f"[{time.perf_counter() - _START:7.1f} s] {message}", flush=True)


def _plain(value):
    """NumPy scalars and arrays as plain JSON values."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, np.ndarray):
        return _plain(value.tolist())
    if isinstance(value, np.generic):
        return value.item()
    return value


def write_json(path, metrics):
    """Write ``metrics`` (dicts, lists, NumPy values) to ``path`` if it is given."""
    if path:
        with open(path, "w", encoding="utf-8") as handle:
            json.dump(_plain(metrics), handle, indent=2)
            handle.write("\n")
        progress(f"metrics written to {path}")


def pyplot():
    """matplotlib's pyplot with a non-interactive backend, or exit with a clear message."""
    try:
        import matplotlib
    except ImportError:
        sys.exit("--plot needs matplotlib: pip install matplotlib (or pip install -e .[bench])")
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig, path):
    fig.savefig(path, dpi=110, bbox_inches="tight")
    progress(f"figure written to {path}")

"""CPU times at the S-MNN paper's shapes: the SIMD lane kernels (the default) against the
one-system host kernels they replace, measured alternately in one run.

Shapes (the paper's from ``benchmarks/gpu_bench.py``; ``coupled_oscillators`` problems,
float64):
SST (B=12,960, T=208, D=1, O=3), KdV (B=8,192, T=10, D=1, O=5), Lorenz (left-hand-side
batch 3 shared by 1,536 right-hand sides, T=50, O=3: no fused pass, so both columns run
the host kernels), sine (B=1, T=500, O=3: below the lanes' size threshold, likewise),
and the issue's two target shapes (B=64, T=1000 and B=1, T=1e5, D=O=E=3).

Prints a Markdown table (best of ``--repeat`` interleaved runs after a warm-up):

    python benchmarks/paper_shapes.py [--repeat 5] [--only sst,kdv]
"""

import argparse
import os
import sys

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

import bandsolve  # noqa: E402
from bandsolve.apps.timing import best_times  # noqa: E402
from bandsolve.cpu.lanes import solve as lanes  # noqa: E402

sys.path.insert(0, os.path.join(ROOT, "benchmarks"))
import gpu_bench  # noqa: E402  (the device benchmark's shapes and problems)

# the paper's shapes as the device benchmark has them, and the CPU targets' two shapes
SHAPES = {name: gpu_bench.SHAPES[name] for name in ("sst", "kdv", "lorenz")}
SHAPES.update({
    "sine": dict(batch=(1,), T=500, D=1, O=3, lhs_batch=None),
    "B=64 T=1000": dict(batch=(64,), T=1000, D=3, O=3, lhs_batch=None),
    "B=1 T=1e5": dict(batch=(1,), T=100_000, D=3, O=3, lhs_batch=None),
})


def make_problem(name):
    """``gpu_bench.make_problem`` in float64 (``coupled_oscillators``, seed 1)."""
    return gpu_bench.make_problem(name, np.float64, SHAPES[name])


def host_kernels(fn):
    """``fn`` with the lane kernels switched off (the one-system host kernels)."""
    def run():
        threshold = lanes.MIN_BLOCK_ROWS
        lanes.MIN_BLOCK_ROWS = 1 << 62
        try:
            return fn()
        finally:
            lanes.MIN_BLOCK_ROWS = threshold
    return run


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--only", default=",".join(SHAPES))
    args = parser.parse_args()
    print("| shape | forward: lanes / host kernels | forward+backward: lanes / host kernels |")
    print("|---|---|---|")
    for name in args.only.split(","):
        problem = make_problem(name)

        def forward():
            return bandsolve.smnn_solve(*problem)

        def forward_backward():
            u, vjp = bandsolve.smnn_solve_vjp(*problem)
            return vjp(np.ones_like(u))

        u_lanes, u_host = forward(), host_kernels(forward)()
        difference = np.max(np.abs(u_lanes - u_host)) / np.max(np.abs(u_host))
        forward_backward(), host_kernels(forward_backward)()
        t = best_times([(forward, None), (host_kernels(forward), None),
                        (forward_backward, None), (host_kernels(forward_backward), None)],
                       repeat=args.repeat)
        print(f"| {name} | {t[0] * 1e3:.1f} ms / {t[1] * 1e3:.1f} ms = {t[0] / t[1]:.2f} "
              f"| {t[2] * 1e3:.1f} ms / {t[3] * 1e3:.1f} ms = {t[2] / t[3]:.2f} |"
              f"  <!-- max relative difference of u: {difference:.1e} -->", flush=True)


if __name__ == "__main__":
    main()

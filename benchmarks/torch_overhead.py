"""Overhead of the PyTorch adapter over the NumPy core, measured in one run.

Times one forward+backward of ``bandsolve_torch.smnn_solve`` (``u = smnn_solve(...)``,
``u.backward(ubar)``, all four inputs requiring grad) next to

* the NumPy core on the same problem (``u, vjp = bandsolve.smnn_solve_vjp(...)``;
  ``vjp(ubar)``), the baseline;
* the same core calls that the adapter's operators make (``smnn_factor_solve``,
  ``SMNNFactorization.from_lower``, ``.backward``), so that the adapter's overhead splits
  into PyTorch's share and the core path's;

and the frozen left-hand side (``FrozenLHS.solve`` forward+backward in rhs and init) next
to the core's ``SMNNFactorization.solve_vjp``. The variants are interleaved round by round
so that load from other processes hits them alike; each line reports the median over
rounds and the ratio to its baseline.

    python benchmarks/torch_overhead.py [--batch 64] [--steps 1000] [--rounds 15]
"""

import argparse

import numpy as np
import torch

import bandsolve
import bandsolve_torch
from bandsolve.apps.timing import interleaved


def problem(batch, T, D, O, E, seed=0):
    rng = np.random.default_rng(seed)
    coefficients = rng.standard_normal((batch, T, E, D, O))
    rhs = rng.standard_normal((batch, T, E))
    init = rng.standard_normal((batch, 1, D, O - 1))
    steps = rng.uniform(0.05, 0.1, size=(batch, T - 1))
    ubar = rng.standard_normal((batch, T, D, O))
    return (coefficients, rhs, init, steps), ubar


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--dims", type=int, default=3)
    parser.add_argument("--orders", type=int, default=3)
    parser.add_argument("--equations", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=15)
    args = parser.parse_args()

    arrays, ubar = problem(args.batch, args.steps, args.dims, args.orders, args.equations)
    c, r, g, h = arrays
    ubar_t = torch.from_numpy(ubar)

    def core():
        u, vjp = bandsolve.smnn_solve_vjp(c, r, g, h)
        vjp(ubar)

    init_shape = (1, args.orders - 1)

    def core_as_adapter():
        # The core calls the adapter makes, without torch: factor and solve (forward op);
        # rebuild from the factor and backward (backward op).
        u, factorization = bandsolve.smnn_factor_solve(c, r, g, h)
        rebuilt = bandsolve.SMNNFactorization.from_lower(factorization.lower, c, h,
                                                         init_shape=init_shape)
        rebuilt.backward(r, g, u, ubar)

    def adapter():
        inputs = [torch.from_numpy(a).requires_grad_() for a in arrays]
        bandsolve_torch.smnn_solve(*inputs).backward(ubar_t)

    factorization = bandsolve.smnn_factor(c, h, init_shape=init_shape)
    frozen = bandsolve_torch.FrozenLHS(torch.from_numpy(c), torch.from_numpy(h),
                                       init_shape=init_shape)

    def core_frozen():
        u, vjp = factorization.solve_vjp(r, g)
        vjp(ubar)

    def adapter_frozen():
        rt, gt = (torch.from_numpy(a).requires_grad_() for a in (r, g))
        frozen.solve(rt, gt).backward(ubar_t)

    variants = {"core": core, "core_as_adapter": core_as_adapter, "adapter": adapter, "core_frozen": core_frozen,
                "adapter_frozen": adapter_frozen}
    for fn in variants.values():  # warm up: JIT compilation and first-touch allocation
        fn()
    median = interleaved(variants, args.rounds)

    print(f"problem: B={args.batch}, T={args.steps}, D={args.dims}, O={args.orders}, "
          f"E={args.equations}, float64, Ti=1, Oi={args.orders - 1}; "
          f"median of {args.rounds} interleaved rounds; torch {torch.__version__}, "
          f"torch threads {torch.get_num_threads()}")
    rows = [("core smnn_solve_vjp + vjp", "core", "core"),
            ("core, the adapter's calls (no torch)", "core_as_adapter", "core"),
            ("adapter smnn_solve + backward", "adapter", "core"),
            ("adapter vs the same core calls", "adapter", "core_as_adapter"),
            ("core SMNNFactorization.solve_vjp + vjp", "core_frozen", "core_frozen"),
            ("adapter FrozenLHS.solve + backward", "adapter_frozen", "core_frozen"),
            ("adapter FrozenLHS vs adapter smnn_solve", "adapter_frozen", "adapter")]
    for label, name, base in rows:
        print(f"{label:<42} {median[name] * 1e3:9.2f} ms   "
              f"ratio to {base}: {median[name] / median[base]:.3f}")


if __name__ == "__main__":
    main()

"""bandsolve against the S-MNN reference implementation at the paper notebooks' shapes.

Times ``bandsolve_torch.ode_forward`` next to the reference's ``ode_forward`` (``smnn.py``
of the paper's code, which is not part of this repository: pass its path with
``--reference``) on the same tensors and keywords, one call pattern per notebook:

=========== ==========================================================  ================
workload    shapes (as the notebook passes them)                        timed
=========== ==========================================================  ================
lorenz      step-first, lhs batch (1, 3), rhs batch (512, 3), T=50,     forward+backward
            D=1, O=3, ``frozen_lhs_cache_version=1`` (the cached lhs)   (rhs, init)
sine        batch (1, 1), T=500, D=1, O=3, no initial values            forward+backward
                                                                        (coeffs, steps)
kdv         batch (32, 256), T=10, D=1, O=5, four initial orders        forward+backward
                                                                        (all four)
standalone  step-first, every step axis of length 1, T=1000, D=E=2, O=3 forward
=========== ==========================================================  ================

Each variant is warmed up (Numba compilation, the reference's frozen cache), then the two
implementations are interleaved round by round so that load from other processes hits
them alike; the table reports the median over rounds and the ratio reference / bandsolve
(> 1: bandsolve is faster). It also prints the largest relative difference of the two
solutions, so that a speed number never hides a wrong answer.

    python benchmarks/reference_speed.py --reference /path/to/ScalableMNN/smnn.py [--rounds 15]
"""

import argparse
import importlib.util
import statistics

import torch

import bandsolve_torch
from bandsolve.apps.timing import seconds

F64 = torch.float64


def load_reference(path):
    spec = importlib.util.spec_from_file_location("smnn_reference", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def randn(*shape, seed, scale=1.0):
    return scale * torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=F64)


def lorenz():
    bs, T = 512, 50
    coeffs = torch.zeros(1, 3, 1, 1, 1, 3, dtype=F64)
    coeffs[..., 1] = 1.0
    rhs = randn(bs, T, 3, seed=1, scale=10.0).requires_grad_()
    var = randn(bs, T, 3, seed=2, scale=10.0).requires_grad_()
    args = lambda: (coeffs[None, :, :, 0], rhs.transpose(0, 1)[..., None],  # noqa: E731
                    var[None, :, 0, :, None, None], torch.full((1, 1, 1), 1e-2, dtype=F64))
    kw = dict(n_steps=T, is_step_dim_first=True, enable_central_smoothness=False,
              frozen_lhs_cache_version=1)
    return args, kw, (rhs, var)


def sine():
    T = 500
    coefficients = torch.rand(1, 1, T, 1, 1, 3, dtype=F64,
                              generator=torch.Generator().manual_seed(3)).requires_grad_()
    raw = torch.tensor(0.1, dtype=F64).logit().repeat(1, 1, T - 1).requires_grad_()
    args = lambda: (coefficients, torch.ones(1, 1, T, 1, dtype=F64),  # noqa: E731
                    torch.empty(1, 1, 0, 1, 0, dtype=F64), raw.sigmoid())
    return args, dict(is_step_dim_first=False, enable_central_smoothness=False), (coefficients, raw)


def kdv():
    B, N, T, O = 32, 256, 10, 5
    leaves = (randn(B, N, T, 1, 1, O, seed=4).requires_grad_(),
              randn(B, N, T, 1, seed=5).requires_grad_(),
              randn(B, N, 1, 1, O - 1, seed=6).requires_grad_(),
              (0.05 + 0.01 * randn(B, N, 1, seed=7).abs()).repeat(1, 1, T - 1).requires_grad_())
    return (lambda: leaves), dict(is_step_dim_first=False, enable_central_smoothness=False), leaves


def standalone():
    T = 1000
    coefficients = torch.tensor([[[[0.0, 1.0, 0.0], [-1.0, 0.0, 0.0]],
                                  [[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]]]], dtype=F64)  # (1, 2, 2, 3)
    rhs = torch.zeros(1, 2, dtype=F64)
    init = torch.tensor([1.0, 0.5], dtype=F64)[None, ..., None]
    steps = torch.tensor([1e-2], dtype=F64)
    args = lambda: (coefficients, rhs, init, steps)  # noqa: E731
    return args, dict(n_steps=T, is_step_dim_first=True, enable_central_smoothness=False), ()


WORKLOADS = {"lorenz": lorenz, "sine": sine, "kdv": kdv, "standalone": standalone}


def run(ode_forward, args, kw, leaves):
    u = ode_forward(*args(), **kw)
    if leaves:
        weights = torch.ones_like(u)
        torch.autograd.grad((u * weights).sum(), leaves)
    return u.detach()


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reference", required=True, help="path of the reference smnn.py")
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--workloads", nargs="+", default=list(WORKLOADS), choices=WORKLOADS)
    args = parser.parse_args()
    reference = load_reference(args.reference)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, float64, CPU, "
          f"median of {args.rounds} interleaved rounds")
    print("| workload | reference | bandsolve | reference / bandsolve | max rel. diff |")
    print("|---|---|---|---|---|")
    for name in args.workloads:
        inputs, kw, leaves = WORKLOADS[name]()
        implementations = {"reference": reference.ode_forward,
                           "bandsolve": bandsolve_torch.ode_forward}
        results = {k: run(f, inputs, kw, leaves) for k, f in implementations.items()}  # warm-up
        results = {k: run(f, inputs, kw, leaves) for k, f in implementations.items()}  # cached
        diff = ((results["bandsolve"] - results["reference"]).abs().max()
                / results["reference"].abs().max()).item()
        times = {k: [] for k in implementations}
        for _ in range(args.rounds):
            for k, f in implementations.items():
                times[k].append(seconds(lambda: run(f, inputs, kw, leaves)))
        t_ref, t_band = (statistics.median(times[k]) for k in ("reference", "bandsolve"))
        print(f"| {name} | {t_ref * 1e3:.2f} ms | {t_band * 1e3:.2f} ms | "
              f"{t_ref / t_band:.1f}x | {diff:.1e} |")
        bandsolve_torch.clear_frozen_lhs_cache()


if __name__ == "__main__":
    main()

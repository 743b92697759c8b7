"""Overhead of the JAX adapter: one jitted forward+backward through ``bandsolve_jax``
against the NumPy core (``smnn_solve_vjp`` + ``vjp``) on the same problem, same process.

    .venv/bin/python benchmarks/jax_overhead.py [--batch 64] [--steps 1000] [--repeats 20]

Both sides compute the gradients of ``sum(ubar * u)`` with respect to all four inputs. The
JAX side is compiled before timing and every result is waited for (``block_until_ready``);
the two sides alternate so that machine noise hits both alike. Reports the median of the
repeats and the ratio adapter / core (1.0 = no overhead). The forward pass alone is timed
the same way (``jit(smnn_solve)`` against ``smnn_solve``).
"""

import argparse

import jax

jax.config.update("jax_enable_x64", True)

import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

import bandsolve  # noqa: E402
import bandsolve_jax  # noqa: E402
from bandsolve.apps.timing import interleaved  # noqa: E402


def make_problem(seed, B, T, E, D, O, Ti, Oi):
    """Gaussian coefficients, rhs and initial values, steps in [0.05, 0.1] (float64)."""
    rng = np.random.default_rng(seed)
    return (rng.standard_normal((B, T, E, D, O)), rng.standard_normal((B, T, E)),
            rng.standard_normal((B, Ti, D, Oi)), rng.uniform(0.05, 0.1, size=(B, T - 1)))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--repeats", type=int, default=20)
    args = parser.parse_args()
    B, T, E, D, O, Ti, Oi = args.batch, args.steps, 3, 3, 3, 1, 3

    problem = make_problem(0, B, T, E, D, O, Ti, Oi)
    ubar = np.random.default_rng(1).standard_normal((B, T, D, O))
    problem_jax = tuple(jnp.asarray(a) for a in problem)
    ubar_jax = jnp.asarray(ubar)

    def core_forward_backward():
        _, vjp = bandsolve.smnn_solve_vjp(*problem)
        return vjp(ubar)

    grad = jax.jit(jax.grad(lambda *a: jnp.sum(ubar_jax * bandsolve_jax.smnn_solve(*a)),
                            argnums=(0, 1, 2, 3)))

    def jax_forward_backward():
        return jax.block_until_ready(grad(*problem_jax))

    solve = jax.jit(bandsolve_jax.smnn_solve)
    runs = {
        "core forward+backward": core_forward_backward,
        "jax forward+backward": jax_forward_backward,
        "core forward": lambda: bandsolve.smnn_solve(*problem),
        "jax forward": lambda: jax.block_until_ready(solve(*problem_jax)),
    }

    # Warm-up (Numba and XLA compilation) and a correctness check of the timed results.
    for run in runs.values():
        run()
    for got, want in zip(jax_forward_backward(), core_forward_backward()):
        np.testing.assert_allclose(got, want, rtol=1e-9, atol=1e-12)

    times = interleaved(runs, args.repeats)
    print(f"problem: B={B} T={T} E={E} D={D} O={O} Ti={Ti} Oi={Oi} float64, "
          f"jax {jax.__version__} on {jax.devices()[0].platform}, median of {args.repeats}")
    for name, seconds in times.items():
        print(f"  {name:24s} {seconds * 1e3:9.2f} ms")
    for what in ("forward+backward", "forward"):
        ratio = times[f"jax {what}"] / times[f"core {what}"]
        print(f"ratio jax/core, {what}: {ratio:.2f}")


if __name__ == "__main__":
    main()

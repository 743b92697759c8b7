"""Forward and forward+backward times of the tree on ``sys.path`` at the shapes of the
accuracy budget (B=64, T=1000 and B=1, T=1e5; D=O=E=3; float64 and float32).

Prints one JSON line ``{"B=.. T=.. dtype": [forward_s, forward_backward_s], ...}``
(best of at least ``repeat`` after a warm-up call: ``bandsolve.apps.timing.best_time``).
To compare two versions, run it alternately in
each tree, e.g. ``git worktree add ../before <commit>`` and::

    for i in 1 2 3; do for tree in ../before .; do
      (cd $tree && PYTHONPATH=$PWD python benchmarks/solve_speed.py); done; done
"""

import json

import numpy as np

import bandsolve
from bandsolve.apps.timing import best_time
from bandsolve.problems import coupled_oscillators


def main():
    out = {}
    for batch, n_steps, repeat in [(64, 1000, 7), (1, 100_000, 5)]:
        for dtype in (np.float64, np.float32):
            c, r, g, h = coupled_oscillators(batch if batch > 1 else (1,), n_steps,
                                             dtype=dtype)

            def forward():
                bandsolve.smnn_solve(c, r, g, h)

            def forward_backward():
                u, vjp = bandsolve.smnn_solve_vjp(c, r, g, h)
                vjp(np.ones_like(u))

            out[f"B={batch} T={n_steps} {np.dtype(dtype).name}"] = (
                best_time(forward, repeat=repeat), best_time(forward_backward, repeat=repeat))
    print(json.dumps(out))


if __name__ == "__main__":
    main()

"""Lorenz discovery: recover the Lorenz equations from a trajectory through bandsolve's solver.

Data. The Lorenz system ``x' = sigma (y - x)``, ``y' = x (rho - z) - y``,
``z' = x y - beta z`` with sigma = 10, rho = 28, beta = 8/3 is integrated from (1, 1, 1) by
``scipy.integrate.solve_ivp`` (DOP853, rtol = atol = 1e-12) and sampled every dt = 0.01.
The trajectory is cut into non-overlapping windows of 50 steps.

Model. A library ``Theta(x)`` of the 10 monomials of degree <= 2 in (x, y, z) is
evaluated on the data. For every window ``w`` and coordinate ``j`` the S-MNN layer solves
the linear ODE ``u' = r`` with right-hand side ``r[t] = Theta(x_data[w, t]) . xi_j`` and
initial value ``u[0] = x_data[w, 0, j]`` (coefficients 0 on ``u`` and 1 on ``u'``: E = D =
1, O = 2, Taylor smoothness, all weights 1). The left-hand side (coefficients, steps and
which entries carry initial values) is the same for every window and coordinate, so it is
factored **once** (``bandsolve.smnn_factor``) and the frozen factor is reused for every
solve: only the right-hand sides change. The loss is the squared distance between the
solver output and the data, ``L(xi) = sum_{w,j,t} (u_wj[t] - x_data[w, t, j])^2``.

Fit. The solver output is affine in ``xi``: ``u_wj = sum_k xi_jk S(Theta_k) + S(g_wj)``,
where ``S`` is the frozen solve. So ``L`` is minimised exactly by a linear least-squares
fit whose design-matrix columns are solver outputs: ``S(Theta_k)`` for the 10 library
columns of every window (one batched substitution on the frozen factor, right-hand-side
batch (windows, 10) against a left-hand-side batch of one) and ``S(g)`` for the initial
values. This is the point that gradient descent on ``xi`` through the solver converges to,
reached in one step. Sequential thresholding (STLSQ) then zeroes every coefficient below
0.1 in magnitude and refits on the remaining terms until the support stops changing.

Check through the solver's VJP. With the recovered ``xi`` the script solves all windows
and coordinates in one call (right-hand-side batch (windows, 3) on the frozen factor) and
computes ``dL/dxi`` by the solver's vector-Jacobian product (``SMNNFactorization
.backward``), independently of the least-squares algebra: on the recovered support it must
vanish (it is reported relative to the gradient at ``xi = 0``).

The remaining error of the coefficients (about 1% at dt = 0.01) is the O(dt^2)
discretisation error of the S-MNN solve (trapezoid-like), not noise: there is none.

    python examples/lorenz_discovery.py [--quick] [--json PATH] [--plot PATH]

``--json`` holds ``coefficients`` (library terms x equations, rows in the order of
``library``), ``true_coefficients``, ``support_recovered``, ``max_relative_error``, the
per-coefficient ``relative_errors``, ``fit_rmse``, ``gradient_check`` and ``seconds``.
"""

import time

import numpy as np
from scipy.integrate import solve_ivp

from _common import parse_args, progress, pyplot, save_figure, write_json

import bandsolve

SIGMA, RHO, BETA = 10.0, 28.0, 8.0 / 3.0
DT, WINDOW, THRESHOLD = 0.01, 50, 0.1
LIBRARY = ["1", "x", "y", "z", "x^2", "x y", "x z", "y^2", "y z", "z^2"]
COORDINATES = ["x", "y", "z"]


def lorenz(_, state):
    x, y, z = state
    return [SIGMA * (y - x), x * (RHO - z) - y, x * y - BETA * z]


def true_coefficients():
    xi = np.zeros((len(LIBRARY), 3))
    xi[LIBRARY.index("x"), 0], xi[LIBRARY.index("y"), 0] = -SIGMA, SIGMA
    xi[LIBRARY.index("x"), 1], xi[LIBRARY.index("y"), 1] = RHO, -1.0
    xi[LIBRARY.index("x z"), 1] = -1.0
    xi[LIBRARY.index("x y"), 2], xi[LIBRARY.index("z"), 2] = 1.0, -BETA
    return xi


def library(states):
    """``Theta`` ``(..., 10)`` of states ``(..., 3)``, columns in the order of ``LIBRARY``."""
    x, y, z = np.moveaxis(states, -1, 0)
    return np.stack([np.ones_like(x), x, y, z, x * x, x * y, x * z, y * y, y * z, z * z], -1)


def trajectory(n_steps):
    t = np.arange(n_steps) * DT
    solution = solve_ivp(lorenz, (0.0, t[-1]), [1.0, 1.0, 1.0], t_eval=t, method="DOP853",
                         rtol=1e-12, atol=1e-12)
    if not solution.success:
        raise RuntimeError(solution.message)
    return solution.y.T  # (n_steps, 3)


def frozen_factor():
    """The left-hand side shared by every window and coordinate: ``u' = r`` (E = D = 1,
    O = 2), constant step DT, an initial value for ``u[0]``; factored once."""
    coefficients = np.zeros((1, 1, 1, 2))
    coefficients[..., 1] = 1.0
    return bandsolve.smnn_factor(coefficients, np.array([DT]), init_shape=(1, 1),
                                 n_steps=WINDOW)


def stlsq(design, target, threshold, max_rounds=20):
    """Sequentially thresholded least squares: ``design`` ``(rows, K)``, ``target``
    ``(rows,)``; returns ``xi`` ``(K,)`` with every kept entry ``>= threshold`` in size."""
    support = np.ones(design.shape[1], dtype=bool)
    xi = np.zeros(design.shape[1])
    for _ in range(max_rounds):
        xi = np.zeros(design.shape[1])
        if support.any():
            xi[support] = np.linalg.lstsq(design[:, support], target, rcond=None)[0]
        new_support = np.abs(xi) >= threshold
        if np.array_equal(new_support, support):
            break
        support = new_support
    return xi


def discover(windows, factor):
    """Fit ``xi`` ``(K, 3)`` to ``windows`` ``(W, L, 3)`` through the frozen ``factor``."""
    W, L, _ = windows.shape
    theta = library(windows)                                     # (W, L, K)
    K = theta.shape[-1]
    # S(Theta_k): every library column of every window as a right-hand side (batch (W, K)).
    basis_rhs = np.ascontiguousarray(np.moveaxis(theta, -1, 1))[..., None]  # (W, K, L, 1)
    basis = factor.solve(basis_rhs, np.zeros((1, 1, 1)))[..., 0, 0]        # (W, K, L)
    # S(g): the response to each window's initial values (batch (W, 3)).
    init = windows[:, 0, :].reshape(W, 3, 1, 1, 1)
    free = factor.solve(np.zeros((1, 1)), init)[..., 0, 0]                # (W, 3, L)
    design = np.moveaxis(basis, 1, -1).reshape(W * L, K)
    xi = np.zeros((K, 3))
    for j in range(3):
        target = (windows[..., j] - free[:, j]).reshape(W * L)
        xi[:, j] = stlsq(design, target, THRESHOLD)
    return xi, theta, init


def loss_and_gradient(xi, windows, theta, init, factor):
    """``L(xi)`` and ``dL/dxi`` ``(K, 3)`` by one batched solve and the solver's VJP."""
    rhs = np.ascontiguousarray(np.moveaxis(theta @ xi, -1, 1))[..., None]  # (W, 3, L, 1)
    u = factor.solve(rhs, init)                                            # (W, 3, L, 1, 2)
    residual = u[..., 0, 0] - np.moveaxis(windows, -1, 1)                  # (W, 3, L)
    ubar = np.zeros_like(u)
    ubar[..., 0, 0] = 2.0 * residual
    _, rhs_bar, _, _ = factor.backward(rhs, init, u, ubar)                 # (W, 3, L, 1)
    gradient = np.einsum("wtk,wjt->kj", theta, rhs_bar[..., 0])
    return float(np.sum(residual**2)), gradient, residual


def equation_text(xi, j):
    """``"y' = 28.0460 x - 1.0091 y - 1.0013 x z"`` for column ``j`` of ``xi``."""
    text = ""
    for name, value in zip(LIBRARY, xi[:, j]):
        if value == 0.0:
            continue
        term = f"{abs(value):.4f}" + ("" if name == "1" else f" {name}")
        if not text:
            text = ("-" if value < 0 else "") + term
        else:
            text += (" - " if value < 0 else " + ") + term
    return f"{COORDINATES[j]}' = {text or '0'}"


def main(argv=None):
    args = parse_args(__doc__.splitlines()[0], argv)
    started = time.perf_counter()
    n_steps = 5_000 if args.quick else 20_000
    progress(f"integrating the Lorenz system: {n_steps} steps of dt = {DT}")
    data = trajectory(n_steps)
    n_windows = n_steps // WINDOW
    windows = data[: n_windows * WINDOW].reshape(n_windows, WINDOW, 3)

    progress(f"factoring the frozen left-hand side once (T = {WINDOW}) and fitting "
             f"{n_windows} windows x 3 coordinates")
    factor = frozen_factor()
    xi, theta, init = discover(windows, factor)

    truth = true_coefficients()
    support = truth != 0
    support_recovered = bool(np.array_equal(xi != 0, support))
    relative = np.abs(xi[support] - truth[support]) / np.abs(truth[support])

    # Independent check of stationarity through the solver's VJP.
    loss, gradient, residual = loss_and_gradient(xi, windows, theta, init, factor)
    _, gradient_zero, _ = loss_and_gradient(np.zeros_like(xi), windows, theta, init, factor)
    gradient_ratio = float(np.abs(gradient[xi != 0]).max() / np.abs(gradient_zero).max())
    seconds = time.perf_counter() - started

    print("\nRecovered equations (threshold 0.1):")
    for j in range(3):
        print("  " + equation_text(xi, j))
    print("\nCoefficient            true    recovered  relative error")
    for (k, j), rel in zip(np.argwhere(support), relative):
        label = f"{COORDINATES[j]}': {LIBRARY[k]}"
        print(f"  {label:<14} {truth[k, j]:>9.4f}  {xi[k, j]:>9.4f}  {rel:>12.2e}")
    print(f"\nsupport recovered exactly: {support_recovered}; max relative error "
          f"{relative.max():.2e}; fit RMSE {np.sqrt(np.mean(residual**2)):.2e}")
    print(f"solver-VJP gradient on the support / gradient at xi = 0: {gradient_ratio:.1e}")
    print(f"{n_windows} windows, {seconds:.1f} s", flush=True)

    write_json(args.json, dict(
        library=LIBRARY, equations=COORDINATES, coefficients=xi,
        true_coefficients=truth, support_recovered=support_recovered,
        max_relative_error=float(relative.max()),
        relative_errors={f"{COORDINATES[j]}': {LIBRARY[k]}": float(rel)
                         for (k, j), rel in zip(np.argwhere(support), relative)},
        fit_rmse=float(np.sqrt(np.mean(residual**2))), loss=loss,
        gradient_check=gradient_ratio, n_steps=n_steps, n_windows=n_windows,
        window=WINDOW, dt=DT, threshold=THRESHOLD, seconds=seconds))
    if args.plot:
        plot(data, xi, truth, args.plot)
    return xi


def plot(data, xi, truth, path):
    plt = pyplot()
    horizon = min(len(data), 2000)  # 20 time units
    t = np.arange(horizon) * DT

    def recovered(_, state):
        return library(np.asarray(state)) @ xi

    model = solve_ivp(recovered, (0.0, t[-1]), data[0], t_eval=t, method="DOP853",
                      rtol=1e-10, atol=1e-10).y.T
    fig = plt.figure(figsize=(14, 4.2))
    ax = fig.add_subplot(1, 3, 1, projection="3d")
    ax.plot(*data[:horizon].T, lw=0.6, color="0.5", label="data")
    ax.plot(*model.T, lw=0.6, color="C0", alpha=0.8, label="recovered model")
    ax.set(xlabel="x", ylabel="y", zlabel="z")
    ax.set_title("Lorenz attractor, t in [0, 20]", fontsize=10)
    ax.legend(fontsize=8)
    ax = fig.add_subplot(1, 3, 2)
    ax.plot(t, data[:horizon, 0], color="0.5", lw=2, label="data x(t)")
    ax.plot(t, model[:, 0], color="C0", lw=1, label="recovered model x(t)")
    ax.set_xlabel("t")
    ax.set_ylabel("x")
    ax.set_title("simulating the recovered equations (chaotic: diverges eventually)",
                 fontsize=9)
    ax.legend(fontsize=8)
    ax = fig.add_subplot(1, 3, 3)
    support = np.argwhere(truth != 0)
    labels = [f"{COORDINATES[j]}': {LIBRARY[k]}\n{xi[k, j]:.4g}" for k, j in support]
    errors = [100 * abs(xi[k, j] - truth[k, j]) / abs(truth[k, j]) for k, j in support]
    positions = np.arange(len(labels))
    ax.bar(positions, errors, 0.6, color="C0")
    ax.axhline(2.0, color="C3", lw=1, ls="--", label="2% bound")
    ax.set_xticks(positions)
    ax.set_xticklabels(labels, fontsize=7)
    ax.set_ylabel("relative error (%)")
    ax.set_title("recovered coefficients (the 23 other terms: exactly 0)", fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    save_figure(fig, path)


if __name__ == "__main__":
    main()

"""Korteweg-de Vries: learn u_t + u u_x + u_xxx = 0 with per-grid-point 4th-order S-MNN
layers and roll it out autoregressively.

Data (generated here, nothing downloaded; ``_kdv_data``): a pseudo-spectral ETDRK4
solver, checked against the soliton solution in ``tests/test_applications.py``, with the
published recipe: periodic domain of length uniform in [115.2, 140.8], 256 grid points,
initial condition a sum of 10 sines with amplitudes in [-0.5, 0.5], wave numbers 1 or 2
(whole periods of the domain) and random phases; frames every 0.2 time units.

Model: a small 1-D CNN (circular padding) reads the last 10 frames and predicts, for
every grid point ``x``, a 4th-order linear ODE in time over ``T = 11`` steps (step 0 is
the last input frame, steps 1-10 the next 10 frames; time in frame units, step 1):

    sum_{o<4} c[t, o](x) u^(o) + u^(4) = r[t](x)        (D = 1, O = 5, E = 1)

with time-varying coefficients ``c`` and right-hand side ``r``, and initial values at
step 0 for the 4 orders ``o < 4``: the last input frame as the value and three predicted
time derivatives (``init`` ``(1, 1, 4)``). All 256 grid points of all windows are solved
at once by ``bandsolve_torch.smnn_solve`` (one batch element per grid point); ``u[1:, 0]``
is the prediction. Training: Adam on the mean squared error of the 10 predicted frames.
Evaluation: autoregressive rollout on held-out trajectories (each call's 10 predicted
frames are the next call's input), NMSE = sum (prediction - truth)^2 / sum truth^2 per
trajectory, averaged; also persistence (the last input frame held) for reference.

    python examples/kdv.py [--quick] [--json PATH] [--plot PATH] [--iterations N]

``--quick``: 16 training trajectories of 40 frames, 100 iterations, a 30-frame rollout
on 4 test trajectories (32 s measured on a 2-core machine shared with other jobs, load
average about 2.5). Default: 64 of 100 frames, 600 iterations, a 90-frame rollout on 8
(3.2 minutes there). ``--json`` holds ``rollout_nmse``, ``rollout_nmse_by_frame``,
``persistence_nmse``, ``one_call_nmse``, ``losses`` and the sizes.
"""

import time

import numpy as np

from _common import parse_args, progress, pyplot, save_figure, write_json
from _kdv_data import generate

HISTORY, AHEAD = 10, 10
T = AHEAD + 1
N_ORDERS = 5  # u, u_t, u_tt, u_ttt, u_tttt
N_OUT = T * (N_ORDERS - 1) + T + (N_ORDERS - 2)  # coefficients, rhs, init derivatives


def make_model(seed=0, width=48):
    import torch
    from torch import nn

    torch.manual_seed(seed)

    def conv(cin, cout):
        return nn.Conv1d(cin, cout, 5, padding=2, padding_mode="circular")

    net = nn.Sequential(conv(HISTORY, width), nn.GELU(), conv(width, width), nn.GELU(),
                        conv(width, width), nn.GELU(), conv(width, N_OUT)).double()
    with torch.no_grad():
        net[-1].weight.mul_(0.1)
        net[-1].bias.zero_()
    return net


def predict(net, history):
    """history ``(B, 10, X)`` -> the next 10 frames ``(B, 10, X)``."""
    import torch

    import bandsolve_torch

    B, _, X = history.shape
    out = net(history).permute(0, 2, 1).reshape(B * X, N_OUT)  # one system per grid point
    n_c = T * (N_ORDERS - 1)
    lower = out[:, :n_c].reshape(B * X, T, 1, 1, N_ORDERS - 1)
    coefficients = torch.cat([lower, torch.ones_like(lower[..., :1])], dim=-1)
    rhs = out[:, n_c:n_c + T].reshape(B * X, T, 1)
    value = history[:, -1, :].reshape(B * X, 1)
    init = torch.cat([value, out[:, n_c + T:]], dim=-1).reshape(B * X, 1, 1, N_ORDERS - 1)
    steps = torch.ones(1, dtype=out.dtype)
    u = bandsolve_torch.smnn_solve(coefficients, rhs, init, steps, n_steps=T)
    return u[:, 1:, 0, 0].reshape(B, X, AHEAD).permute(0, 2, 1)


def train(data, iterations, batch=8, lr=2e-3, seed=0):
    import torch

    rng = np.random.default_rng(seed)
    net = make_model(seed)
    optimizer = torch.optim.Adam(net.parameters(), lr=lr)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, iterations)
    n_traj, n_frames, _ = data.shape
    losses = []
    for iteration in range(iterations):
        traj = rng.integers(0, n_traj, batch)
        start = rng.integers(0, n_frames - HISTORY - AHEAD + 1, batch)
        index = start[:, None] + np.arange(HISTORY + AHEAD)
        window = torch.from_numpy(data[traj[:, None], index])
        optimizer.zero_grad()
        prediction = predict(net, window[:, :HISTORY])
        loss = torch.mean((prediction - window[:, HISTORY:]) ** 2)
        loss.backward()
        optimizer.step()
        schedule.step()
        losses.append(loss.item())
        if iteration % 50 == 0 or iteration == iterations - 1:
            progress(f"iteration {iteration:5d}  training MSE {loss.item():.3e}")
    return net, losses


def rollout(net, trajectories, n_frames):
    """Autoregressive prediction of frames ``10 .. 10 + n_frames`` from frames ``0 .. 9``:
    ``(n, n_frames, X)``."""
    import torch

    with torch.no_grad():
        frames = [torch.from_numpy(trajectories[:, :HISTORY])]
        history = frames[0]
        produced = 0
        while produced < n_frames:
            nxt = predict(net, history)
            frames.append(nxt)
            history = nxt[:, -HISTORY:] if AHEAD >= HISTORY else torch.cat(
                [history, nxt], dim=1)[:, -HISTORY:]
            produced += AHEAD
        return torch.cat(frames[1:], dim=1)[:, :n_frames].numpy()


def nmse(prediction, truth):
    """Mean over trajectories of ``sum (p - t)^2 / sum t^2`` (over frames and points)."""
    axes = tuple(range(1, truth.ndim))
    return float(np.mean(np.sum((prediction - truth) ** 2, axis=axes)
                         / np.sum(truth**2, axis=axes)))


def main(argv=None):
    args = parse_args(__doc__.splitlines()[0], argv, extra=lambda p: p.add_argument(
        "--iterations", type=int, help="Adam iterations (default 600; quick 100)"))
    started = time.perf_counter()
    n_train, n_test, n_frames = (16, 4, 40) if args.quick else (64, 8, 100)
    iterations = args.iterations or (100 if args.quick else 600)
    rng = np.random.default_rng(0)
    progress(f"generating {n_train} + {n_test} KdV trajectories of {n_frames} frames (ETDRK4)")
    train_data, _ = generate(n_train, n_frames, rng)
    test_data, test_lengths = generate(n_test, n_frames, rng)
    progress(f"training {iterations} iterations: CNN -> 4th-order ODE per grid point, "
             f"T={T}, solved by bandsolve_torch")
    net, losses = train(train_data, iterations)
    n_roll = n_frames - HISTORY
    prediction = rollout(net, test_data, n_roll)
    truth = test_data[:, HISTORY:HISTORY + n_roll]
    rollout_nmse = nmse(prediction, truth)
    by_frame = [nmse(prediction[:, i:i + 1], truth[:, i:i + 1]) for i in range(n_roll)]
    persistence = nmse(np.repeat(test_data[:, HISTORY - 1:HISTORY], n_roll, axis=1), truth)
    one_call = nmse(prediction[:, :AHEAD], truth[:, :AHEAD])
    seconds = time.perf_counter() - started
    print(f"\nrollout of {n_roll} frames ({n_roll * 0.2:.1f} time units) on {n_test} "
          f"held-out trajectories")
    print(f"NMSE, first {AHEAD} frames (one call)  {one_call:.3e}")
    print(f"NMSE, whole rollout                  {rollout_nmse:.3e}")
    print(f"NMSE, persistence (reference)        {persistence:.3e}")
    print(f"{seconds:.1f} s", flush=True)
    write_json(args.json, dict(
        rollout_nmse=rollout_nmse, rollout_nmse_by_frame=by_frame, one_call_nmse=one_call,
        persistence_nmse=persistence, losses=losses[::10], iterations=iterations,
        n_train=n_train, n_test=n_test, n_frames=n_frames, rollout_frames=n_roll,
        seconds=seconds))
    if args.plot:
        plot(test_data[0], prediction[0], test_lengths[0], by_frame, args.plot)


def plot(trajectory, prediction, length, by_frame, path):
    plt = pyplot()
    truth = trajectory[HISTORY:HISTORY + len(prediction)]
    fig, axes = plt.subplots(1, 4, figsize=(15, 3.6))
    extent = (0, length, HISTORY * 0.2, (HISTORY + len(prediction)) * 0.2)
    limit = np.abs(truth).max()
    for ax, field, title in ((axes[0], truth, "ETDRK4 (truth)"),
                             (axes[1], prediction, "S-MNN rollout"),
                             (axes[2], prediction - truth, "error")):
        image = ax.imshow(field, origin="lower", aspect="auto", extent=extent,
                          cmap="RdBu_r", vmin=-limit, vmax=limit)
        ax.set_xlabel("x")
        ax.set_ylabel("t")
        ax.set_title(title, fontsize=10)
    fig.colorbar(image, ax=axes[2], label="u(x, t) (one scale for the three maps)")
    t = (HISTORY + 1 + np.arange(len(by_frame))) * 0.2
    axes[3].semilogy(t, by_frame)
    axes[3].set_xlabel("t")
    axes[3].set_ylabel("NMSE per frame")
    axes[3].set_title("rollout error", fontsize=10)
    fig.suptitle("KdV u_t + u u_x + u_xxx = 0: autoregressive rollout (held-out trajectory)",
                 fontsize=11)
    fig.tight_layout()
    save_figure(fig, path)


if __name__ == "__main__":
    main()

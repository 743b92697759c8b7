"""Seeded, well-posed S-MNN problems for benchmarks, ``bandsolve bench`` and demos.

Random N(0, 1) coefficients describe stiff, exponentially unstable ODEs: over a long
horizon their least-squares problems are so badly conditioned that float32 normal
equations break down. The problems here are physical instead: per state dimension a
damped, forced oscillator, weakly coupled to the others, with slowly varying
coefficients. Their solutions stay bounded for any horizon, so the normal matrix's
condition does not grow with T (it levels off at ~1e6 with the default step) and float32
solves succeed at T = 10^3 and 10^5 alike.
"""

import math

import numpy as np

from ._validation import check_dtype

__all__ = ["coupled_oscillators"]


def _batch_shape(batch):
    if isinstance(batch, (int, np.integer)):
        batch = (int(batch),)
    batch = tuple(int(b) for b in batch)
    if any(b < 0 for b in batch):
        raise ValueError(f"batch must be a non-negative int or a tuple of them; got {batch}")
    return batch


def coupled_oscillators(batch, n_steps, n_dims=3, n_orders=3, n_equations=None,
                        dtype=np.float64, seed=0, central_smoothness=False, step=0.1):
    """A batch of weakly coupled, damped, forced oscillators as S-MNN inputs.

    Equation ``e`` governs state dimension ``d_e = e mod D``::

        c2(t) u_d'' + c1(t) u_d' + c0(t) u_d + sum_{d' != d} k_{d'}(t) u_{d'} = r_e(t)

    with, per system and equation, ``c2 ~ 1``, damping ``c1`` in [0.2, 1], stiffness
    ``c0`` in [1, 4], couplings ``k`` in [-0.1, 0.1], all modulated in time by
    ``1 + 0.1 sin(...)`` (period 20 to 60 time units), and a sinusoidal forcing ``r`` of
    amplitude 0.5 to 1.5. With ``O = 2`` the equation is first order (``c1 = 1``,
    ``c0`` in [1, 4]: a stable relaxation); with ``O >= 4`` the orders above 2 get no
    coefficient (the smoothness rows alone tie them to the trajectory). Initial values pin
    ``u`` and ``u'`` (orders ``< min(2, O)``) at ``t = 0``. Steps are ``step * (1 +- 10%)``.

    Parameters
    ----------
    batch : int or tuple of int
        Batch shape ``(...)`` (an int ``B`` means ``(B,)``); every system is different.
    n_steps : int
        ``T`` (at least 2).
    n_dims, n_orders : int
        ``D`` and ``O``; block size ``n = D * O``.
    n_equations : int or None
        ``E >= D`` (default ``D``): every dimension needs an equation of its own, else the
        problem has a (near) null space. Equations beyond ``D`` are further oscillators
        on dimension ``e mod D`` with their own coefficients.
    dtype : float32 or float64
    seed : int
        Seed of ``numpy.random.default_rng``; the same arguments give the same arrays.
    central_smoothness : bool
        The problems are well posed in both smoothness modes; the flag only checks that
        central smoothness is possible (``O >= 3``), so a benchmark grid cannot build an
        invalid combination.
    step : float
        Mean step size ``h``; the oscillators' periods are 3 to 6 time units, so the
        default 0.1 resolves a period with 30 to 60 steps. The normal matrix's condition
        grows like ``h^-4`` (the Taylor rows weigh derivative order ``k`` by ``h^k``): at
        ``h = 0.1`` cond(M) is about 1e6 and float32 solves agree with float64 to ~1e-3;
        at ``h = 0.01`` float32 factorisations break down (use float64 there).

    Returns
    -------
    coefficients : ``(..., T, E, D, O)``
    rhs : ``(..., T, E)``
    init : ``(..., 1, D, min(2, O))``
    steps : ``(..., T-1)``

    all of ``dtype``, C-contiguous, ready for :func:`bandsolve.smnn_solve`.
    """
    batch = _batch_shape(batch)
    n_steps, n_dims, n_orders = (int(v) for v in (n_steps, n_dims, n_orders))
    n_equations = n_dims if n_equations is None else int(n_equations)
    dtype = check_dtype("dtype", dtype)
    if n_steps < 2:
        raise ValueError(f"n_steps must be at least 2; got {n_steps}")
    if n_dims < 1 or n_orders < 2:
        raise ValueError(f"need n_dims >= 1 and n_orders >= 2; got D={n_dims}, O={n_orders}")
    if n_equations < n_dims:
        raise ValueError(f"n_equations must be >= n_dims={n_dims} (one equation per state "
                         f"dimension keeps the problem well posed); got {n_equations}")
    if central_smoothness and n_orders < 3:
        raise ValueError(f"central_smoothness needs n_orders >= 3; got {n_orders}")
    if not step > 0:
        raise ValueError(f"step must be positive; got {step}")

    rng = np.random.default_rng(seed)
    B, T, E, D, O = math.prod(batch), n_steps, n_equations, n_dims, n_orders
    owner = np.arange(E) % D  # the dimension each equation governs

    # base coefficients (B, E, D, O): the oscillator on its own dimension, weak couplings
    base = np.zeros((B, E, D, O))
    base[:, :, :, 0] = rng.uniform(-0.1, 0.1, size=(B, E, D))
    own = (slice(None), np.arange(E), owner)
    if O >= 3:
        base[own + (2,)] = rng.uniform(0.9, 1.1, size=(B, E))
        base[own + (1,)] = rng.uniform(0.2, 1.0, size=(B, E))
    else:
        base[own + (1,)] = 1.0
    base[own + (0,)] = rng.uniform(1.0, 4.0, size=(B, E))

    steps = step * rng.uniform(0.9, 1.1, size=(B, T - 1))
    time = np.zeros((B, T))
    np.cumsum(steps, axis=1, out=time[:, 1:])

    # slow modulation (B, T, E) and forcing (B, T, E)
    period = rng.uniform(20.0, 60.0, size=(B, 1, E))
    phase = rng.uniform(0.0, 2 * np.pi, size=(B, 1, E))
    modulation = 1.0 + 0.1 * np.sin(2 * np.pi * time[:, :, None] / period + phase)
    frequency = rng.uniform(0.5, 2.0, size=(B, 1, E))
    amplitude = rng.uniform(0.5, 1.5, size=(B, 1, E))
    rhs = amplitude * np.sin(frequency * time[:, :, None] + phase)

    coefficients = np.empty((B, T, E, D, O), dtype=dtype)
    np.multiply(base[:, None].astype(dtype), modulation[..., None, None].astype(dtype),
                out=coefficients)
    init = rng.standard_normal((B, 1, D, min(2, O)))

    return (coefficients.reshape(batch + (T, E, D, O)),
            np.ascontiguousarray(rhs, dtype=dtype).reshape(batch + (T, E)),
            np.ascontiguousarray(init, dtype=dtype).reshape(batch + (1, D, min(2, O))),
            np.ascontiguousarray(steps, dtype=dtype).reshape(batch + (T - 1,)))

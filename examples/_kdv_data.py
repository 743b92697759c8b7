"""KdV data for ``examples/kdv.py``: a pseudo-spectral ETDRK4 solver and the published initial
conditions.

Equation: ``u_t + u u_x + u_xxx = 0`` on a periodic domain ``[0, L)``. In Fourier space
(wave number ``k``), ``d/dt u_hat = lin * u_hat + nonlin(u_hat)`` with the stiff linear part
``lin = -(i k)^3 = i k^3`` handled exactly and the nonlinear part
``nonlin = -(i k / 2) FFT(u^2)`` (two-thirds de-aliased) by the exponential time
differencing Runge-Kutta scheme of order 4 (ETDRK4; Cox & Matthews 2002), with the
coefficient functions evaluated by contour integrals (Kassam & Trefethen 2005) so that
small ``lin * dt`` lose no digits.

Known solution (checked in ``tests/test_applications.py``): the soliton
``u = 12 k^2 sech^2(k (x - 4 k^2 t - x0))`` (with ``v = u / 6``, the standard form
``v_t + 6 v v_x + v_xxx = 0`` has ``v = 2 k^2 sech^2(k (x - 4 k^2 t))``).
"""

import numpy as np


def soliton(x, t, k, x0, length=None):
    """``12 k^2 sech^2(k (x - 4 k^2 t - x0))``, wrapped onto ``[0, length)`` if given
    (the nearest periodic image; the tails of the others are negligible when
    ``k length >> 1``)."""
    shift = x - 4 * k**2 * t - x0
    if length is not None:
        shift = (shift + length / 2) % length - length / 2
    return 12 * k**2 / np.cosh(k * shift) ** 2


def _etdrk4_coefficients(lin, dt, n_contour=32):
    """ETDRK4 coefficient arrays for the diagonal linear operator ``lin`` (complex)."""
    # the full unit circle: lin is imaginary, so the half-circle-and-real-part shortcut of
    # a real operator does not apply
    roots = np.exp(2j * np.pi * (np.arange(1, n_contour + 1) - 0.5) / n_contour)
    z = (lin * dt)[..., None] + roots  # contour points around each lin*dt
    e, e2 = np.exp(lin * dt), np.exp(lin * dt / 2)
    q = dt * np.mean((np.exp(z / 2) - 1) / z, axis=-1)
    f1 = dt * np.mean((-4 - z + np.exp(z) * (4 - 3 * z + z**2)) / z**3, axis=-1)
    f2 = dt * np.mean((2 + z + np.exp(z) * (-2 + z)) / z**3, axis=-1)
    f3 = dt * np.mean((-4 - 3 * z - z**2 + np.exp(z) * (4 - z)) / z**3, axis=-1)
    return e, e2, q, f1, f2, f3


def solve_kdv(u0, length, t_frames, dt=0.01):
    """Integrate ``u_t + u u_x + u_xxx = 0`` from ``u0``.

    Parameters
    ----------
    u0 : ``(..., N)`` initial values on the grid ``x_j = j length / N``.
    length : domain length ``L``, a scalar or ``(...)`` per trajectory.
    t_frames : ``(F,)`` increasing output times, ``t_frames[0] >= 0``.
    dt : time step (the frame times are hit by shortening the last step before each).

    Returns ``(..., F, N)`` float64.
    """
    u0 = np.asarray(u0, dtype=np.float64)
    N = u0.shape[-1]
    length = np.asarray(length, dtype=np.float64)[..., None]
    k = 2 * np.pi * np.fft.rfftfreq(N, d=1.0 / N) / length        # (..., N//2+1)
    lin = 1j * k**3
    dealias = np.fft.rfftfreq(N, d=1.0 / N) < N / 3                # two-thirds rule
    g = -0.5j * k * dealias

    def nonlin(v_hat):
        return g * np.fft.rfft(np.fft.irfft(v_hat, n=N) ** 2)

    def step(v_hat, coefficients):
        e, e2, q, f1, f2, f3 = coefficients
        nv = nonlin(v_hat)
        a = e2 * v_hat + q * nv
        na = nonlin(a)
        b = e2 * v_hat + q * na
        nb = nonlin(b)
        c = e2 * a + q * (2 * nb - nv)
        nc = nonlin(c)
        return e * v_hat + f1 * nv + 2 * f2 * (na + nb) + f3 * nc

    full = _etdrk4_coefficients(lin, dt)
    v_hat = np.fft.rfft(u0)
    frames = np.empty(u0.shape[:-1] + (len(t_frames), N))
    t = 0.0
    for index, target in enumerate(t_frames):
        while target - t > 1e-12:
            h = min(dt, target - t)
            v_hat = step(v_hat, full if h == dt else _etdrk4_coefficients(lin, h))
            t += h
        frames[..., index, :] = np.fft.irfft(v_hat, n=N)
    return frames


def random_initial(n, rng, n_points=256, length_range=(115.2, 140.8), n_sines=10):
    """The published initial conditions: ``n`` domains of length uniform in
    ``length_range`` and ``u0 = sum_j A_j sin(2 pi l_j x / L + phi_j)`` with ``A_j`` uniform
    in ``[-0.5, 0.5]``, ``l_j`` in ``{1, 2}`` and ``phi_j`` uniform in ``[0, 2 pi)``.

    Returns ``(u0 (n, n_points), lengths (n,))``."""
    lengths = rng.uniform(*length_range, n)
    amplitude = rng.uniform(-0.5, 0.5, (n, n_sines, 1))
    wave = rng.integers(1, 3, (n, n_sines, 1))
    phase = rng.uniform(0, 2 * np.pi, (n, n_sines, 1))
    x = np.arange(n_points) / n_points  # x / L
    u0 = np.sum(amplitude * np.sin(2 * np.pi * wave * x + phase), axis=1)
    return u0, lengths


def generate(n, n_frames, rng, dt_frame=0.2, dt=0.02, n_points=256):
    """``n`` trajectories of ``n_frames`` frames every ``dt_frame``: ``(n, n_frames, N)``
    and their domain lengths ``(n,)``."""
    u0, lengths = random_initial(n, rng, n_points)
    t = dt_frame * np.arange(n_frames)
    return solve_kdv(u0, lengths, t, dt=dt), lengths

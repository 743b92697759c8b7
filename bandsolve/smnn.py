"""The public S-MNN functions: each checks which backend its inputs live on once and hands
the call to that backend's driver (:mod:`bandsolve.cpu.driver` for NumPy inputs,
:mod:`bandsolve.gpu.driver` for device arrays). The mathematics is in ``docs/design.md``.

The left-hand side depends only on ``coefficients``, ``steps``, the weights and which
entries carry initial values, so it is factored once per distinct left-hand side and
broadcast over the right-hand sides; :func:`smnn_factor` exposes that factorisation for
reuse (the "frozen left-hand side").
"""

from . import _backend
from . import _validation
from .cpu import driver as host
from .cpu.driver import SMNNFactorization

__all__ = ["SMNNFactorization", "smnn_factor", "smnn_normal_equations", "smnn_solve",
           "smnn_solve_vjp"]


def smnn_factor(coefficients, steps, *, init_shape, n_steps=None, weight_equation=1.0,
                weight_init=1.0, weight_smooth=1.0, central_smoothness=False, stream=None,
                check=None, algorithm="auto"):
    """Factor the S-MNN normal matrix once, for reuse with many right-hand sides.

    Parameters
    ----------
    coefficients : ``(..., T or 1, E, D, O)``
    steps : ``(..., T-1 or 1)``, positive
    init_shape : ``(Ti, Oi)``, which entries carry initial values (``t < Ti``, ``o < Oi``);
        part of the left-hand side because they add ``weight_init**2`` to its diagonal.
    n_steps : ``T``, needed only when neither input carries it.
    check : the failure policy, one keyword on both backends. ``True``: a system that
        cannot be solved (rank deficient to working precision, or refinement that does
        not converge) raises ``FactorizationError`` naming its batch index and time step
        (on the device this also checks the input values, which synchronises it).
        ``False``: NaN in that system's slice only, the others are solved, and
        ``smnn_factor(...).status`` says which failed. Default ``None``: ``True`` for host
        inputs, ``False`` for device inputs (no hidden synchronisation).
    stream, algorithm : device inputs only (``bandsolve.gpu``). ``stream``: the CUDA
        stream to run on (default: CuPy's current stream for CuPy inputs).
        ``algorithm``: ``"auto"``, ``"thread"`` (a thread per system), ``"block"`` (a
        thread block per system) or ``"partitioned"`` (parallel in time).

    Returns an :class:`SMNNFactorization` (a ``bandsolve.gpu.DeviceSMNNFactorization``,
    with a per-system ``.status``, for device inputs); ``.solve(rhs, init)`` equals
    ``smnn_solve(coefficients, rhs, init, steps, ...)``. Raises ``FactorizationError``
    naming the batch indices and time steps where the matrix is not positive definite.
    """
    if _backend.on_device(coefficients=coefficients, steps=steps):
        return _backend.gpu_driver().factor(coefficients, steps, init_shape=init_shape, n_steps=n_steps,
                             weight_equation=weight_equation, weight_init=weight_init,
                             weight_smooth=weight_smooth,
                             central_smoothness=central_smoothness, stream=stream,
                             check=check, algorithm=algorithm)
    _backend.host_options(stream, algorithm)
    return host.factor(coefficients, steps, init_shape=init_shape, n_steps=n_steps,
                       weight_equation=weight_equation, weight_init=weight_init,
                       weight_smooth=weight_smooth, central_smoothness=central_smoothness,
                       check=check)


def smnn_solve(coefficients, rhs, init, steps, *, n_steps=None, weight_equation=1.0,
               weight_init=1.0, weight_smooth=1.0, central_smoothness=False, stream=None,
               check=None, algorithm="auto"):
    """Solve the S-MNN least-squares problem (``docs/design.md``, section 1).

    Parameters
    ----------
    coefficients : ``(..., T or 1, E, D, O)``
        ``c[t, e, d, o]``: ODE coefficients of equation ``e`` on derivative ``o`` of ``d``.
    rhs : ``(..., T or 1, E)``
    init : ``(..., Ti, D, Oi)``, initial values for ``t < Ti``, ``o < Oi`` (``Ti`` or
        ``Oi`` may be 0).
    steps : ``(..., T-1 or 1)``, positive step sizes.
    n_steps : ``T``, needed only when no input carries it.
    weight_equation, weight_init, weight_smooth : positive row weights.
    central_smoothness : add central rows (needs ``O >= 3``; block-pentadiagonal system).
    check : the failure policy, one keyword on both backends. ``True``: a system that
        cannot be solved (rank deficient to working precision, or refinement that does
        not converge) raises ``FactorizationError`` naming its batch index and time step
        (on the device this also checks the input values, which synchronises it).
        ``False``: NaN in that system's slice only, the others are solved, and
        ``smnn_factor(...).status`` says which failed. Default ``None``: ``True`` for host
        inputs, ``False`` for device inputs (no hidden synchronisation).
    stream, algorithm : device inputs only (``bandsolve.gpu``). ``stream``: the CUDA
        stream to run on (default: CuPy's current stream for CuPy inputs).
        ``algorithm``: ``"auto"``, ``"thread"`` (a thread per system), ``"block"`` (a
        thread block per system) or ``"partitioned"`` (parallel in time).

    Leading batch axes broadcast by NumPy rules; the left-hand side is factored once per
    distinct (coefficients, steps) batch element. float32 or float64.

    Returns
    -------
    u : ``(..., T, D, O)``, the inputs' dtype.

    Raises ``ValueError``/``TypeError`` for bad input (before any computation) and
    ``FactorizationError`` (a ``numpy.linalg.LinAlgError``) naming the systems and time
    steps where the normal matrix is not positive definite (on the device: only with
    ``check=True``). CuPy inputs give CuPy results; other device arrays give Numba device
    arrays; mixing host and device inputs is a ``TypeError``.
    """
    if _backend.on_device(coefficients=coefficients, rhs=rhs, init=init, steps=steps):
        return _backend.gpu_driver().solve(coefficients, rhs, init, steps, n_steps=n_steps,
                            weight_equation=weight_equation, weight_init=weight_init,
                            weight_smooth=weight_smooth, central_smoothness=central_smoothness,
                            stream=stream, check=check, algorithm=algorithm, with_vjp=False)
    _backend.host_options(stream, algorithm)
    u, _, _ = host.solve(coefficients, rhs, init, steps, n_steps=n_steps,
                         weight_equation=weight_equation, weight_init=weight_init,
                         weight_smooth=weight_smooth, central_smoothness=central_smoothness,
                         check=check)
    return u


def smnn_solve_vjp(coefficients, rhs, init, steps, *, n_steps=None, weight_equation=1.0,
                   weight_init=1.0, weight_smooth=1.0, central_smoothness=False, stream=None,
                   check=None, algorithm="auto"):
    """:func:`smnn_solve` plus its vector-Jacobian product.

    Returns ``(u, vjp)``; ``vjp(ubar)`` with ``ubar`` ``(..., T, D, O)`` returns
    ``(coefficients_bar, rhs_bar, init_bar, steps_bar)``, each the shape of its input
    (summed over broadcast axes). The backward pass reuses the forward factorisation:
    one extra pair of substitutions and an O(T n^2) gradient sweep.
    """
    if _backend.on_device(coefficients=coefficients, rhs=rhs, init=init, steps=steps):
        return _backend.gpu_driver().solve(coefficients, rhs, init, steps, n_steps=n_steps,
                            weight_equation=weight_equation, weight_init=weight_init,
                            weight_smooth=weight_smooth, central_smoothness=central_smoothness,
                            stream=stream, check=check, algorithm=algorithm, with_vjp=True)
    _backend.host_options(stream, algorithm)
    # private copies: the vjp must not see later changes to the caller's rhs or u
    rhs = _validation.as_host_array("rhs", rhs).copy()
    u, _, backward = host.solve(coefficients, rhs, init, steps, n_steps=n_steps,
                                weight_equation=weight_equation, weight_init=weight_init,
                                weight_smooth=weight_smooth,
                                central_smoothness=central_smoothness, check=check)
    return u.copy(), backward


def smnn_normal_equations(coefficients, rhs, init, steps, *, n_steps=None,
                          weight_equation=1.0, weight_init=1.0, weight_smooth=1.0,
                          central_smoothness=False):
    """The assembled normal equations ``M x = b`` (same arguments as :func:`smnn_solve`).

    Returns ``(M, b)``: ``M`` a :class:`BlockBanded` with the left-hand-side batch
    (bandwidth 1, or 2 with central smoothness; block size ``n = D*O``, unknown index
    ``d*O + o``) and ``b`` ``(..., T, n)`` with the full batch.
    """
    if _backend.on_device(coefficients=coefficients, rhs=rhs, init=init, steps=steps):
        raise TypeError("smnn_normal_equations works on host (NumPy) arrays only; copy the "
                        "inputs to the host first (e.g. cupy.asnumpy)")
    return host.normal_equations(coefficients, rhs, init, steps, n_steps=n_steps,
                                 weight_equation=weight_equation, weight_init=weight_init,
                                 weight_smooth=weight_smooth,
                                 central_smoothness=central_smoothness)

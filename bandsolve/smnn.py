"""The public S-MNN functions: each checks which backend its inputs live on once and hands
the call to that backend's driver (:mod:`bandsolve.cpu.driver` for NumPy inputs,
:mod:`bandsolve.gpu.driver` for device arrays). The mathematics is in ``docs/math.md``.

The left-hand side depends only on ``coefficients``, ``steps``, the weights and which
entries carry initial values, so it is factored once per distinct left-hand side and
broadcast over the right-hand sides; :func:`smnn_factor` exposes that factorisation for
reuse (the "frozen left-hand side").
"""

from typing import Any, Callable

import numpy as np
from numpy.typing import ArrayLike

from . import _backend
from .cpu import driver as host
from .cpu.driver import SMNNFactorization

# (coefficients_bar, rhs_bar, init_bar, steps_bar), each the shape of its input
Gradients = tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]

__all__ = ["SMNNFactorization", "smnn_factor", "smnn_normal_equations", "smnn_solve",
           "smnn_solve_vjp"]

# The keywords every entry point takes and forwards unchanged to the backend's driver.
_OPTIONS = ("n_steps", "weight_equation", "weight_init", "weight_smooth",
            "central_smoothness", "check")

# Parameter descriptions shared by the entry points' docstrings ({policy} in them).
_SHARED_DOCS = {"policy": """    check : bool or None
        The failure policy, one keyword on both backends. ``True``: a system that cannot
        be solved (rank deficient to working precision, or refinement that does not
        converge) raises ``FactorizationError`` naming its batch index and time step (on
        the device this also checks the input values, which synchronises it). ``False``:
        NaN in that system's slice only, the others are solved, and
        ``smnn_factor(...).status`` says which failed. Default ``None``: ``True`` for
        host inputs, ``False`` for device inputs (no hidden synchronisation).
    stream, algorithm
        Device inputs only (``bandsolve.gpu``); leave the defaults for NumPy inputs.
        ``stream``: the CUDA stream to run on (default: CuPy's current stream for CuPy
        inputs). ``algorithm``: ``"auto"``, ``"thread"`` (a thread per system),
        ``"block"`` (a thread block per system) or ``"partitioned"`` (parallel in time).
"""}


def _options(arguments):
    """The forwarded keywords out of an entry point's ``locals()``."""
    return {name: arguments[name] for name in _OPTIONS}


def _shared_doc(function):
    """Fill the shared parameter descriptions into ``function``'s docstring."""
    for key, text in _SHARED_DOCS.items():
        function.__doc__ = function.__doc__.replace("{" + key + "}", text)
    return function


@_shared_doc
def smnn_factor(coefficients: ArrayLike, steps: ArrayLike, *, init_shape: tuple[int, int],
                n_steps: int | None = None, weight_equation: float = 1.0,
                weight_init: float = 1.0, weight_smooth: float = 1.0,
                central_smoothness: bool = False, stream: Any = None, check: bool | None = None,
                algorithm: str = "auto") -> SMNNFactorization:
    """Factor the S-MNN normal matrix once, for reuse with many right-hand sides.

    Parameters
    ----------
    coefficients : array ``(..., T or 1, E, D, O)``, float32 or float64
        As for :func:`smnn_solve`.
    steps : array ``(..., T-1 or 1)``
        Positive step sizes.
    init_shape : tuple ``(Ti, Oi)``
        Which entries will carry initial values (``t < Ti``, ``o < Oi``): part of the
        left-hand side, because they add ``weight_init**2`` to its diagonal.
    n_steps : int, optional
        ``T``, needed only when neither input carries it.
    weight_equation, weight_init, weight_smooth, central_smoothness
        As for :func:`smnn_solve`.
{policy}
    Returns
    -------
    SMNNFactorization
        (a ``bandsolve.gpu.DeviceSMNNFactorization``, with a per-system ``.status``, for
        device inputs); ``.solve(rhs, init)`` equals
        ``smnn_solve(coefficients, rhs, init, steps, ...)``.

    Raises
    ------
    FactorizationError
        Naming the batch indices and time steps where the system is singular to working
        precision (with ``check=True``, the host default; ``check=False`` gives a status
        instead).
    ValueError, TypeError
        Bad input, naming the argument, before any kernel runs.

    Examples
    --------
    >>> import numpy as np, bandsolve
    >>> T = 100
    >>> coefficients = np.zeros((T, 1, 1, 3)); coefficients[...] = [4.0, 0.3, 1.0]
    >>> rhs, init, steps = np.zeros((T, 1)), np.array([[[1.0, 0.0]]]), np.full(T - 1, 0.01)
    >>> factor = bandsolve.smnn_factor(coefficients, steps, init_shape=(1, 2))
    >>> np.allclose(factor.solve(rhs, init),
    ...             bandsolve.smnn_solve(coefficients, rhs, init, steps))
    True
    """
    driver, device_options = (_backend.device_call(stream, algorithm, coefficients=coefficients,
                                                   steps=steps) or (host, {}))
    return driver.factor(coefficients, steps, init_shape=init_shape, **_options(locals()),
                         **device_options)

@_shared_doc
def smnn_solve(coefficients: ArrayLike, rhs: ArrayLike, init: ArrayLike, steps: ArrayLike, *,
               n_steps: int | None = None, weight_equation: float = 1.0,
               weight_init: float = 1.0, weight_smooth: float = 1.0,
               central_smoothness: bool = False, stream: Any = None, check: bool | None = None,
               algorithm: str = "auto") -> np.ndarray:
    """Solve the S-MNN least-squares problem (``docs/math.md``).

    Parameters
    ----------
    coefficients : array ``(..., T or 1, E, D, O)``, float32 or float64
        ``c[t, e, d, o]``: ODE coefficients of equation ``e`` on derivative ``o`` of ``d``.
    rhs : array ``(..., T or 1, E)``
        ``r[t, e]``: right-hand side of equation ``e`` at step ``t``.
    init : array ``(..., Ti, D, Oi)``
        Initial values for ``t < Ti``, ``o < Oi`` (``Ti`` or ``Oi`` may be 0: none).
    steps : array ``(..., T-1 or 1)``
        Positive step sizes.
    n_steps : int, optional
        ``T``, needed only when no input carries it.
    weight_equation, weight_init, weight_smooth : float
        Positive row weights.
    central_smoothness : bool
        Add central rows (needs ``O >= 3``; the system becomes block-pentadiagonal).
{policy}
    Leading batch axes broadcast by NumPy rules; the left-hand side is factored once per
    distinct (coefficients, steps) batch element. float32 or float64 (mixed inputs
    compute in the wider type).

    Returns
    -------
    u : array ``(..., T, D, O)``
        In the inputs' dtype. CuPy inputs give CuPy results; other device arrays give
        Numba device arrays.

    Raises
    ------
    ValueError, TypeError
        Bad input, naming the argument, before any computation; mixing host and device
        inputs is a ``TypeError``.
    FactorizationError
        A ``numpy.linalg.LinAlgError`` naming the systems and time steps where the
        problem is singular to working precision (too few initial values or coefficients
        to pin the solution), with ``check=True`` (the host default).

    Notes
    -----
    On the host the solve runs in float64 whatever the inputs' dtype and refines with
    residuals formed from the rows (corrected semi-normal equations; a QR factor of the
    rows where the Cholesky factor of the normal matrix is not accurate enough): per
    derivative order the error is about ``eps * cond(A)`` of the weighted rows ``A``,
    as a backward-stable least-squares solve (README, "Numerics").

    Examples
    --------
    The damped oscillator ``u'' + 0.3 u' + 4 u = 0``, ``u(0) = 1``, ``u'(0) = 0`` on 100
    steps of 0.01, against its closed form:

    >>> import numpy as np, bandsolve
    >>> T = 100
    >>> coefficients = np.zeros((T, 1, 1, 3)); coefficients[...] = [4.0, 0.3, 1.0]
    >>> rhs, init, steps = np.zeros((T, 1)), np.array([[[1.0, 0.0]]]), np.full(T - 1, 0.01)
    >>> u = bandsolve.smnn_solve(coefficients, rhs, init, steps)
    >>> u.shape                                       # (T, D, O): u, u', u''
    (100, 1, 3)
    >>> t = np.arange(T) * 0.01
    >>> w = np.sqrt(4.0 - 0.15**2)
    >>> exact = np.exp(-0.15 * t) * (np.cos(w * t) + 0.15 / w * np.sin(w * t))
    >>> bool(np.abs(u[:, 0, 0] - exact).max() < 1e-3)
    True
    """
    driver, device_options = (_backend.device_call(stream, algorithm, coefficients=coefficients,
                                                   rhs=rhs, init=init, steps=steps)
                               or (host, {}))
    return driver.solve(coefficients, rhs, init, steps, with_vjp=False, **_options(locals()),
                        **device_options)

def smnn_solve_vjp(coefficients: ArrayLike, rhs: ArrayLike, init: ArrayLike,
                   steps: ArrayLike, *, n_steps: int | None = None,
                   weight_equation: float = 1.0, weight_init: float = 1.0,
                   weight_smooth: float = 1.0, central_smoothness: bool = False,
                   stream: Any = None, check: bool | None = None, algorithm: str = "auto",
                   ) -> tuple[np.ndarray, Callable[[ArrayLike], Gradients]]:
    """:func:`smnn_solve` plus its vector-Jacobian product.

    Returns ``(u, vjp)``; ``vjp(ubar)`` with ``ubar`` ``(..., T, D, O)`` returns
    ``(coefficients_bar, rhs_bar, init_bar, steps_bar)``, each the shape of its input
    (summed over broadcast axes). The backward pass reuses the forward factorisation:
    one extra pair of substitutions and an O(T n^2) gradient sweep. Arguments and errors
    as for :func:`smnn_solve`.

    Examples
    --------
    >>> import numpy as np, bandsolve
    >>> T = 100
    >>> coefficients = np.zeros((T, 1, 1, 3)); coefficients[...] = [4.0, 0.3, 1.0]
    >>> rhs, init, steps = np.zeros((T, 1)), np.array([[[1.0, 0.0]]]), np.full(T - 1, 0.01)
    >>> u, vjp = bandsolve.smnn_solve_vjp(coefficients, rhs, init, steps)
    >>> coefficients_bar, rhs_bar, init_bar, steps_bar = vjp(np.ones_like(u))
    >>> coefficients_bar.shape, rhs_bar.shape, init_bar.shape, steps_bar.shape
    ((100, 1, 1, 3), (100, 1), (1, 1, 2), (99,))
    """
    driver, device_options = (_backend.device_call(stream, algorithm, coefficients=coefficients,
                                                   rhs=rhs, init=init, steps=steps)
                               or (host, {}))
    return driver.solve(coefficients, rhs, init, steps, with_vjp=True, **_options(locals()),
                        **device_options)

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

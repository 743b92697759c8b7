"""Plumbing for the framework adapters (``adapters/bandsolve_torch``, ``bandsolve_jax``);
internal, not part of the documented API.

Frameworks such as PyTorch and JAX keep the residuals of a forward pass as arrays, not as
Python objects. These calls let them carry the block Cholesky factor ``lower``
``(..., T, p+1, n, n)`` between the forward and the backward pass:

- :func:`smnn_factor_solve` solves and returns the factorisation it built (keep
  ``factorization.lower``); also re-exported as ``bandsolve.smnn_factor_solve``;
- :func:`from_lower` rebuilds that factorisation from ``lower`` without refactoring;
- ``factorization.backward(rhs, init, u, ubar)`` then gives the four gradients.

Example::

    u, factorization = smnn_factor_solve(coefficients, rhs, init, steps)
    lower = factorization.lower                           # kept by the framework
    grads = from_lower(lower, coefficients, steps, init_shape=(Ti, Oi)).backward(
        rhs, init, u, ubar)
"""

from . import _backend
from .cpu import driver as host
from .cpu.driver import SMNNFactorization

__all__ = ["from_lower", "smnn_factor_solve"]


def from_lower(lower, coefficients, steps, *, init_shape, **options):
    """:meth:`SMNNFactorization.from_lower`: the factorisation with factor ``lower``
    (host or device, like the inputs); ``options`` as for ``smnn_factor``."""
    return SMNNFactorization.from_lower(lower, coefficients, steps, init_shape=init_shape,
                                        **options)


def smnn_factor_solve(coefficients, rhs, init, steps, *, n_steps=None, weight_equation=1.0,
                      weight_init=1.0, weight_smooth=1.0, central_smoothness=False,
                      stream=None, check=None, algorithm="auto"):
    """:func:`bandsolve.smnn_solve` that also returns the :class:`SMNNFactorization` it built.

    Returns ``(u, factorization)``: ``factorization.lower`` is the factor to keep as an
    array, and ``factorization.backward(rhs, init, u, ubar)`` the gradients later, with no
    refactorisation. For frameworks that carry residuals as arrays (the PyTorch and JAX
    adapters); on the host it takes the same fused factor-and-solve pass as
    :func:`smnn_solve`. Arguments as for :func:`smnn_solve`.
    """
    driver, device_options = (_backend.device_call(stream, algorithm, coefficients=coefficients,
                                                   rhs=rhs, init=init, steps=steps)
                               or (host, {}))
    return driver.factor_solve(coefficients, rhs, init, steps, n_steps=n_steps,
                               weight_equation=weight_equation, weight_init=weight_init,
                               weight_smooth=weight_smooth,
                               central_smoothness=central_smoothness, check=check,
                               **device_options)

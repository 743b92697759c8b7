"""JAX adapter for bandsolve: the S-MNN solve on JAX arrays.

:func:`smnn_solve` has the arguments of :func:`bandsolve.smnn_solve` and works under
``jax.jit``, ``jax.vmap``, reverse mode (``jax.grad``, ``vjp``, ``jacrev``) and forward
mode (``jax.jvp``, ``jacfwd``; CPU only so far), through one ``jax.custom_jvp``. It
moves arrays and calls the core: on the CPU through a host callback into the Numba
kernels, on a CUDA device through the core's CUDA kernels on XLA's stream.
Installed by the ``[jax]`` extra.
"""

from ._solve import smnn_solve

__all__ = ["smnn_solve"]

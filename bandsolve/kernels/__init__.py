"""Numba-compilable helpers shared by the CPU (``bandsolve.cpu``) and CUDA
(``bandsolve.gpu``) kernels: plain functions on one system's arrays, no parallelism.

- :mod:`.blocks`: dense ``n x n`` block operations (Cholesky, triangular solves, updates).
- :mod:`.banded`: block Cholesky factorisation and substitutions of one block-banded system.
- :mod:`.residual`: ``A^T (beta - A x)`` formed row by row (refinement residuals).
- :mod:`.row_qr`: the factor of ``A^T A`` from a Householder QR sweep over the rows.
"""

"""Numba-compilable helpers shared by the CPU (``bandsolve.cpu``) and CUDA
(``bandsolve.gpu``) kernels: plain functions on one system's arrays, no parallelism, no
allocation (scratch is passed in), so the same source compiles for both targets.

- :mod:`.blocks`: dense ``n x n`` block operations (Cholesky, triangular solves).
- :mod:`.banded`: block Cholesky factorisation and substitutions of one block-banded
  system (per row, so a CUDA thread block can share a block row).
- :mod:`.assembly`: the S-MNN normal equations ``M``, ``b`` block row by block row.
- :mod:`.gradient`: per-step pieces of the S-MNN gradient.
- :mod:`.residual`: ``A^T (beta - A x)`` formed row by row (refinement residuals).
- :mod:`.row_qr`: the factor of ``A^T A`` from a Householder QR sweep over the rows.
- :mod:`.partitioned`: the parallel-in-time (Schur complement) block Cholesky.
"""

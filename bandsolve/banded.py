"""Symmetric block-banded matrices and their block Cholesky factorisation.

This is the general lower layer: any SPD block-banded system (Kalman smoothing, splines,
Gauss-Markov random fields, S-MNN normal equations) can be stored, factored once and
solved for many right-hand sides.

Storage
-------
A symmetric matrix with ``T x T`` blocks of size ``n x n`` and block bandwidth ``p``
(``M[s, t] = 0`` for ``|s - t| > p``) is kept as its lower block band::

    blocks.shape == (..., T, p + 1, n, n)        blocks[..., t, j] == M[t, t - j]

           j = 0     j = 1     j = 2          (p = 2, T = 4)
    t = 0  M[0,0]    ·         ·
    t = 1  M[1,1]    M[1,0]    ·              · : never read (t - j < 0)
    t = 2  M[2,2]    M[2,1]    M[2,0]
    t = 3  M[3,3]    M[3,2]    M[3,1]

Only the lower triangle of each diagonal block ``M[t, t]`` is read; its strict upper
triangle and the ``·`` cells may hold anything (NaN included). Each system is contiguous
(``T * (p+1) * n * n`` numbers), so one system's band stays in cache while it is factored.
"""

import numpy as np
from numpy.typing import ArrayLike

from ._validation import (
    as_host_array,
    broadcast_batch,
    check_finite,
    check_rank,
    flat_batch_index,
)
from .cpu.factor import factor_kernel, solve_kernel
from .errors import raise_if_failed


class BlockBanded:
    """A batch of symmetric block-banded matrices in lower block storage.

    Parameters
    ----------
    blocks : array ``(..., T, p+1, n, n)``, float32 or float64
        ``blocks[..., t, j]`` is the block ``M[t, t-j]`` (see the module docstring). Kept
        as given (no copy); :func:`block_cholesky` copies it before factoring.

    Raises
    ------
    ValueError
        ``blocks`` has fewer than 4 axes or non-square ``n x n`` blocks.
    TypeError
        ``blocks`` is not a real floating-point host array (integers, complex, device
        arrays).

    Examples
    --------
    The 4 x 4 tridiagonal matrix with 4 on the diagonal and 1 beside it, as two 2 x 2
    block rows of block bandwidth 1:

    >>> import numpy as np
    >>> import bandsolve
    >>> dense = 4 * np.eye(4) + np.eye(4, k=1) + np.eye(4, k=-1)
    >>> M = bandsolve.BlockBanded.from_dense(dense, block_size=2, bandwidth=1)
    >>> M
    BlockBanded(batch_shape=(), n_steps=2, bandwidth=1, block_size=2, dtype=float64)
    >>> M.blocks[1, 1]  # M[1, 0]: rows 2-3, columns 0-1 of the dense matrix
    array([[0., 1.],
           [0., 0.]])
    >>> np.array_equal(M.to_dense(), dense)
    True
    """

    def __init__(self, blocks: ArrayLike):
        blocks = as_host_array("blocks", blocks)
        check_rank("blocks", blocks, 4, "(..., T, p+1, n, n)")
        if blocks.shape[-1] != blocks.shape[-2]:
            raise ValueError(f"blocks must be square (..., n, n); got shape {blocks.shape}")
        self.blocks = blocks

    @property
    def batch_shape(self) -> tuple[int, ...]:
        """The leading batch axes ``...`` of ``blocks`` (``()`` for one matrix)."""
        return self.blocks.shape[:-4]

    @property
    def n_steps(self) -> int:
        """Number of block rows ``T``."""
        return self.blocks.shape[-4]

    @property
    def bandwidth(self) -> int:
        """Block bandwidth ``p`` (1: block tridiagonal, 2: block pentadiagonal)."""
        return self.blocks.shape[-3] - 1

    @property
    def block_size(self) -> int:
        """Block size ``n`` (each system is ``T*n x T*n``)."""
        return self.blocks.shape[-1]

    @property
    def dtype(self) -> np.dtype:
        """float32 or float64: the dtype the factorisation and solves run in."""
        return self.blocks.dtype

    def __repr__(self):
        return (f"BlockBanded(batch_shape={self.batch_shape}, n_steps={self.n_steps}, "
                f"bandwidth={self.bandwidth}, block_size={self.block_size}, dtype={self.dtype})")

    @classmethod
    def from_dense(cls, dense: ArrayLike, block_size: int, bandwidth: int) -> "BlockBanded":
        """Lower block band of symmetric ``dense`` ``(..., T*n, T*n)``.

        Entries outside the band (``|s - t| > bandwidth`` in block rows) and the upper
        triangle are ignored; unread cells are set to zero. Raises ``ValueError`` when
        ``dense`` is not square or its size is not a multiple of ``block_size``.

        >>> import numpy as np, bandsolve
        >>> M = bandsolve.BlockBanded.from_dense(np.eye(6), block_size=3, bandwidth=1)
        >>> M.blocks.shape  # (T, p+1, n, n)
        (2, 2, 3, 3)
        """
        dense = as_host_array("dense", dense)
        n, p = int(block_size), int(bandwidth)
        size = dense.shape[-1]
        if dense.ndim < 2 or dense.shape[-2] != size or size % n:
            raise ValueError(
                f"dense must have shape (..., T*n, T*n) with n={n}; got {dense.shape}")
        n_steps = size // n
        tiled = dense.reshape(dense.shape[:-2] + (n_steps, n, n_steps, n))
        blocks = np.zeros(dense.shape[:-2] + (n_steps, p + 1, n, n), dtype=dense.dtype)
        t = np.arange(n_steps)
        for j in range(min(p, n_steps - 1) + 1):
            # advanced indices around a slice put the step axis first; move it back
            blocks[..., j:, j, :, :] = np.moveaxis(tiled[..., t[j:], :, t[j:] - j, :], 0, -3)
        return cls(blocks)

    def _symmetric_diagonal(self):
        """The diagonal blocks ``(..., T, n, n)`` in full, from their lower triangles."""
        lower = np.tril(self.blocks[..., 0, :, :])
        return lower + np.swapaxes(np.tril(lower, -1), -1, -2)

    def to_dense(self) -> np.ndarray:
        """The full symmetric matrix ``(..., T*n, T*n)``, same dtype.

        O(T^2) memory: meant for checks and small examples, not for solving.
        """
        T, p, n = self.n_steps, self.bandwidth, self.block_size
        dense = np.zeros(self.batch_shape + (T, n, T, n), dtype=self.dtype)
        diagonal = self._symmetric_diagonal()
        t = np.arange(T)
        dense[..., t, :, t, :] = np.moveaxis(diagonal, -3, 0)
        for j in range(1, min(p, T - 1) + 1):
            block = np.moveaxis(self.blocks[..., j:, j, :, :], -3, 0)
            dense[..., t[j:], :, t[j:] - j, :] = block
            dense[..., t[j:] - j, :, t[j:], :] = np.swapaxes(block, -1, -2)
        return dense.reshape(self.batch_shape + (T * n, T * n))

    def matvec(self, x: ArrayLike) -> np.ndarray:
        """``M @ x`` for ``x`` ``(..., T, n)`` (batch axes broadcast against the matrix's);
        returns ``(..., T, n)``, in O(T p n^2) time.

        >>> import numpy as np, bandsolve
        >>> M = bandsolve.BlockBanded.from_dense(2 * np.eye(4), block_size=2, bandwidth=1)
        >>> M.matvec(np.ones((2, 2)))
        array([[2., 2.],
               [2., 2.]])
        """
        x = as_host_array("x", x)
        T, p = self.n_steps, self.bandwidth
        diagonal = self._symmetric_diagonal()
        y = np.einsum("...tab,...tb->...ta", diagonal, x)
        for j in range(1, min(p, T - 1) + 1):
            block = self.blocks[..., j:, j, :, :]  # M[t, t-j] for t >= j
            below = np.einsum("...tab,...tb->...ta", block, x[..., :-j, :])
            above = np.einsum("...tba,...tb->...ta", block, x[..., j:, :])
            y = y + np.concatenate([np.zeros_like(y[..., :j, :]), below], axis=-2)
            y = y + np.concatenate([above, np.zeros_like(y[..., :j, :])], axis=-2)
        return y


class BlockCholesky:
    """``M = L L^T`` of a batch of block-banded SPD matrices; factor once, solve many.

    Obtain it from :func:`block_cholesky`. ``lower`` ``(..., T, p+1, n, n)`` holds ``L``
    in the storage of :class:`BlockBanded` (the strict upper triangles of the diagonal
    blocks are zero). It is a value: solving with it never changes it, so one factor
    serves any number of right-hand sides, in any order.

    Attributes
    ----------
    batch_shape : tuple of int
        The batch axes ``...`` of the factored matrices.

    Examples
    --------
    >>> import numpy as np, bandsolve
    >>> dense = 4 * np.eye(4) + np.eye(4, k=1) + np.eye(4, k=-1)
    >>> factor = bandsolve.block_cholesky(
    ...     bandsolve.BlockBanded.from_dense(dense, block_size=2, bandwidth=1))
    >>> b = np.arange(4.0).reshape(2, 2)               # (T, n)
    >>> x = factor.solve(b)
    >>> np.allclose(dense @ x.reshape(4), b.reshape(4))
    True
    >>> bool(np.isclose(factor.logdet(), np.linalg.slogdet(dense)[1]))
    True
    """

    def __init__(self, lower, batch_shape):
        self._lower = lower  # canonical (B, T, p+1, n, n), C-contiguous
        self.batch_shape = tuple(batch_shape)

    @property
    def lower(self) -> np.ndarray:
        """``L`` ``(..., T, p+1, n, n)`` in :class:`BlockBanded` storage (a view: do not
        write to it)."""
        return self._lower.reshape(self.batch_shape + self._lower.shape[1:])

    @property
    def n_steps(self) -> int:
        """Number of block rows ``T``."""
        return self._lower.shape[1]

    @property
    def block_size(self) -> int:
        """Block size ``n``."""
        return self._lower.shape[-1]

    @property
    def dtype(self) -> np.dtype:
        """float32 or float64, the dtype of the factored matrix."""
        return self._lower.dtype

    def solve(self, b: ArrayLike) -> np.ndarray:
        """Solve ``M x = b`` for ``b`` ``(..., T, n)``; the batch axes of ``b`` broadcast
        against the factor's. Returns ``x`` with the broadcast batch, ``(..., T, n)``, in
        the factor's dtype; ``b`` is not modified.

        Raises ``ValueError`` if ``b`` has the wrong trailing shape, batch axes that do not
        broadcast, or NaN/Inf values; ``TypeError`` for a non-float or device array.
        Two triangular block substitutions: O(T p n^2) per system.
        """
        b = as_host_array("b", b)
        check_rank("b", b, 2, "(..., T, n)")
        expected = (self.n_steps, self.block_size)
        if b.shape[-2:] != expected:
            raise ValueError(f"b must have shape (..., {expected[0]}, {expected[1]}); got {b.shape}")
        check_finite("b", b)
        batch = broadcast_batch(factor=self.batch_shape, b=b.shape[:-2])
        x = np.array(np.broadcast_to(b, batch + expected), dtype=self.dtype, order="C")
        x = x.reshape((-1,) + expected)  # a fresh copy: b is never written
        self.solve_flat_in_place(x, flat_batch_index(self.batch_shape, batch))
        return x.reshape(batch + expected)

    def solve_flat_in_place(self, v, lhs_index):
        """Kernel-level solve: v ``(B, T, n)`` overwritten by the solution; lhs_index
        ``(B,)`` int64 picks each right-hand side's factor. No checks (internal)."""
        solve_kernel.for_batch(*v.shape[:2])(self._lower, lhs_index, v)

    def logdet(self) -> np.ndarray:
        """``log det M`` per system (``2 * sum(log(diag(L)))``), shape ``batch_shape``.

        >>> import numpy as np, bandsolve
        >>> M = bandsolve.BlockBanded.from_dense(2 * np.eye(4), block_size=2, bandwidth=1)
        >>> bool(np.isclose(bandsolve.block_cholesky(M).logdet(), 4 * np.log(2)))
        True
        """
        diagonals = np.diagonal(self._lower[:, :, 0], axis1=-2, axis2=-1)
        return 2.0 * np.log(diagonals).sum(axis=(-2, -1)).reshape(self.batch_shape)


def block_cholesky(matrix: "BlockBanded | ArrayLike") -> BlockCholesky:
    """Factor a :class:`BlockBanded` batch: ``M = L L^T``.

    ``matrix`` is a :class:`BlockBanded` or its ``blocks`` array ``(..., T, p+1, n, n)``
    (float32 or float64; not modified). Returns a :class:`BlockCholesky` with the same
    batch shape and dtype. O(T p^2 n^3) time, O(T p n^2) memory per system.

    Raises ``FactorizationError`` (a ``numpy.linalg.LinAlgError``) naming every system and
    block row whose pivot was not positive; ``ValueError`` if the blocks hold NaN or Inf
    in cells that are read.

    >>> import numpy as np, bandsolve
    >>> not_spd = bandsolve.BlockBanded.from_dense(-np.eye(4), block_size=2, bandwidth=1)
    >>> bandsolve.block_cholesky(not_spd)  # doctest: +ELLIPSIS
    Traceback (most recent call last):
      ...
    bandsolve.errors.FactorizationError: ...
    """
    if not isinstance(matrix, BlockBanded):
        matrix = BlockBanded(matrix)
    blocks = matrix.blocks
    batch_shape = matrix.batch_shape
    T, width, n = blocks.shape[-4], blocks.shape[-3], blocks.shape[-1]
    lower = np.array(blocks.reshape((-1, T, width, n, n)), order="C", copy=True)
    # unread cells may hold anything; zero them so they cannot leak into the factor
    for j in range(1, width):
        lower[:, :j, j] = 0.0
    check_finite("blocks (read cells)", np.tril(lower[:, :, 0]))
    check_finite("blocks (read cells)", lower[:, :, 1:])
    info = np.zeros(lower.shape[0], dtype=np.int64)
    factor_kernel.for_batch(*lower.shape[:2])(lower, info)
    raise_if_failed(info, batch_shape)
    return BlockCholesky(lower, batch_shape)


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

import math

from ._validation import (
    as_host_array,
    broadcast_batch,
    check_count,
    check_finite,
    check_rank,
    flat_batch_index,
)
from .cpu.banded import factor_kernel, solve_kernel
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
        _check_band_shape("blocks", blocks.shape)
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
        n = check_count("block_size", block_size, minimum=1)
        p = check_count("bandwidth", bandwidth, minimum=0)
        check_rank("dense", dense, 2, "(..., T*n, T*n)")
        size = dense.shape[-1]
        if dense.shape[-2] != size or size % n or size == 0:
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
        check_rank("x", x, 2, "(..., T, n)")
        expected = (self.n_steps, self.block_size)
        if x.shape[-2:] != expected:
            raise ValueError(f"x must have shape (..., {expected[0]}, {expected[1]}); "
                             f"got {x.shape}")
        broadcast_batch(matrix=self.batch_shape, x=x.shape[:-2])
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


def _check_band_shape(name, shape):
    """``ValueError`` unless ``shape`` ``(..., T, p+1, n, n)`` has ``T, p+1, n >= 1``."""
    T, width, n = shape[-4], shape[-3], shape[-1]
    if min(T, width, n) < 1:
        raise ValueError(f"{name} must have shape (..., T, p+1, n, n) with T >= 1 block rows, "
                         f"p+1 >= 1 band blocks and block size n >= 1; got shape {shape}")


def _check_factor(name, lower, batch_shape):
    """``ValueError`` unless ``lower`` ``(B, T, p+1, n, n)`` is finite where it is read and
    every diagonal block has a positive diagonal (the pivots of a Cholesky factor); the
    message gives the index into ``lower`` of shape ``batch_shape + (T, p+1, n, n)``."""
    T, width, n = lower.shape[1], lower.shape[2], lower.shape[3]
    t, j = np.arange(T)[:, None], np.arange(width)[None, :]
    read = np.broadcast_to((t >= j)[:, :, None, None], (T, width, n, n)).copy()
    read[:, 0] &= np.tri(n, dtype=bool)  # diagonal blocks: lower triangle only
    pivots = np.zeros((T, width, n, n), dtype=bool)
    pivots[:, 0] = np.eye(n, dtype=bool)
    for problem, bad in (("is not finite", read & ~np.isfinite(lower)),
                         ("is a diagonal pivot that is not positive",
                          pivots & ~(lower > 0))):
        where = np.argwhere(bad)
        if where.size:
            first = [int(i) for i in where[0]]
            index = tuple(int(i) for i in np.unravel_index(first[0], batch_shape)) + tuple(
                first[1:])
            raise ValueError(
                f"{name} is not a block Cholesky factor: {name}{list(index)} = "
                f"{float(lower[tuple(first)])!r} {problem} ({len(where)} such entries)")


class BlockCholesky:
    """``M = L L^T`` of a batch of block-banded SPD matrices; factor once, solve many.

    Obtain it from :func:`block_cholesky`. ``lower`` ``(..., T, p+1, n, n)`` holds ``L``
    in the storage of :class:`BlockBanded` (the strict upper triangles of the diagonal
    blocks are zero; a read-only view). It is a value: solving with it never changes it,
    so one factor serves any number of right-hand sides, in any order.

    Parameters
    ----------
    lower : array ``batch_shape + (T, p+1, n, n)`` or ``(prod(batch_shape), T, p+1, n, n)``
        A block Cholesky factor: finite where read, positive diagonal pivots (checked,
        ``ValueError`` otherwise). Copied when it is not a C-contiguous writable array.
    batch_shape : tuple of int
        The batch shape that ``lower``'s systems flatten.

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
        if not isinstance(batch_shape, (tuple, list)):
            raise TypeError(f"batch_shape must be a tuple of non-negative integers; got "
                            f"{type(batch_shape).__name__} {batch_shape!r}")
        batch_shape = tuple(check_count(f"batch_shape[{i}]", s)
                            for i, s in enumerate(batch_shape))
        lower = as_host_array("lower", lower)
        check_rank("lower", lower, 4, "(..., T, p+1, n, n)")
        if lower.shape[-1] != lower.shape[-2]:
            raise ValueError(f"lower must be square (..., n, n); got shape {lower.shape}")
        _check_band_shape("lower", lower.shape)
        core = lower.shape[-4:]
        allowed = list(dict.fromkeys([batch_shape + core, (math.prod(batch_shape),) + core]))
        if lower.shape not in allowed:
            raise ValueError(
                f"lower must have shape batch_shape + (T, p+1, n, n) = "
                f"{' or '.join(map(str, allowed))} for batch_shape={batch_shape}; "
                f"got {lower.shape}")
        lower = lower.reshape((math.prod(batch_shape),) + core)
        _check_factor("lower", lower, batch_shape)
        if not (lower.flags.c_contiguous and lower.flags.writeable):
            lower = np.array(lower, order="C", copy=True)  # one compiled kernel variant
        self._init(lower, batch_shape)

    @classmethod
    def _trusted(cls, lower, batch_shape):
        """A factor just computed by the kernels (canonical ``(B, T, p+1, n, n)``, C
        order, info all zero): no checks."""
        self = cls.__new__(cls)
        self._init(lower, tuple(batch_shape))
        return self

    def _init(self, lower, batch_shape):
        self._lower = lower  # canonical (B, T, p+1, n, n), C-contiguous
        self.batch_shape = batch_shape

    @property
    def lower(self) -> np.ndarray:
        """``L`` ``(..., T, p+1, n, n)`` in :class:`BlockBanded` storage, a read-only view
        (writing to it would corrupt later solves)."""
        view = self._lower.reshape(self.batch_shape + self._lower.shape[1:])
        view.flags.writeable = False
        return view

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
        ``(B,)`` int64 picks each right-hand side's factor. Only the cheap structural
        checks that keep the kernel in bounds (shapes, dtypes, index range)."""
        expected = (self.n_steps, self.block_size)
        if not (isinstance(v, np.ndarray) and v.ndim == 3 and v.shape[1:] == expected
                and v.dtype == self.dtype and v.flags.c_contiguous and v.flags.writeable):
            raise ValueError(f"v must be a writable C-contiguous {self.dtype} array of shape "
                             f"(B, {expected[0]}, {expected[1]})")
        if not (isinstance(lhs_index, np.ndarray) and lhs_index.dtype == np.int64
                and lhs_index.shape == v.shape[:1] and lhs_index.flags.c_contiguous):
            raise ValueError(f"lhs_index must be a C-contiguous int64 array of shape "
                             f"{v.shape[:1]}")
        n_factors = self._lower.shape[0]
        if lhs_index.size and not (0 <= lhs_index.min() and lhs_index.max() < n_factors):
            raise ValueError(f"lhs_index must lie in [0, {n_factors}) (this factor holds "
                             f"{n_factors} systems); got values in "
                             f"[{lhs_index.min()}, {lhs_index.max()}]")
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
    return BlockCholesky._trusted(lower, batch_shape)


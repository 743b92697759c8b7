"""The S-MNN residual rows: the one place where the least-squares problem is defined.

Per batch element the unknowns are ``u[t, d, o]`` (``t < T``, ``d < D``, ``o < O``) and
``x_t = vec(u[t])`` with index ``d*O + o`` (block size ``n = D*O``). The rows are those of
``docs/math.md``:

=================  ===========================================================================
equation t, e      ``we * (sum_{d,o} c[t,e,d,o] u[t,d,o] - r[t,e])``
initial t, d, o    ``wi * (u[t,d,o] - g[t,d,o])``            for ``t < Ti``, ``o < Oi``
forward Taylor     ``ws * (sum_{o>=k} h^o/(o-k)! u[t,d,o] - h^k u[t+1,d,k])``      ``k in K``
backward Taylor    ``ws * (sum_{o>=k} (-h)^o/(o-k)! u[t+1,d,o] - (-h)^k u[t,d,k])``  ``k in K``
central            ``ws * (s^(O-3) u[t,d,O-2] + s^(O-2) u[t+1,d,O-1] - s^(O-3) u[t+2,d,O-2])``
=================  ===========================================================================

with ``h = h[t]``, ``s = h[t] + h[t+1]``, ``K = {0..O-1}`` (``{0..O-2}`` with central rows).

The smoothness rows act on one state dimension ``d`` at a time and are the same for every
``d``, so they are written here per ``d`` as short vectors over the ``O`` orders of two (or
three) consecutive steps. The functions are plain Python that Numba compiles for the CPU
and CUDA kernels alike (the tests' dense reference, ``tests/helpers.py``, is written
independently).
"""


from ._jit import jit_helper


@jit_helper
def n_taylor_orders(n_orders, central):
    """Number of Taylor orders ``len(K)``: ``O`` without central rows, ``O - 1`` with them."""
    return n_orders - 1 if central else n_orders


@jit_helper
def taylor_rows(h, n_orders, n_k, rows, drows):
    """Forward and backward Taylor rows of one step and their derivative in ``h``.

    rows, drows: ``(2*n_k, 2*O)`` outputs. Row ``k`` is the forward row of order ``k``,
    row ``n_k + k`` the backward row; columns ``0..O-1`` act on ``u[t, d, :]`` and columns
    ``O..2O-1`` on ``u[t+1, d, :]``. The weight ``ws`` is not applied.
    """
    for i in range(2 * n_k):
        for j in range(2 * n_orders):
            rows[i, j] = 0.0
            drows[i, j] = 0.0
    for k in range(n_k):
        inv_fact = 1.0  # 1/(o-k)!, updated as o grows
        for o in range(k, n_orders):
            if o > k:
                inv_fact /= o - k
            # forward: h^o/(o-k)! on u[t, o]
            rows[k, o] = h**o * inv_fact
            drows[k, o] = o * h ** (o - 1) * inv_fact if o > 0 else 0.0
            # backward: (-h)^o/(o-k)! on u[t+1, o]
            sign = -1.0 if o % 2 == 1 else 1.0
            rows[n_k + k, n_orders + o] = sign * h**o * inv_fact
            drows[n_k + k, n_orders + o] = sign * o * h ** (o - 1) * inv_fact if o > 0 else 0.0
        sign_k = -1.0 if k % 2 == 1 else 1.0
        # forward: -h^k on u[t+1, k]; backward: -(-h)^k on u[t, k]
        rows[k, n_orders + k] -= h**k
        drows[k, n_orders + k] -= k * h ** (k - 1) if k > 0 else 0.0
        rows[n_k + k, k] -= sign_k * h**k
        drows[n_k + k, k] -= sign_k * k * h ** (k - 1) if k > 0 else 0.0


@jit_helper
def central_weights(s, n_orders):
    """Coefficients ``(alpha, beta)`` of the central row: ``alpha*u[t,O-2] + beta*u[t+1,O-1]
    - alpha*u[t+2,O-2]`` with ``alpha = s^(O-3)``, ``beta = s^(O-2)``; and their derivatives
    in ``s``. Returns ``(alpha, beta, dalpha, dbeta)``."""
    p = n_orders - 3
    alpha = s**p
    beta = s ** (p + 1)
    dalpha = p * s ** (p - 1) if p > 0 else 0.0
    dbeta = (p + 1) * s**p
    return alpha, beta, dalpha, dbeta


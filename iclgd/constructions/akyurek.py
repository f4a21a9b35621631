"""Akyürek et al. (2023) read-arithmetic-write (RAW) construction of online SGD (Lemma 1:
the mov / mul / div / aff operators; Theorem 1: one SGD step in a constant number of layers).

Built from the paper's primitives (there is no public construction code), one primitive per
sub-layer of a `LinearAttentionTransformer` with MLPs (GeLU, no LayerNorm):
- `mov`: copy slots from one position to another by attention. Here the hidden state carries a
  one-hot position code and the attention is linear, so the copy is exact (the paper uses softmax
  with sinusoidal positions, which is approximate and needs O(d) rather than O(d + n) width).
- `aff`: a per-position affine map, exact in a GeLU MLP: `gelu(z) - gelu(-z) = z`.
- `mul`: a product of two slots, approximate in a GeLU MLP with scale `s`:
  `gelu(z) + gelu(-z) = z erf(z / sqrt 2) = sqrt(2/pi) z^2 (1 - z^2/6 + ...)`, so
  `a^2 ~ s^2 sqrt(pi/2) (gelu(a/s) + gelu(-a/s))` and `ab = ((a+b)^2 - (a-b)^2) / 4` (4 hidden
  units per product; relative error ~ (a +- b)^2 / (6 s^2), until rounding ~ eps * s / |a| wins).

Hidden state per position, `D = 4d + 4 + T` (T = 2n + 1 positions):
`[x (d) | y (1) | position one-hot (T) | w (d) | x_i (d) | y_i (1) | r (1) | y_hat (1)]`.
Input: tokens alternate x_1, y_1, ..., x_n, y_n, x_q (x in the x slot, y in the y slot), and `w0`
in the w slot of every position (the paper's embedding puts the initial state there).
SGD step k (example k, 0-based) is two blocks:
  block 2k:   attention `mov`: every position reads positions 2k and 2k+1 into (x_i, y_i);
              MLP `mul` + `aff`: r = w . x_i - y_i;
  block 2k+1: MLP `mul`: w <- w - 2 alpha r x_i; `aff`: x_i, y_i, r <- 0 (scratch cleared);
then a last block's MLP `mul` writes y_hat = w . x into the y_hat slot (read at the query).
The reference is online SGD `w' = w - 2 alpha (w^T x_i - y_i) x_i` over the first `steps`
examples in order (`online_sgd(lr=2 alpha)`), d_out = 1.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from iclgd.constructions.base import Construction
from iclgd.constructions.reference import online_sgd, predict
from iclgd.constructions.von_oswald import _check_dims, _check_eta
from iclgd.errors import IclgdError
from iclgd.hooks.linear_attention import LinearAttentionConfig, LinearAttentionTransformer

SQRT_HALF_PI = math.sqrt(math.pi / 2)


class _Layout:
    def __init__(self, d: int, n: int):
        self.d, self.n, self.T = d, n, 2 * n + 1
        self.x = 0
        self.y = d
        self.pos = d + 1
        self.w = self.pos + self.T
        self.xi = self.w + d
        self.yi = self.xi + d
        self.r = self.yi + 1
        self.yhat = self.r + 1
        self.D = self.yhat + 1


class _MLPBuilder:
    """Accumulates hidden units of one GeLU MLP in row form (`W_in [D, H]`, `W_out [H, D]`)."""

    def __init__(self, D: int, H: int, scale: float):
        self.W_in = torch.zeros(D, H, dtype=torch.float64)
        self.W_out = torch.zeros(H, D, dtype=torch.float64)
        self.h, self.s = 0, scale

    def _unit(self, inputs: dict[int, float], out_slot: int, out_weight: float) -> None:
        for slot, c in inputs.items():
            self.W_in[slot, self.h] += c
        self.W_out[self.h, out_slot] += out_weight
        self.h += 1

    def linear(self, src: int, dst: int, coef: float) -> None:
        """aff: dst += coef * src, exact (`gelu(z) - gelu(-z) = z`)."""
        self._unit({src: 1.0}, dst, coef)
        self._unit({src: -1.0}, dst, -coef)

    def named(self, block: int) -> dict[str, Tensor]:
        """This MLP's matrices in column form, named as in `Construction.weights`."""
        return {f"W_in.{block}": self.W_in.T, f"W_out.{block}": self.W_out.T}

    def product(self, a: int, b: int, dst: int, coef: float) -> None:
        """mul: dst += coef * slot_a * slot_b, via squares of (a + b) / s and (a - b) / s."""
        k = coef * self.s**2 * SQRT_HALF_PI / 4
        s = 1.0 / self.s
        for sign_b, w in ((1.0, k), (-1.0, -k)):
            self._unit({a: s, b: sign_b * s}, dst, w)
            self._unit({a: -s, b: -sign_b * s}, dst, w)


def akyurek_tokens(X: Tensor, Y: Tensor, x_query: Tensor, w0: Tensor, lay: _Layout) -> Tensor:
    """Hidden state H^(0) `[batch, 2n + 1, D]` (layout in the module docstring)."""
    batch, n, d = X.shape
    H = X.new_zeros(batch, lay.T, lay.D)
    H[:, 0 : 2 * n : 2, lay.x : lay.x + d] = X
    H[:, 1 : 2 * n : 2, lay.y] = Y[..., 0]
    H[:, 2 * n, lay.x : lay.x + d] = x_query
    H[:, :, lay.pos : lay.pos + lay.T] = torch.eye(lay.T, dtype=X.dtype, device=X.device)
    H[:, :, lay.w : lay.w + d] = w0.to(X.dtype).reshape(1, 1, d)
    return H


def _check_args(d: int, n: int, alpha: float, steps: int, w0: Tensor | None,
                mul_scale: float) -> tuple[float, float, Tensor]:
    """Validated `(alpha, mul_scale, w0 [d])`."""
    _check_dims(d, n, 1)
    alpha = _check_eta("alpha", alpha)
    mul_scale = _check_eta("mul_scale", mul_scale)
    if mul_scale <= 0:
        raise IclgdError(f"mul_scale must be > 0, got {mul_scale}")
    if isinstance(steps, bool) or not isinstance(steps, int) or not 1 <= steps <= n:
        raise IclgdError(f"steps must be an integer in [1, n={n}], got {steps!r}")
    w = torch.zeros(d, dtype=torch.float64) if w0 is None else torch.as_tensor(w0, dtype=torch.float64)
    if w.numel() != d:
        raise IclgdError(f"w0 must have d = {d} entries ([1, d] or [d]), got {tuple(w.shape)}")
    return alpha, mul_scale, w.reshape(d)


def _mov_matrices(lay: _Layout, k: int, d_head: int) -> dict[str, Tensor]:
    """mov (column form): every position reads positions 2k and 2k+1 into (x_i, y_i) through
    linear attention on the one-hot positions."""
    d, D, T = lay.d, lay.D, lay.T
    WQ = torch.zeros(d_head, D, dtype=torch.float64)
    WQ[2 * k, lay.pos : lay.pos + T] = 1.0
    WQ[2 * k + 1, lay.pos : lay.pos + T] = 1.0
    WK = torch.zeros(d_head, D, dtype=torch.float64)
    WK[:T, lay.pos : lay.pos + T] = torch.eye(T, dtype=torch.float64)
    WV = torch.zeros(d_head, D, dtype=torch.float64)
    WV[:d, lay.x : lay.x + d] = torch.eye(d, dtype=torch.float64)
    WV[d, lay.y] = 1.0
    P = torch.zeros(D, d_head, dtype=torch.float64)
    P[lay.xi : lay.xi + d, :d] = torch.eye(d, dtype=torch.float64)
    P[lay.yi, d] = 1.0
    return {"W_Q": WQ, "W_K": WK, "W_V": WV, "P": P}


def _residual_mlp(lay: _Layout, hidden: int, scale: float) -> _MLPBuilder:
    """mul + aff: r = w . x_i - y_i."""
    mlp = _MLPBuilder(lay.D, hidden, scale)
    for c in range(lay.d):
        mlp.product(lay.w + c, lay.xi + c, lay.r, 1.0)
    mlp.linear(lay.yi, lay.r, -1.0)
    return mlp


def _update_mlp(lay: _Layout, hidden: int, scale: float, alpha: float) -> _MLPBuilder:
    """mul: w <- w - 2 alpha r x_i; aff: clear the scratch slots (x_i, y_i, r)."""
    mlp = _MLPBuilder(lay.D, hidden, scale)
    for c in range(lay.d):
        mlp.product(lay.r, lay.xi + c, lay.w + c, -2.0 * alpha)
    for slot in [*range(lay.xi, lay.xi + lay.d), lay.yi, lay.r]:
        mlp.linear(slot, slot, -1.0)
    return mlp


def _readout_mlp(lay: _Layout, hidden: int, scale: float) -> _MLPBuilder:
    """mul: y_hat = w . x (read at the query)."""
    mlp = _MLPBuilder(lay.D, hidden, scale)
    for c in range(lay.d):
        mlp.product(lay.w + c, lay.x + c, lay.yhat, 1.0)
    return mlp


def _sgd_model(lay: _Layout, steps: int, alpha: float, mul_scale: float,
               dtype: torch.dtype) -> tuple[LinearAttentionTransformer, dict[str, Tensor]]:
    """The `2 * steps + 1` blocks and their named matrices: per SGD step k, block 2k (mov
    attention and the residual MLP) and block 2k + 1 (the update MLP); then the readout MLP."""
    d_head = max(lay.T, lay.d + 1)
    cfg = LinearAttentionConfig(d_model=lay.D, n_layers=2 * steps + 1, d_head=d_head, mlp=True,
                                d_mlp=6 * lay.d + 4, dtype=dtype)
    model = LinearAttentionTransformer(cfg)
    model.zero_weights()
    named: dict[str, Tensor] = {}
    for k in range(steps):
        mov = _mov_matrices(lay, k, d_head)
        model.set_layer_weights(2 * k, **mov)
        residual = _residual_mlp(lay, cfg.mlp_dim, mul_scale)
        model.set_mlp_weights(2 * k, W_in=residual.W_in, W_out=residual.W_out)
        update = _update_mlp(lay, cfg.mlp_dim, mul_scale, alpha)
        model.set_mlp_weights(2 * k + 1, W_in=update.W_in, W_out=update.W_out)
        named.update({f"{name}.{2 * k}": m for name, m in mov.items()})
        named.update(residual.named(2 * k) | update.named(2 * k + 1))
    readout = _readout_mlp(lay, cfg.mlp_dim, mul_scale)
    model.set_mlp_weights(2 * steps, W_in=readout.W_in, W_out=readout.W_out)
    named.update(readout.named(2 * steps))
    return model, named


def akyurek_sgd_step(
    d: int,
    *,
    n: int,
    alpha: float,
    steps: int = 1,
    w0: Tensor | None = None,
    mul_scale: float = 1e4,
    dtype: torch.dtype = torch.float64,
) -> Construction:
    """RAW construction of `steps` online SGD steps `w' = w - 2 alpha (w^T x_i - y_i) x_i` (d_out = 1).

    `2 * steps + 1` blocks; approximate through `mul` (error shrinks ~ 1 / mul_scale^2).
    `w0 [1, d]` (or `[d]`) is the initial weight vector (default 0).

    Example:
        >>> c = akyurek_sgd_step(2, n=3, alpha=0.1)
        >>> g = torch.Generator().manual_seed(0)
        >>> X, Y = torch.rand(2, 3, 2, generator=g).double() - 0.5, torch.rand(2, 3, 1, generator=g).double()
        >>> xq = torch.rand(2, 2, generator=g).double() - 0.5
        >>> float((c.predict(X, Y, xq) - c.reference(X, Y, xq)).abs().max()) < 1e-6  # mul is approximate
        True
    """
    alpha, mul_scale, w0 = _check_args(d, n, alpha, steps, w0, mul_scale)
    lay = _Layout(d, n)
    model, named = _sgd_model(lay, steps, alpha, mul_scale, dtype)

    def reference(X: Tensor, Y: Tensor, xq: Tensor) -> Tensor:
        W = online_sgd(X, Y, lr=2 * alpha, w0=w0.reshape(1, d), steps=steps)
        return predict(W, xq)

    return Construction(
        name="akyurek-sgd",
        model=model,
        tokens_fn=lambda X, Y, xq: (
            akyurek_tokens(X, Y, xq, w0, lay),
            {"n_context": 2 * X.shape[1]},
        ),
        readout_fn=lambda resid: resid[:, -1, lay.yhat : lay.yhat + 1],
        reference_fn=reference,
        weights_fn=lambda: {k: v.clone() for k, v in named.items()},
        params={"d": d, "n": n, "alpha": alpha, "steps": steps, "mul_scale": mul_scale,
                "width": lay.D},
        exact=False,
        reference_name="online_sgd: w <- w - 2 alpha (w^T x_i - y_i) x_i, examples in order",
        n=n,
        notes="Akyürek et al. 2023 RAW operators; mov exact (linear attention, one-hot positions), "
        "mul approximate via GeLU with scale mul_scale",
    )

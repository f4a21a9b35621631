"""Akyürek et al. (2023) read-arithmetic-write (RAW) construction of online SGD (REFERENCE §2.4).

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
    _check_dims(d, n, 1)
    alpha = _check_eta("alpha", alpha)
    mul_scale = _check_eta("mul_scale", mul_scale)
    if mul_scale <= 0:
        raise IclgdError(f"mul_scale must be > 0, got {mul_scale}")
    if isinstance(steps, bool) or not isinstance(steps, int) or not 1 <= steps <= n:
        raise IclgdError(f"steps must be an integer in [1, n={n}], got {steps!r}")
    w0 = (
        torch.zeros(d, dtype=torch.float64)
        if w0 is None
        else torch.as_tensor(w0, dtype=torch.float64)
    )
    if w0.numel() != d:
        raise IclgdError(f"w0 must have d = {d} entries ([1, d] or [d]), got {tuple(w0.shape)}")
    w0 = w0.reshape(d)
    lay = _Layout(d, n)
    D, T = lay.D, lay.T
    d_head = max(T, d + 1)
    cfg = LinearAttentionConfig(
        d_model=D, n_layers=2 * steps + 1, d_head=d_head, mlp=True, d_mlp=6 * d + 4, dtype=dtype
    )
    model = LinearAttentionTransformer(cfg)
    model.zero_weights()
    named: dict[str, Tensor] = {}
    for k in range(steps):
        # mov: every position reads positions 2k and 2k+1 (linear attention, one-hot positions)
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
        model.set_layer_weights(2 * k, W_Q=WQ, W_K=WK, W_V=WV, P=P)
        # mul + aff: r = w . x_i - y_i
        mlp = _MLPBuilder(D, cfg.d_mlp, mul_scale)
        for c in range(d):
            mlp.product(lay.w + c, lay.xi + c, lay.r, 1.0)
        mlp.linear(lay.yi, lay.r, -1.0)
        model.set_mlp_weights(2 * k, W_in=mlp.W_in, W_out=mlp.W_out)
        # mul: w <- w - 2 alpha r x_i ; aff: clear the scratch slots
        upd = _MLPBuilder(D, cfg.d_mlp, mul_scale)
        for c in range(d):
            upd.product(lay.r, lay.xi + c, lay.w + c, -2.0 * alpha)
        for slot in [*range(lay.xi, lay.xi + d), lay.yi, lay.r]:
            upd.linear(slot, slot, -1.0)
        model.set_mlp_weights(2 * k + 1, W_in=upd.W_in, W_out=upd.W_out)
        named.update({f"W_Q.{2 * k}": WQ, f"W_K.{2 * k}": WK, f"W_V.{2 * k}": WV, f"P.{2 * k}": P})
        named.update({f"W_in.{2 * k}": mlp.W_in.T, f"W_out.{2 * k}": mlp.W_out.T})
        named.update({f"W_in.{2 * k + 1}": upd.W_in.T, f"W_out.{2 * k + 1}": upd.W_out.T})
    # mul: y_hat = w . x
    out = _MLPBuilder(D, cfg.d_mlp, mul_scale)
    for c in range(d):
        out.product(lay.w + c, lay.x + c, lay.yhat, 1.0)
    model.set_mlp_weights(2 * steps, W_in=out.W_in, W_out=out.W_out)
    named.update({f"W_in.{2 * steps}": out.W_in.T, f"W_out.{2 * steps}": out.W_out.T})

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
        params={"d": d, "n": n, "alpha": alpha, "steps": steps, "mul_scale": mul_scale, "width": D},
        exact=False,
        reference_name="online_sgd: w <- w - 2 alpha (w^T x_i - y_i) x_i, examples in order",
        n=n,
        notes="Akyürek et al. 2023 RAW operators; mov exact (linear attention, one-hot positions), "
        "mul approximate via GeLU with scale mul_scale",
    )

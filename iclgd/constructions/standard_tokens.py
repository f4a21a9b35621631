"""von Oswald et al. (2023), standard token layout: a softmax copying layer, then a GD layer.

Tokens alternate `x_i` and `y_i` (von Oswald et al. 2023, the two-layer construction whose first
softmax layer copies each `y_i` next to its `x_i`); each token also carries a one-hot position code
of width `T = 2n + 1` (the paper uses positional information for the copy; a one-hot code is the
simplest exact choice). Token layout `[x (d) | y (d_out) | position (T)]`:

    position 2i:     (x_i, 0, p_2i)          position 2i+1: (0, y_i, p_2i+1)
    position 2n:     (x_q, 0, p_2n)          (the query)

Layer 0 (softmax, keys/values = the 2n context positions): each x-token reads the next position,
the other tokens read an x-token (whose y-slot is 0 at that point): `score(t, s) =
[s == target(t)] / temperature`. The value copies the y-slot (`W_V = P = I` on the y block), so
x-token 2i ends with `y_i` up to a leak of order `(2n - 1) exp(-1/temperature)` - the copy is
approximate and tightens as the temperature falls.
Layer 1 (linear): von Oswald's GD layer from W_0 = 0 on the x / y blocks (P = eta/n, n examples);
y-tokens have x = 0, so their keys vanish. `y_hat = -` (query's y-slot).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from iclgd.constructions.base import Construction, place
from iclgd.constructions.reference import gd_predict
from iclgd.constructions.von_oswald import _check_dims, _check_eta
from iclgd.errors import IclgdError
from iclgd.hooks.linear_attention import LinearAttentionConfig, LinearAttentionTransformer


def standard_tokens(X: Tensor, Y: Tensor, x_query: Tensor) -> Tensor:
    """Alternating tokens `[batch, 2n + 1, d + d_out + 2n + 1]` (layout in the module docstring)."""
    batch, n, d = X.shape
    d_out = Y.shape[2]
    T = 2 * n + 1
    tok = X.new_zeros(batch, T, d + d_out + T)
    tok[:, 0 : 2 * n : 2, :d] = X
    tok[:, 1 : 2 * n : 2, d : d + d_out] = Y
    tok[:, 2 * n, :d] = x_query
    tok[:, :, d + d_out :] = torch.eye(T, dtype=X.dtype, device=X.device)
    return tok


def copy_layer_matrices(d: int, d_out: int, n: int, temperature: float) -> dict[str, Tensor]:
    """Column-form `W_Q, W_K, W_V, P` of the softmax copying layer (`[m, m]`, m = d + d_out + 2n + 1)."""
    T = 2 * n + 1
    m = d + d_out + T
    target = torch.zeros(T, T, dtype=torch.float64)  # target[s, t] = 1: position t reads position s
    for t in range(T):
        s = t + 1 if t % 2 == 0 and t < 2 * n else (t - 1 if t % 2 == 1 else 0)
        target[s, t] = 1.0
    off = d + d_out
    eye_y = torch.eye(d_out, dtype=torch.float64)
    return {
        "W_Q": place(m, m, (off, off, target / temperature)),
        "W_K": place(m, m, (off, off, torch.eye(T, dtype=torch.float64))),
        "W_V": place(m, m, (d, d, eye_y)),
        "P": place(m, m, (d, d, eye_y)),
    }


def von_oswald_standard_tokens(
    d: int,
    *,
    n: int,
    eta: float,
    d_out: int = 1,
    temperature: float = 0.02,
    dtype: torch.dtype = torch.float64,
) -> Construction:
    """Two layers (softmax copy, then one GD step); approximate: error ~ 2n exp(-1/temperature).

    Reference: one GD step from 0 with rate `eta` (`gd_predict`, half MSE).
    """
    _check_dims(d, n, d_out)
    eta = _check_eta("eta", eta)
    temperature = _check_eta("temperature", temperature)
    if temperature <= 0:
        raise IclgdError(f"temperature must be > 0, got {temperature}")
    T = 2 * n + 1
    m = d + d_out + T
    copy = copy_layer_matrices(d, d_out, n, temperature)
    eye_x, eye_y = torch.eye(d, dtype=torch.float64), torch.eye(d_out, dtype=torch.float64)
    gd = {
        "W_Q": place(m, m, (0, 0, eye_x)),
        "W_K": place(m, m, (0, 0, eye_x)),
        "W_V": place(m, m, (d, d, -eye_y)),
        "P": place(m, m, (d, d, eta / n * eye_y)),
    }
    cfg = LinearAttentionConfig(d_model=m, n_layers=2, attention=("softmax", "linear"), dtype=dtype)
    model = LinearAttentionTransformer(cfg)
    model.set_layer_weights(0, **copy)
    model.set_layer_weights(1, **gd)

    def nonzero(width: int) -> dict[str, tuple[int, int, int]]:
        # d = d_out = (width - T) / 2 at fixed n; each count is read off the matrices above.
        dd = (width - T) // 2
        do = width - T - dd
        return {
            "W_Q.0": (width, width, T), "W_K.0": (width, width, T),
            "W_V.0": (width, width, do), "P.0": (width, width, do),
            "W_Q.1": (width, width, dd), "W_K.1": (width, width, dd),
            "W_V.1": (width, width, do), "P.1": (width, width, do),
        }  # fmt: skip

    return Construction(
        name="von-oswald-standard-tokens",
        model=model,
        tokens_fn=lambda X, Y, xq: (standard_tokens(X, Y, xq), {"n_context": 2 * X.shape[1]}),
        readout_fn=lambda resid: -resid[:, -1, d : d + d_out],
        reference_fn=lambda X, Y, xq: gd_predict(X, Y, xq, eta=eta, steps=1),
        weights_fn=lambda: {
            **{f"{k}.0": v.clone() for k, v in copy.items()},
            **{f"{k}.1": v.clone() for k, v in gd.items()},
        },
        params={"d": d, "n": n, "d_out": d_out, "eta": eta, "temperature": temperature},
        exact=False,
        reference_name="gd_predict: one GD step from 0 on the half-MSE loss",
        nonzero_at_width=nonzero,
        n=n,
        notes=f"softmax copy is approximate: leak ~ {2 * n - 1} * exp(-1/temperature) = "
        f"{(2 * n - 1) * math.exp(-1 / temperature):.1e}",
    )

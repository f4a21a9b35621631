"""von Oswald et al. (2023) "Transformers learn in-context by gradient descent": GD and GD++ layers.

Constructed tokens (von Oswald et al. 2023, Proposition 1): context `e_i = (x_i, y_i)`, query `(x_q, -W_0 x_q)`.
Linear self-attention without softmax or 1/sqrt(d) scaling; keys/values are the n context tokens
only, queries come from every token; the 1/n of the loss sits in the projection P. In column form,
blocks ordered (x, y):

    GD:   W_K = W_Q = [[I_d, 0], [0, 0]],  W_V = [[0, 0], [W_0, -I]],  P = [[0, 0], [0, (eta/n) I]]
    GD++: W_K = W_Q = [[I_d, 0], [0, 0]],  W_V = [[I_d, 0], [0, -I]],   P = [[-gamma I, 0], [0, (eta/n) I]]

One GD layer performs `W_0 -> W_0 - eta grad L(W_0)`, `L(W) = (1/2n) sum_i ||W x_i - y_i||^2`
(half MSE), K stacked layers with shared weights perform K steps. The query's y-slot ends as
`-y_hat`; `predict` returns `y_hat`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from jaxtyping import Float
from torch import Tensor

from iclgd.constructions.base import Construction, place
from iclgd.constructions.reference import gd_predict, gdpp_predict, per_layer
from iclgd.errors import IclgdError
from iclgd.hooks.linear_attention import LinearAttentionConfig, LinearAttentionTransformer


def _check_dims(d: int, n: int, d_out: int) -> None:
    for name, v in (("d", d), ("n", n), ("d_out", d_out)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise IclgdError(f"{name} must be an integer >= 1, got {v!r}")


def _check_eta(name: str, v: float) -> float:
    if not isinstance(v, int | float) or not math.isfinite(v):
        raise IclgdError(f"{name} must be a finite number, got {v!r}")
    return float(v)


def von_oswald_tokens(
    X: Float[Tensor, "batch n d"],
    Y: Float[Tensor, "batch n d_out"],
    x_query: Float[Tensor, "batch d"],
    w0: Float[Tensor, "d_out d"] | None = None,
) -> Float[Tensor, "batch n_plus_1 d_plus_d_out"]:
    """Constructed tokens `[(x_1, y_1), ..., (x_n, y_n), (x_q, -W_0 x_q)]`."""
    y_q = torch.zeros(X.shape[0], Y.shape[2], dtype=X.dtype, device=X.device)
    if w0 is not None:
        y_q = -x_query @ w0.to(X.dtype).T
    ctx = torch.cat([X, Y], dim=-1)
    query = torch.cat([x_query, y_q], dim=-1)[:, None]
    return torch.cat([ctx, query], dim=1)


def gd_layer_matrices(
    d: int, d_out: int, *, n: int, eta: float, w0: Tensor | None = None, gamma: float | None = None
) -> dict[str, Tensor]:
    """Column-form `W_K, W_Q, W_V, P` `[d + d_out, d + d_out]` of one GD (or GD++ when `gamma`) layer."""
    m = d + d_out
    eye_x, eye_y = torch.eye(d, dtype=torch.float64), torch.eye(d_out, dtype=torch.float64)
    w0 = torch.zeros(d_out, d, dtype=torch.float64) if w0 is None else w0.to(torch.float64)
    WK = place(m, m, (0, 0, eye_x))
    if gamma is None:
        WV = place(m, m, (d, 0, w0), (d, d, -eye_y))
        P = place(m, m, (d, d, eta / n * eye_y))
    else:
        WV = place(m, m, (0, 0, eye_x), (d, d, -eye_y))
        P = place(m, m, (0, 0, -gamma * eye_x), (d, d, eta / n * eye_y))
    return {"W_K": WK, "W_Q": WK.clone(), "W_V": WV, "P": P}


def _lsa_model(
    d_model: int, layers: int, shared: bool, dtype: torch.dtype
) -> LinearAttentionTransformer:
    cfg = LinearAttentionConfig(
        d_model=d_model, n_layers=layers, shared_weights=shared, include_query=False, dtype=dtype
    )
    return LinearAttentionTransformer(cfg)


def _readout(d: int) -> callable:
    return lambda resid: -resid[:, -1, d:]


def _nonzero_gd(w0_dense: bool, gdpp: bool) -> callable:
    def counts(width: int) -> dict[str, tuple[int, int, int]]:
        # Shen et al.'s reading: width split evenly, d = d_out = width / 2, dense W_0.
        d = width // 2
        d_out = width - d
        v = (d if gdpp else 0) + d_out + (d_out * d if w0_dense else 0)
        p = (d if gdpp else 0) + d_out
        return {
            "W_K": (width, width, d),
            "W_Q": (width, width, d),
            "W_V": (width, width, v),
            "P": (width, width, p),
        }

    return counts


def von_oswald_gd(
    d: int,
    *,
    n: int,
    eta: float,
    d_out: int = 1,
    steps: int = 1,
    w0: Tensor | None = None,
    dtype: torch.dtype = torch.float64,
) -> Construction:
    """`steps` shared linear self-attention layers = `steps` GD steps from `w0 [d_out, d]` (default 0).

    Reference: `gd_predict(X, Y, x_query, eta=eta, steps=steps, w0=w0)` (half-MSE loss).

    Example:
        >>> c = von_oswald_gd(2, n=4, eta=0.1)
        >>> g = torch.Generator().manual_seed(0)
        >>> X, Y = torch.randn(3, 4, 2, generator=g).double(), torch.randn(3, 4, 1, generator=g).double()
        >>> xq = torch.randn(3, 2, generator=g).double()
        >>> float((c.predict(X, Y, xq) - c.reference(X, Y, xq)).abs().max()) < 1e-12
        True
    """
    _check_dims(d, n, d_out)
    eta = _check_eta("eta", eta)
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise IclgdError(f"steps must be an integer >= 1, got {steps!r}")
    if w0 is not None:
        w0 = torch.as_tensor(w0, dtype=torch.float64)
        if w0.shape != (d_out, d):
            raise IclgdError(f"w0 must be [d_out, d] = [{d_out}, {d}], got {tuple(w0.shape)}")
    mats = gd_layer_matrices(d, d_out, n=n, eta=eta, w0=w0)
    model = _lsa_model(d + d_out, steps, True, dtype)
    model.set_layer_weights(0, **mats)
    return Construction(
        name="von-oswald-gd",
        model=model,
        tokens_fn=lambda X, Y, xq: (von_oswald_tokens(X, Y, xq, w0), {"n_context": X.shape[1]}),
        readout_fn=_readout(d),
        reference_fn=lambda X, Y, xq: gd_predict(X, Y, xq, eta=eta, steps=steps, w0=w0),
        weights_fn=lambda: {k: v.clone() for k, v in mats.items()},
        params={"d": d, "n": n, "d_out": d_out, "eta": eta, "steps": steps, "w0_zero": w0 is None},
        nonzero_at_width=_nonzero_gd(True, False),
        n=n,
        notes="von Oswald et al. 2023, Proposition 1: one GD step per shared LSA layer",
        reference_name="gd_predict: K-step full-batch GD from w0 on the half-MSE loss",
    )


def von_oswald_gdpp(
    d: int,
    *,
    n: int,
    eta: float | Sequence[float],
    gamma: float | Sequence[float],
    layers: int,
    d_out: int = 1,
    dtype: torch.dtype = torch.float64,
) -> Construction:
    """GD++: `layers` LSA layers, layer l with `(eta_l, gamma_l)` (scalars or per-layer sequences).

    Each layer takes a GD step on the y-slots and preconditions every input
    `x_j <- (I - gamma_l sum_i x_i x_i^T) x_j`. Reference: `gdpp_predict` (W_0 = 0, half MSE).

    Example:
        >>> c = von_oswald_gdpp(2, n=4, eta=0.1, gamma=0.01, layers=2)
        >>> g = torch.Generator().manual_seed(0)
        >>> X, Y = torch.randn(3, 4, 2, generator=g).double(), torch.randn(3, 4, 1, generator=g).double()
        >>> xq = torch.randn(3, 2, generator=g).double()
        >>> float((c.predict(X, Y, xq) - c.reference(X, Y, xq)).abs().max()) < 1e-12
        True
    """
    _check_dims(d, n, d_out)
    if isinstance(layers, bool) or not isinstance(layers, int) or layers < 1:
        raise IclgdError(f"layers must be an integer >= 1, got {layers!r}")
    etas = per_layer("eta", eta, layers)
    gammas = per_layer("gamma", gamma, layers)
    per = [
        gd_layer_matrices(d, d_out, n=n, eta=e, gamma=g) for e, g in zip(etas, gammas, strict=True)
    ]
    model = _lsa_model(d + d_out, layers, False, dtype)
    for layer, mats in enumerate(per):
        model.set_layer_weights(layer, **mats)

    def weights() -> dict[str, Tensor]:
        return {
            f"{k}.{layer}": v.clone() for layer, mats in enumerate(per) for k, v in mats.items()
        }

    return Construction(
        name="von-oswald-gdpp",
        model=model,
        tokens_fn=lambda X, Y, xq: (von_oswald_tokens(X, Y, xq), {"n_context": X.shape[1]}),
        readout_fn=_readout(d),
        reference_fn=lambda X, Y, xq: gdpp_predict(X, Y, xq, etas=etas, gammas=gammas),
        weights_fn=weights,
        params={"d": d, "n": n, "d_out": d_out, "etas": etas, "gammas": gammas, "layers": layers},
        nonzero_at_width=_nonzero_gd(False, True),
        n=n,
        notes="von Oswald et al. 2023, GD++ (data-dependent preconditioning of the inputs)",
        reference_name="gdpp_predict: GD++ (GD step + x <- (I - gamma sum x x^T) x per layer)",
    )

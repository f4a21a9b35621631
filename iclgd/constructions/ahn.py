"""Ahn et al. (2023) "Transformers learn to implement preconditioned gradient
descent for in-context learning" (NeurIPS 2023).

Tokens `z_i = (x_i, y_i)`, query `(x_q, 0)`, width d + 1 (d_out = 1). Layer l:
`Z <- Z + (1/n) (Z Q~ Z^T) M Z P~^T` with `Q~ = [[Q_l, 0], [0, 0]]`, `P~ = [[P_l, 0], [0, 1]]`,
`M = diag(1, ..., 1, 0)` (the query is not a key/value). Per token:
`z_j += (1/n) sum_{i <= n} (x_j^T Q_l x_i) P~ z_i`. In a `LinearAttentionTransformer`:
column-form `W_Q = Q~^T`, `W_K = I`, `W_V = P~`, projection `(1/n) I`. Prediction `y_hat = -Z[n+1, d+1]`.

Reference (the layer in algorithm form, Ahn et al.'s Lemma): with residual slots `r_i` (= y_i at
the start) and `g = (1/n) sum_i r_i x_i` (= -grad L(w) of the half-MSE loss in the current
coordinates), every token's slot moves `r_j += x_j^T Q_l g` (a preconditioned GD step
`w <- w - A_l grad L(w)` with `A_l = -Q_l`), then every input moves `x_j <- (I + P_l S Q_l^T) x_j`
with `S = (1/n) sum_i x_i x_i^T`. With every `P_l = 0` this is exactly `preconditioned_gd` with
preconditioners `-Q_l`. Ahn et al. report full-MSE losses: `loss_convention = "mse"`.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from iclgd.constructions.base import Construction, place
from iclgd.constructions.reference import check_regression_inputs
from iclgd.errors import IclgdError
from iclgd.hooks.linear_attention import LinearAttentionConfig, LinearAttentionTransformer


def _per_layer_matrices(name: str, value, layers: int, d: int) -> list[Tensor]:
    if isinstance(value, Tensor) and value.ndim == 2:
        mats = [value] * layers
    else:
        mats = list(value)
    if len(mats) != layers:
        raise IclgdError(
            f"{name} needs one [d, d] matrix or one per layer ({layers}), got {len(mats)}"
        )
    out = []
    for m in mats:
        m = torch.as_tensor(m, dtype=torch.float64)
        if m.shape != (d, d) or not torch.isfinite(m).all():
            raise IclgdError(
                f"each {name} must be a finite [d, d] = [{d}, {d}] matrix, got {tuple(m.shape)}"
            )
        out.append(m)
    return out


def ahn_reference(
    X: Tensor, Y: Tensor, x_query: Tensor, Ps: Sequence[Tensor], Qs: Sequence[Tensor]
) -> Tensor:
    """Ahn et al.'s L-layer linear transformer in algorithm form (module docstring): `y_hat [batch, 1]`."""
    check_regression_inputs(X, Y, x_query)
    n = X.shape[1]
    xs = torch.cat([X, x_query[:, None]], dim=1)
    r = torch.cat([Y, torch.zeros_like(Y[:, :1])], dim=1)
    for P, Q in zip(Ps, Qs, strict=True):
        P, Q = P.to(X.dtype), Q.to(X.dtype)
        ctx = xs[:, :n]
        g = torch.einsum("bno,bnd->bod", r[:, :n], ctx) / n  # [batch, 1, d]
        r = r + torch.einsum("bpd,de,boe->bpo", xs, Q, g)
        S = ctx.transpose(1, 2) @ ctx / n
        xs = xs + xs @ (P @ S @ Q.T).transpose(-1, -2)
    return -r[:, n]


def ahn_preconditioned_gd(
    P: Tensor | Sequence[Tensor],
    Q: Tensor | Sequence[Tensor],
    *,
    layers: int,
    n: int,
    dtype: torch.dtype = torch.float64,
) -> Construction:
    """`layers` Ahn et al. layers with `P_l`, `Q_l` `[d, d]` (one matrix for all layers or one per layer).

    `P = 0`, `Q = -A` gives preconditioned GD with preconditioner `A` (half-MSE gradient); losses
    are reported as full MSE (Ahn et al.).

    Example:
        >>> A = torch.diag(torch.tensor([0.2, 0.1], dtype=torch.float64))  # the preconditioner
        >>> c = ahn_preconditioned_gd(torch.zeros(2, 2, dtype=torch.float64), -A, layers=1, n=4)
        >>> g = torch.Generator().manual_seed(0)
        >>> X, Y = torch.randn(3, 4, 2, generator=g).double(), torch.randn(3, 4, 1, generator=g).double()
        >>> xq = torch.randn(3, 2, generator=g).double()
        >>> float((c.predict(X, Y, xq) - c.reference(X, Y, xq)).abs().max()) < 1e-12
        True
    """
    if isinstance(layers, bool) or not isinstance(layers, int) or layers < 1:
        raise IclgdError(f"layers must be an integer >= 1, got {layers!r}")
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise IclgdError(f"n must be an integer >= 1, got {n!r}")
    first = Q if isinstance(Q, Tensor) and Q.ndim == 2 else list(Q)[0]
    d = int(torch.as_tensor(first).shape[0])
    Qs = _per_layer_matrices("Q", Q, layers, d)
    Ps = _per_layer_matrices("P", P, layers, d)
    m = d + 1
    cfg = LinearAttentionConfig(d_model=m, n_layers=layers, dtype=dtype)
    model = LinearAttentionTransformer(cfg)
    named: dict[str, Tensor] = {}
    for layer, (Pl, Ql) in enumerate(zip(Ps, Qs, strict=True)):
        mats = {
            "W_Q": place(m, m, (0, 0, Ql.T)),
            "W_K": torch.eye(m, dtype=torch.float64),
            "W_V": place(m, m, (0, 0, Pl), (d, d, torch.ones(1, 1, dtype=torch.float64))),
            "P": torch.eye(m, dtype=torch.float64) / n,
        }
        model.set_layer_weights(layer, **mats)
        named.update({f"{k}.{layer}": v for k, v in mats.items()})

    def tokens(X: Tensor, Y: Tensor, xq: Tensor) -> tuple[Tensor, dict]:
        if Y.shape[2] != 1:
            raise IclgdError(f"Ahn et al.'s construction has d_out = 1, got {Y.shape[2]}")
        q = torch.cat([xq, torch.zeros_like(xq[:, :1])], dim=-1)[:, None]
        return torch.cat([torch.cat([X, Y], dim=-1), q], dim=1), {"n_context": X.shape[1]}

    return Construction(
        name="ahn-pgd",
        model=model,
        tokens_fn=tokens,
        readout_fn=lambda resid: -resid[:, -1, d:],
        reference_fn=lambda X, Y, xq: ahn_reference(X, Y, xq, Ps, Qs),
        weights_fn=lambda: {k: v.clone() for k, v in named.items()},
        params={"d": d, "n": n, "layers": layers},
        loss_convention="mse",
        reference_name="ahn_reference: preconditioned GD (A_l = -Q_l) with input transform (I + P_l S Q_l^T)",
        n=n,
        notes="Ahn et al. 2023 linear transformer; P = 0 gives preconditioned GD with A = -Q",
    )

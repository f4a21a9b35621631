"""Weight-space comparison of ICL and finetuning (Dai et al. 2023's dual form, §3.1 "Transformer
Attention as Meta-Optimization"; the comparison of the matrices themselves is iclgd's own).

Dual form. Drop the softmax: a head's output for a query vector `q` (column, `d_head`) over key
tokens `X'` (demonstrations) and `X` (the query's own tokens) is
`Σ_j v_j (k_j · q) = (M_X + ΔW_ICL) q`, with the key-value memory `M_S = Σ_{j ∈ S} v_j ⊗ k_j`
(`[d_head (value), d_head (key)]`). Hence
`ΔW_ICL = Σ_i (W_V x'_i) ⊗ (W_K x'_i) = V^T K`, `V, K [n, d_head]`, the values and keys of the
demonstration tokens (biases included: the keys and values the model really uses). `x'` is the
layer's attention input at the demonstration tokens, in the context of the ICL prompt: on a
TransformerBridge `blocks.{l}.attn.hook_in` (= `blocks.{l}.ln1.hook_out`, the LayerNorm output
*after* its affine map; `ln1.hook_normalized` is before it). Keys are taken before any rotary
embedding: a position-dependent rotation of each key cannot be folded into one matrix acting on
q, so for rotary models the dual form covers the content part only.

Finetuning side (the matching matrix). Finetuning changes the same product the query sees:
`F_FT(q) = M'_X q = (M_X + ΔW_FT) q`, so `ΔW_FT = V'_X^T K'_X − V_X^T K_X` on the query's tokens
`X` (Dai's `(W_V + ΔW_V) X X^T (W_K + ΔW_K)^T − W_V X X^T W_K^T`). With `inputs="base"` (default,
Dai's algebra) both terms use the base model's attention inputs `X`, so ΔW_FT depends only on the
weight update; `inputs="own"` takes the finetuned model's own attention inputs for the first
term (what the finetuned attention really applies, including changes of earlier layers).

Both are kept factored, `ΔW = L R^T` (`L, R [heads, d_head, r]`): Frobenius inner products use
`tr(R_a L_a^T L_b R_b^T) = Σ (L_a^T L_b) ∘ (R_a^T R_b)`, singular subspaces use QR of the factors
and an SVD of the small `r × r` core. Heads are key/value heads (`n_key_value_heads` under GQA).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from jaxtyping import Float
from torch import Tensor

from iclgd.data.tasks import TokenizedTask
from iclgd.errors import IclgdError
from iclgd.hooks.capture import capture
from iclgd.hooks.edit import finetuned
from iclgd.hooks.names import act_name
from iclgd.hooks.weights import attention_weights
from iclgd.probes.finetune import WeightDelta


@dataclass(frozen=True)
class FactoredDelta:
    """`ΔW[h] = left[h] @ right[h].T`, `[d_head (value/output), d_head (key/query)]` per head
    (any leading batch axes before `heads`); acts on a head's query column vector. Float64.
    Immutable, so its Frobenius norms and top singular subspaces are computed once
    (`compare_delta_w` of one ΔW_ICL against many ΔW_FT reuses them)."""

    left: Float[Tensor, "*batch heads d_head r"]
    right: Float[Tensor, "*batch heads d_head r"]
    layer: int
    _memo: dict[Any, Any] = field(default_factory=dict, init=False, repr=False, compare=False)

    def materialize(self) -> Float[Tensor, "*batch heads d_head d_head"]:
        """The dense matrices (small: d_head × d_head per head)."""
        return self.left @ self.right.transpose(-1, -2)

    def norm(self) -> Float[Tensor, "*batch heads"]:
        """`||ΔW[h]||_F` per head, from the factors' Gram matrices."""
        if "norm" not in self._memo:
            self._memo["norm"] = _gram_inner(self, self).clamp_min(0).sqrt()
        return self._memo["norm"]

    def subspaces(self, rank: int) -> tuple[Tensor, Tensor, Tensor]:
        """`top_singular_subspaces(self, rank)`, memoised."""
        if ("svd", rank) not in self._memo:
            self._memo[("svd", rank)] = top_singular_subspaces(self, rank)
        return self._memo[("svd", rank)]


def attention_inputs(model: Any, tokens: Tensor, layer: int) -> Float[Tensor, "pos d_model"]:
    """The layer's attention input `blocks.{l}.attn.hook_in` for one prompt `tokens [pos]`."""
    tokens = torch.as_tensor(tokens)
    if tokens.ndim == 2:
        if tokens.shape[0] != 1:
            raise IclgdError("give one prompt (tokens [pos] or [1, pos])")
        tokens = tokens[0]
    name = act_name("attn.hook_in", layer)
    return capture(model, tokens[None], [name])[name][0].double()


def keys_values(w: Any, x: Tensor) -> tuple[Tensor, Tensor]:
    """Per-head keys and values `[..., heads, pos, d_head]` (float64, biases included) of
    attention inputs `x [..., pos, d_model]` (any leading batch axes) under raw
    `AttentionWeights` `w`: `x @ W_K[h] + b_K[h]`."""
    k = torch.einsum("...pd,hde->...hpe", x, w.W_K.double())
    v = torch.einsum("...pd,hde->...hpe", x, w.W_V.double())
    if w.b_K is not None:
        k = k + w.b_K.double()[:, None]
    if w.b_V is not None:
        v = v + w.b_V.double()[:, None]
    return k, v  # [..., heads, pos, d_head]


def _positions(demonstrations: TokenizedTask | Tensor, row: int,
               positions: Sequence[int] | Tensor | None) -> tuple[Tensor, Tensor]:
    if isinstance(demonstrations, TokenizedTask):
        tokens = demonstrations.tokens[row, : int(demonstrations.lengths[row])]
        if positions is None:
            spans = demonstrations.demo_spans[row].tolist()
            if not spans:
                raise IclgdError("the prompt has no demonstrations (zero-shot): ΔW_ICL is zero")
            positions = torch.cat([torch.arange(s, e) for s, e in spans])
    else:
        tokens = torch.as_tensor(demonstrations)
        tokens = tokens[0] if tokens.ndim == 2 and tokens.shape[0] == 1 else tokens
        if positions is None:
            positions = torch.arange(tokens.shape[-1])
    pos = torch.as_tensor(positions, dtype=torch.long)
    if pos.numel() == 0 or int(pos.max()) >= tokens.shape[-1] or int(pos.min()) < 0:
        raise IclgdError(f"positions must be a non-empty subset of 0..{tokens.shape[-1] - 1}")
    return tokens, pos


def implied_delta_w(
    model: Any,
    demonstrations: TokenizedTask | Tensor,
    layer: int,
    *,
    row: int = 0,
    positions: Sequence[int] | Tensor | None = None,
) -> FactoredDelta:
    """Dai's `ΔW_ICL = Σ_i (W_V x'_i) ⊗ (W_K x'_i)` per head of `layer`, factored as
    `V^T K` (`left = V^T`, `right = K^T`, `r = n` demonstration tokens).

    `demonstrations`: a `TokenizedTask` (prompt `row`; default positions = all tokens of its
    demonstration spans) or one prompt's token ids `[pos]` (default positions = all).
    """
    tokens, pos = _positions(demonstrations, row, positions)
    x = attention_inputs(model, tokens, layer)[pos]
    k, v = keys_values(attention_weights(model, layer), x)
    return FactoredDelta(v.transpose(-1, -2), k.transpose(-1, -2), layer)


def finetuned_delta_w(
    model: Any,
    delta: WeightDelta,
    query_tokens: Tensor,
    layer: int,
    *,
    positions: Sequence[int] | Tensor | None = None,
    inputs: str = "base",
) -> FactoredDelta:
    """`ΔW_FT = V'_X^T K'_X − V_X^T K_X` per head of `layer`: the finetuning change of the
    key-value memory over the zero-shot query's tokens `X` (`query_tokens [pos]`, default
    positions all), factored as `[V', −V]^T [K', K]` (r = 2 |X|). `inputs="base"` uses the base
    model's attention inputs for both terms (Dai's algebra), `"own"` the finetuned model's for
    the first."""
    if inputs not in ("base", "own"):
        raise IclgdError(f"inputs must be 'base' or 'own', got {inputs!r}")
    tokens, pos = _positions(query_tokens, 0, positions)
    x = attention_inputs(model, tokens, layer)[pos]
    k, v = keys_values(attention_weights(model, layer), x)
    with finetuned(model, delta):
        x_ft = attention_inputs(model, tokens, layer)[pos] if inputs == "own" else x
        k2, v2 = keys_values(attention_weights(model, layer), x_ft)
    left = torch.cat([v2, -v], dim=1).transpose(-1, -2)
    right = torch.cat([k2, k], dim=1).transpose(-1, -2)
    return FactoredDelta(left, right, layer)


def _gram_inner(a: FactoredDelta, b: FactoredDelta) -> Tensor:
    """Frobenius inner product per head `<A, B> = Σ (L_a^T L_b) ∘ (R_a^T R_b)`."""
    ll = a.left.transpose(-1, -2) @ b.left
    rr = a.right.transpose(-1, -2) @ b.right
    return (ll * rr).sum((-1, -2))


def top_singular_subspaces(d: FactoredDelta, rank: int) -> tuple[Tensor, Tensor, Tensor]:
    """Top-`rank` singular vectors and values of each head's ΔW from its factors: QR of both
    factors, SVD of the small core. Returns `U [heads, d_head, r']`, `S [heads, r']`,
    `V [heads, d_head, r']` with `r' = min(rank, d_head, r)`."""
    ql, rl = torch.linalg.qr(d.left)
    qr, rr = torch.linalg.qr(d.right)
    u, s, vh = torch.linalg.svd(rl @ rr.transpose(-1, -2), full_matrices=False)
    r = min(rank, s.shape[-1])
    return ql @ u[..., :r], s[..., :r], qr @ vh.transpose(-1, -2)[..., :r]


def compare_delta_w(
    implied: FactoredDelta | Mapping[int, FactoredDelta],
    actual: FactoredDelta | Mapping[int, FactoredDelta],
    *,
    rank: int = 4,
) -> dict[str, Tensor] | dict[int, dict[str, Tensor]]:
    """Per head: `cosine` of the flattened matrices, `norm_ratio = ||ΔW_ICL||_F / ||ΔW_FT||_F`,
    and the overlap of the top-`rank` singular subspaces, `left_overlap = ||U_a^T U_b||_F² / r`
    (output side) and `right_overlap` (query side): the mean squared cosine of the principal
    angles, 1 for equal subspaces, 0 for orthogonal ones, ≈ r/d_head for random ones.
    Cosine 0 when either matrix is zero. Mappings `{layer: FactoredDelta}` give
    `{layer: {...}}`."""
    if isinstance(implied, Mapping):
        if not isinstance(actual, Mapping) or set(implied) != set(actual):
            raise IclgdError("implied and actual must cover the same layers")
        return {layer: compare_delta_w(implied[layer], actual[layer], rank=rank)
                for layer in implied}
    if implied.left.shape[:2] != actual.left.shape[:2]:
        raise IclgdError(f"head/d_head mismatch: {tuple(implied.left.shape[:2])} vs "
                         f"{tuple(actual.left.shape[:2])}")
    if rank < 1:
        raise IclgdError(f"rank must be >= 1, got {rank}")
    ab = _gram_inner(implied, actual)
    na, nb = implied.norm(), actual.norm()
    ok = (na > 0) & (nb > 0)
    cos = torch.where(ok, ab / (na * nb).clamp_min(1e-300), torch.zeros_like(ab))
    ratio = torch.where(nb > 0, na / nb.clamp_min(1e-300), torch.full_like(na, float("nan")))
    ua, _, va = implied.subspaces(rank)
    ub, _, vb = actual.subspaces(rank)
    r = min(ua.shape[-1], ub.shape[-1])
    left = (ua[..., :r].transpose(-1, -2) @ ub[..., :r]).pow(2).sum((-1, -2)) / r
    right = (va[..., :r].transpose(-1, -2) @ vb[..., :r]).pow(2).sum((-1, -2)) / r
    return {"cosine": cos, "norm_ratio": ratio, "left_overlap": left, "right_overlap": right}

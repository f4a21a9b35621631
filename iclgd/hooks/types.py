"""Raw per-head weight views shared by every model iclgd loads.

Shapes follow TransformerLens: `W_Q [n_heads, d_model, d_head]` maps a residual vector `x` to a
head's query as `x @ W_Q[h]`; `W_O [n_heads, d_head, d_model]` maps a head's output back.
Values are the checkpoint's raw tensors, rearranged only (no LayerNorm folding, no centering).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, TypeAlias

from jaxtyping import Float
from torch import Tensor

if TYPE_CHECKING:
    from transformer_lens.model_bridge import TransformerBridge

    from iclgd.hooks.linear_attention import LinearAttentionTransformer

HookedModel: TypeAlias = "TransformerBridge | LinearAttentionTransformer"
"""Any model iclgd captures activations from: what `load_model` returns, or iclgd's own
`LinearAttentionTransformer` (which takes float token vectors)."""


@dataclass
class AttentionWeights:
    """Raw attention weights of one layer, per head.

    `W_K`, `W_V` (and `b_K`, `b_V`) have `n_key_value_heads` heads: fewer than `n_heads` under
    grouped-query attention, where query head `h` reads key/value head
    `h // (n_heads // n_key_value_heads)`. Biases are `None` when the architecture has none.
    `processing` records what was done to the raw tensors ("raw": rearranged only).
    """

    W_Q: Float[Tensor, "n_heads d_model d_head"]
    W_K: Float[Tensor, "n_kv_heads d_model d_head"]
    W_V: Float[Tensor, "n_kv_heads d_model d_head"]
    W_O: Float[Tensor, "n_heads d_head d_model"]
    b_Q: Float[Tensor, "n_heads d_head"] | None = None
    b_K: Float[Tensor, "n_kv_heads d_head"] | None = None
    b_V: Float[Tensor, "n_kv_heads d_head"] | None = None
    b_O: Float[Tensor, " d_model"] | None = None
    n_heads: int = 0
    n_key_value_heads: int = 0
    layer: int = 0
    processing: str = "raw"
    extra: dict[str, Tensor] = field(default_factory=dict)

    @property
    def grouped_query(self) -> bool:
        """True when keys/values have fewer heads than queries (GQA/MQA)."""
        return self.n_key_value_heads != self.n_heads

    def matrices(self) -> dict[str, Tensor]:
        """The four weight matrices by name (`W_Q`, `W_K`, `W_V`, `W_O`)."""
        return {"W_Q": self.W_Q, "W_K": self.W_K, "W_V": self.W_V, "W_O": self.W_O}

    def kv_head_of(self, head: int) -> int:
        """Index of the key/value head that query head `head` reads."""
        return head // (self.n_heads // self.n_key_value_heads)


@dataclass
class MLPWeights:
    """Raw MLP weights of one layer: `W_in [d_model, d_mlp]`, `W_out [d_mlp, d_model]`.

    `W_gate [d_model, d_mlp]` is set for gated MLPs (SwiGLU: `out = (act(x W_gate) * x W_in) W_out`)
    and `None` otherwise. Biases are `None` when absent.
    """

    W_in: Float[Tensor, "d_model d_mlp"]
    W_out: Float[Tensor, "d_mlp d_model"]
    W_gate: Float[Tensor, "d_model d_mlp"] | None = None
    b_in: Float[Tensor, " d_mlp"] | None = None
    b_out: Float[Tensor, " d_model"] | None = None
    layer: int = 0
    processing: str = "raw"

    def matrices(self) -> dict[str, Tensor]:
        """The weight matrices by name (`W_in`, `W_out`, and `W_gate` when gated)."""
        out = {"W_in": self.W_in, "W_out": self.W_out}
        if self.W_gate is not None:
            out["W_gate"] = self.W_gate
        return out

"""Raw per-head attention and MLP weights, read straight from the Hugging Face state dict.

`attention_weights(model, layer)` and `mlp_weights(model, layer)` return the checkpoint's own
tensors, only rearranged into TransformerLens shapes (`W_Q [n_heads, d_model, d_head]`,
`W_O [n_heads, d_head, d_model]`, `W_in [d_model, d_mlp]`): no LayerNorm folding, no
centering, no value-bias folding (Shen et al. 2024's density argument is about the raw weights;
TransformerLens' processing makes sparse matrices dense). The HF layouts handled (GPT-2
`Conv1D`, GPT-NeoX fused and interleaved `query_key_value`, separate projections with
grouped-query attention) are described, and located, in `iclgd.hooks.layouts`.

Every function also accepts `params`, an HF-named state dict, to read other weights through the
same layout (e.g. a finetuned copy: `ΔW_K = attention_weights(m, l, params=after).W_K -
attention_weights(m, l).W_K`).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol, runtime_checkable

import torch
from einops import rearrange
from torch import Tensor, nn

from iclgd.errors import IclgdError
from iclgd.hooks.layouts import (
    AttentionParams,
    LayerLayout,
    attention_params,
    mlp_params,
)
from iclgd.hooks.layouts import layer_layout as _layout_of
from iclgd.hooks.placement import check_in_memory
from iclgd.hooks.types import AttentionWeights, MLPWeights


def hf_state_dict(model: nn.Module, *, keep_vars: bool = False) -> dict[str, Tensor]:
    """The model's raw Hugging Face state dict (HF names, live tensors, no copies; with
    `keep_vars` the `nn.Parameter` objects themselves, as `nn.Module.state_dict`).

    For a TransformerBridge this strips the bridge's wrapper segments (`._original_component`)
    and drops the aliases it adds (`attn.q`, `mlp.in`, ...), keeping exactly the keys the
    plain HF class has: what `save_pretrained` would export. Raises `IclgdError` when weights
    are offloaded to disk (`iclgd.hooks.placement`).
    """
    hf = getattr(model, "original_model", model)
    raw = hf.state_dict(keep_vars=keep_vars)
    if any(v.is_meta for v in raw.values()):
        check_in_memory(model, "this analysis")
    clean = {k.replace("._original_component", ""): v for k, v in raw.items()
             if k != "_original_component" and not k.startswith("_original_component.")}
    keys = _canonical_keys(hf)
    if keys is None:
        return clean
    return {k: clean[k] for k in keys if k in clean}


def _canonical_keys(hf: nn.Module) -> list[str] | None:
    cached = getattr(hf, "_iclgd_canonical_keys", None)
    if cached is not None:
        return cached
    cfg = getattr(hf, "config", None)
    if cfg is None or "._original_component" not in "".join(n for n, _ in hf.named_modules()):
        return None
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        try:
            skeleton = AutoModelForCausalLM.from_config(cfg)
        except (ValueError, KeyError):
            return None
    keys = list(skeleton.state_dict().keys())
    object.__setattr__(hf, "_iclgd_canonical_keys", keys)
    return keys


def hf_module(model: nn.Module) -> nn.Module:
    """A plain Hugging Face model (no bridge wrappers) sharing the bridge's raw weights.

    Built on the meta device and filled with `hf_state_dict(model)` by assignment, so no weight
    is copied. Use it for `torch.func.functional_call` (finetuning baselines): its parameter
    names are the HF names that `attention_weights(..., params=...)` reads. Attention is eager.
    The plain model is kept on the bridge and rebuilt only when a weight or buffer of the bridge
    has been replaced or moved (another tensor or storage), so repeated calls cost nothing.
    """
    hf = getattr(model, "original_model", None)
    if hf is None:
        return model
    key = tuple((id(t), t.data_ptr()) for t in (*hf.parameters(), *hf.buffers()))
    cached = getattr(hf, "_iclgd_plain", None)
    if cached is not None and cached[0] == key:
        return cached[1].eval()
    plain = _plain_copy(model, hf)
    object.__setattr__(hf, "_iclgd_plain", (key, plain))  # not a registered submodule
    return plain


def _plain_copy(model: nn.Module, hf: Any) -> nn.Module:
    """The plain HF model of `hf_module`, built afresh."""
    from transformers import AutoModelForCausalLM

    cfg = hf.config
    cfg._attn_implementation = "eager"
    with torch.device("meta"):
        plain = AutoModelForCausalLM.from_config(cfg, attn_implementation="eager")
    state = hf_state_dict(model)
    missing, unexpected = plain.load_state_dict(state, strict=False, assign=True)
    if unexpected:
        raise IclgdError(f"cannot rebuild the plain HF model: unexpected weights {unexpected[:3]}")
    if missing:
        plain.tie_weights()
        still = [k for k in missing if any(p.is_meta for n, p in plain.named_parameters() if n == k)]
        if still:
            raise IclgdError(f"cannot rebuild the plain HF model: missing weights {still[:3]}")
    live = {k.replace("._original_component", ""): b for k, b in hf.named_buffers()}
    for buf_name, buf in list(plain.named_buffers()):
        if not buf.is_meta:
            continue
        if buf_name not in live:
            raise IclgdError(f"cannot rebuild the plain HF model: buffer {buf_name} not found")
        owner, _, attr = buf_name.rpartition(".")
        setattr(plain.get_submodule(owner) if owner else plain, attr, live[buf_name])
    return plain.eval()


@runtime_checkable
class OwnWeightViews(Protocol):
    """A model that provides its own raw weight views (iclgd's `LinearAttentionTransformer`)."""

    def attention_weights(self, layer: int) -> AttentionWeights: ...

    def mlp_weights(self, layer: int) -> MLPWeights: ...


def _state_dict(model: nn.Module, params: Mapping[str, Tensor] | None) -> Mapping[str, Tensor]:
    if params is not None:
        return params
    return hf_state_dict(model)


def layer_layout(model: nn.Module, params: Mapping[str, Tensor] | None = None) -> LayerLayout:
    """The per-layer key prefix and head geometry (`iclgd.hooks.layouts.LayerLayout`) of an HF
    causal LM or a bridge, found in its state dict (or in `params`)."""
    hf = getattr(model, "original_model", model)
    return _layout_of(hf, _state_dict(model, params).keys())


def _projection(sd: Mapping[str, Tensor], ap: AttentionParams, part: str
                ) -> tuple[Tensor, Tensor | None]:
    """Projection `part` (q, k or v) as `[heads · d_head, d_model]` (output features first,
    head-major) and its bias `[heads · d_head]` or None."""
    w = sd[ap.weights[part]].detach()
    w = w if ap.out_axis[part] == 0 else w.T  # output features on axis 0
    bias_key = ap.bias(part, sd)
    b = None if bias_key is None else sd[bias_key].detach()
    rows = ap.rows(part)
    if rows is not None:
        w, b = w[rows.to(w.device)], None if b is None else b[rows.to(b.device)]
    return w, b


def attention_weights(
    model: nn.Module, layer: int, *, params: Mapping[str, Tensor] | None = None
) -> AttentionWeights:
    """Raw per-head attention weights of `layer`, exactly the checkpoint's tensors rearranged.

    Returns `AttentionWeights` with `W_Q [n_heads, d_model, d_head]`, `W_K`/`W_V`
    `[n_key_value_heads, d_model, d_head]`, `W_O [n_heads, d_head, d_model]`, biases or None,
    convention `q_h = x @ W_Q[h] + b_Q[h]` (TransformerLens row-vector form). `model` is a
    TransformerBridge, an HF model, or an iclgd `LinearAttentionTransformer`.

    Example:
        >>> w = attention_weights(model, 0)
        >>> tuple(w.W_K.shape)  # [n_heads, d_model, d_head]
        (4, 64, 16)
    """
    if isinstance(model, OwnWeightViews) and params is None:
        return model.attention_weights(layer)  # iclgd's own modules
    sd = _state_dict(model, params)
    lay = layer_layout(model, sd)
    ap = attention_params(sd.keys(), lay, layer)
    heads: dict[str, Tensor] = {}
    biases: dict[str, Tensor | None] = {}
    for part in ("q", "k", "v"):
        w, b = _projection(sd, ap, part)
        heads[part] = rearrange(w, "(h e) d -> h d e", h=lay.heads(part))
        biases[part] = None if b is None else rearrange(b, "(h e) -> h e", h=lay.heads(part))
    w_o = sd[ap.weights["o"]].detach()  # output projection: input features are the heads
    w_o = w_o if ap.out_axis["o"] == 1 else w_o.T  # → [n_heads · d_head, d_model]
    o_bias = ap.bias("o", sd)
    return AttentionWeights(
        W_Q=heads["q"], W_K=heads["k"], W_V=heads["v"],
        W_O=rearrange(w_o, "(h e) d -> h e d", h=lay.n_heads),
        b_Q=biases["q"], b_K=biases["k"], b_V=biases["v"],
        b_O=None if o_bias is None else sd[o_bias].detach(),
        n_heads=lay.n_heads, n_key_value_heads=heads["k"].shape[0], layer=layer,
    )


def mlp_weights(
    model: nn.Module, layer: int, *, params: Mapping[str, Tensor] | None = None
) -> MLPWeights:
    """Raw MLP weights of `layer`: `W_in [d_model, d_mlp]`, `W_out [d_mlp, d_model]`, and
    `W_gate [d_model, d_mlp]` for gated (SwiGLU) MLPs; convention `x @ W_in` (row vectors).

    Example:
        >>> tuple(mlp_weights(model, 0).W_in.shape)  # [d_model, d_mlp]
        (64, 256)
    """
    if isinstance(model, OwnWeightViews) and params is None:
        return model.mlp_weights(layer)
    sd = _state_dict(model, params)
    mp = mlp_params(sd.keys(), layer_layout(model, sd), layer)

    def weight(key: str | None) -> Tensor | None:
        if key is None:
            return None
        w = sd[key].detach()
        return w.T if mp.transposed else w

    def bias(key: str) -> Tensor | None:
        bk = key.removesuffix("weight") + "bias"
        return sd[bk].detach() if bk in sd else None

    w_in, w_out = weight(mp.w_in), weight(mp.w_out)
    if w_in is None or w_out is None:  # pragma: no cover - mlp_params always names both
        raise IclgdError(f"layer {layer} has no MLP weights")
    return MLPWeights(W_in=w_in, W_out=w_out, W_gate=weight(mp.w_gate), b_in=bias(mp.w_in),
                      b_out=bias(mp.w_out), layer=layer)

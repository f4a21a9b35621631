"""Raw per-head attention and MLP weights, read straight from the Hugging Face state dict.

`attention_weights(model, layer)` and `mlp_weights(model, layer)` return the checkpoint's own
tensors, only rearranged into TransformerLens shapes (`W_Q [n_heads, d_model, d_head]`,
`W_O [n_heads, d_head, d_model]`, `W_in [d_model, d_mlp]`): no LayerNorm folding, no
centering, no value-bias folding (Shen et al.'s density argument needs raw weights,
REFERENCE §4 "Density"). Handled layouts:

- GPT-2 `Conv1D` (`c_attn` holds `[d_model, 3 d_model]`, applied as `x @ W`);
- GPT-NeoX / Pythia / BLOOM fused `query_key_value` (`[n_heads · 3 · d_head, d_model]`,
  interleaved per head: q, k, v rows of head 0, then of head 1, ...);
- separate `q_proj`/`k_proj`/`v_proj`/`o_proj` (Llama, Mistral, Qwen, Gemma, OPT, GPT-J, ...),
  with grouped-query attention: K and V keep `n_key_value_heads` heads.

Every function also accepts `params`, an HF-named state dict, to read other weights through the
same layout (e.g. a finetuned copy: `ΔW_K = attention_weights(m, l, params=after).W_K -
attention_weights(m, l).W_K`).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

from torch import Tensor, nn

from iclgd.errors import IclgdError
from iclgd.hooks.placement import check_in_memory
from iclgd.hooks.types import AttentionWeights, MLPWeights

_ATTN_MODULES = ("attn", "attention", "self_attn", "self_attention")
_O_NAMES = ("o_proj", "out_proj", "dense", "c_proj", "wo")
_MLP_MODULES = ("mlp", "feed_forward", "ffn")
_MLP_LAYOUTS = (  # (in, gate, out), all nn.Linear; gate None when ungated
    ("up_proj", "gate_proj", "down_proj"),
    ("dense_h_to_4h", None, "dense_4h_to_h"),
    ("fc_in", None, "fc_out"),
    ("fc1", None, "fc2"),
    ("w1", None, "w2"),
)


@dataclass(frozen=True)
class LayerLayout:
    """Where one model family keeps its per-layer weights in the HF state dict."""

    layer_prefix: str  # e.g. "gpt_neox.layers." ; layer l's keys start with f"{prefix}{l}."
    n_heads: int
    n_kv_heads: int
    d_head: int
    model_type: str


def hf_state_dict(model: nn.Module) -> dict[str, Tensor]:
    """The model's raw Hugging Face state dict (HF names, live tensors, no copies).

    For a TransformerBridge this strips the bridge's wrapper segments (`._original_component`)
    and drops the aliases it adds (`attn.q`, `mlp.in`, ...), keeping exactly the keys the
    plain HF class has: what `save_pretrained` would export. Raises `IclgdError` when weights
    are offloaded to disk (`iclgd.hooks.placement`).
    """
    hf = getattr(model, "original_model", model)
    raw = hf.state_dict(keep_vars=False)
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
    import torch
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
    """
    hf = getattr(model, "original_model", None)
    if hf is None:
        return model
    import torch
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


def _state_dict(model: nn.Module, params: Mapping[str, Tensor] | None) -> Mapping[str, Tensor]:
    if params is not None:
        return params
    return hf_state_dict(model)


def layer_layout(model: nn.Module, params: Mapping[str, Tensor] | None = None) -> LayerLayout:
    """Find the per-layer key prefix and head geometry of an HF causal LM (or a bridge)."""
    hf = getattr(model, "original_model", model)
    cfg = getattr(hf, "config", None)
    if cfg is None:
        raise IclgdError(
            f"{type(model).__name__} has no Hugging Face config: raw weights are read from "
            "Hugging Face models (or LinearAttentionTransformer)"
        )
    text = cfg.get_text_config() if hasattr(cfg, "get_text_config") else cfg
    n_layers = _first_attr(text, ("num_hidden_layers", "n_layer", "num_layers"))
    n_heads = _first_attr(text, ("num_attention_heads", "n_head", "num_heads"))
    d_model = _first_attr(text, ("hidden_size", "n_embd", "d_model"))
    n_kv = getattr(text, "num_key_value_heads", None) or n_heads
    d_head = getattr(text, "head_dim", None) or d_model // n_heads
    keys = list(_state_dict(model, params).keys())
    counts: dict[str, set[int]] = {}
    for key in keys:
        m = re.match(r"^(.*?\.)(\d+)\.", key)
        if m:
            counts.setdefault(m.group(1), set()).add(int(m.group(2)))
    prefixes = [p for p, idx in counts.items() if idx == set(range(n_layers))]
    if not prefixes:
        raise IclgdError(
            f"cannot find the {n_layers} transformer layers in the state dict of "
            f"{type(hf).__name__}: this architecture's weight layout is not supported"
        )
    prefix = min(prefixes, key=len)
    return LayerLayout(prefix, int(n_heads), int(n_kv), int(d_head), str(text.model_type))


def _first_attr(cfg: object, names: tuple[str, ...]) -> int:
    for name in names:
        value = getattr(cfg, name, None)
        if value is not None:
            return int(value)
    raise IclgdError(f"config {type(cfg).__name__} has none of {names}")


def _check_layer(layer: int, prefix: str, sd: Mapping[str, Tensor]) -> None:
    if not any(k.startswith(f"{prefix}{layer}.") for k in sd):
        n = len({k[len(prefix):].split(".")[0] for k in sd if k.startswith(prefix)})
        raise IclgdError(f"layer {layer} is out of range: the model has {n} layers (0..{n - 1})")


def _find(sd: Mapping[str, Tensor], base: str, modules: tuple[str, ...], names: tuple[str, ...],
          suffix: str = "weight") -> str | None:
    for mod in modules:
        for name in names:
            key = f"{base}{mod}.{name}.{suffix}"
            if key in sd:
                return key
    return None


def _heads_in(w_t: Tensor, n: int, d_head: int) -> Tensor:
    """`[d_model, n*d_head]` (x @ W layout) → `[n, d_model, d_head]`."""
    return w_t.reshape(w_t.shape[0], n, d_head).permute(1, 0, 2)


def attention_weights(
    model: nn.Module, layer: int, *, params: Mapping[str, Tensor] | None = None
) -> AttentionWeights:
    """Raw per-head attention weights of `layer`, exactly the checkpoint's tensors rearranged.

    Returns `AttentionWeights` with `W_Q [n_heads, d_model, d_head]`, `W_K`/`W_V`
    `[n_key_value_heads, d_model, d_head]`, `W_O [n_heads, d_head, d_model]`, biases or None,
    convention `q_h = x @ W_Q[h] + b_Q[h]` (TransformerLens row-vector form). `model` is a
    TransformerBridge, an HF model, or an iclgd `LinearAttentionTransformer`.
    """
    if hasattr(model, "attention_weights") and params is None:
        return model.attention_weights(layer)  # iclgd's own modules
    sd = _state_dict(model, params)
    lay = layer_layout(model, sd)
    _check_layer(layer, lay.layer_prefix, sd)
    base = f"{lay.layer_prefix}{layer}."
    h, kv, dh = lay.n_heads, lay.n_kv_heads, lay.d_head

    def get(key: str | None) -> Tensor | None:
        return None if key is None else sd[key].detach()

    c_attn = _find(sd, base, _ATTN_MODULES, ("c_attn",))
    fused = _find(sd, base, _ATTN_MODULES, ("query_key_value",))
    if c_attn is not None:  # GPT-2 Conv1D: y = x @ W + b, W [d_model, 3*d_model]
        w = get(c_attn)
        b = get(c_attn[: -len("weight")] + "bias") if c_attn[: -len("weight")] + "bias" in sd else None
        wq, wk, wv = w.split(h * dh, dim=1)
        W_Q, W_K, W_V = (_heads_in(x, h, dh) for x in (wq, wk, wv))
        b_Q = b_K = b_V = None
        if b is not None:
            b_Q, b_K, b_V = (x.reshape(h, dh) for x in b.split(h * dh))
        o_key = _find(sd, base, _ATTN_MODULES, ("c_proj",))
        W_O = get(o_key).reshape(h, dh, -1)
    elif fused is not None:  # NeoX/BLOOM: Linear, rows interleaved [n_heads, 3, d_head]
        w = get(fused)
        d_model = w.shape[1]
        per = w.reshape(h, 3, dh, d_model)
        W_Q, W_K, W_V = (per[:, j].transpose(1, 2) for j in range(3))
        bias_key = fused[: -len("weight")] + "bias"
        b_Q = b_K = b_V = None
        if bias_key in sd:
            bb = get(bias_key).reshape(h, 3, dh)
            b_Q, b_K, b_V = bb[:, 0], bb[:, 1], bb[:, 2]
        o_key = _find(sd, base, _ATTN_MODULES, ("dense", "o_proj", "out_proj"))
        W_O = get(o_key).T.reshape(h, dh, -1)
    else:  # separate nn.Linear projections, weight [out, in]
        keys = {n: _find(sd, base, _ATTN_MODULES, (f"{n}_proj", n)) for n in ("q", "k", "v")}
        o_key = _find(sd, base, _ATTN_MODULES, _O_NAMES)
        if None in keys.values() or o_key is None:
            raise IclgdError(
                f"unsupported attention layout in layer {layer} of {lay.model_type}: expected "
                "c_attn (GPT-2), query_key_value (GPT-NeoX) or q_proj/k_proj/v_proj/o_proj"
            )
        W_Q = _heads_in(get(keys["q"]).T, h, dh)
        W_K = _heads_in(get(keys["k"]).T, kv, dh)
        W_V = _heads_in(get(keys["v"]).T, kv, dh)
        W_O = get(o_key).T.reshape(h, dh, -1)

        def bias(key: str, n: int) -> Tensor | None:
            bk = key[: -len("weight")] + "bias"
            return get(bk).reshape(n, dh) if bk in sd else None

        b_Q, b_K, b_V = bias(keys["q"], h), bias(keys["k"], kv), bias(keys["v"], kv)
    ob = o_key[: -len("weight")] + "bias"
    return AttentionWeights(
        W_Q=W_Q, W_K=W_K, W_V=W_V, W_O=W_O, b_Q=b_Q, b_K=b_K, b_V=b_V,
        b_O=get(ob) if ob in sd else None,
        n_heads=h, n_key_value_heads=W_K.shape[0], layer=layer,
    )


def mlp_weights(
    model: nn.Module, layer: int, *, params: Mapping[str, Tensor] | None = None
) -> MLPWeights:
    """Raw MLP weights of `layer`: `W_in [d_model, d_mlp]`, `W_out [d_mlp, d_model]`, and
    `W_gate [d_model, d_mlp]` for gated (SwiGLU) MLPs; convention `x @ W_in` (row vectors)."""
    if hasattr(model, "mlp_weights") and params is None:
        return model.mlp_weights(layer)
    sd = _state_dict(model, params)
    lay = layer_layout(model, sd)
    _check_layer(layer, lay.layer_prefix, sd)
    base = f"{lay.layer_prefix}{layer}."

    def bias(key: str) -> Tensor | None:
        bk = key[: -len("weight")] + "bias"
        return sd[bk].detach() if bk in sd else None

    c_fc = _find(sd, base, _MLP_MODULES, ("c_fc",))
    if c_fc is not None:  # GPT-2 Conv1D
        c_proj = _find(sd, base, _MLP_MODULES, ("c_proj",))
        return MLPWeights(W_in=sd[c_fc].detach(), W_out=sd[c_proj].detach(), b_in=bias(c_fc),
                          b_out=bias(c_proj), layer=layer)
    for n_in, n_gate, n_out in _MLP_LAYOUTS:
        k_in = _find(sd, base, _MLP_MODULES, (n_in,))
        k_out = _find(sd, base, _MLP_MODULES, (n_out,))
        if k_in is None or k_out is None:
            continue
        k_gate = _find(sd, base, _MLP_MODULES, (n_gate,)) if n_gate else None
        return MLPWeights(
            W_in=sd[k_in].detach().T, W_out=sd[k_out].detach().T,
            W_gate=None if k_gate is None else sd[k_gate].detach().T,
            b_in=bias(k_in), b_out=bias(k_out), layer=layer,
        )
    raise IclgdError(f"unsupported MLP layout in layer {layer} of {lay.model_type}")

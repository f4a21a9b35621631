"""Where each Hugging Face architecture keeps its per-layer weights: the one table iclgd reads.

Both the raw weight views (`iclgd.hooks.weights`) and the finetuning baselines
(`iclgd.probes.finetune_methods`, which train q/k/v slices of fused tensors through a gradient
mask) locate parameters here, so supporting a new architecture means extending this module only.

Attention layouts (`AttentionParams.kind`):

- `"conv1d"` — GPT-2: `c_attn.weight [d_model, 3 · d_model]` applied as `x @ W`, holding the
  q | k | v column blocks (each `[n_heads · d_head]`, head-major); `c_proj.weight [n_heads ·
  d_head, d_model]`, also `x @ W`;
- `"interleaved"` — GPT-NeoX / Pythia / BLOOM: `query_key_value.weight [n_heads · 3 · d_head,
  d_model]` (`nn.Linear`, `W x`), interleaved per head: HF reshapes the output to `[..., n_heads,
  3 · d_head]` and chunks it, so row `h · 3 · d_head + j · d_head + i` is entry `i` of q (j = 0),
  k (j = 1) or v (j = 2) of head `h`;
- `"separate"` — Llama, Mistral, Qwen, Gemma, OPT, GPT-J, ...: one `nn.Linear` per projection
  (`q_proj`/`k_proj`/`v_proj`/`o_proj` and their aliases), with grouped-query attention: k and v
  have `n_key_value_heads` heads.

In every layout a projection's output features (the axis `out_axis` of its weight, and its bias)
are head-major, `[n_heads, d_head]` flattened: `rows(part)` lists them.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from iclgd.errors import IclgdError

ATTN_MODULES = ("attn", "attention", "self_attn", "self_attention")
PROJECTIONS = {  # separate nn.Linear projections, by part
    "q": ("q_proj", "query", "q"),
    "k": ("k_proj", "key", "k"),
    "v": ("v_proj", "value", "v"),
    "o": ("o_proj", "out_proj", "dense", "c_proj", "wo"),
}
FUSED = {"c_attn": "conv1d", "query_key_value": "interleaved"}  # fused q/k/v tensor → kind
FUSED_OUTPUT = {"conv1d": ("c_proj",), "interleaved": ("dense", "o_proj", "out_proj")}
MLP_MODULES = ("mlp", "feed_forward", "ffn")
MLP_CONV1D = ("c_fc", "c_proj")  # GPT-2: Conv1D in / out, x @ W
MLP_LINEAR = (  # (in, gate, out), all nn.Linear; gate None when ungated
    ("up_proj", "gate_proj", "down_proj"),
    ("dense_h_to_4h", None, "dense_4h_to_h"),
    ("fc_in", None, "fc_out"),
    ("fc1", None, "fc2"),
    ("w1", None, "w2"),
)
FINAL_NORMS = ("final_layer_norm", "norm", "ln_f", "final_layernorm", "decoder.final_layer_norm")
QKV = ("q", "k", "v")


@dataclass(frozen=True)
class LayerLayout:
    """Where one model family keeps its per-layer weights in the HF state dict."""

    layer_prefix: str  # e.g. "gpt_neox.layers." ; layer l's keys start with f"{prefix}{l}."
    n_layers: int
    n_heads: int
    n_kv_heads: int
    d_head: int
    model_type: str

    def base(self, layer: int) -> str:
        """The key prefix of layer `layer` (checked against `n_layers`)."""
        if not 0 <= layer < self.n_layers:
            raise IclgdError(f"layer {layer} is out of range: the model has {self.n_layers} "
                             f"layers (0..{self.n_layers - 1})")
        return f"{self.layer_prefix}{layer}."

    def heads(self, part: str) -> int:
        """Heads of projection `part`: `n_kv_heads` for k and v, `n_heads` otherwise."""
        return self.n_kv_heads if part in ("k", "v") else self.n_heads


@dataclass(frozen=True)
class AttentionParams:
    """The HF parameter names of one layer's attention projections.

    `weights[part]` for part in q, k, v, o (the same fused name for q, k, v when fused);
    `out_axis[part]` is the axis of that weight holding the part's output features (0 for
    `nn.Linear [out, in]`, 1 for GPT-2's `Conv1D [in, out]`).
    """

    kind: str  # "conv1d", "interleaved" or "separate"
    weights: dict[str, str]
    out_axis: dict[str, int]
    layout: LayerLayout

    def bias(self, part: str, names: Iterable[str]) -> str | None:
        """The bias name of `part` when `names` (a state dict's keys) hold one, else None."""
        key = self.weights[part].removesuffix("weight") + "bias"
        return key if key in names else None

    def rows(self, part: str) -> Tensor | None:
        """Indices of `part`'s output features (head-major `[heads, d_head]`) within its weight's
        output axis; None when the tensor holds `part` alone."""
        if self.kind == "separate" or part == "o":
            return None
        h, dh, j = self.layout.n_heads, self.layout.d_head, QKV.index(part)
        if self.kind == "conv1d":  # q | k | v blocks of n_heads · d_head
            return torch.arange(j * h * dh, (j + 1) * h * dh)
        per_head = torch.arange(h)[:, None] * 3 * dh + j * dh + torch.arange(dh)[None, :]
        return per_head.reshape(-1)  # interleaved: [h, 3, d_head] rows, part j


def _first_attr(cfg: object, names: tuple[str, ...]) -> int:
    for name in names:
        value = getattr(cfg, name, None)
        if value is not None:
            return int(value)
    raise IclgdError(f"config {type(cfg).__name__} has none of {names}")


def layer_layout(hf: nn.Module, keys: Iterable[str]) -> LayerLayout:
    """The per-layer key prefix and head geometry of an HF causal LM whose state dict has
    `keys`: the prefix under which exactly the config's `num_hidden_layers` layers are numbered."""
    cfg = getattr(hf, "config", None)
    if cfg is None:
        raise IclgdError(
            f"{type(hf).__name__} has no Hugging Face config: raw weights are read from "
            "Hugging Face models (or LinearAttentionTransformer)"
        )
    text = cfg.get_text_config() if hasattr(cfg, "get_text_config") else cfg
    n_layers = _first_attr(text, ("num_hidden_layers", "n_layer", "num_layers"))
    n_heads = _first_attr(text, ("num_attention_heads", "n_head", "num_heads"))
    d_model = _first_attr(text, ("hidden_size", "n_embd", "d_model"))
    n_kv = getattr(text, "num_key_value_heads", None) or n_heads
    d_head = getattr(text, "head_dim", None) or d_model // n_heads
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
    return LayerLayout(prefix, n_layers, n_heads, int(n_kv), int(d_head), str(text.model_type))


def find_key(names: Iterable[str], base: str, modules: tuple[str, ...],
             candidates: tuple[str, ...], suffix: str = "weight") -> str | None:
    """The first `f"{base}{module}.{name}.{suffix}"` present in `names`, or None."""
    present = names if isinstance(names, Mapping | set | frozenset | dict) else set(names)
    for mod in modules:
        for name in candidates:
            key = f"{base}{mod}.{name}.{suffix}"
            if key in present:
                return key
    return None


def attention_params(names: Iterable[str], lay: LayerLayout, layer: int) -> AttentionParams:
    """Locate layer `layer`'s q, k, v, o projections among the state-dict keys `names`."""
    present = set(names)
    base = lay.base(layer)
    for fused, kind in FUSED.items():
        key = find_key(present, base, ATTN_MODULES, (fused,))
        if key is None:
            continue
        o_key = find_key(present, base, ATTN_MODULES, FUSED_OUTPUT[kind])
        if o_key is None:
            break
        axis = 1 if kind == "conv1d" else 0
        return AttentionParams(kind, {**dict.fromkeys(QKV, key), "o": o_key},
                               dict.fromkeys((*QKV, "o"), axis), lay)
    keys = {p: find_key(present, base, ATTN_MODULES, PROJECTIONS[p]) for p in (*QKV, "o")}
    missing = [p for p, k in keys.items() if k is None]
    if missing:
        raise IclgdError(
            f"unsupported attention layout in layer {layer} of {lay.model_type}: expected "
            "c_attn (GPT-2), query_key_value (GPT-NeoX) or q_proj/k_proj/v_proj/o_proj"
        )
    return AttentionParams("separate", {p: k for p, k in keys.items() if k is not None},
                           dict.fromkeys((*QKV, "o"), 0), lay)


@dataclass(frozen=True)
class MLPParams:
    """The HF parameter names of one layer's MLP; `transposed` is True for `nn.Linear [out, in]`
    weights (read as `W.T` in the `x @ W` convention), False for GPT-2's `Conv1D`."""

    w_in: str
    w_out: str
    w_gate: str | None
    transposed: bool


def mlp_params(names: Iterable[str], lay: LayerLayout, layer: int) -> MLPParams:
    """Locate layer `layer`'s MLP projections among the state-dict keys `names`."""
    present = set(names)
    base = lay.base(layer)
    c_fc = find_key(present, base, MLP_MODULES, (MLP_CONV1D[0],))
    c_proj = find_key(present, base, MLP_MODULES, (MLP_CONV1D[1],))
    if c_fc is not None and c_proj is not None:
        return MLPParams(c_fc, c_proj, None, transposed=False)
    for n_in, n_gate, n_out in MLP_LINEAR:
        k_in = find_key(present, base, MLP_MODULES, (n_in,))
        k_out = find_key(present, base, MLP_MODULES, (n_out,))
        if k_in is None or k_out is None:
            continue
        k_gate = find_key(present, base, MLP_MODULES, (n_gate,)) if n_gate else None
        return MLPParams(k_in, k_out, k_gate, transposed=True)
    raise IclgdError(f"unsupported MLP layout in layer {layer} of {lay.model_type}")


def final_norm(hf: nn.Module) -> nn.Module:
    """The final LayerNorm/RMSNorm module of an HF causal LM (applied before the unembedding)."""
    base = getattr(hf, "base_model", hf)
    for name in FINAL_NORMS:
        try:
            return base.get_submodule(name)
        except AttributeError:
            continue
    raise IclgdError(f"cannot find the final LayerNorm of {type(hf).__name__}")

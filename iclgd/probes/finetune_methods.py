"""The pieces `iclgd.probes.finetune` combines: which weights each method trains, and the loss.

Methods (REFERENCE §5), fixed here:

| method         | weights trained                       | batch                 | optimiser | loss_on default |
|----------------|---------------------------------------|-----------------------|-----------|-----------------|
| `gd`           | all                                   | all demonstrations    | SGD       | label (Shen)    |
| `sgd`          | all                                   | 1, prompt order       | SGD       | label (Shen)    |
| `adam`         | all                                   | 1, prompt order       | Adam      | label (Shen)    |
| `kv`           | W_K, W_V (+ biases) of every layer    | 1, prompt order       | SGD       | all (Dai)       |
| `layer-causal` | W_K, W_V (+ biases) of every layer    | 1, prompt order       | SGD       | all (Deutch)    |
| `wv-layer`     | W_V (+ bias) of layer `layer`         | all demonstrations    | SGD       | label (Shen)    |

`layer-causal` is Deutch et al.'s variant of Dai's `kv` baseline: every decoder layer's input
is detached, the final LayerNorm + unembedding are applied after every layer (logit lens), and
the loss is the sum over layers of those cross-entropies, so each layer learns only from its own
read-out.

Fused attention projections are trained through a 0/1 gradient mask on the fused tensor:
GPT-NeoX / BLOOM `query_key_value.weight [n_heads · 3 · d_head, d_model]` is interleaved per
head (HF reshapes the output to `[..., n_heads, 3 · d_head]` and chunks q, k, v), so row
`h · 3 · d_head + j · d_head + i` belongs to q (j = 0), k (j = 1) or v (j = 2) of head h;
GPT-2 `c_attn.weight [d_model, 3 · d_model]` (Conv1D, `x @ W`) holds q | k | v column blocks.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch.func import functional_call

from iclgd.errors import IclgdError
from iclgd.hooks.precision import widen
from iclgd.hooks.weights import layer_layout


@dataclass(frozen=True)
class MethodSpec:
    """What one finetuning method does (see the module table)."""

    params: str  # "all", "kv" or "v-layer"
    full_batch: bool
    optimizer: str  # "sgd" or "adam"
    loss_on: str  # default
    layer_causal: bool = False


METHODS: dict[str, MethodSpec] = {
    "gd": MethodSpec("all", True, "sgd", "label"),
    "sgd": MethodSpec("all", False, "sgd", "label"),
    "adam": MethodSpec("all", False, "adam", "label"),
    "kv": MethodSpec("kv", False, "sgd", "all"),
    "layer-causal": MethodSpec("kv", False, "sgd", "all", layer_causal=True),
    "wv-layer": MethodSpec("v-layer", True, "sgd", "label"),
}

_ATTN = {"attn", "attention", "self_attn", "self_attention"}
_SEPARATE = {"k": ("k_proj", "key", "k"), "v": ("v_proj", "value", "v")}


def method_spec(method: str) -> MethodSpec:
    """The `MethodSpec` of `method`, or `IclgdError` listing the known methods."""
    if method not in METHODS:
        raise IclgdError(f"unknown finetuning method {method!r}: use one of {', '.join(METHODS)}")
    return METHODS[method]


def trainable_parameters(
    hf: nn.Module, spec: MethodSpec, layer: int | None = None
) -> dict[str, Tensor | None]:
    """HF parameter names to train → a 0/1 mask of the parameter's shape (fused tensors) or None
    (the whole tensor). Tied parameters appear once (`named_parameters()` order)."""
    names = dict(hf.named_parameters())
    if spec.params == "all":
        return dict.fromkeys(names)
    lay = layer_layout(hf)
    n_layers = len({k[len(lay.layer_prefix):].split(".")[0] for k in names
                    if k.startswith(lay.layer_prefix)})
    if spec.params == "v-layer":
        if layer is None:
            raise IclgdError("method wv-layer needs layer=: the layer whose W_V is trained")
        if not 0 <= layer < n_layers:
            raise IclgdError(f"layer {layer} is out of range: the model has {n_layers} layers")
        layers, parts = [layer], ("v",)
    else:
        layers, parts = list(range(n_layers)), ("k", "v")
    out: dict[str, Tensor | None] = {}
    for layer_idx in layers:
        found = _attention_parts(names, f"{lay.layer_prefix}{layer_idx}.", parts, lay.n_heads,
                                 lay.d_head)
        if not found:
            raise IclgdError(
                f"cannot find the key/value projections of layer {layer_idx} "
                f"({lay.model_type}): supported are k_proj/v_proj, query_key_value, c_attn"
            )
        out.update(found)
    return out


def _attention_parts(
    names: Mapping[str, Tensor], base: str, parts: tuple[str, ...], n_heads: int, d_head: int
) -> dict[str, Tensor | None]:
    out: dict[str, Tensor | None] = {}
    for key, p in names.items():
        if not key.startswith(base):
            continue
        tail = key[len(base):].split(".")
        if len(tail) < 2 or tail[-1] not in ("weight", "bias"):
            continue
        module = tail[-2]
        if module == "query_key_value":  # [h, 3, d_head] interleaved on dim 0
            mask = torch.zeros(n_heads, 3, d_head, dtype=p.dtype, device=p.device)
            for part in parts:
                mask[:, 1 if part == "k" else 2] = 1
            mask = mask.reshape(-1)
            out[key] = mask[:, None].expand_as(p).clone() if p.ndim == 2 else mask
        elif module == "c_attn":  # Conv1D: q | k | v blocks on the last dim
            d = p.shape[-1] // 3
            mask = torch.zeros(3 * d, dtype=p.dtype, device=p.device)
            for part in parts:
                j = 1 if part == "k" else 2
                mask[j * d:(j + 1) * d] = 1
            out[key] = mask.expand_as(p).clone()
        elif any(module in _SEPARATE[part] for part in parts) and _ATTN.intersection(tail[:-2]):
            out[key] = None
    return out


def masked_ce(logits: Tensor, tokens: Tensor, target: Tensor) -> Tensor:
    """Mean next-token cross-entropy over the target positions: token `t` is predicted by the
    logits at `t - 1`; `target [b, seq]` marks the tokens that count. Shapes `logits [b, seq,
    vocab]`, `tokens [b, seq]`. Computed in at least float32 (`iclgd.hooks.precision`)."""
    lp = torch.log_softmax(widen(logits[:, :-1]), dim=-1)  # float32 at least (bf16 models)
    ce = -lp.gather(-1, tokens[:, 1:, None])[..., 0]
    m = target[:, 1:].to(ce.dtype)
    return (ce * m).sum() / m.sum()


def _decoder_layers(hf: nn.Module) -> nn.ModuleList:
    prefix = layer_layout(hf).layer_prefix.rstrip(".")
    return hf.get_submodule(prefix)


def _final_norm(hf: nn.Module) -> nn.Module:
    base = getattr(hf, "base_model", hf)
    for name in ("final_layer_norm", "norm", "ln_f", "final_layernorm", "decoder.final_layer_norm"):
        try:
            return base.get_submodule(name)
        except AttributeError:
            continue
    raise IclgdError(f"cannot find the final LayerNorm of {type(hf).__name__} for layer-causal GD")


@contextmanager
def layer_causal_hooks(hf: nn.Module):
    """Hooks for Deutch's layer-causal GD on an HF decoder: each layer's input is detached and
    each layer's output is read out through the final norm + unembedding. Yields the list the
    per-layer logits are appended to (cleared by the caller before each forward)."""
    layers = _decoder_layers(hf)
    norm, unembed = _final_norm(hf), hf.get_output_embeddings()
    collected: list[Tensor] = []

    def pre(_mod, args, kwargs):
        if args:
            return (args[0].detach(), *args[1:]), kwargs
        kwargs = dict(kwargs)
        kwargs["hidden_states"] = kwargs["hidden_states"].detach()
        return args, kwargs

    def post(_mod, _args, output):
        h = output[0] if isinstance(output, tuple) else output
        collected.append(unembed(norm(h)))

    handles = []
    try:
        for block in layers:
            handles.append(block.register_forward_pre_hook(pre, with_kwargs=True))
            handles.append(block.register_forward_hook(post))
        yield collected
    finally:
        for h in handles:
            h.remove()


def make_loss(
    hf: nn.Module, frozen: Mapping[str, Tensor], collected: list[Tensor] | None
) -> Callable[[dict[str, Tensor], Tensor, Tensor], Tensor]:
    """`loss(trainable, tokens [b, seq], target [b, seq]) -> scalar` through
    `torch.func.functional_call` on `hf` with `frozen ∪ trainable` parameters. With `collected`
    (from `layer_causal_hooks`) the loss is the sum over layers of the per-layer read-out CE."""

    def loss(trainable: dict[str, Tensor], tokens: Tensor, target: Tensor) -> Tensor:
        if collected is not None:
            collected.clear()
        out = functional_call(hf, {**frozen, **trainable}, (tokens,), {"use_cache": False})
        if collected is None:
            return masked_ce(out.logits, tokens, target)
        return torch.stack([masked_ce(lg, tokens, target) for lg in collected]).sum()

    return loss

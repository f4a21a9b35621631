"""The pieces `iclgd.probes.finetune` combines: which weights each method trains, and the loss.

Methods, fixed here (Dai et al. 2023, §3 and Appendix; Deutch et al. 2024, §4; Shen et al. 2024,
§3):

| method         | weights trained                       | batch                 | optimiser | loss_on default | lr    |
|----------------|---------------------------------------|-----------------------|-----------|-----------------|-------|
| `gd`           | all                                   | all demonstrations    | SGD       | label (Shen)    | 1e-2  |
| `sgd`          | all                                   | 1, prompt order       | SGD       | label (Shen)    | 1e-2  |
| `adam`         | all                                   | 1, prompt order       | Adam      | label (Shen)    | 1e-3  |
| `kv`           | W_K, W_V (+ biases) of every layer    | 1, prompt order       | SGD       | all (Dai)       | 1e-2  |
| `layer-causal` | W_K, W_V (+ biases) of every layer    | 1, prompt order       | SGD       | all (Deutch)    | 1e-2  |
| `wv-layer`     | W_V (+ bias) of layer `layer`         | all demonstrations    | SGD       | label (Shen)    | 1e-2  |

`layer-causal` is Deutch et al.'s variant of Dai's `kv` baseline: every decoder layer's input
is detached, the final LayerNorm + unembedding are applied after every layer (logit lens), and
the loss is the sum over layers of those cross-entropies, so each layer learns only from its own
read-out. The `lr` column is each method's untuned default (`MethodSpec.lr`).

Fused attention projections are trained through a 0/1 gradient mask on the fused tensor, over
the output features that `iclgd.hooks.layouts.AttentionParams.rows` assigns to k or v (GPT-NeoX
interleaved `query_key_value`, GPT-2 `c_attn` column blocks; see that module).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn
from torch.func import functional_call

from iclgd.errors import IclgdError
from iclgd.hooks.layouts import AttentionParams, attention_params, final_norm
from iclgd.hooks.precision import widen
from iclgd.hooks.weights import layer_layout


@dataclass(frozen=True)
class MethodSpec:
    """What one finetuning method does (see the module table)."""

    params: str  # "all", "kv" or "v-layer"
    full_batch: bool
    optimizer: str  # "sgd" or "adam"
    loss_on: str  # default
    lr: float  # untuned default learning rate
    layer_causal: bool = False


METHODS: dict[str, MethodSpec] = {
    "gd": MethodSpec("all", True, "sgd", "label", 1e-2),
    "sgd": MethodSpec("all", False, "sgd", "label", 1e-2),
    "adam": MethodSpec("all", False, "adam", "label", 1e-3),
    "kv": MethodSpec("kv", False, "sgd", "all", 1e-2),
    "layer-causal": MethodSpec("kv", False, "sgd", "all", 1e-2, layer_causal=True),
    "wv-layer": MethodSpec("v-layer", True, "sgd", "label", 1e-2),
}


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
    parts: tuple[str, ...]
    if spec.params == "v-layer":
        if layer is None:
            raise IclgdError("method wv-layer needs layer=: the layer whose W_V is trained")
        lay.base(layer)  # range check
        layers, parts = [layer], ("v",)
    else:
        layers, parts = list(range(lay.n_layers)), ("k", "v")
    out: dict[str, Tensor | None] = {}
    for layer_idx in layers:
        out.update(_part_masks(names, attention_params(names, lay, layer_idx), parts))
    return out


def _part_masks(
    names: Mapping[str, Tensor], ap: AttentionParams, parts: tuple[str, ...]
) -> dict[str, Tensor | None]:
    """`{param: mask or None}` training `parts` of one layer's attention (weights and biases)."""
    out: dict[str, Tensor | None] = {}
    for part in parts:
        for key, axis in ((ap.weights[part], ap.out_axis[part]), (ap.bias(part, names), 0)):
            if key is None:
                continue
            rows = ap.rows(part)
            if rows is None:
                out[key] = None
                continue
            p = names[key]
            axis = axis if p.ndim == 2 else 0
            mask = out.get(key)
            if mask is None:
                mask = torch.zeros_like(p)
            mask.index_fill_(axis, rows.to(p.device), 1.0)
            out[key] = mask
    return out


def masked_ce(logits: Tensor, tokens: Tensor, target: Tensor) -> Tensor:
    """Mean next-token cross-entropy over the target positions: token `t` is predicted by the
    logits at `t - 1`; `target [b, seq]` marks the tokens that count. Shapes `logits [b, seq,
    vocab]`, `tokens [b, seq]`. Computed in at least float32 (`iclgd.hooks.precision`)."""
    lp = torch.log_softmax(widen(logits[:, :-1]), dim=-1)  # float32 at least (bf16 models)
    ce = -lp.gather(-1, tokens[:, 1:, None])[..., 0]
    m = target[:, 1:].to(ce.dtype)
    return (ce * m).sum() / m.sum()


def decoder_layers(hf: nn.Module) -> nn.ModuleList:
    """The HF model's decoder layers (the `ModuleList` at its layout's layer prefix)."""
    layers = hf.get_submodule(layer_layout(hf).layer_prefix.rstrip("."))
    if not isinstance(layers, nn.ModuleList):
        raise IclgdError(f"the decoder layers of {type(hf).__name__} are not a ModuleList")
    return layers


def _output_embeddings(hf: nn.Module) -> nn.Module:
    get = getattr(hf, "get_output_embeddings", None)
    unembed = get() if callable(get) else None
    if not isinstance(unembed, nn.Module):
        raise IclgdError(f"{type(hf).__name__} has no output embedding (unembedding) module")
    return unembed


@contextmanager
def layer_causal_hooks(hf: nn.Module) -> Iterator[list[Tensor]]:
    """Hooks for Deutch's layer-causal GD on an HF decoder: each layer's input is detached and
    each layer's output is read out through the final norm + unembedding. Yields the list the
    per-layer logits are appended to (cleared by the caller before each forward)."""
    layers = decoder_layers(hf)
    norm, unembed = final_norm(hf), _output_embeddings(hf)
    collected: list[Tensor] = []

    def pre(_mod: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]
            ) -> tuple[tuple[Any, ...], dict[str, Any]]:
        if args:
            return (args[0].detach(), *args[1:]), kwargs
        kwargs = dict(kwargs)
        kwargs["hidden_states"] = kwargs["hidden_states"].detach()
        return args, kwargs

    def post(_mod: nn.Module, _args: tuple[Any, ...], output: Any) -> None:
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
        if collected is None:
            out = functional_call(hf, {**frozen, **trainable}, (tokens,), {"use_cache": False})
            return masked_ce(out.logits, tokens, target)
        # the read-outs carry the loss: the final logits are needed at no position
        functional_call(hf, {**frozen, **trainable}, (tokens,),
                        {"use_cache": False, "logits_to_keep": 1})
        return torch.stack([masked_ce(lg, tokens, target) for lg in collected]).sum()

    return loss

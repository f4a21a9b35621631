"""Running a model with other weights, by Hugging Face parameter name.

`finetuned(model, delta)` is the one way iclgd runs a model with finetuned weights: inside the
`with` block the model computes with `W_before + ΔW` (every hook name unchanged), and on exit
the original tensors are copied back bit for bit. Everything else here serves it or the other
two weight writers (loading a checkpoint into a bridge, building the untrained control):

- `delta_tensors(delta)`: the `{hf_name: ΔW}` of a `WeightDelta` or a plain mapping;
- `write_weights(model, params)`: overwrite HF-named weights in place (no restore);
- `copy_model(model)`: an independent deep copy (own weights, same config and tokenizer);
- `refresh_split_weights(model)`: make a TransformerBridge's forward see HF tensors changed in
  place (it forwards GPT-NeoX-style fused `query_key_value` through q/k/v copies).
"""

from __future__ import annotations

import copy
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Protocol, TypeVar

import torch
from torch import Tensor, nn

from iclgd.errors import IclgdError
from iclgd.hooks.precision import first_non_finite, is_reduced, wide_dtype, widen
from iclgd.hooks.weights import hf_state_dict

M = TypeVar("M", bound=nn.Module)


class HasDeltas(Protocol):
    """Anything carrying `deltas = {hf_name: ΔW}`, e.g. `iclgd.probes.finetune.WeightDelta`."""

    @property
    def deltas(self) -> Mapping[str, Tensor]: ...


Delta = HasDeltas | Mapping[str, Tensor]


def delta_tensors(delta: Delta) -> dict[str, Tensor]:
    """The HF-named `{param: ΔW}` of a `WeightDelta` (its `.deltas`) or of a plain mapping."""
    inner = getattr(delta, "deltas", delta)
    if not isinstance(inner, Mapping):
        raise IclgdError(
            f"expected a WeightDelta or a mapping of HF names to tensors, got "
            f"{type(delta).__name__}"
        )
    return dict(inner)


def refresh_split_weights(model: nn.Module) -> None:
    """Re-derive the bridge's split copies of fused QKV weights from the HF tensors.

    TransformerLens' bridge forwards GPT-NeoX-style fused `query_key_value` through q/k/v copies
    made when it wraps the model; call this after writing new values into the HF tensors (a
    loaded checkpoint, a finetuning delta) so `model(tokens)` sees them. No-op for other models.
    """
    for module in model.modules():
        original = getattr(module, "original_component", None)
        if hasattr(module, "split_qkv_matrix") and original is not None:
            module.set_original_component(original)  # type: ignore[operator]


def _live(model: nn.Module, names: Mapping[str, Tensor], what: str) -> dict[str, Tensor]:
    live = hf_state_dict(model)
    unknown = [k for k in names if k not in live]
    if unknown:
        raise IclgdError(f"{what} names parameters this model lacks: {unknown[:3]}")
    return live


def _plus(weight: Tensor, d: Tensor) -> Tensor:
    """`weight + d` as a new tensor in the weight's dtype and device; for bf16/fp16 weights the
    sum is formed in float32 and rounded once (rounding ΔW first would lose updates below the
    weight's ulp)."""
    d = d.to(weight.device)
    if is_reduced(weight.dtype):
        return (widen(weight) + d.to(wide_dtype(weight.dtype))).to(weight.dtype)
    return weight + d.to(weight.dtype)


def _check_finite_update(tensors: Mapping[str, Tensor]) -> None:
    bad = first_non_finite(tensors)
    if bad is not None:
        raise IclgdError(f"the finetuning update of {bad} is not finite: lower the learning rate")


@contextmanager
def finetuned(model: M, delta: Delta | None) -> Iterator[M]:
    """Run `model` with `W_before + ΔW` inside the block, then restore its weights exactly.

    `delta` is a `WeightDelta` (from `iclgd.finetune`) or a `{hf_name: ΔW}` mapping; None runs
    the original weights. Each named parameter computes with a new tensor `W + ΔW` (in the
    model's dtype, on its device) swapped in for its original, which is kept untouched and
    swapped back on exit, even when the block raises: a zero delta, and the model after the
    block, are bit-identical to the original, and no copy of the original weights is made. The yielded object *is* `model`: read what you need inside the block (clone
    weight views you keep). A non-finite update raises `IclgdError` before anything is written.

    Example:
        >>> delta = finetune(model, demos_from_token_examples(tokens), method="kv", lr=1e-2)
        >>> with finetuned(model, delta) as ft:
        ...     acts = capture(ft, tokens, act_name("attn_out", 0), positions=-1)
        >>> tuple(acts["blocks.0.hook_attn_out"].shape)
        (2, 64)
    """
    tensors = {} if delta is None else delta_tensors(delta)
    _live(model, tensors, "the delta")
    _check_finite_update(tensors)
    params = hf_state_dict(model, keep_vars=True)
    originals: dict[str, Tensor] = {}
    try:
        with torch.no_grad():
            for name, d in tensors.items():  # W + ΔW swapped in; W itself is never written
                originals[name] = params[name].data
                params[name].data = _plus(originals[name], d)
        refresh_split_weights(model)
        yield model
    finally:
        for name in reversed(originals):  # reversed: tied aliases end on the true original
            params[name].data = originals[name]
        refresh_split_weights(model)


def write_weights(model: nn.Module, params: Mapping[str, Tensor]) -> None:
    """Overwrite the HF-named weights `params` of `model` in place (cast to the model's dtype
    and device), then refresh fused-QKV copies. Unknown names raise `IclgdError`."""
    live = _live(model, params, "the weights")
    with torch.no_grad():
        for name, value in params.items():
            live[name].copy_(value)
    refresh_split_weights(model)


def copy_model(model: M) -> M:
    """A deep copy of a TransformerBridge (or any module): own weights, same config/tokenizer.

    Tensors a gradient-mode forward may have cached on modules (non-leaf, which `deepcopy`
    refuses) are copied detached.
    """
    memo: dict[int, object] = {}
    for module in model.modules():
        for value in vars(module).values():
            if isinstance(value, Tensor) and not value.is_leaf:
                memo[id(value)] = value.detach().clone()
    return copy.deepcopy(model, memo)

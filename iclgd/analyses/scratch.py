"""A private copy of a bridge into which finetuned weights are loaded by Hugging Face name.

The finetuned (FT) runs of `iclgd.analyses.runs` load `W_before + ΔW` here, so the caller's
model never changes and the hook names stay TransformerLens'.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor

from iclgd.errors import IclgdError
from iclgd.hooks import hf_state_dict
from iclgd.hooks.checkpoints import refresh_split_weights
from iclgd.hooks.precision import widen


def delta_tensors(delta: Any) -> dict[str, Tensor]:
    """The HF-named `{param: ΔW}` of a `WeightDelta` (its `.deltas`) or of a plain mapping."""
    inner = getattr(delta, "deltas", delta)
    if not isinstance(inner, Mapping):
        raise IclgdError(
            f"expected a WeightDelta or a mapping of HF names to tensors, got "
            f"{type(delta).__name__}"
        )
    return dict(inner)


def copy_bridge(model: Any) -> Any:
    """A deep copy of a TransformerBridge (own weights, same config and tokenizer).

    Tensors a gradient-mode forward may have cached on modules (non-leaf, which `deepcopy`
    refuses) are copied detached.
    """
    memo: dict[int, Any] = {}
    for module in model.modules():
        for value in vars(module).values():
            if isinstance(value, Tensor) and not value.is_leaf:
                memo[id(value)] = value.detach().clone()
    return copy.deepcopy(model, memo)


class ScratchModel:
    """A private copy of a bridge into which other weights are loaded by Hugging Face name.

    `load(delta)` sets the copy's weights to the original `W_before + ΔW` (`delta` = a
    `WeightDelta` or `{hf_name: ΔW}`, None = the original weights) and returns the copy. Only
    tensors that differ from the original are written; fused QKV projections, which the bridge
    forwards through split copies, are re-split after every load.
    """

    def __init__(self, model: Any) -> None:
        self.base = {k: v.detach().clone() for k, v in hf_state_dict(model).items()}
        self.model = copy_bridge(model)
        self.model.eval()
        self._dirty: set[str] = set()

    def load_params(self, params: Mapping[str, Tensor]) -> Any:
        """Load full HF-named weights for the keys in `params` (others: the originals)."""
        unknown = [k for k in params if k not in self.base]
        if unknown:
            raise IclgdError(f"the weights name parameters this model lacks: {unknown[:3]}")
        state = {k: self.base[k] for k in self._dirty - set(params)}
        state.update({k: v.to(self.base[k].device, self.base[k].dtype) for k, v in params.items()})
        if state:
            with torch.no_grad():
                result = self.model.load_state_dict(state, strict=False)
            if result.unexpected_keys:
                raise IclgdError(
                    f"cannot load weights into the model: {result.unexpected_keys[:3]}"
                )
            refresh_split_weights(self.model)  # fused QKV: the bridge forwards split copies
        self._dirty = set(params)
        return self.model

    def load(self, delta: Any | None) -> Any:
        """The copy with `W_before + ΔW` loaded (None: the original weights)."""
        if delta is None:
            return self.load_params({})
        tensors = delta_tensors(delta)
        params = {}
        for name, d in tensors.items():
            if name not in self.base:
                raise IclgdError(f"the delta names a parameter this model lacks: {name}")
            if not torch.isfinite(d).all():
                raise IclgdError(
                    f"the finetuning update of {name} is not finite: lower the learning rate"
                )
            base = self.base[name]
            wide = widen(base)  # bf16/fp16 weights: W_before + ΔW summed in float32, rounded once
            params[name] = (wide + d.to(wide.device, wide.dtype)).to(base.dtype)
        return self.load_params(params)

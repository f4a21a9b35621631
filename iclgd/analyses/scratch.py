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
    tensors that differ from the original are written, in place (no temporary full-size
    tensors); fused QKV projections, which the bridge forwards through split copies, are
    re-split after every load. The original weights are read from `model` itself, which must
    not change while the scratch copy is in use (iclgd's analyses never write to it).
    """

    def __init__(self, model: Any) -> None:
        self.base = {k: v.detach() for k, v in hf_state_dict(model).items()}
        self.model = copy_bridge(model)
        self.model.eval()
        self.live = hf_state_dict(self.model)
        self._dirty: set[str] = set()

    def load_params(self, params: Mapping[str, Tensor]) -> Any:
        """Load full HF-named weights for the keys in `params` (others: the originals)."""
        self._check_names(params, "the weights name parameters this model lacks")
        with torch.no_grad():
            for k in self._dirty - set(params):
                self.live[k].copy_(self.base[k])
            for k, v in params.items():
                self.live[k].copy_(v)
        return self._loaded(set(params))

    def load(self, delta: Any | None) -> Any:
        """The copy with `W_before + ΔW` loaded (None: the original weights)."""
        tensors = {} if delta is None else delta_tensors(delta)
        self._check_names(tensors, "the delta names a parameter this model lacks")
        for name, d in tensors.items():
            if not torch.isfinite(d).all():
                raise IclgdError(
                    f"the finetuning update of {name} is not finite: lower the learning rate"
                )
        with torch.no_grad():
            for k in self._dirty - set(tensors):
                self.live[k].copy_(self.base[k])
            for k, d in tensors.items():
                live, base = self.live[k], self.base[k]
                if base.dtype in (torch.float32, torch.float64):
                    live.copy_(base)
                    live.add_(d.to(live.device, live.dtype))
                else:  # bf16/fp16: W_before + ΔW summed in float32, rounded once
                    wide = widen(base)
                    live.copy_(wide + d.to(wide.device, wide.dtype))
        return self._loaded(set(tensors))

    def _check_names(self, names: Mapping[str, Tensor], what: str) -> None:
        unknown = [k for k in names if k not in self.base]
        if unknown:
            raise IclgdError(f"{what}: {unknown[:3]}")

    def _loaded(self, dirty: set[str]) -> Any:
        if dirty or self._dirty:
            refresh_split_weights(self.model)  # fused QKV: the bridge forwards split copies
        self._dirty = dirty
        return self.model

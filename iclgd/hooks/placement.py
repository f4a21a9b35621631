"""Where a model's weights live: one device, or spread over several (and CPU/disk offload).

`load_model(..., device_map=..., max_memory=..., offload_folder=...)` hands these to Hugging
Face's `from_pretrained` through TransformerLens' `TransformerBridge.boot_transformers`, which
dispatches the model with `accelerate` (a dependency of TransformerLens):

- `device_map`: `"auto"`, `"balanced"`, `"balanced_low_0"`, `"sequential"`, or a dict from module
  names to a device (`0`, `"cuda:1"`, `"cpu"`, `"disk"`), e.g. `{"": "cpu"}`;
- `max_memory`: per-device budgets, e.g. `{0: "20GiB", 1: "20GiB", "cpu": "64GiB"}` (alone it
  implies `device_map="auto"`);
- `offload_folder`: where `"disk"` modules' weights are kept (HF default: a temporary folder).

Forward passes, `capture`, ICL accuracy and induction scores run on a dispatched model.
Raw-weight analyses (density, drift, ΔW, finetuning) need the weights in memory: on a model
with disk-offloaded modules they raise `IclgdError`; read the weights from the checkpoint with
`iclgd.hooks.read_hf_weights(folder)` and pass them as `params=` instead.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from iclgd.errors import IclgdError

DEVICE_MAP_STRATEGIES = ("auto", "balanced", "balanced_low_0", "sequential")


def placement_kwargs(
    device: torch.device,
    device_map: str | Mapping[str, Any] | None,
    max_memory: Mapping[Any, Any] | None,
    offload_folder: str | None,
) -> dict[str, Any]:
    """Keyword arguments for `boot_transformers`: `{"device": ...}` on one device, or the
    device map (then `device` is None: the two are exclusive)."""
    if device_map is None and max_memory is None:
        if offload_folder is not None:
            raise IclgdError("offload_folder needs a device_map with 'disk' entries")
        return {"device": str(device)}
    try:
        import accelerate  # noqa: F401
    except ImportError as err:
        raise IclgdError(
            "device_map/max_memory need the accelerate package: pip install accelerate"
        ) from err
    if device_map is None:
        device_map = "auto"
    if isinstance(device_map, str) and device_map not in DEVICE_MAP_STRATEGIES:
        raise IclgdError(
            f"unknown device_map {device_map!r}: use one of {', '.join(DEVICE_MAP_STRATEGIES)} "
            "or a dict of module names to devices"
        )
    if not isinstance(device_map, str | Mapping):
        raise IclgdError(f"device_map must be a string or a dict, got {type(device_map).__name__}")
    kwargs: dict[str, Any] = {"device": None, "device_map": _plain(device_map)}
    if max_memory is not None:
        kwargs["max_memory"] = dict(max_memory)
    if offload_folder is not None:
        kwargs["offload_folder"] = str(offload_folder)
    return kwargs


def _plain(device_map: str | Mapping[str, Any]) -> str | dict[str, Any]:
    return device_map if isinstance(device_map, str) else dict(device_map)


def offloaded(model: Any) -> list[str]:
    """Names of the parameters not in memory (on the meta device: disk-offloaded)."""
    hf = getattr(model, "original_model", model)
    return [n.replace("._original_component", "") for n, p in hf.named_parameters() if p.is_meta]


def check_in_memory(model: Any, what: str) -> None:
    """Raise `IclgdError` when `what` needs weights that are offloaded to disk."""
    names = offloaded(model)
    if names:
        raise IclgdError(
            f"{what} reads raw weights, but {len(names)} tensors (e.g. {names[0]}) are offloaded "
            "to disk: pass params=read_hf_weights(folder), or load without disk offload"
        )

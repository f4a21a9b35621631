"""`model_info`: the architecture facts `iclgd inspect` reports."""

from __future__ import annotations

from typing import Any

from iclgd.hooks.types import HookedModel
from iclgd.hooks.weights import hf_state_dict


def model_info(model: HookedModel) -> dict[str, Any]:
    """Architecture summary of a bridge (or any model with a TransformerLens-style `cfg`).

    Keys: `n_layers`, `n_heads`, `n_key_value_heads`, `d_model`, `d_head`, `d_mlp`, `d_vocab`
    (None for a model on float token vectors), `n_ctx`, `normalization`, `positional_embedding`,
    `architecture`, `n_params` (the raw HF state dict's tensors, tied weights counted once),
    `hook_names_layer0`.
    """
    cfg = model.cfg
    hf = getattr(model, "original_model", model)
    seen: set[tuple[int, tuple[int, ...]]] = set()
    n_params = 0
    state = hf_state_dict(model) if hasattr(model, "original_model") else dict(hf.named_parameters())
    for p in state.values():  # tied weights (e.g. embedding = unembedding) counted once
        key = (p.data_ptr(), tuple(p.shape))
        if key not in seen:
            seen.add(key)
            n_params += p.numel()
    n_heads = int(cfg.n_heads)
    return {
        "n_layers": int(cfg.n_layers),
        "n_heads": n_heads,
        "n_key_value_heads": int(getattr(cfg, "n_key_value_heads", None) or n_heads),
        "d_model": int(cfg.d_model),
        "d_head": _optional_int(cfg.d_head),
        "d_mlp": _optional_int(getattr(cfg, "d_mlp", None)),
        "d_vocab": _optional_int(getattr(cfg, "d_vocab", None)),
        "n_ctx": int(cfg.n_ctx),
        "normalization": getattr(cfg, "normalization_type", None),
        "positional_embedding": getattr(cfg, "positional_embedding_type", None),
        "architecture": getattr(cfg, "architecture", None) or type(hf).__name__,
        "n_params": n_params,
        "hook_names_layer0": sorted(k for k in model.hook_dict if k.startswith("blocks.0.")),
    }


def _optional_int(value: int | float | str | None) -> int | None:
    return None if value is None else int(value)


def model_provenance(model: HookedModel) -> dict[str, Any]:
    """What a result must record about the model it came from.

    `model` (source: folder, hub name or named model), `checkpoint`, `weight_processing`
    (iclgd never processes weights: "raw"), `dtype`, and, for named models shipped as quantised
    files, `weights` (source package and version, file, sha256, quantisation and its
    dequantisation).

    Example:
        >>> prov = model_provenance(model)
        >>> prov["model"], prov["weight_processing"], prov["dtype"]
        ('in-memory GPT2LMHeadModel', 'raw', 'float32')
    """
    cfg = model.cfg
    out: dict[str, Any] = {
        "model": getattr(cfg, "iclgd_source", None),
        "checkpoint": getattr(cfg, "iclgd_checkpoint", None),
        "weight_processing": getattr(cfg, "iclgd_processing", "raw"),
        "dtype": str(getattr(cfg, "dtype", "")).removeprefix("torch.") or None,
    }
    weights = getattr(cfg, "iclgd_weights", None)
    if weights:
        out["weights"] = dict(weights)
    return out

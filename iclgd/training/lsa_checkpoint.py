"""Save and load a `LinearAttentionTransformer` (e.g. a trained von Oswald LSA) as a folder.

Folder layout: `lsa.json` (`format` "iclgd-lsa/1", the `LinearAttentionConfig` fields with the
dtype as a name, and whatever the caller adds, e.g. the training settings) and
`model.safetensors` (the state dict). The folder is written under a temporary name and renamed
into place, so a killed run never leaves a partial one.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch

from iclgd.errors import IclgdError
from iclgd.hooks.linear_attention import LinearAttentionConfig, LinearAttentionTransformer

FORMAT = "iclgd-lsa/1"
META_FILE = "lsa.json"
WEIGHTS_FILE = "model.safetensors"


def is_lsa_folder(folder: str | Path) -> bool:
    """True when `folder` holds an `lsa.json`."""
    return (Path(folder) / META_FILE).is_file()


def save_lsa(
    model: LinearAttentionTransformer, folder: str | Path, *, extra: dict[str, Any] | None = None
) -> Path:
    """Write `model` to `folder` (replacing an existing one atomically); returns the folder."""
    from safetensors.torch import save_model

    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    cfg = {k: v for k, v in model.cfg.__dict__.items()}
    cfg["dtype"] = str(cfg["dtype"]).removeprefix("torch.")
    if isinstance(cfg["attention"], tuple):
        cfg["attention"] = list(cfg["attention"])
    meta = {"format": FORMAT, "config": cfg, **(extra or {})}
    tmp = Path(tempfile.mkdtemp(dir=folder.parent, prefix=f".{folder.name}."))
    try:
        save_model(model, str(tmp / WEIGHTS_FILE), metadata={"format": "pt"})  # shared weights ok
        (tmp / META_FILE).write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
        if folder.exists():
            shutil.rmtree(folder)
        tmp.rename(folder)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
    return folder


def read_lsa_metadata(folder: str | Path) -> dict[str, Any]:
    """The `lsa.json` of an LSA folder."""
    path = Path(folder) / META_FILE
    if not path.is_file():
        raise IclgdError(f"{path} not found: not a linear self-attention model folder")
    meta = json.loads(path.read_text(encoding="utf-8"))
    if meta.get("format") != FORMAT:
        raise IclgdError(f"{path}: unknown format {meta.get('format')!r}, expected {FORMAT!r}")
    return meta


def load_lsa(
    folder: str | Path, *, dtype: torch.dtype | None = None
) -> LinearAttentionTransformer:
    """Rebuild the model saved in `folder` (in `dtype` when given, else its saved dtype)."""
    from safetensors.torch import load_model

    meta = read_lsa_metadata(folder)
    cfg = dict(meta["config"])
    cfg["dtype"] = dtype or getattr(torch, cfg["dtype"])
    if isinstance(cfg.get("attention"), list):
        cfg["attention"] = tuple(cfg["attention"])
    saved = getattr(torch, meta["config"]["dtype"])
    model = LinearAttentionTransformer(LinearAttentionConfig(**{**cfg, "dtype": saved}))
    load_model(model, str(Path(folder) / WEIGHTS_FILE))
    if cfg["dtype"] != saved:
        wide = LinearAttentionTransformer(LinearAttentionConfig(**cfg))
        wide.load_state_dict({k: v.to(cfg["dtype"]) for k, v in model.state_dict().items()})
        model = wide
    return model.eval()

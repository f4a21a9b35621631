"""The checkpoints a sweep visits and how it loads them.

`resolve_source` selects them (a local series through `iclgd.specs`: listed, picked by label or
index, every k-th kept; a hub model by revision labels, from the local Hugging Face cache);
`CheckpointLoader` loads local ones into one reused bridge (`iclgd.hooks.checkpoints.SeriesLoader`),
hub revisions into fresh ones, and reads the raw matrices the weight drift compares.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from iclgd.errors import IclgdError
from iclgd.hooks.checkpoints import SeriesLoader, read_hf_weights
from iclgd.hooks.loading import load_model
from iclgd.probes.drift import layer_matrices
from iclgd.specs import (
    checkpoint_step,
    every_kth,
    list_checkpoints,
    looks_like_path,
    select_checkpoint,
)

Theta = dict[str, torch.Tensor]  # raw attention/MLP matrices of one checkpoint


@dataclass(frozen=True)
class CheckpointRef:
    """One checkpoint: a local folder (`path`) or a hub revision (`hub` name + `label`)."""

    label: str
    step: int
    path: Path | None = None
    hub: str | None = None



def resolve_source(
    source: str | Path,
    checkpoints: tuple[str, ...] | None = None,
    every: int = 1,
    cache_dir: str | Path | None = None,
) -> list[CheckpointRef]:
    """The selected checkpoints of a local series folder or of a cached hub model, by step.

    A hub name needs explicit `checkpoints` labels (`step1000`, ...); each is resolved to its
    snapshot folder in the local HF cache when present (so one model skeleton is reused), else
    loaded later through `load_model(name, checkpoint=label)`.
    """
    path = Path(source).expanduser()
    if path.exists():
        refs = _local_refs(path, checkpoints)
    else:
        refs = _hub_refs(str(source), checkpoints, cache_dir)
    return every_kth(refs, every)


def _local_refs(path: Path, checkpoints: tuple[str, ...] | None) -> list[CheckpointRef]:
    found = list_checkpoints(path)
    if checkpoints:
        picked = {c[0]: c for c in (select_checkpoint(found, w, path) for w in checkpoints)}
        found = sorted(picked.values(), key=lambda c: c[1])
    return [CheckpointRef(label, step, p) for label, step, p in found]


def _hub_refs(
    name: str, checkpoints: tuple[str, ...] | None, cache_dir: str | Path | None
) -> list[CheckpointRef]:
    if looks_like_path(name):
        raise IclgdError(f"unknown source {name!r}: no such folder")
    if not checkpoints:
        raise IclgdError(
            f"{name!r} is not a local folder: for a hub model pass --checkpoints "
            "step1000,step2000,... (revisions in the local Hugging Face cache)"
        )
    refs = []
    for label in dict.fromkeys(checkpoints):
        step = checkpoint_step(label)
        if step is None:
            raise IclgdError(f"checkpoint label {label!r} is not of the form step{{N}}")
        refs.append(CheckpointRef(label, step, _cached_snapshot(name, label, cache_dir), name))
    return sorted(refs, key=lambda r: r.step)


def _cached_snapshot(name: str, revision: str, cache_dir: str | Path | None) -> Path | None:
    try:
        from huggingface_hub import snapshot_download

        folder = Path(
            snapshot_download(
                name,
                revision=revision,
                local_files_only=True,
                cache_dir=None if cache_dir is None else str(cache_dir),
            )
        )
    except Exception:  # not cached (or no huggingface_hub): loaded by name later
        return None
    return folder if (folder / "config.json").exists() else None


class CheckpointLoader:
    """Loads checkpoints into one reused bridge (local folders, `SeriesLoader`) or fresh
    bridges (hub names), and reads their raw matrices for the weight drift."""

    def __init__(self, device: str, dtype: str | None) -> None:
        self.dtype = dtype
        self.series = SeriesLoader(device, dtype)

    @property
    def model(self) -> Any:
        """The bridge of the checkpoint loaded last (None before the first)."""
        return self.series.model

    def load(self, ref: CheckpointRef) -> Any:
        if ref.path is not None:
            return self.series.load(ref.label, ref.path)
        # a hub revision not in a local snapshot: a new bridge each time
        model = load_model(ref.hub, device=self.series.device, dtype=self.dtype,
                           checkpoint=ref.label)
        self.series.model = model
        return model

    def current_theta(self, ref: CheckpointRef) -> Theta:
        """Raw matrices of the checkpoint just loaded: copied from the live model when its dtype
        holds the stored values exactly (float32/float64), else re-read from disk."""
        live = next(self.model.original_model.parameters()).dtype
        if ref.path is not None and live not in (torch.float32, torch.float64):
            return self.theta(ref)
        return {k: v.detach().clone() for k, v in layer_matrices(self.model).items()}

    def theta(self, ref: CheckpointRef) -> Theta:
        """Raw attention/MLP matrices of `ref`, read from disk (or a fresh hub load)."""
        if ref.path is not None and self.model is not None:
            return layer_matrices(self.model, params=read_hf_weights(ref.path))
        other = load_model(
            ref.path or ref.hub,
            device="cpu",
            dtype=self.dtype,
            checkpoint=None if ref.path is not None else ref.label,
        )
        return {k: v.cpu() for k, v in layer_matrices(other).items()}

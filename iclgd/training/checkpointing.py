"""Checkpoint folders `OUT/step{N}/`, resume state and the training-log CSV (any trainer).

Layout written by `save_checkpoint(out, step, ...)`:

    OUT/step{N}/config.json, model.safetensors      (HF `save_pretrained`)
    OUT/step{N}/tokenizer.json, tokenizer_config.json (when a tokenizer is given)
    OUT/step{N}/<name>.json                          (each entry of `json_files`)
    OUT/step{N}/trainer_state.pt                     (optimizer, scheduler, RNG, counters)
    OUT/train_log.csv                                (`write_train_log`)

A step folder is first written under a hidden temporary name inside OUT and then renamed into
place, so a killed run never leaves a partial `step{N}/`: the newest complete folder is where
`latest_checkpoint` resumes from, and at most the steps since it are lost.
"""

from __future__ import annotations

import csv
import os
import shutil
import tempfile
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from iclgd.errors import IclgdError
from iclgd.specs import checkpoint_step

TRAINER_STATE = "trainer_state.pt"
TRAIN_LOG = "train_log.csv"


def checkpoint_steps(total_steps: int, n_checkpoints: int) -> list[int]:
    """Roughly log-spaced checkpoint steps: always 0 and `total_steps`, at most `n_checkpoints`."""
    if total_steps < 0 or n_checkpoints < 2:
        raise IclgdError(
            f"need total_steps >= 0 and n_checkpoints >= 2, got {total_steps}, {n_checkpoints}"
        )
    if total_steps == 0:
        return [0]
    grid = np.geomspace(1, total_steps, n_checkpoints - 1) if n_checkpoints > 2 else []
    steps = {0, total_steps, *(int(round(s)) for s in grid)}
    return sorted(steps)


def checkpoint_fractions(n_checkpoints: int, first: float = 0.01) -> list[float]:
    """Log-spaced fractions of a run (0, `first`, ..., 1) for time-budgeted checkpoints."""
    if n_checkpoints < 2:
        raise IclgdError(f"need n_checkpoints >= 2, got {n_checkpoints}")
    if n_checkpoints == 2:
        return [0.0, 1.0]
    return [0.0, *np.geomspace(first, 1.0, n_checkpoints - 1).tolist()]


def step_folder(out: str | Path, step: int) -> Path:
    """`out/step{step}`."""
    return Path(out) / f"step{int(step)}"


def list_step_folders(out: str | Path) -> list[tuple[int, Path]]:
    """Complete checkpoint folders `(step, path)` under `out`, sorted by step."""
    out = Path(out)
    if not out.is_dir():
        return []
    found = []
    for child in out.iterdir():
        step = checkpoint_step(child.name)
        if step is not None and child.is_dir() and (child / "config.json").is_file():
            found.append((step, child))
    return sorted(found)


def latest_checkpoint(out: str | Path) -> tuple[int, Path] | None:
    """The newest complete checkpoint that has a trainer state, or None."""
    for step, path in reversed(list_step_folders(out)):
        if (path / TRAINER_STATE).is_file():
            return step, path
    return None


def save_checkpoint(
    out: str | Path, step: int, model: Any, *, tokenizer: Any = None,
    json_files: Mapping[str, Any] | None = None, trainer_state: Mapping[str, Any] | None = None,
) -> Path:
    """Write `out/step{step}/` atomically (temp folder + rename); returns its path.

    `model` is an HF `PreTrainedModel` (saved as safetensors), `tokenizer` anything with
    `save_pretrained`, `json_files` maps a file name ("ginc.json") to a JSON-able object, and
    `trainer_state` is saved with `torch.save` as `trainer_state.pt`. An existing folder for
    the same step is replaced.
    """
    import torch

    from iclgd.results import write_json

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    final = step_folder(out, step)
    tmp = Path(tempfile.mkdtemp(dir=out, prefix=f".tmp-step{step}-"))
    try:
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()  # one bar per shard per checkpoint is noise in logs
        model.save_pretrained(str(tmp), safe_serialization=True)
        if tokenizer is not None:
            tokenizer.save_pretrained(str(tmp))
        for name, obj in (json_files or {}).items():
            write_json(tmp / name, obj)
        if trainer_state is not None:
            torch.save(dict(trainer_state), tmp / TRAINER_STATE)
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return final


def remove_stale_temporaries(out: str | Path) -> None:
    """Delete temporary folders left by a run killed while saving."""
    out = Path(out)
    if out.is_dir():
        for child in out.iterdir():
            if child.name.startswith(".tmp-step") and child.is_dir():
                shutil.rmtree(child, ignore_errors=True)


def load_trainer_state(folder: str | Path) -> dict[str, Any]:
    """The `trainer_state.pt` of a checkpoint folder (CPU tensors)."""
    import torch

    path = Path(folder) / TRAINER_STATE
    if not path.is_file():
        raise IclgdError(f"{path} not found; this checkpoint cannot be resumed: start a new --out")
    return torch.load(path, map_location="cpu", weights_only=False)


def read_train_log(out: str | Path, *, up_to_step: int | None = None) -> list[dict[str, Any]]:
    """Rows of `out/train_log.csv` (values as float where numeric), optionally `step <= N`."""
    path = Path(out) / TRAIN_LOG
    if not path.is_file():
        return []
    rows = []
    with path.open(newline="", encoding="utf-8") as fh:
        for row in csv.DictReader(fh):
            parsed = {k: _number(v) for k, v in row.items()}
            if up_to_step is None or parsed.get("step", 0) <= up_to_step:
                rows.append(parsed)
    return rows


def write_train_log(out: str | Path, rows: Iterable[Mapping[str, Any]]) -> Path:
    """Rewrite `out/train_log.csv` atomically with `rows` (one per logged step)."""
    from iclgd.results import write_csv

    return write_csv(Path(out) / TRAIN_LOG, rows)


def _number(value: str) -> Any:
    try:
        as_float = float(value)
    except (TypeError, ValueError):
        return value
    return int(as_float) if as_float.is_integer() and "." not in value and "e" not in value else as_float

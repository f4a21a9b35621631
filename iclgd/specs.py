"""Model specs and path arguments, checked without importing torch or TransformerLens.

The CLI runs these checks before any heavy import, so a mistyped folder is answered in a
fraction of a second; `iclgd.hooks.load_model` applies the same rules (and imports the checkpoint
naming from here). A model spec is a local Hugging Face folder (holding `config.json`), a
checkpoint-series folder (subfolders `step{N}/`, `checkpoint-{N}/` or `global_step{N}/`), or a
name left to the loader: a hub name `org/model` or a short name without any `/`. The naming and
ordering of checkpoint series (`checkpoint_step`, `list_checkpoints`, `select_checkpoint`,
`every_kth`) live here too, for the loader, the checkpoint iterator and the trainers alike.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path
from typing import TypeVar

from iclgd.errors import IclgdError

CHECKPOINT_RE = re.compile(r"^(?:step|checkpoint-|global_step)(\d+)$")

Checkpoint = tuple[str, int, Path]  # (label, step, folder)
T = TypeVar("T")


def checkpoint_step(name: str) -> int | None:
    """The training step a checkpoint folder or label names (`step100`, `checkpoint-100`,
    `global_step100` → 100), or None when `name` is not a checkpoint name."""
    m = CHECKPOINT_RE.match(name)
    return int(m.group(1)) if m else None


def is_checkpoint_series(path: Path) -> bool:
    """True for a folder without config.json whose subfolders are named step{N}/..."""
    return (
        path.is_dir()
        and not (path / "config.json").exists()
        and any(checkpoint_step(p.name) is not None and p.is_dir() for p in path.iterdir())
    )


def list_checkpoints(folder: str | Path) -> list[Checkpoint]:
    """`(label, step, path)` for every `step{N}/` (or `checkpoint-{N}/`) subfolder, by step
    (numeric order, not lexical).

    Example:
        >>> import pathlib, tempfile
        >>> root = pathlib.Path(tempfile.mkdtemp())
        >>> for step in (0, 10, 2):
        ...     (root / f"step{step}").mkdir()
        >>> [(label, step) for label, step, _ in list_checkpoints(root)]
        [('step0', 0), ('step2', 2), ('step10', 10)]
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise IclgdError(f"checkpoint folder {folder} does not exist")
    found = []
    for sub in folder.iterdir():
        step = checkpoint_step(sub.name)
        if step is not None and sub.is_dir():
            found.append((sub.name, step, sub))
    if not found:
        raise IclgdError(
            f"{folder} holds no checkpoints: expected subfolders named step{{N}}/ "
            "(e.g. step0/, step100/), each a Hugging Face model folder"
        )
    return sorted(found, key=lambda t: t[1])


def select_checkpoint(
    checkpoints: list[Checkpoint], which: str | int | None, folder: Path | str = ""
) -> Checkpoint:
    """Pick one checkpoint by label (`"step100"`), step number, or index (None = last)."""
    if which is None:
        return checkpoints[-1]
    labels = [c[0] for c in checkpoints]
    text = str(which)
    for c in checkpoints:
        if c[0] == text:
            return c
    if text.lstrip("-").isdigit():
        idx = int(text)
        if -len(checkpoints) <= idx < len(checkpoints):
            return checkpoints[idx]
    raise IclgdError(
        f"unknown checkpoint {which!r} in {folder}: available are {', '.join(labels)} "
        f"(or an index from {-len(labels)} to {len(labels) - 1})"
    )


def every_kth(checkpoints: Sequence[T], every: int) -> list[T]:
    """Every `every`-th checkpoint of a series (any sequence of them), the last one always kept."""
    if every < 1:
        raise IclgdError(f"every must be >= 1, got {every}")
    last = len(checkpoints) - 1
    return [c for i, c in enumerate(checkpoints) if i % every == 0 or i == last]


def looks_like_path(spec: str) -> bool:
    """True when `spec` can only be a local path (not a hub name `org/model` or a short name):
    it starts with `.`, `/` or `~`, holds a backslash, or has more than one `/`."""
    return spec.startswith((".", "/", "~")) or "\\" in spec or spec.count("/") > 1


def check_model_folder(path: Path) -> None:
    """Raise `IclgdError` unless the existing `path` is a model folder or a checkpoint series."""
    if not path.is_dir():
        raise IclgdError(f"{path} is a file: pass a Hugging Face model folder (with config.json)")
    if not (path / "config.json").exists() and not is_checkpoint_series(path):
        raise IclgdError(
            f"{path} has no config.json: pass a Hugging Face model folder "
            "(save_pretrained output) or a folder of step{N}/ checkpoints"
        )


def check_model_spec(spec: str) -> None:
    """Raise `IclgdError` for a spec that names no model: an existing path that is neither a
    model folder nor a checkpoint series, or a missing path that cannot be a hub name. Names
    that may be hub or short model names are left to the loader."""
    path = Path(spec).expanduser()
    if path.exists():
        check_model_folder(path)
    elif looks_like_path(spec):
        raise IclgdError(f"unknown model {spec!r}: no such folder")


def check_input_file(spec: str, what: str, suffixes: tuple[str, ...]) -> None:
    """Raise `IclgdError` when `spec` names a file (ends with one of `suffixes` or looks like a
    path) that does not exist or is a folder."""
    path = Path(spec).expanduser()
    if not (spec.lower().endswith(suffixes) or looks_like_path(spec)):
        return
    if not path.exists():
        raise IclgdError(f"{what} {spec!r}: no such file")
    if path.is_dir():
        raise IclgdError(f"{what} {spec!r} is a folder: pass a {' or '.join(suffixes)} file")


def check_output_folder(spec: str, what: str = "--out") -> None:
    """Raise `IclgdError` when the output folder `spec` exists as a file."""
    path = Path(spec).expanduser()
    if path.exists() and not path.is_dir():
        raise IclgdError(f"{what} {spec!r} is a file: pass a folder (it is created if missing)")

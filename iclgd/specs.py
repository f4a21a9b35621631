"""Model specs and path arguments, checked without importing torch or TransformerLens.

The CLI runs these checks before any heavy import, so a mistyped folder is answered in a
fraction of a second; `iclgd.hooks.load_model` applies the same rules (and imports the checkpoint
naming from here). A model spec is a local Hugging Face folder (holding `config.json`), a
checkpoint-series folder (subfolders `step{N}/`, `checkpoint-{N}/` or `global_step{N}/`), or a
name left to the loader: a hub name `org/model` or a short name without any `/`.
"""

from __future__ import annotations

import re
from pathlib import Path

from iclgd.errors import IclgdError

CHECKPOINT_RE = re.compile(r"^(?:step|checkpoint-|global_step)(\d+)$")


def is_checkpoint_series(path: Path) -> bool:
    """True for a folder without config.json whose subfolders are named step{N}/..."""
    return (
        path.is_dir()
        and not (path / "config.json").exists()
        and any(CHECKPOINT_RE.match(p.name) and p.is_dir() for p in path.iterdir())
    )


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

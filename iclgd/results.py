"""Result files: atomic writes and provenance.

Every analysis writes tidy CSV/JSONL tables, PNG figures and a `provenance.json` (model,
checkpoint, seed, dtype, weight processing, library versions). Writes go to a temporary file in
the same folder and are renamed into place, so a killed run never leaves a half-written file.
"""

from __future__ import annotations

import csv
import io
import json
import os
import platform
import sys
import tempfile
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any


def _atomic_write(path: str | Path, write: Any, mode: str) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, mode, **({"encoding": "utf-8"} if "b" not in mode else {})) as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def atomic_write_text(path: str | Path, text: str) -> Path:
    """Write `text` to `path` atomically (temp file in the same folder, fsync, rename)."""
    return _atomic_write(path, lambda fh: fh.write(text), "w")


def save_figure(fig: Any, path: str | Path, *, dpi: int = 110) -> Path:
    """Save a matplotlib figure to `path` (format from the suffix) atomically."""
    fmt = Path(path).suffix.lstrip(".") or "png"
    return _atomic_write(path, lambda fh: fig.savefig(fh, dpi=dpi, format=fmt), "wb")


def _json_default(obj: Any) -> Any:
    try:
        import numpy as np
        import torch

        if isinstance(obj, torch.Tensor):
            return obj.detach().cpu().tolist()
        if isinstance(obj, np.generic):
            return obj.item()
        if isinstance(obj, np.ndarray):
            return obj.tolist()
        if isinstance(obj, torch.dtype):
            return str(obj).removeprefix("torch.")
    except ImportError:  # pragma: no cover
        pass
    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, set | tuple):
        return list(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def to_json(obj: Any, *, indent: int | None = 2) -> str:
    """JSON text for results: tensors/arrays become lists, NaN becomes null."""
    return json.dumps(_nan_to_none(obj), indent=indent, default=_json_default, allow_nan=False)


def _nan_to_none(obj: Any) -> Any:
    if isinstance(obj, float) and obj != obj:
        return None
    if isinstance(obj, float) and obj in (float("inf"), float("-inf")):
        return None
    if isinstance(obj, Mapping):
        return {str(k): _nan_to_none(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_nan_to_none(v) for v in obj]
    return obj


def write_json(path: str | Path, obj: Any) -> Path:
    """Write `obj` as indented JSON, atomically."""
    return atomic_write_text(path, to_json(obj) + "\n")


def write_csv(path: str | Path, rows: Iterable[Mapping[str, Any]]) -> Path:
    """Write a tidy table (one mapping per row; columns = union of keys, first-seen order)."""
    rows = list(rows)
    columns: list[str] = []
    for row in rows:
        for key in row:
            if key not in columns:
                columns.append(key)
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=columns, extrasaction="ignore")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: _csv_cell(row.get(k)) for k in columns})
    return atomic_write_text(path, buf.getvalue())


def _csv_cell(value: Any) -> Any:
    if isinstance(value, Mapping | list | tuple):
        return to_json(value, indent=None)
    if value is None or (isinstance(value, float) and value != value):
        return ""
    return value


def append_jsonl_atomic(path: str | Path, row: Mapping[str, Any]) -> Path:
    """Append one JSON row to a JSONL file by rewriting it atomically.

    The file is always either the old content or the old content plus this full row, so a run
    killed at any moment never leaves a partial or duplicated line.
    """
    path = Path(path)
    old = path.read_text(encoding="utf-8") if path.exists() else ""
    if old and not old.endswith("\n"):
        old += "\n"
    return atomic_write_text(path, old + to_json(row, indent=None) + "\n")


def read_jsonl(path: str | Path) -> list[dict[str, Any]]:
    """Read a JSONL file (missing file: empty list)."""
    path = Path(path)
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line]


def read_json(path: str | Path) -> Any:
    """A JSON file iclgd was pointed at (a model's config.json, ginc.json, ...); `IclgdError`
    naming the file when it is missing or not valid JSON (bad input, not a bug)."""
    from iclgd.errors import IclgdError

    path = Path(path)
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as err:
        raise IclgdError(f"{path} not found") from err
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise IclgdError(f"{path} is not valid JSON ({err}): the file is corrupt") from err


def versions() -> dict[str, str]:
    """Versions of Python and the libraries whose numerics affect results."""
    out = {"python": sys.version.split()[0], "platform": platform.platform()}
    for name in ("iclgd", "torch", "transformer_lens", "transformers", "numpy"):
        try:
            mod = __import__(name)
            out[name] = str(getattr(mod, "__version__", "unknown"))
        except ImportError:  # pragma: no cover
            out[name] = "missing"
    return out


def provenance(**fields: Any) -> dict[str, Any]:
    """A provenance record: the given fields plus UTC time, argv and library versions.

    Callers pass at least `model`, `checkpoint`, `seed`, `dtype`, `device` and
    `weight_processing` (iclgd reads raw weights: "raw").
    """
    record = dict(fields)
    record.setdefault("weight_processing", "raw")
    record["created_utc"] = datetime.now(UTC).isoformat(timespec="seconds")
    record["argv"] = list(sys.argv)
    record["versions"] = versions()
    return record

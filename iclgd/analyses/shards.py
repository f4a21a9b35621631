"""Sharded sweeps and comparisons: which worker computes which cell, and merging their folders.

A run's **grid** is the ordered list of its cells:

- a sweep (`iclgd sweep`): one cell per selected checkpoint, `(label,)`, in step order (a
  checkpoint's row holds every task, which share one load of its weights);
- a comparison (`iclgd compare`): `(model, n_demos, method)` for the trained model (and the
  untrained control), every N, and the method `""` (the metrics that involve no finetuning)
  before each finetuning method.

Worker `i` of `N` (`--shard i/N`) computes the cells at grid positions `p` with `p % N == i`
(round robin, so consecutive checkpoints or methods spread over the workers) and writes its own
result folder whose `provenance.json` carries a `shard` record: index, count, the grid and a
**fingerprint**, the SHA-256 of the canonical JSON of everything that determines the numbers
(source or model, checkpoint, seed, dtype and all analysis settings, and the grid). Device and
library versions are recorded per shard, not fingerprinted.

`merge_rows(shards)` takes the shard folders of one run (read by `iclgd.analyses.sweep_merge.
read_sweep_shard` or `read_json_shard(folder, "compare.json")`) and returns its rows in the
order the unsharded run writes them, refusing (`IclgdError`, one line) when a folder is not a
shard or is given twice, the shards were computed with different settings or counts, or a cell
is missing or present in two shards. The merged rows are exactly the unsharded run's (same code, same seeds per cell).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from iclgd.errors import IclgdError

KINDS = ("sweep", "compare")
Cell = tuple[Any, ...]


@dataclass(frozen=True)
class Shard:
    """Worker `index` of `count` (0-based): `Shard.parse("1/3")`."""

    index: int
    count: int

    def __post_init__(self) -> None:
        if self.count < 1 or not 0 <= self.index < self.count:
            raise IclgdError(
                f"bad shard {self.index}/{self.count}: use I/N with 0 <= I < N, e.g. 0/3"
            )

    @classmethod
    def parse(cls, text: str | Shard | None) -> Shard | None:
        """`"i/N"` → `Shard(i, N)`; None stays None."""
        if text is None or isinstance(text, Shard):
            return text
        parts = str(text).strip().split("/")
        if len(parts) != 2 or not all(p.strip().isdigit() for p in parts):
            raise IclgdError(f"bad --shard {text!r}: use I/N with 0 <= I < N, e.g. --shard 0/3")
        return cls(int(parts[0]), int(parts[1]))

    def __str__(self) -> str:
        return f"{self.index}/{self.count}"

    def take(self, grid: Sequence[Cell]) -> list[Cell]:
        """The cells of `grid` this worker computes (positions `p % count == index`)."""
        return [c for p, c in enumerate(grid) if p % self.count == self.index]

    def owner(self, position: int) -> int:
        """Index of the worker that computes grid position `position`."""
        return position % self.count


# ----------------------------------------------------------------------------- grids


def sweep_grid(labels: Iterable[str]) -> list[Cell]:
    """The sweep's cells: one `(label,)` per checkpoint, in step order."""
    return [(str(label),) for label in labels]


def compare_grid(
    labels: Iterable[str], n_demos: Iterable[int], methods: Iterable[str]
) -> list[Cell]:
    """The comparison's cells `(model, n_demos, method)`; method "" (no finetuning) first."""
    methods = list(methods)
    return [(label, int(n), m) for label in labels for n in sorted(n_demos) for m in ("", *methods)]


def cell_of(kind: str, row: Mapping[str, Any]) -> Cell:
    """The grid cell a result row belongs to."""
    if kind == "sweep":
        return (str(row["checkpoint"]),)
    if kind == "compare":
        return (str(row["model"]), int(row["n_demos"]), str(row["method"]))
    raise IclgdError(f"unknown result kind {kind!r}: one of {', '.join(KINDS)}")


# ----------------------------------------------------------------------------- fingerprint


def _canonical(obj: Any) -> str:
    from iclgd.results import to_json

    return json.dumps(json.loads(to_json(obj, indent=None)), sort_keys=True, separators=(",", ":"))


def fingerprint(kind: str, settings: Mapping[str, Any], grid: Sequence[Cell]) -> str:
    """SHA-256 (hex) of the canonical JSON of `{kind, settings, grid}`."""
    payload = _canonical({"kind": kind, "settings": settings, "grid": [list(c) for c in grid]})
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()


def shard_record(
    kind: str, shard: Shard, settings: Mapping[str, Any], grid: Sequence[Cell]
) -> dict[str, Any]:
    """The `shard` entry of a shard folder's provenance."""
    return {
        "kind": kind,
        "index": shard.index,
        "count": shard.count,
        "fingerprint": fingerprint(kind, settings, grid),
        "settings": json.loads(_canonical(settings)),
        "grid": [list(c) for c in grid],
        "cells": [list(c) for c in shard.take(grid)],
    }


# ----------------------------------------------------------------------------- merge


@dataclass
class ShardFolder:
    """One shard's folder: its provenance, shard record and rows."""

    path: Path
    provenance: dict[str, Any]
    record: dict[str, Any]
    rows: list[dict[str, Any]]


@dataclass
class Merged:
    """The merged run: kind, rows in the unsharded order, the first shard's provenance and
    result file (`extra`, e.g. a comparison's settings), and the shard folders."""

    kind: str
    rows: list[dict[str, Any]]
    provenance: dict[str, Any]
    extra: dict[str, Any]
    shards: list[ShardFolder]


def _read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as err:
        raise IclgdError(
            f"{path.parent} has no {path.name}: not a finished shard folder (rerun that shard)"
        ) from err
    except (OSError, json.JSONDecodeError) as err:
        raise IclgdError(f"cannot read {path}: {err}") from err


def shard_folder(
    folder: str | Path, provenance: Mapping[str, Any], rows: list[dict[str, Any]]
) -> ShardFolder:
    """A `ShardFolder` from a folder's provenance and rows; `IclgdError` when it has no shard
    record (it was not run with `--shard I/N`)."""
    record = provenance.get("shard")
    if not isinstance(record, dict) or record.get("kind") not in KINDS:
        raise IclgdError(
            f"{folder} is not a shard folder (no shard record in its provenance): run it with "
            "--shard I/N"
        )
    return ShardFolder(Path(folder), dict(provenance), record, rows)


def read_json_shard(folder: str | Path, name: str) -> tuple[ShardFolder, dict[str, Any]]:
    """A shard folder whose results file `name` (e.g. `compare.json`) holds `provenance` and
    `rows`; also returns the file's other entries (e.g. `settings`; a summary is dropped)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise IclgdError(f"shard folder {folder} does not exist")
    data = _read_json(folder / name)
    extra = {k: v for k, v in data.items() if k not in ("provenance", "rows", "summary")}
    return shard_folder(folder, data.get("provenance", {}), list(data.get("rows", []))), extra


def merge_rows(shards: Sequence[ShardFolder], extra: Mapping[str, Any] | None = None) -> Merged:
    """Check the shards of one run and combine their rows (module docstring)."""
    if not shards:
        raise IclgdError("no shard folders given: pass the folders written with --shard I/N")
    seen: dict[Path, Path] = {}
    for s in shards:
        key = s.path.resolve()
        if key in seen:
            raise IclgdError(f"shard folder {s.path} is given twice: pass each folder once")
        seen[key] = s.path
    first = shards[0]
    kind = first.record["kind"]
    for s in shards[1:]:
        _check_same_run(first, s)
    grid = [tuple(c) for c in first.record["grid"]]
    position = {c: p for p, c in enumerate(grid)}
    where: dict[Cell, Path] = {}
    rows: list[tuple[int, int, dict[str, Any]]] = []
    for s in shards:
        for row in s.rows:
            cell = cell_of(kind, row)
            if cell not in position:
                raise IclgdError(f"{s.path} holds cell {_show(cell)}, which is not in the grid "
                                 "of this run: merge only shards of one run")
            if where.setdefault(cell, s.path) != s.path:
                raise IclgdError(f"cell {_show(cell)} is in both {where[cell]} and {s.path}: "
                                 "each cell must come from one shard")
            rows.append((position[cell], len(rows), row))
    missing = [c for c in grid if c not in where]
    if missing:
        count = first.record["count"]
        raise IclgdError(
            f"cell {_show(missing[0])} is missing ({len(missing)} of {len(grid)} cells): run or "
            f"finish shard {position[missing[0]] % count}/{count} and merge its folder too"
        )
    ordered = [r for _, _, r in sorted(rows, key=lambda t: (t[0], t[1]))]
    prov = {k: v for k, v in first.provenance.items() if k != "shard"}
    prov["fingerprint"] = first.record["fingerprint"]
    prov["merged_from"] = [
        {"folder": str(s.path), "shard": f"{s.record['index']}/{s.record['count']}",
         "device": s.provenance.get("device"), "created_utc": s.provenance.get("created_utc"),
         "versions": s.provenance.get("versions")}
        for s in sorted(shards, key=lambda s: s.record["index"])
    ]
    return Merged(kind, ordered, prov, dict(extra or {}), list(shards))


def _check_same_run(a: ShardFolder, b: ShardFolder) -> None:
    ra, rb = a.record, b.record
    if ra["kind"] != rb["kind"]:
        raise IclgdError(f"{b.path} is a {rb['kind']} shard but {a.path} is a {ra['kind']} "
                         "shard: merge shards of one run")
    if ra["fingerprint"] != rb["fingerprint"]:
        keys = sorted(k for k in set(ra["settings"]) | set(rb["settings"])
                      if ra["settings"].get(k) != rb["settings"].get(k))
        what = f"settings differ in {', '.join(keys[:4])}" if keys else "their grids differ"
        raise IclgdError(f"{b.path} was computed with different settings from {a.path} "
                         f"({what}): merge only shards of one run")
    if ra["count"] != rb["count"]:
        raise IclgdError(f"{b.path} is shard {rb['index']}/{rb['count']} but {a.path} is "
                         f"{ra['index']}/{ra['count']}: merge shards of one split")


def _show(cell: Cell) -> str:
    return "(" + ", ".join(repr(c) if c == "" else str(c) for c in cell) + ")"

"""Sweep shard folders: reading one (`read_sweep_shard`) and writing the merged sweep.

The shard logic itself (grid, fingerprint, checks, order) is `iclgd.analyses.shards`; the merged
folder holds what an unsharded `run_sweep` writes: `rows.jsonl` in step order,
`provenance.json` (with `merged_from`), `rows.csv` and the plots.
"""

from __future__ import annotations

import json
from pathlib import Path

from iclgd.analyses.shards import Merged, ShardFolder, shard_folder
from iclgd.analyses.sweep_rows import ROWS, load_rows, rewrite_rows, write_sweep_tables
from iclgd.errors import IclgdError
from iclgd.results import write_json


def read_sweep_shard(folder: str | Path) -> ShardFolder:
    """A sweep shard folder (`provenance.json` with a shard record, and its rows)."""
    folder = Path(folder)
    path = folder / "provenance.json"
    if not folder.is_dir() or not path.exists() or not (folder / ROWS).exists():
        raise IclgdError(f"{folder} is not a sweep shard folder (no provenance.json and {ROWS}): "
                         "pass the --out folders of `iclgd sweep --shard I/N`")
    try:
        prov = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as err:
        raise IclgdError(f"cannot read {path}: {err}") from err
    return shard_folder(folder, prov, load_rows(folder))


def write_merged_sweep(out: str | Path, merged: Merged, *, plots: bool = True) -> list[Path]:
    """The merged sweep folder: rows.jsonl in step order, provenance.json, rows.csv, plots."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    for stray in out.glob(".*.tmp"):
        stray.unlink(missing_ok=True)
    rewrite_rows(out / ROWS, merged.rows)
    write_json(out / "provenance.json", merged.provenance)
    return [out / ROWS, out / "provenance.json", *write_sweep_tables(out, merged.rows, plots=plots)]

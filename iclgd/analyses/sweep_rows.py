"""A sweep folder's rows on disk: `rows.jsonl` (one JSON line per checkpoint) and `rows.csv`.

`rows.jsonl` only ever grows by atomic rewrite (`iclgd.results.append_jsonl_atomic`), so a run
killed at any moment leaves the old file or the old file plus one full row; `load_rows` repairs
what other tools may leave (stray temporary files, a partial or duplicated line). Used by the
sweep (`iclgd.analyses.sweep`) and by merging its shard folders (`iclgd.analyses.sweep_merge`).
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from iclgd.results import atomic_write_text, to_json, write_csv

ROWS = "rows.jsonl"


def load_rows(out: str | Path, warn: Callable[[str], None] | None = None) -> list[dict[str, Any]]:
    """Rows already in `out/rows.jsonl`, repairing the folder first.

    Removes stray temporary files left by a killed atomic write; drops unparseable lines (e.g. a
    partial trailing line written by another tool), rows without a checkpoint label and
    duplicated labels (first kept), rewriting the file atomically when anything was dropped.
    """
    out = Path(out)
    warn = warn or (lambda msg: print(msg, file=sys.stderr))
    if not out.is_dir():
        return []
    for stray in out.glob(".*.tmp"):
        stray.unlink(missing_ok=True)
    path = out / ROWS
    if not path.exists():
        return []
    rows, seen, dropped = [], set(), 0
    for line in path.read_text(encoding="utf-8").splitlines():
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            dropped += 1
            continue
        if not isinstance(row, dict) or "checkpoint" not in row or row["checkpoint"] in seen:
            dropped += 1
            continue
        seen.add(row["checkpoint"])
        rows.append(row)
    if dropped:
        warn(
            f"iclgd sweep: dropped {dropped} unreadable or duplicated line(s) from {path}; "
            "those checkpoints are recomputed"
        )
        rewrite_rows(path, rows)
    return rows


def rewrite_rows(path: Path, rows: list[dict[str, Any]]) -> None:
    """Replace a rows file with `rows` (one JSON line each), atomically."""
    atomic_write_text(path, "".join(to_json(r, indent=None) + "\n" for r in rows))


def flatten_row(row: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested mappings → dotted columns (`icl_accuracy.4`); lists stay (JSON in the CSV)."""
    flat: dict[str, Any] = {}
    for key, value in row.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(flatten_row(value, name + "."))
        else:
            flat[name] = value
    return flat


def write_sweep_tables(out: str | Path, rows: list[dict[str, Any]], *, plots: bool) -> list[Path]:
    """`rows.csv` (flattened, without the per-head tables) and, with `plots`, the figures."""
    out = Path(out)
    files = [write_csv(out / "rows.csv", [flatten_row(_csv_row(r)) for r in rows])]
    if plots:
        from iclgd.analyses.sweep_plots import save_sweep_plots

        files += save_sweep_plots(rows, out)
    return files


def _csv_row(row: dict[str, Any]) -> dict[str, Any]:
    """Drop the per-head tables (kept in rows.jsonl) from the flattened CSV."""
    return {k: v for k, v in row.items() if not k.startswith("induction_table")}

"""`iclgd merge DIR... --out DIR`: combine the shard folders of one sharded sweep or comparison.

Each DIR was written by `iclgd sweep ... --shard I/N` or `iclgd compare ... --shard I/N`. The
merged folder holds the same tables and figures as the unsharded run; merging refuses (one line,
exit 2) when a cell is missing, present in two folders, or was computed with other settings.
"""

from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the `merge` subcommand."""
    p = subparsers.add_parser(
        "merge", help="combine the shard folders of a sharded sweep or comparison",
        description="Check that the shard folders (written with --shard I/N) come from one run "
                    "(same settings fingerprint), that every cell of its grid is present exactly "
                    "once, and write the tables and figures of the unsharded run to --out.")
    p.add_argument("folders", nargs="+", metavar="DIR", help="shard folders (any order)")
    p.add_argument("--out", required=True, help="folder for the merged results")
    p.add_argument("--no-plots", action="store_true", help="skip the PNG figures")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Merge the shard folders into `--out`; print one line."""
    from pathlib import Path

    from iclgd.analyses.shards import merge_rows, read_json_shard
    from iclgd.analyses.sweep_merge import read_sweep_shard, write_merged_sweep
    from iclgd.commands.compare import write_results
    from iclgd.errors import IclgdError

    out = Path(args.out)
    if any(out.resolve() == Path(f).resolve() for f in args.folders):
        raise IclgdError(f"--out {out} is one of the shard folders: pass a new folder")
    shards, extra = [], {}
    for folder in args.folders:
        if (Path(folder) / "compare.json").exists():
            shard, extra = read_json_shard(folder, "compare.json")
        else:
            shard = read_sweep_shard(folder)
        shards.append(shard)
    merged = merge_rows(shards, extra)
    if merged.kind == "sweep":
        write_merged_sweep(out, merged, plots=not args.no_plots)
        what = f"{len(merged.rows)} checkpoint rows"
    else:
        rows = [{**r, "value": float("nan") if r["value"] is None else r["value"]}
                for r in merged.rows]  # compare.json stores NaN as null
        write_results(out, rows, merged.extra["settings"], merged.provenance,
                      figures=not args.no_plots)
        what = f"{len(merged.rows)} comparison rows"
    print(f"merged {len(shards)} {merged.kind} shard(s), {what}, into {out}/")
    return 0

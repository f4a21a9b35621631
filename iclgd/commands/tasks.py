"""`iclgd tasks [--json]`: every named task with its size and the data it comes from."""

from __future__ import annotations

import argparse
import json


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the `tasks` subcommand."""
    p = subparsers.add_parser("tasks", help="list the named tasks, their sizes and sources")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Print one line per task (name, items, kind, source)."""
    from iclgd.data.task_loaders import list_tasks

    rows = list_tasks()
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    width = max(len(r["name"]) for r in rows)
    for r in rows:
        size = "?" if r["size"] is None else str(r["size"])
        print(f"{r['name']:<{width}}  {size:>4} items  {r['kind']:<8}  {r['source']}")
    return 0

"""Subcommands of the `iclgd` CLI: one module per command, each with `register(subparsers)`,
and `main(argv)`, which runs one command line in this process.

`register` adds a parser and sets `func=run` on it; `run(args) -> int` does the work. Modules
import the library lazily inside `run` so `iclgd --help` stays fast.

Exit status of `main`: 0 on success; 2 for bad input — an `IclgdError` (one line on stderr:
what was wrong and what to do) or an argument argparse rejects; 1 for anything else, which is a
bug in iclgd: its traceback is printed. `ICLGD_DEBUG=1` re-raises bad-input errors with their
traceback too.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
import traceback
from collections.abc import Sequence

from iclgd.errors import IclgdError, first_line
from iclgd.runtime import keep_freed_memory

COMMAND_MODULES = (
    "inspect",
    "density",
    "compare",
    "order",
    "sweep",
    "merge",
    "reproduce",
    "audit",
    "train",
    "analyse",
    "demo",
    "layers",
    "tasks",
    "bench",
)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser with every registered subcommand."""
    parser = argparse.ArgumentParser(
        prog="iclgd",
        description="Test whether in-context learning is gradient descent, on real weights.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in COMMAND_MODULES:
        importlib.import_module(f"iclgd.commands.{name}").register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run one `iclgd` command line (`sys.argv[1:]` when None) here; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    keep_freed_memory()
    try:
        return int(args.func(args) or 0)
    except BrokenPipeError:  # output piped into `head` and the like
        return 0
    except KeyboardInterrupt:
        print("iclgd: interrupted", file=sys.stderr)
        return 130
    except IclgdError as err:
        if os.environ.get("ICLGD_DEBUG"):
            raise
        print(f"iclgd {args.command}: error: {first_line(err)}", file=sys.stderr)
        return 2
    except Exception:  # not bad input: a bug, shown as one
        traceback.print_exc()
        print(f"iclgd {args.command}: internal error (a bug in iclgd, not in your input): please "
              "report it with the traceback above", file=sys.stderr)
        return 1

"""Subcommands of the `iclgd` CLI: one module per command, each with `register(subparsers)`.

`register` adds a parser and sets `func=run` on it; `run(args) -> int` does the work. Modules
import the library lazily inside `run` so `iclgd --help` stays fast.
"""

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
    "demo",
    "layers",
    "tasks",
    "bench",
)

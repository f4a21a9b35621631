"""The `iclgd` command: the console script and `python -m iclgd.cli`.

`main(argv)` (from `iclgd.commands`, where the subcommands live) runs one command line and
returns its exit status: 0 on success, 2 for bad input (one line on stderr), 1 for a bug in
iclgd (its traceback printed); see `iclgd.commands`.
"""

from __future__ import annotations

import sys

from iclgd.commands import build_parser, main

__all__ = ["build_parser", "main"]

if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())

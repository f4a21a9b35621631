"""`python -m bench [--quick] [--device ...] [--json]`: the same as `iclgd bench` (the benchmark
code lives in `iclgd.bench`, so the installed command has it too)."""

import sys

from iclgd.cli import main

sys.exit(main(["bench", *sys.argv[1:]]))

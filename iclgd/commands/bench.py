"""`iclgd bench [--quick] [--device ...] [--json]`: every benchmark, one table of ratios.

Runs the benchmarks of `iclgd.bench` in one process (memory measurements in fresh child
processes), prints one table of side-by-side ratios against the plain PyTorch / Hugging Face
work each task needs, and rewrites the generated section of `--results` (default
`bench/RESULTS.md`, when that folder exists) with the machine, versions, date and load
average. `python -m bench` from a checkout runs the same command.
"""

from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the `bench` subcommand."""
    p = subparsers.add_parser("bench", help="run every benchmark; print the ratio table",
                              description=__doc__.splitlines()[0].split(": ", 1)[1])
    p.add_argument("--quick", action="store_true",
                   help="smaller sizes, fewer rounds, no SmolLM2-sized rows (~2 minutes)")
    p.add_argument("--device", default="cpu", help="cpu (default) or cuda[:i]")
    p.add_argument("--json", action="store_true", help="print the rows and machine as JSON")
    p.add_argument("--only", default=None,
                   help="comma-separated benchmarks to run (default all: calibration, capture, "
                        "sweep, finetune, delta_w, lsa, probe, compare)")
    p.add_argument("--results", default="bench/RESULTS.md",
                   help="Markdown file whose generated section is rewritten (default "
                        "bench/RESULTS.md; skipped when its folder does not exist); 'none' "
                        "writes nothing")
    p.add_argument("--tiny", action="store_true",
                   help="tiny models and sizes (a smoke test of the bench itself; numbers "
                        "meaningless)")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Run, print, write."""
    import sys
    from pathlib import Path

    from iclgd.bench import BENCHMARKS
    from iclgd.errors import IclgdError

    names = tuple(BENCHMARKS if args.only is None else
                  (n.strip() for n in args.only.split(",") if n.strip()))
    unknown = [n for n in names if n not in BENCHMARKS]
    if unknown or not names:
        raise IclgdError(f"unknown benchmark {unknown[0] if unknown else '(none)'!r}: choose "
                         f"from {', '.join(BENCHMARKS)}")
    if args.threads < 1:
        raise IclgdError(f"--threads must be >= 1, got {args.threads}")
    import torch

    from iclgd.bench import run_benchmarks
    from iclgd.bench.report import machine, table, write_results
    from iclgd.commands import main
    from iclgd.hooks import resolve_device
    from iclgd.results import to_json

    torch.set_num_threads(args.threads)
    device = str(resolve_device(args.device))
    info = machine(device)  # load average before any work
    rows = run_benchmarks(names, quick=args.quick, device=device, tiny=args.tiny,
                          log=lambda msg: print(msg, file=sys.stderr, flush=True),
                          run_command=main)
    command = "iclgd bench" + (" --quick" if args.quick else "") + (
        f" --device {args.device}" if args.device != "cpu" else "") + (
        f" --only {args.only}" if args.only else "") + (" --tiny" if args.tiny else "")
    if args.json:
        print(to_json({"machine": info, "command": command, "rows": [r.to_dict() for r in rows]}))
    else:
        print(table(rows))
    if args.results != "none":
        path = Path(args.results)
        if path.parent.is_dir():
            write_results(path, rows, info, command)
            print(f"wrote {path}", file=sys.stderr)
        else:
            print(f"{path.parent} does not exist: no results file written", file=sys.stderr)
    return 0

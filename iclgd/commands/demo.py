"""`iclgd demo --out DIR`: the main job on the embedded default, end to end, resumable.

Steps (each skipped when its results already exist, so a killed demo resumes): train the GINC
model, sweep its checkpoints, compare ICL with finetuning (with the untrained control), order
sensitivity, density of the last checkpoint, audit of von Oswald's construction, report.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the `demo` subcommand."""
    p = subparsers.add_parser("demo", help="train the embedded GINC model and run every test")
    p.add_argument("--out", default="runs/demo", help="results folder (default runs/demo)")
    p.add_argument("--device", default="auto")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--dtype", default=None,
                   help="dtype of the analyses' models (training stays float32): float32 "
                        "(default), bfloat16, float16")
    p.add_argument("--quick", action="store_true",
                   help="tiny settings (seconds, for smoke tests; numbers are meaningless)")
    p.set_defaults(func=run)


def steps(
    out: Path, device: str, seed: int, quick: bool, dtype: str | None = None
) -> list[tuple[str, Path, list[str]]]:
    """`(name, done_marker, argv)` for each step of the demo."""
    ginc, s = out / "ginc", str(seed)
    dt = [] if dtype is None else ["--dtype", dtype]
    train = ["train", "ginc", "--out", str(ginc), "--seed", s, "--device", device]
    sweep = ["sweep", str(ginc), "--out", str(out / "sweep"), "--device", device, "--seed", s,
             *dt]
    compare = ["compare", "--model", str(ginc), "--task", "ginc", "--control", "untrained",
               "--out", str(out / "compare"), "--device", device, "--seed", s, *dt]
    order = ["order", "--model", str(ginc), "--task", "ginc", "--out", str(out / "order"),
             "--device", device, "--seed", s, *dt]
    if quick:
        train += ["--steps", "20", "--checkpoints", "3", "--layers", "1", "--d-model", "32",
                  "--eval-prompts", "50"]
        sweep += ["--n-prompts", "16", "--n-values", "0,2,8", "--score-seqs", "4",
                  "--induction-seqs", "4"]
        compare += ["--demos", "1,2", "--queries", "4", "--methods", "gd,kv"]
        order += ["--demos", "4", "--perms", "3", "--epochs", "2", "--queries", "4"]
    return [
        ("train GINC model", ginc / "train_log.csv", train),
        ("checkpoint sweep", out / "sweep" / "rows.csv", sweep),
        ("ICL vs finetuning", out / "compare" / "compare.json", compare),
        ("order sensitivity", out / "order" / "order.json", order),
        ("weight density", out / "density" / "density.json",
         ["density", str(ginc), "--out", str(out / "density"), *dt]),
        ("construction audit", out / "audit" / "audit.json",
         ["audit", "von-oswald-gd", "--out", str(out / "audit"), "--seed", s]),
    ]


def run(args: argparse.Namespace) -> int:
    """Run every step not yet done, then write the report."""
    from iclgd.specs import check_output_folder

    check_output_folder(args.out)  # before the heavy imports
    import contextlib
    import io

    from iclgd.analyses.report import build_report
    from iclgd.cli import main as cli_main

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for name, marker, argv in steps(out, args.device, args.seed, args.quick, args.dtype):
        if marker.exists() and name != "train GINC model":
            print(f"[demo] {name}: done already ({marker})", file=sys.stderr)
            continue
        print(f"[demo] {name}: iclgd {' '.join(argv)}", file=sys.stderr)
        t0 = time.perf_counter()
        buf = io.StringIO()
        with contextlib.redirect_stdout(buf):
            code = cli_main(argv)
        if code != 0:
            print(f"iclgd demo: error: step '{name}' failed (exit {code}); fix it and re-run "
                  "`iclgd demo` to resume", file=sys.stderr)
            return code
        print(f"[demo] {name}: {time.perf_counter() - t0:.0f} s", file=sys.stderr)
    report = build_report(out)
    print(f"report: {report}")
    return 0

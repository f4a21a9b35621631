"""`iclgd demo [--out runs/demo] [--quick] [--device ...]`: every section of the report on the
embedded models and a real LM, then `report.md`, `report.html` and `summary.json`.

A thin composition of `iclgd.analyses.sections` (the same functions `iclgd analyse` runs),
scheduled by `iclgd.analyses.demo_plan` on `--jobs` worker processes. Re-running resumes;
a failed part is shown as failed in the report and makes the exit status 1, the others are kept.
"""

from __future__ import annotations

import argparse
import os


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the `demo` subcommand."""
    p = subparsers.add_parser("demo", help="every test on the toy models, GINC and a real LM; "
                                           "one report with a verdict per claim")
    p.add_argument("--out", default="runs/demo", help="results folder (default runs/demo)")
    p.add_argument("--device", default="auto", help="auto (default: CUDA when available), cpu, cuda")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--dtype", default=None,
                   help="dtype of the analysed models (trainings stay float32): float32 "
                        "(default), bfloat16, float16")
    p.add_argument("--quick", action="store_true",
                   help="every section at reduced size (about 2 minutes; numbers are not "
                        "meaningful, for smoke tests)")
    p.add_argument("--lm", default="smollm2-135m",
                   help="the real pretrained LM (default smollm2-135m; 'none' to skip)")
    p.add_argument("--lm-tasks", default=None,
                   help="comma-separated tasks for the LM (default: those of sentiment, "
                        "capitals, plural, antonyms that are installed)")
    p.add_argument("--jobs", type=int, default=min(2, os.cpu_count() or 1),
                   help="worker processes (default: 2, or 1 on a 1-core machine)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Run every task not yet done, then write the report; 1 when a part failed."""
    from pathlib import Path

    from iclgd.errors import IclgdError
    from iclgd.specs import check_output_folder

    check_output_folder(args.out)  # before the heavy imports
    if args.jobs < 1:
        raise IclgdError(f"--jobs must be >= 1, got {args.jobs}")
    from iclgd.analyses.demo_plan import DemoConfig, Scheduler, preload
    from iclgd.analyses.report import build_report
    from iclgd.commands import main as run_command
    from iclgd.hooks import resolve_device

    preload()
    cfg = DemoConfig(
        out=Path(args.out), quick=args.quick, device=str(resolve_device(args.device)),
        seed=args.seed, lm=None if args.lm.lower() == "none" else args.lm,
        lm_tasks=None if args.lm_tasks is None else tuple(
            t.strip() for t in args.lm_tasks.split(",") if t.strip()),
        jobs=args.jobs, dtype=args.dtype, run_command=run_command)
    cfg.out.mkdir(parents=True, exist_ok=True)
    timing = Scheduler(cfg).run()
    sections = {}
    for key, cpu in timing["cpu_s"].items():
        name = key.split("/")[0] if "/" in key and not key.startswith("finish/") else None
        if name:
            sections[name] = round(sections.get(name, 0.0) + cpu, 1)
    timing.update({"jobs": cfg.jobs, "sections": sections, "cpu_s_total":
                   round(sum(timing["cpu_s"].values()), 1), "quick": cfg.quick})
    timing["cpu_s"], timing["tasks"] = timing["process_cpu_s"], timing.pop("cpu_s")
    report = build_report(cfg.out, timing=timing)
    failed = sorted(k for k, v in timing["status"].items() if v.startswith("failed"))
    print(f"report: {report} (+ report.html, summary.json)")
    if failed:
        print(f"iclgd demo: {len(failed)} task(s) failed: {', '.join(failed[:6])}; see the "
              "report, fix and re-run `iclgd demo` to resume", flush=True)
        return 1
    return 0

"""`iclgd sweep SOURCE --out DIR`: ICL, induction heads, density and weight drift over checkpoints.

Resumable: rerunning with the same `--out` skips checkpoints already in `DIR/rows.jsonl`.
"""

from __future__ import annotations

import argparse
import sys


def _labels(text: str) -> list[str]:
    return [t.strip() for t in text.split(",") if t.strip()]


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the `sweep` subcommand."""
    p = subparsers.add_parser(
        "sweep", help="evaluate every checkpoint of a series (resumable)",
        description="For every checkpoint of SOURCE, in step order, write one row to "
        "OUT/rows.jsonl: GINC ICL accuracy by n with the Bayes ceiling, ICL score, induction-head "
        "scores, weight density and weight drift. Rerun with the same --out to resume; checkpoints "
        "that failed are recorded with an 'error' and not retried unless --retry-errors.",
    )
    p.add_argument("source", help="checkpoint-series folder (step{N}/ subfolders) or a hub name "
                   "in the local Hugging Face cache (then --checkpoints is required)")
    p.add_argument("--out", required=True, help="output folder (rows.jsonl, rows.csv, plots)")
    p.add_argument("--tasks", type=_labels, default=None,
                   help="comma list of icl,icl_score,induction,density,drift (default: all the "
                   "source supports)")
    p.add_argument("--icl-sets", type=_labels, default=["in:3", "out:5"],
                   help="GINC prompt sets CONCEPTS:K, the first is the default (default in:3,out:5)")
    p.add_argument("--n-values", type=_labels, default=None,
                   help="numbers of demonstrations (default 0,1,2,4,8,16,32,64)")
    p.add_argument("--n-prompts", type=int, default=500,
                   help="prompts per n (default 500: SE ~2 points; gains of a few points need it)")
    p.add_argument("--score-seqs", type=int, default=32, help="sequences for the ICL score (default 32)")
    p.add_argument("--induction-seqs", type=int, default=16,
                   help="repeated random sequences for prefix matching (default 16)")
    p.add_argument("--induction-seq-len", type=int, default=None,
                   help="length of the random half (default min(50, n_ctx/2, d_vocab))")
    p.add_argument("--every", type=int, default=1, help="keep every K-th checkpoint (last always)")
    p.add_argument("--checkpoints", type=_labels, default=None,
                   help="comma list of checkpoints by label (step1000,step2000) or index "
                   "(0,-1; local series only)")
    p.add_argument("--text", default=None,
                   help="text file for the ICL score of non-GINC models (tokenised, n_ctx windows)")
    p.add_argument("--device", default="auto", help="auto (CUDA when available), cpu, cuda")
    p.add_argument("--dtype", default=None,
                   help="model dtype: float32 (default), bfloat16, float16, float64; metrics "
                   "accumulate in float32/float64 whatever the model's dtype")
    p.add_argument("--seed", type=int, default=0, help="seed of prompts and probe sequences")
    p.add_argument("--batch-size", default="64",
                   help="prompts per forward pass (default 64), or 'auto': as large as fits, "
                   "halved on GPU out-of-memory (one line on stderr each time)")
    p.add_argument("--shard", default=None, metavar="I/N",
                   help="compute only worker I's share of the N-way split of the checkpoints "
                   "into --out (its own folder); combine the N folders with `iclgd merge`")
    p.add_argument("--retry-errors", action="store_true", help="retry checkpoints that failed before")
    p.add_argument("--no-plots", action="store_true", help="skip the PNG figures")
    p.add_argument("--json", action="store_true", help="print the rows as JSON to stdout")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Run the sweep; print a one-line summary (or JSON) and return 0."""
    from iclgd.specs import check_model_spec, check_output_folder

    check_model_spec(args.source)  # before the heavy imports: bad paths are answered at once
    check_output_folder(args.out)
    from iclgd.analyses.sweep import SweepSettings, last_checkpoint_verdict, run_sweep
    from iclgd.errors import IclgdError
    from iclgd.results import to_json

    try:  # per-checkpoint weight reads would print a progress bar each
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
    except ImportError:  # pragma: no cover
        pass

    try:
        n_values = None if args.n_values is None else tuple(int(n) for n in args.n_values)
    except ValueError as err:
        raise IclgdError(f"--n-values must be integers, got {args.n_values}") from err
    if n_values is not None and (not n_values or min(n_values) < 0):
        raise IclgdError("--n-values must be non-negative integers, e.g. 0,1,2,4")
    if min(args.n_prompts, args.score_seqs, args.induction_seqs) < 1:
        raise IclgdError("--n-prompts, --score-seqs and --induction-seqs must be >= 1")
    if args.every < 1:
        raise IclgdError(f"--every must be >= 1, got {args.every}")
    from iclgd.hooks.batching import parse_batch_size
    from iclgd.hooks.loading import resolve_dtype

    batch = parse_batch_size(args.batch_size)
    dtype = None if args.dtype is None else str(resolve_dtype(args.dtype)).removeprefix("torch.")
    settings = SweepSettings(
        tasks=None if args.tasks is None else tuple(args.tasks),
        icl_sets=tuple(args.icl_sets),
        n_prompts=args.n_prompts, n_score_seqs=args.score_seqs,
        induction_seqs=args.induction_seqs, induction_seq_len=args.induction_seq_len,
        every=args.every,
        checkpoints=None if args.checkpoints is None else tuple(args.checkpoints),
        seed=args.seed, dtype=dtype, text=args.text,
        batch_size=batch if isinstance(batch, int) else "auto",
        **({} if n_values is None else {"n_values": n_values}),
    )
    result = run_sweep(args.source, args.out, settings, device=args.device,
                       retry_errors=args.retry_errors, plots=not args.no_plots, shard=args.shard)
    errors = [r["checkpoint"] for r in result.rows if "error" in r]
    if args.json:
        print(to_json({"out": str(result.out), "rows": result.rows,
                       "files": [str(f) for f in result.files]}))
    else:
        print(f"swept {len(result.rows)} checkpoint(s) into {result.out}"
              + (f" (shard {args.shard}; combine with `iclgd merge`)" if args.shard else "")
              + (f"; failed: {', '.join(errors)}" if errors else ""))
        verdict = last_checkpoint_verdict(result.rows)
        if verdict:
            print(verdict)
    if errors:
        print(f"iclgd sweep: {len(errors)} checkpoint(s) failed: {', '.join(errors)} "
              "(rows with 'error'; rerun with --retry-errors)", file=sys.stderr)
    return 0

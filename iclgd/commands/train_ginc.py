"""`iclgd train ginc`: train a GPT-NeoX on GINC into `OUT/step{N}/` checkpoint folders.

Re-running with the same `--out` resumes from the newest checkpoint. After training, the last
checkpoint is evaluated on in-distribution and held-out prompts at k = 3 (accuracy by number of
examples, with standard errors and the ideal learner's accuracy) into `OUT/icl_eval.csv`; its
companion `OUT/icl_eval.json` holds the in-context gain from n = 0 to n = 32 per prompt set with its
standard error, 95 % interval and `icl_emerged` (the lower bound above 0), plus provenance, and the
command prints that verdict last.
"""

from __future__ import annotations

import argparse
from typing import Any

EVAL_NS = (0, 1, 2, 4, 8, 16, 32)


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the `ginc` trainer to the `train` sub-parsers."""
    p = subparsers.add_parser(
        "ginc", help="train a GPT-NeoX from scratch on GINC (Xie et al. 2022)",
        description="Train a GPT-NeoX (Pythia architecture) on GINC pretraining documents and "
        "save roughly log-spaced HF checkpoints OUT/step{N}/ (with tokenizer and ginc.json).",
    )
    p.add_argument("--out", required=True, help="output folder (re-run to resume)")
    p.add_argument("--preset", choices=("cpu", "gpu"), default="cpu",
                   help="cpu: 2 layers, d_model 64, batch 16, 1300 steps (about 2 min of training "
                   "on an idle 2-core CPU, up to 5 min on slower ones); gpu: 4 layers, d_model "
                   "256, 20000 steps")
    p.add_argument("--layers", type=int, help="transformer layers")
    p.add_argument("--d-model", type=int, help="residual width")
    p.add_argument("--heads", type=int, help="attention heads")
    p.add_argument("--window", type=int, help="training window in tokens")
    p.add_argument("--vocab", type=int, choices=(50, 100, 150), help="GINC vocabulary size")
    p.add_argument("--steps", type=int, help="fixed number of optimiser steps")
    p.add_argument("--time-budget", type=float,
                   help="train for this many wall-clock seconds instead of a step count")
    p.add_argument("--batch", type=int, help="windows per step")
    p.add_argument("--lr", type=float, help="peak AdamW learning rate")
    p.add_argument("--optimizer", choices=("muon", "adamw"),
                   help="muon (default): Muon on attention/MLP matrices, AdamW on the rest; "
                   "adamw: AdamW on everything")
    p.add_argument("--muon-lr", type=float, help="peak Muon learning rate (default 0.02)")
    p.add_argument("--checkpoints", type=int, help="number of checkpoints (log-spaced, incl. 0)")
    p.add_argument("--seed", type=int, help="seed of model init and data order")
    p.add_argument("--ginc-seed", type=int, help="seed of the GINC world (concepts)")
    p.add_argument("--device", help="torch device (cpu, cuda)")
    p.add_argument("--threads", type=int, help="torch CPU threads")
    p.add_argument("--corpus-docs", type=int, help="pretraining documents (Xie et al.: 1000)")
    p.add_argument("--doc-length", type=int, help="tokens per document (Xie et al.: 10240)")
    p.add_argument("--eval-prompts", type=int, default=1500,
                   help="prompts per n for the final ICL evaluation (0: skip; the gain's SE is "
                   "about 1.8 points at 1500)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from iclgd.specs import check_output_folder

    check_output_folder(args.out)  # before the heavy imports
    from dataclasses import replace

    from iclgd.errors import IclgdError
    from iclgd.training.ginc import preset_config, train_ginc

    cfg = preset_config(
        args.preset, layers=args.layers, d_model=args.d_model, heads=args.heads,
        window=args.window, steps=args.steps, time_budget=args.time_budget, batch=args.batch,
        lr=args.lr, optimizer=args.optimizer, muon_lr=args.muon_lr, checkpoints=args.checkpoints,
        seed=args.seed, device=args.device, threads=args.threads, corpus_docs=args.corpus_docs,
        doc_length=args.doc_length,
    )
    if args.steps is not None and args.time_budget is not None:
        raise IclgdError("give --steps or --time-budget, not both")
    if args.vocab is not None:
        cfg = replace(cfg, ginc=replace(cfg.ginc, vocab_size=args.vocab))
    if args.ginc_seed is not None:
        cfg = replace(cfg, ginc=replace(cfg.ginc, seed=args.ginc_seed))
    summary = train_ginc(args.out, cfg, progress=not args.quiet)
    print(f"trained {summary['steps']} steps in {summary['train_seconds']:.0f} s wall, "
          f"{summary.get('train_cpu_seconds', float('nan')):.0f} s CPU; "
          f"last checkpoint {summary['last_checkpoint']}")
    if args.eval_prompts > 0:
        _evaluate(args, cfg, summary)
    return 0


def _evaluate(args: argparse.Namespace, cfg: Any, summary: dict[str, Any]) -> None:
    """Evaluate the last checkpoint, write icl_eval.csv / .json and provenance, print the verdict."""
    from iclgd.data.ginc_hmm import load_ginc_world
    from iclgd.probes.icl import gain_verdict
    from iclgd.results import provenance, write_csv, write_json
    from iclgd.training.ginc_eval import evaluate_icl, icl_gain_summary

    last = summary["last_checkpoint"]
    world = load_ginc_world(last)
    rows = []
    for concepts in ("in", "out"):
        rows += evaluate_icl(last, world, ns=EVAL_NS, k=3, n_prompts=args.eval_prompts,
                             concepts=concepts, seed=cfg.seed)
    gains = icl_gain_summary(rows)
    prov = provenance(model="gpt-neox (GINC)", checkpoint=last, seed=cfg.seed, dtype="float32",
                      device=cfg.device, train=summary, config=cfg.to_dict())
    write_csv(f"{args.out}/icl_eval.csv", rows)
    write_json(f"{args.out}/icl_eval.json", {
        "icl_emerged": gains["in"]["icl_emerged"], "icl_gain": gains, "rows": rows,
        "provenance": prov})
    write_json(f"{args.out}/provenance.json", prov)
    print("concepts  n  accuracy (SE)   ideal (SE)   pretrained Bayes (SE)")
    for r in rows:
        print(f"{r['concepts']:>8} {r['n']:>2}  {100 * r['accuracy']:5.1f} ({100 * r['se']:.1f})"
              f"   {100 * r['ideal_accuracy']:5.1f} ({100 * r['ideal_se']:.1f})"
              f"   {100 * r['pretrained_bayes_accuracy']:5.1f}"
              f" ({100 * r['pretrained_bayes_se']:.1f})")
    g = gains["in"]
    print(gain_verdict(g, f"in-distribution k = {g['k']}, {g['n_prompts']} prompts per n"))


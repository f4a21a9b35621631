"""Train one GINC variant and measure its in-context gain (the "GINC training" tables).

    python bench/ginc_variant.py OUT '{"optimizer": "adamw"}' [--prompts 1500]

Trains `GincTrainConfig(**overrides)` (the default CPU run plus the JSON overrides; 3
checkpoints) into OUT, then evaluates the last checkpoint on in-distribution k = 3 prompts at
n = 0, 4, 32 (`--prompts` per n, prompt seed 11, so every variant sees the same prompts) and
prints one JSON line: overrides, steps, training wall and CPU seconds, mean loss of the last 8
logged batches (the last 800 steps), accuracy % per n and the gain n = 0 -> 32 with its SE.
"""

from __future__ import annotations

import argparse
import csv
import json
import time
from dataclasses import replace

import torch

from iclgd.data.ginc_hmm import load_ginc_world
from iclgd.probes.icl import icl_gain
from iclgd.training.ginc import GincTrainConfig, train_ginc
from iclgd.training.ginc_eval import evaluate_icl


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out")
    parser.add_argument("overrides", nargs="?", default="{}", help="JSON GincTrainConfig fields")
    parser.add_argument("--prompts", type=int, default=1500)
    args = parser.parse_args()
    overrides = json.loads(args.overrides)
    fields = {"checkpoints": 3, "log_every": 100, **overrides}
    if "ginc" in fields:  # GINC world overrides, e.g. {"ginc": {"vocab_size": 100}}
        fields["ginc"] = replace(GincTrainConfig().ginc, **fields["ginc"])
    cfg = GincTrainConfig(**fields)
    t = time.perf_counter()
    summary = train_ginc(args.out, cfg, progress=False)
    wall = time.perf_counter() - t
    with open(f"{args.out}/train_log.csv", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))[-8:]
    loss = sum(float(r["loss"]) for r in rows) / len(rows)
    torch.set_num_threads(1)
    last = summary["last_checkpoint"]
    evals = evaluate_icl(last, load_ginc_world(last), ns=(0, 4, 32), n_prompts=args.prompts,
                         seed=11, with_ideal=False)
    acc = {r["n"]: round(100 * r["accuracy"], 1) for r in evals}
    gain = icl_gain({r["n"]: r["accuracy"] for r in evals}, {r["n"]: r["se"] for r in evals})
    print(json.dumps({"overrides": overrides, "steps": summary["steps"], "wall": round(wall, 1),
                      "cpu": summary.get("train_cpu_seconds"), "loss": round(loss, 3),
                      "accuracy": acc, "gain": round(100 * gain.gain, 1),
                      "gain_se": round(100 * gain.se, 1), "emerged": gain.emerged}), flush=True)


if __name__ == "__main__":
    main()

"""Throughput of the GINC training step, configurations side by side in one run.

    python bench/bench_train_ginc.py [--steps 20]

Times `--steps` optimiser steps (after 3 warm-up steps) of the default CPU model (GPT-NeoX,
2 layers, d_model 64, 2 heads, batch 8, window 256) for variants: 1 vs 2 torch threads, eager vs
SDPA attention, Muon vs AdamW, window and batch sizes, torch.compile. Reports wall and process-CPU seconds per
step and the ratio to the default. Also times the data pipeline (corpus generation and window
sampling) and one Bayes-ceiling evaluation cell.

    python bench/bench_train_ginc.py --ceilings [--prompts 500]

prints instead the exact Bayes tables (ideal learner, smoothed pretraining-view predictor, held-out
concepts) by k and n on the default world.
"""

from __future__ import annotations

import argparse
import time
from dataclasses import replace

import numpy as np
import torch
import torch.nn.functional as F

from iclgd.data.ginc import (
    GincConfig,
    build_world,
    ideal_accuracy,
    pretrained_lm_accuracy,
    pretraining_stream,
    sample_prompts,
)
from iclgd.training.ginc import GincTrainConfig, build_model, build_optimizer


def time_steps(cfg: GincTrainConfig, steps: int, threads: int, *, attn: str = "sdpa",
               compile_model: bool = False) -> tuple[float, float]:
    torch.set_num_threads(threads)
    model = build_model(cfg)
    model.config._attn_implementation = attn
    fwd = torch.compile(model) if compile_model else model
    opt = build_optimizer(model, cfg)
    x = torch.randint(0, cfg.ginc.vocab_size, (cfg.batch, cfg.window + 1))

    def step() -> None:
        logits = fwd(input_ids=x[:, :-1]).logits
        loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), x[:, 1:].reshape(-1))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    for _ in range(3):
        step()
    wall, cpu = time.perf_counter(), time.process_time()
    for _ in range(steps):
        step()
    return (time.perf_counter() - wall) / steps, (time.process_time() - cpu) / steps


def ceilings(n_prompts: int) -> None:
    """Markdown rows: accuracy % of the exact predictors per k, n (default world, seed 0)."""
    world = build_world(GincConfig())
    ns = (0, 1, 2, 4, 8, 16, 32)
    print("| k | predictor | " + " | ".join(f"n = {n}" for n in ns) + " |")
    print("|---|---|" + "---|" * len(ns))
    for k in (3, 5, 10):
        cells: dict[str, list[str]] = {"ideal": [], "pretraining view (eps 0.1)": [],
                                       "pretraining view (eps 0)": [], "ideal, held-out": []}
        for n in ns:
            p_in = sample_prompts(world, n, k, n_prompts)
            p_out = sample_prompts(world, n, k, n_prompts, concepts="out")
            cells["ideal"].append(ideal_accuracy(world, p_in))
            cells["pretraining view (eps 0.1)"].append(pretrained_lm_accuracy(world, p_in))
            cells["pretraining view (eps 0)"].append(
                pretrained_lm_accuracy(world, p_in, smoothing=0.0))
            cells["ideal, held-out"].append(ideal_accuracy(world, p_out))
        for name, vals in cells.items():
            print(f"| {k} | {name} | " + " | ".join(f"{100 * a:.1f}" for a, _ in vals) + " |",
                  flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--compile", action="store_true", help="also time torch.compile")
    parser.add_argument("--ceilings", action="store_true", help="print the Bayes tables instead")
    parser.add_argument("--prompts", type=int, default=500, help="prompts per cell (--ceilings)")
    args = parser.parse_args()
    if args.ceilings:
        ceilings(args.prompts)
        return
    base = GincTrainConfig()
    variants = [
        ("default (SDPA, Muon + AdamW, 1 thread)", base, 1, "sdpa"),
        ("AdamW only", replace(base, optimizer="adamw"), 1, "sdpa"),
        ("eager attention", base, 1, "eager"),
        ("2 threads", base, 2, "sdpa"),
        ("window 160", replace(base, window=160, batch=13), 1, "sdpa"),
        ("batch 16", replace(base, batch=16), 1, "sdpa"),
        ("d_model 96, 3 heads", replace(base, d_model=96, heads=3), 1, "sdpa"),
        ("3 layers", replace(base, layers=3), 1, "sdpa"),
    ]
    rows = []
    for name, cfg, threads, attn in variants:
        rows.append((name, *time_steps(cfg, args.steps, threads, attn=attn), cfg.batch * cfg.window))
    if args.compile:
        rows.append(("torch.compile", *time_steps(base, args.steps, 1, compile_model=True), 2048))
    ref_cpu = rows[0][2]
    print("| variant | wall s/step | CPU s/step | tokens/step | CPU per token vs default |")
    print("|---|---|---|---|---|")
    for name, wall, cpu, tokens in rows:
        rel = (cpu / tokens) / (ref_cpu / 2048)
        print(f"| {name} | {wall:.4f} | {cpu:.4f} | {tokens} | {rel:.2f}x |")

    torch.set_num_threads(1)
    t = time.perf_counter()
    world = build_world(GincConfig())
    stream = torch.from_numpy(pretraining_stream(world, 1000, 10240))
    gen = time.perf_counter() - t
    rng = np.random.default_rng(0)
    ar = torch.arange(257)
    t = time.perf_counter()
    for _ in range(1000):
        starts = torch.from_numpy(rng.integers(0, stream.numel() - 257, size=8))
        _ = stream[starts[:, None] + ar]
    sample = (time.perf_counter() - t) / 1000
    t = time.perf_counter()
    ideal_accuracy(world, sample_prompts(world, 32, 3, 500))
    ceiling = time.perf_counter() - t
    print(f"\ncorpus (1000 x 10,240 tokens): {gen:.2f} s; window batch: {1e3 * sample:.3f} ms; "
          f"ideal accuracy, 500 prompts n=32 k=3: {ceiling:.2f} s")


if __name__ == "__main__":
    main()

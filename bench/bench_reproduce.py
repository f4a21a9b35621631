"""Throughput of `iclgd reproduce von-oswald` training (1-layer LSA, batch 2048, d = n = 10).

Measures, in one run, steps/s of: the fast training path (associative linear attention, query-only
last layer) with 1 and 2 torch threads, and the plain hooked forward with 1 and 2 threads. Prints
a Markdown table with ratios and the time a 5000-step run would take; von Oswald et al.'s JAX code
took 92 s for 5000 steps on a 2-core CPU (as reported with their code; quoted, not re-measured here).

Usage: python bench/bench_reproduce.py [--steps 200] [--batch 2048]
"""

from __future__ import annotations

import argparse
import os

import torch

from iclgd.analyses.von_oswald import train_lsa

JAX_STEPS_PER_S = 5000 / 92.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--batch", type=int, default=2048)
    parser.add_argument("--layers", type=int, default=1)
    args = parser.parse_args()
    rows = []
    for fast in (True, False):
        for threads in (1, 2):
            torch.set_num_threads(threads)
            train_lsa(
                layers=args.layers, steps=5, batch=args.batch, progress=False, fast=fast
            )  # warm-up
            r = train_lsa(
                layers=args.layers, steps=args.steps, batch=args.batch, progress=False, fast=fast
            )
            rows.append((("fast" if fast else "hooked"), threads, r.steps_per_s))
    base = rows[-1][2]
    print(
        f"machine: {os.cpu_count()} CPU cores, torch {torch.__version__}, load avg {os.getloadavg()}"
    )
    print("| path | threads | steps/s | x hooked/2 threads | 5000 steps (s) | x JAX (92 s) |")
    print("|---|---|---|---|---|---|")
    for path, threads, sps in rows:
        print(f"| {path} | {threads} | {sps:.1f} | {sps / base:.2f} | {5000 / sps:.0f} | "
              f"{sps / JAX_STEPS_PER_S:.2f} |")  # fmt: skip


if __name__ == "__main__":
    main()

"""Sweep a checkpoint series as Ray tasks (one shard per task), then merge the shards.

    pip install ray
    python examples/ray_sweep.py runs/ginc runs/ginc-sweep --shards 3          # local Ray
    RAY_ADDRESS=auto python examples/ray_sweep.py SOURCE OUT --shards 16 --gpus 1  # a cluster

Options the script does not know (`--dtype bfloat16`, `--tasks ...`) go to `iclgd sweep`.

Each task runs `iclgd sweep ... --shard i/N --out OUT/shards/shard-i-of-N` in a fresh process
(`iclgd.analyses.launch.run_cli`); `iclgd merge` then writes the unsharded sweep's tables and
figures into OUT. The shard folders are the same as those of a SLURM array or a shell loop.
"""

from __future__ import annotations

import argparse

import ray

from iclgd.analyses.launch import merge_command, run_cli, shard_commands


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("source")
    p.add_argument("out")
    p.add_argument("--shards", type=int, default=3)
    p.add_argument("--gpus", type=float, default=0, help="GPUs per task (0 on a CPU machine)")
    args, extra = p.parse_known_args()  # other options go to `iclgd sweep`
    ray.init()  # a local instance, or the cluster named by RAY_ADDRESS
    shard = ray.remote(num_gpus=args.gpus, num_cpus=1)(run_cli)
    lines, folders = shard_commands(["sweep", args.source, *extra], args.shards, args.out)
    for text in ray.get([shard.remote(line) for line in lines]):
        print(text.strip())
    print(run_cli(merge_command(folders, args.out)).strip())


if __name__ == "__main__":
    main()

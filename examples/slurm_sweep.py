"""Sweep a checkpoint series as a SLURM job array through submitit, then merge the shards.

    pip install 'iclgd[cluster]'
    python examples/slurm_sweep.py EleutherAI/pythia-160m runs/pythia-sweep --shards 8 \
        --checkpoints step1000,step2000,step4000,step8000,step16000,step143000 --partition gpu

Each array task runs `iclgd sweep ... --shard i/8 --out runs/pythia-sweep/shards/shard-i-of-8`;
when all have finished, `iclgd merge` writes the tables and figures of the unsharded sweep into
runs/pythia-sweep. A task that dies can be resubmitted alone (the shard resumes where it
stopped); `--executor local` runs the same shards as local processes.
"""

from __future__ import annotations

import argparse

import submitit

from iclgd.analyses.launch import submit_shards


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("source")
    p.add_argument("out")
    p.add_argument("--shards", type=int, default=4)
    p.add_argument("--checkpoints", default=None)
    p.add_argument("--partition", default=None)
    p.add_argument("--executor", choices=("slurm", "local"), default="slurm")
    p.add_argument("--timeout-min", type=int, default=240)
    args = p.parse_args()
    folder = f"{args.out}/submitit"
    if args.executor == "slurm":
        executor = submitit.AutoExecutor(folder=folder)  # SLURM when sbatch is available
        executor.update_parameters(
            timeout_min=args.timeout_min, gpus_per_node=1, cpus_per_task=8, mem_gb=64,
            slurm_array_parallelism=args.shards,
            **({"slurm_partition": args.partition} if args.partition else {}),
        )
    else:
        executor = submitit.LocalExecutor(folder=folder)
        executor.update_parameters(timeout_min=args.timeout_min)
    argv = ["sweep", args.source, "--device", "auto", "--dtype", "bfloat16",
            "--batch-size", "auto"]
    if args.checkpoints:
        argv += ["--checkpoints", args.checkpoints]
    run = submit_shards(argv, args.shards, args.out, executor=executor)
    print(f"submitted {len(run.jobs)} shard jobs: {', '.join(j.job_id for j in run.jobs)}")
    run.merge()
    print(f"merged into {args.out}/")


if __name__ == "__main__":
    main()

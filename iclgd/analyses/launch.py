"""Run the shards of a sweep or comparison on an existing engine (SLURM via submitit, Ray, ...).

iclgd does not schedule anything itself: `shard_commands` turns one `iclgd sweep|compare`
command line into N shard command lines (`--shard i/N --out OUT/shards/shard-i-of-N`),
`run_cli(argv)` runs one of them in a fresh Python process (`python -m iclgd.cli ...`, so any
engine can call it: a submitit job, a Ray task, a shell loop), and `merge_command` is the
`iclgd merge` line that combines the finished folders into OUT. The shard folders are the same
whichever engine ran them.

`submit_shards(argv, n, out, executor=...)` submits the shards to a `submitit` executor as one
job array (`executor.map_array`): a SLURM array with `submitit.AutoExecutor` on a cluster,
subprocesses with `submitit.LocalExecutor`, in-process with `submitit.DebugExecutor`
(`pip install 'iclgd[cluster]'`). `ShardRun.wait()` waits for every job and `ShardRun.merge()`
runs the merge.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from iclgd.errors import IclgdError

SHARDABLE = ("sweep", "compare")


def shard_folder_name(index: int, count: int) -> str:
    """`shard-{index}-of-{count}`."""
    return f"shard-{index}-of-{count}"


def shard_commands(
    argv: Sequence[str], n_shards: int, out: str | Path
) -> tuple[list[list[str]], list[Path]]:
    """The N shard command lines of `argv` (an `iclgd sweep|compare ...` line without `--out`
    and `--shard`) and their folders `OUT/shards/shard-i-of-N`."""
    argv = [str(a) for a in argv]
    if not argv or argv[0] not in SHARDABLE:
        raise IclgdError(f"only {' and '.join(SHARDABLE)} run in shards: the command line must "
                         f"start with one of them, got {argv[:1]}")
    taken = [a for a in argv if a.split("=")[0] in ("--out", "--shard")]
    if taken:
        raise IclgdError(f"leave {taken[0].split('=')[0]} out of the command line: each shard "
                         "gets its own --shard and --out")
    if n_shards < 1:
        raise IclgdError(f"the number of shards must be >= 1, got {n_shards}")
    folders = [Path(out) / "shards" / shard_folder_name(i, n_shards) for i in range(n_shards)]
    lines = [[*argv, "--shard", f"{i}/{n_shards}", "--out", str(f)]
             for i, f in enumerate(folders)]
    return lines, folders


def merge_command(
    folders: Sequence[str | Path], out: str | Path, *options: str
) -> list[str]:
    """The `iclgd merge` command line combining `folders` into `out` (`options`, e.g.
    `--no-plots`, appended)."""
    return ["merge", *(str(f) for f in folders), "--out", str(out), *options]


def run_cli(argv: Sequence[str], python: str | None = None) -> str:
    """Run `python -m iclgd.cli ARGV` in a fresh process; return its stdout. Raises
    `RuntimeError` with the last lines of stderr when it fails."""
    cmd = [python or sys.executable, "-m", "iclgd.cli", *(str(a) for a in argv)]
    done = subprocess.run(cmd, capture_output=True, text=True, env=dict(os.environ))
    if done.returncode != 0:
        tail = "\n".join(done.stderr.strip().splitlines()[-5:])
        raise RuntimeError(f"iclgd {' '.join(cmd[3:5])} ... exited {done.returncode}: {tail}")
    return done.stdout


@dataclass
class ShardRun:
    """Submitted shards: their jobs, folders, and the merged folder."""

    jobs: list[Any]
    folders: list[Path]
    out: Path
    runner: Callable[[Sequence[str]], str] = field(default=lambda argv: run_cli(argv))
    outputs: list[str] = field(default_factory=list)

    def wait(self) -> list[str]:
        """Wait for every job; return their stdout (a failed job raises its error)."""
        self.outputs = [job.result() for job in self.jobs]
        return self.outputs

    def merge(self, *options: str) -> Path:
        """Wait, then run `iclgd merge [options]` on the shard folders into `out` (with
        `runner`)."""
        if len(self.outputs) != len(self.jobs):
            self.wait()
        self.runner(merge_command(self.folders, self.out, *options))
        return self.out


def submit_shards(
    argv: Sequence[str],
    n_shards: int,
    out: str | Path,
    *,
    executor: Any = None,
    runner: Callable[[Sequence[str]], str] = run_cli,
) -> ShardRun:
    """Submit the N shards of `argv` as one job array to a `submitit` executor (default:
    `submitit.AutoExecutor(folder=OUT/submitit)`, SLURM when available); see the module
    docstring. Each job calls `runner(shard_argv)` (default `run_cli`: a fresh process; the
    function must be importable where the jobs run)."""
    lines, folders = shard_commands(argv, n_shards, out)
    if executor is None:
        try:
            import submitit
        except ImportError as err:
            raise IclgdError("submit_shards needs submitit: pip install 'iclgd[cluster]'") from err
        executor = submitit.AutoExecutor(folder=str(Path(out) / "submitit"))
    jobs = executor.map_array(runner, lines)
    return ShardRun(list(jobs), folders, Path(out), runner)

"""Shards on an existing engine: submitit's local executors run the shard command lines."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from test_sweep import FAST_ARGS, make_series

from iclgd.analyses.launch import merge_command, run_cli, shard_commands, submit_shards
from iclgd.errors import IclgdError

submitit = pytest.importorskip("submitit")
ARGS = [*FAST_ARGS, "--tasks", "density,drift"]
ROOT = str(Path(__file__).resolve().parents[2])


@pytest.fixture()
def env(monkeypatch):
    """Child processes import this checkout's iclgd."""
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([ROOT, os.environ.get("PYTHONPATH", "")]))


def _rows(folder: Path) -> list[dict]:
    rows = [json.loads(x) for x in (folder / "rows.jsonl").read_text().splitlines()]
    return [{k: v for k, v in r.items() if k != "seconds"} for r in rows]


def test_shard_commands_and_errors(tmp_path):
    lines, folders = shard_commands(["sweep", "SRC", "--seed", "1"], 2, tmp_path)
    assert lines[1] == ["sweep", "SRC", "--seed", "1", "--shard", "1/2", "--out",
                        str(tmp_path / "shards" / "shard-1-of-2")]
    assert folders[0] == tmp_path / "shards" / "shard-0-of-2"
    assert merge_command(folders, tmp_path) == ["merge", *map(str, folders), "--out", str(tmp_path)]
    with pytest.raises(IclgdError, match="leave --out out"):
        shard_commands(["sweep", "SRC", "--out=x"], 2, tmp_path)
    with pytest.raises(IclgdError, match="only sweep and compare"):
        shard_commands(["order", "--model", "M"], 2, tmp_path)


def in_process(argv) -> str:
    """`iclgd ARGV` in this process (what `run_cli` runs in a fresh one), its stdout."""
    import contextlib
    import io

    from iclgd.cli import main

    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        code = main(list(argv))
    if code != 0:
        raise RuntimeError(f"iclgd {argv[0]} exited {code}")
    return buf.getvalue()


def _sweep_through(executor, runner, tmp_path: Path) -> None:
    src = make_series(tmp_path / "src", [0, 1, 2])
    in_process(["sweep", str(src), "--out", str(tmp_path / "full"), *ARGS])
    run = submit_shards(["sweep", str(src), *ARGS], 2, tmp_path / "merged", executor=executor,
                        runner=runner)
    outputs = run.wait()
    assert len(outputs) == 2 and "shard 1/2" in outputs[1]
    run.merge("--no-plots")
    assert _rows(tmp_path / "merged") == _rows(tmp_path / "full")
    assert sorted(p.name for p in (tmp_path / "merged" / "shards").iterdir()) == \
        ["shard-0-of-2", "shard-1-of-2"]


def test_debug_executor_shards_merge_to_the_unsharded_sweep(tmp_path):
    _sweep_through(submitit.DebugExecutor(folder=str(tmp_path / "logs")), in_process, tmp_path)


@pytest.mark.slow
def test_local_executor_runs_shards_as_processes(tmp_path, env):
    """submitit.LocalExecutor: each shard a job process running `python -m iclgd.cli`."""
    executor = submitit.LocalExecutor(folder=str(tmp_path / "logs"))
    executor.update_parameters(timeout_min=20)
    _sweep_through(executor, run_cli, tmp_path)


def test_run_cli_failure_carries_the_error_line(tmp_path, env):
    with pytest.raises(RuntimeError, match="exited 2: .*no such folder"):
        run_cli(["sweep", str(tmp_path / "missing"), "--out", str(tmp_path / "o")])

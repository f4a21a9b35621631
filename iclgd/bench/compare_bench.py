"""`iclgd compare` on SmolLM2-135M vs the bare work it must do, and its peak resident memory.

The command runs in a fresh process exactly as a user runs it (through `run_command`, the
in-process command runner `iclgd bench` passes: `iclgd.commands.main`, so `keep_freed_memory()`
applies), with every forward call of the model recorded
(`iclgd.bench.measure.record_lm_calls`: token shapes, grad mode, vmapped task count) and every
finetuning update (`record_updates`: optimizer, rate, trained tensors). That process reports
its CPU time (user + system of the whole process, from interpreter start: imports, loading,
everything) and `ru_maxrss` (the kernel's peak resident set). The baseline is a second fresh
process doing the same work as a plain script would: import torch and transformers, load the
same converted weights with `AutoModelForCausalLM.from_pretrained` (with the command's malloc
settings, `iclgd.runtime.keep_freed_memory`), and replay the recorded
calls (`plain_replay`): no-grad forwards, and for every finetuning step forward + backward into
the same trained tensors + the same optimizer's step (`torch.optim`, Adam fused). Ratio =
compare CPU s / baseline CPU s: what iclgd adds (the bridge and its hooks, the captures, every
metric, the ΔW comparison, tables and figures) on top of the model work.

Settings (`COMPARE_ARGS`): the command's defaults on a real task (`--task sentiment`: N = 1, 2,
4, 8, six methods, 32 queries, the learning-rate search on held-out demonstrations), the run a
user makes and the one whose memory peak the budget is about. Full run only (a few minutes per
process); skipped, with a note, when SmolLM2 is not installed or converted
(`iclgd.hooks.load_model("smollm2-135m")` converts it), or when no `run_command` is given.
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from iclgd.bench import Row
from iclgd.bench.measure import function_name, resolve

TARGET_TIME, BUDGET_GB = "<= 1.3", 4.0
COMPARE_ARGS = ["--task", "sentiment"]


def _process_cpu_s() -> float:
    """User + system CPU seconds of this whole process so far (imports included)."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def worker(runner: str, model: str, out: str, extra: list[str]) -> None:
    """Run `iclgd compare` here through the command runner named `runner` (`"module:function"`);
    print `{cpu_s, maxrss_bytes, calls, updates}` as the last line."""
    from iclgd.bench.measure import record_lm_calls, record_updates

    run_command = resolve(runner)
    with record_lm_calls() as calls, record_updates() as updates:
        rc = run_command(["compare", "--model", model, "--out", out, "--json", *extra])
    if rc != 0:
        raise SystemExit(rc)
    print(json.dumps({
        "cpu_s": _process_cpu_s(),
        "maxrss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
        "calls": [[list(c.shape), c.grad, c.vmapped, c.kept] for c in calls],
        "updates": [[u.optimizer, u.lr, list(u.trained), u.layer_causal] for u in updates],
    }))


def baseline(folder: str, work: str, device: str) -> None:
    """The plain script: load the weights with transformers and replay `work` (the worker's
    JSON); print `{cpu_s}` (whole process, imports included) as the last line."""
    from transformers import AutoModelForCausalLM

    from iclgd.bench.measure import Call, Update, plain_replay
    from iclgd.runtime import keep_freed_memory

    keep_freed_memory()  # the same malloc settings as the command (no page-fault handicap)

    got = json.loads(Path(work).read_text(encoding="utf-8"))
    calls = [Call(tuple(s), bool(g), int(v), int(k)) for s, g, v, k in got["calls"]]
    updates = [Update(o, float(lr), tuple(t), bool(c)) for o, lr, t, c in got["updates"]]
    hf = AutoModelForCausalLM.from_pretrained(folder, attn_implementation="eager").to(device)
    plain_replay(hf.eval(), calls, int(hf.config.vocab_size), updates=updates)()
    print(json.dumps({"cpu_s": _process_cpu_s(),
                      "maxrss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024}))


def run(quick: bool, device: str, tiny: bool = False,
        run_command: Callable[[Sequence[str]], int] | None = None) -> list[Row]:
    """The time and memory rows; `run_command` runs an `iclgd` command line in-process."""
    if quick or tiny:
        return []
    from iclgd.errors import IclgdError
    from iclgd.hooks.named_models import converted_folder

    if run_command is None:
        return [_skipped("no command runner given (iclgd bench passes iclgd.commands.main)")]
    try:
        folder = converted_folder("smollm2-135m")
    except IclgdError as err:
        return [_skipped(str(err))]
    with tempfile.TemporaryDirectory() as tmp:
        args = [*COMPARE_ARGS, "--device", device]
        got = _last_json(_fresh(["worker", function_name(run_command), "smollm2-135m", tmp,
                                 json.dumps(args)], "iclgd compare"))
        work = Path(tmp) / "work.json"
        work.write_text(json.dumps(got), encoding="utf-8")
        base = _last_json(_fresh(["baseline", str(folder), str(work), device], "the baseline"))
    steps = sum(v for _, g, v, _k in got["calls"] if g)
    forwards = sum(1 for _, g, _v, _k in got["calls"] if not g)
    what = "compare on SmolLM2-135M at its defaults (" + " ".join(COMPARE_ARGS) + ")"
    gb = got["maxrss_bytes"] / 1e9
    return [
        Row("compare", what, got["cpu_s"], base["cpu_s"], got["cpu_s"] / base["cpu_s"], "CPU s",
            TARGET_TIME, None, f"{forwards} forwards, {steps} finetuning steps with their "
            "updates; whole processes, imports included; one run each"),
        Row("compare", "compare on SmolLM2-135M, peak resident memory", gb, BUDGET_GB,
            gb / BUDGET_GB, "GB (baseline = budget)", "<= 1", None,
            f"ru_maxrss of the whole process, keep_freed_memory applied; the plain script "
            f"peaks at {base['maxrss_bytes'] / 1e9:.2f} GB"),
    ]


def _skipped(why: str) -> Row:
    nan = float("nan")
    return Row("compare", "compare on SmolLM2-135M", nan, nan, nan, "s", TARGET_TIME, None,
               f"skipped: {why}")


def _fresh(args: list[str], what: str) -> str:
    """Run this module in a fresh process with the bench's torch thread count."""
    import torch

    env = {**os.environ, "OMP_NUM_THREADS": str(torch.get_num_threads())}
    done = subprocess.run([sys.executable, "-m", "iclgd.bench.compare_bench", *args],
                          capture_output=True, text=True, env=env)
    if done.returncode != 0:
        raise RuntimeError(f"{what} failed:\n{done.stderr[-3000:]}")
    return done.stdout


def _last_json(stdout: str) -> dict[str, Any]:
    return json.loads(stdout.strip().splitlines()[-1])


if __name__ == "__main__":
    if sys.argv[1] == "worker":
        worker(sys.argv[2], sys.argv[3], sys.argv[4], json.loads(sys.argv[5]))
    else:
        baseline(sys.argv[2], sys.argv[3], sys.argv[4])

"""`iclgd compare` on SmolLM2-135M vs the bare work it must do, and its peak resident memory.

The command runs in a fresh process exactly as a user runs it (through `run_command`, the
in-process command runner `iclgd bench` passes: `iclgd.commands.main`, so `keep_freed_memory()`
applies), with every forward call of the model recorded
(`iclgd.bench.measure.record_lm_calls`: token shapes, grad mode, vmapped task count). That
process reports its CPU time and `ru_maxrss` (the kernel's peak resident set of the whole
process: interpreter, libraries, model, everything). The baseline, in this process, loads the
same converted weights with `AutoModelForCausalLM.from_pretrained` and replays the recorded
calls as plain Hugging Face calls on the same shapes: no-grad forwards, and forward + backward
for every finetuning step (`plain_replay`). Ratio = compare CPU s / baseline CPU s.

Settings (`COMPARE_ARGS`): the defaults' largest N (8) and their heaviest methods (Adam and
GD on every weight, Dai's kv) at the default batch size, with untuned rates and 16 queries so
the run fits the bench; the memory peak is set by exactly these (the largest prompts and the
Adam state of every weight). Full run only; skipped, with a note, when SmolLM2 is not
installed or converted (`iclgd.hooks.load_model("smollm2-135m")` converts it), or when no
`run_command` is given.
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence

from iclgd.bench import Row
from iclgd.bench.measure import Call, function_name, plain_replay, record_lm_calls, resolve

TARGET_TIME, BUDGET_GB = "<= 1.3", 4.0
COMPARE_ARGS = ["--task", "sentiment", "--demos", "1,8", "--methods", "gd,adam,kv",
                "--lr", "default", "--queries", "16"]


def worker(runner: str, model: str, out: str, extra: list[str]) -> None:
    """Run `iclgd compare` here through the command runner named `runner` (`"module:function"`),
    print `{cpu_s, maxrss_bytes, calls}` as the last line."""
    run_command = resolve(runner)
    t0 = time.process_time()
    with record_lm_calls() as calls:
        rc = run_command(["compare", "--model", model, "--out", out, "--json", *extra])
    if rc != 0:
        raise SystemExit(rc)
    print(json.dumps({
        "cpu_s": time.process_time() - t0,
        "maxrss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
        "calls": [[list(c.shape), c.grad, c.vmapped] for c in calls],
    }))


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
        done = subprocess.run(
            [sys.executable, "-m", "iclgd.bench.compare_bench", function_name(run_command),
             "smollm2-135m", tmp, json.dumps(args)],
            capture_output=True, text=True, env=os.environ.copy())
    if done.returncode != 0:
        raise RuntimeError(f"iclgd compare failed:\n{done.stderr[-3000:]}")
    got = json.loads(done.stdout.strip().splitlines()[-1])
    calls = [Call(tuple(s), bool(g), int(v)) for s, g, v in got["calls"]]
    base = baseline_seconds(folder, calls, device)
    steps = sum(c.vmapped for c in calls if c.grad)
    what = "compare on SmolLM2-135M (" + " ".join(COMPARE_ARGS[2:]) + ")"
    gb = got["maxrss_bytes"] / 1e9
    return [
        Row("compare", what, got["cpu_s"], base, got["cpu_s"] / base, "CPU s", TARGET_TIME, None,
            f"{len(calls) - steps} forwards, {steps} finetuning steps; one run each"),
        Row("compare", "compare on SmolLM2-135M, peak resident memory", gb, BUDGET_GB,
            gb / BUDGET_GB, "GB (baseline = budget)", "<= 1", None,
            "ru_maxrss of the whole process, keep_freed_memory applied"),
    ]


def _skipped(why: str) -> Row:
    nan = float("nan")
    return Row("compare", "compare on SmolLM2-135M", nan, nan, nan, "s", TARGET_TIME, None,
               f"skipped: {why}")


def baseline_seconds(folder: object, calls: list[Call], device: str) -> float:
    """CPU seconds of loading the weights plainly and replaying `calls` on them."""
    from transformers import AutoModelForCausalLM

    t0 = time.process_time()
    hf = AutoModelForCausalLM.from_pretrained(folder, attn_implementation="eager").to(device)
    plain_replay(hf.eval(), calls, int(hf.config.vocab_size))()
    return time.process_time() - t0


if __name__ == "__main__":
    worker(sys.argv[1], sys.argv[2], sys.argv[3], json.loads(sys.argv[4]))

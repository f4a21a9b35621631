"""Timing and peak-memory helpers shared by the benchmarks.

Time (`interleaved`): the variants run in rounds, each round calling every variant once in
turn, so a machine whose load changes during the run slows every variant alike; a ratio is the
median over rounds of the per-round ratio, its spread the lowest and highest per-round ratio.
On CPU the clock is the process's CPU time (user + system, `time.process_time`): on a shared
machine it does not count the time other processes hold the cores. On CUDA it is wall time
between `torch.cuda.synchronize()` calls.

Peak memory (`peak_memory`): measured in one fresh Python process per benchmark, never in the
benchmark process itself (whose heap holds whatever earlier work freed).
- CUDA: the caching allocator's own counters, `torch.cuda.max_memory_allocated()` after
  `reset_peak_memory_stats()`, minus `memory_allocated()` before the pass.
- CPU: the kernel's resident-set high-water mark. The process starts with glibc's malloc
  thresholds fixed (`MALLOC_MMAP_THRESHOLD_` = `MALLOC_TRIM_THRESHOLD_` = 128 KiB), so every
  large block is its own `mmap` and goes back to the kernel when freed: resident memory then
  follows the live tensors instead of a heap that only grows. `iclgd.runtime.keep_freed_memory()`
  (which the `iclgd` command applies for speed) is *not* applied there, being the opposite
  setting. Before each pass the high-water mark is reset (`/proc/self/clear_refs` ← 5, Linux
  ≥ 4.0) and `VmRSS` read; peak = `VmHWM` after the pass minus that level.
Each variant first runs once unmeasured (lazy initialisation, first-call buffers), then
`rounds` measured passes, variants interleaved. `calibration()` checks the method against
tensors of known size (the bench prints it as a row: measured / allocated ≈ 1).
"""

from __future__ import annotations

import gc
import importlib
import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

FIXED_MALLOC = {"MALLOC_MMAP_THRESHOLD_": "131072", "MALLOC_TRIM_THRESHOLD_": "131072"}


@dataclass(frozen=True)
class Samples:
    """Repeated measurements of one variant (seconds or bytes), in round order."""

    values: tuple[float, ...]

    @property
    def median(self) -> float:
        return statistics.median(self.values)


def ratio_stats(ours: Samples, base: Samples) -> tuple[float, float, float]:
    """(median, min, max) over rounds of the per-round ratio ours / base."""
    r = [a / b if b > 0 else float("inf") for a, b in zip(ours.values, base.values, strict=True)]
    return statistics.median(r), min(r), max(r)


def _sync(device: str) -> None:
    if str(device).startswith("cuda"):
        import torch

        torch.cuda.synchronize()


def interleaved(
    fns: Mapping[str, Callable[[], Any]], rounds: int, device: str = "cpu", warmup: int = 1
) -> dict[str, Samples]:
    """Seconds per call of each variant (module docstring): `warmup` unmeasured rounds, then
    `rounds` rounds calling every variant once in turn."""
    cuda = str(device).startswith("cuda")
    clock = time.perf_counter if cuda else time.process_time
    out: dict[str, list[float]] = {k: [] for k in fns}
    for r in range(warmup + rounds):
        for name, fn in fns.items():
            _sync(device)
            t0 = clock()
            fn()
            _sync(device)
            if r >= warmup:
                out[name].append(clock() - t0)
    return {k: Samples(tuple(v)) for k, v in out.items()}


# ----------------------------------------------------------------------------- memory


def _status_bytes(key: str) -> int:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"/proc/self/status has no {key}")


def _reset_high_water() -> None:
    with open("/proc/self/clear_refs", "w") as fh:
        fh.write("5")


def _one_pass(fn: Callable[[], Any], device: str) -> int:
    gc.collect()
    if str(device).startswith("cuda"):
        import torch

        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        result = fn()
        torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated() - base
    else:
        _reset_high_water()
        base = _status_bytes("VmRSS")
        result = fn()
        peak = _status_bytes("VmHWM") - base
    del result
    return peak


def function_name(fn: Callable[..., Any]) -> str:
    """`"module:function"` of a module-level function: how a fresh process finds it."""
    return f"{fn.__module__}:{fn.__qualname__}"


def resolve(name: str) -> Callable[..., Any]:
    """The function a `"module:function"` name (`function_name`) names."""
    module, _, func = name.partition(":")
    return getattr(importlib.import_module(module), func)


def measure_in_process(setup: str, kwargs: dict[str, Any], rounds: int, device: str) -> dict[str, list[int]]:
    """Peak bytes of each variant `setup(**kwargs)` returns (`"module:function"` → `{name:
    callable}`), one warm-up pass each, then `rounds` interleaved passes. Runs where called:
    `peak_memory` calls it in a fresh process."""
    fns = resolve(setup)(**kwargs)
    for fn in fns.values():
        _one_pass(fn, device)
    out: dict[str, list[int]] = {k: [] for k in fns}
    for _ in range(rounds):
        for name, fn in fns.items():
            out[name].append(_one_pass(fn, device))
    return out


def peak_memory(setup: str, kwargs: dict[str, Any], rounds: int, device: str) -> dict[str, Samples]:
    """`measure_in_process` in a fresh Python process with glibc's thresholds fixed (module
    docstring); bytes per pass for each variant."""
    request = json.dumps({"setup": setup, "kwargs": kwargs, "rounds": rounds, "device": device})
    env = {**os.environ, **FIXED_MALLOC}
    done = subprocess.run([sys.executable, "-m", "iclgd.bench.measure", request], env=env,
                          capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"memory measurement {setup} failed:\n{done.stderr[-3000:]}")
    got = json.loads(done.stdout.strip().splitlines()[-1])
    return {k: Samples(tuple(float(x) for x in v)) for k, v in got.items()}


def calibration_setup(mib: int = 64) -> dict[str, Callable[[], Any]]:
    """Two known allocations: one tensor of `mib` MiB, and three of `mib` MiB alive together."""
    import torch

    n = mib * 2**20 // 4

    def one() -> Any:
        return torch.ones(n)

    def three() -> Any:
        a, b = torch.ones(n), torch.ones(n)
        return a + b  # a, b and the sum alive at once

    return {"one": one, "three": three}


# ----------------------------------------------------------------------------- recording work


@dataclass(frozen=True)
class Call:
    """One forward call of a Hugging Face language model: token shape, grad mode, vmap batch
    size, and the number of positions it computed logits at (`logits_to_keep`; 0 = all)."""

    shape: tuple[int, ...]
    grad: bool
    vmapped: int = 1
    kept: int = 0


@dataclass(frozen=True)
class Update:
    """One finetuning update: the optimizer (`sgd` or `adam`), its rate, the HF names of the
    tensors it changed, and whether its loss reads every layer out (Deutch et al.'s
    layer-causal finetuning) rather than the final logits only."""

    optimizer: str
    lr: float
    trained: tuple[str, ...]
    layer_causal: bool = False


@contextmanager
def record_updates() -> Iterator[list[Update]]:
    """Record every update `iclgd.probes.finetune` applies inside the block (one per step)."""
    from iclgd.probes import finetune as ft

    updates: list[Update] = []
    original = ft._step

    def spy(run: Any, *args: Any) -> None:
        updates.append(Update(run.spec.optimizer, float(run.lr), tuple(run.params),
                              bool(run.spec.layer_causal)))
        original(run, *args)

    ft._step = spy  # type: ignore[assignment]
    try:
        yield updates
    finally:
        ft._step = original  # type: ignore[assignment]


@contextmanager
def record_lm_calls() -> Iterator[list[Call]]:
    """Record every forward call of a Hugging Face language model (a `PreTrainedModel` with an
    output head) inside the block, through a global forward pre-hook: what a plain Hugging Face
    replay of the same work must run (a forward hook: it also sees how many positions' logits
    were computed)."""
    import torch
    from torch._C import _functorch as ft
    from transformers import PreTrainedModel

    calls: list[Call] = []

    def hook(module: Any, args: tuple, output: Any) -> None:
        if not args or not isinstance(module, PreTrainedModel) \
                or module.get_output_embeddings() is None:  # only the LM with its head
            return
        x = args[0]
        if not isinstance(x, torch.Tensor):
            return
        vmapped, inner = 1, x
        while ft.is_functorch_wrapped_tensor(inner):  # grad / vmap levels
            bdim = ft.maybe_get_bdim(inner) if ft.is_batchedtensor(inner) else -1
            inner = ft.get_unwrapped(inner)
            vmapped *= inner.shape[bdim] if bdim >= 0 else 1
        logits = getattr(output, "logits", None)
        kept = int(logits.shape[-2]) if logits is not None else 0
        calls.append(Call(tuple(x.shape), torch.is_grad_enabled(), vmapped,
                          0 if kept == x.shape[-1] else kept))

    handle = torch.nn.modules.module.register_module_forward_hook(hook)
    try:
        yield calls
    finally:
        handle.remove()


def plain_replay(hf: Any, calls: list[Call], vocab: int, seed: int = 0,
                 updates: list[Update] | None = None) -> Callable[[], None]:
    """The recorded work as plain Hugging Face calls on `hf`, on random tokens of the same
    shapes: a no-grad call → `hf(tokens, use_cache=False, logits_to_keep=kept)` (logits at
    as many positions as the recorded call computed); a grad call (a finetuning step) →
    forward, next-token cross-entropy and `backward()` once per vmapped task. Without `updates`
    gradients flow to every parameter and nothing is updated; with them (one per grad call, in
    order, `record_updates`) only the updated tensors get gradients and each step ends with
    PyTorch's own optimizer on them (`torch.optim.SGD`, or `torch.optim.Adam` with its fused
    kernel), a new optimizer whenever the optimizer or the trained set changes (a new run). A
    layer-causal update's loss is the per-layer read-out cross-entropy summed over layers (each
    layer's input detached: `layer_causal_hooks`), the arithmetic that method must do."""
    import torch
    import torch.nn.functional as F

    from iclgd.probes.finetune_methods import layer_causal_hooks

    def ce(logits: Any, tokens: Any) -> Any:
        return F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]),
                               tokens[:, 1:].reshape(-1))

    def loss(tokens: Any, layer_causal: bool) -> Any:
        if not layer_causal:
            return ce(hf(tokens, use_cache=False).logits, tokens)
        with layer_causal_hooks(hf) as readouts:
            hf(tokens, use_cache=False, logits_to_keep=1)
            return sum(ce(lg, tokens) for lg in readouts)

    g = torch.Generator().manual_seed(seed)
    device = next(hf.parameters()).device
    work = [(torch.randint(0, vocab, c.shape, generator=g).to(device), c) for c in calls]
    steps = iter(updates or [])
    named = dict(hf.named_parameters(remove_duplicate=False))  # tied weights under each name

    def optimizer_for(u: Update, last: tuple[Any, Any]) -> tuple[Any, Any]:
        if last[0] == (u.optimizer, u.trained):
            return last
        for p in named.values():
            p.requires_grad_(False)
        for n in u.trained:
            named[n].requires_grad_(True)
        params = list({id(named[n]): named[n] for n in u.trained}.values())
        opt = torch.optim.SGD(params, lr=u.lr) if u.optimizer == "sgd" \
            else torch.optim.Adam(params, lr=u.lr, fused=True)
        return (u.optimizer, u.trained), opt

    def run() -> None:
        last: tuple[Any, Any] = (None, None)
        for tokens, c in work:
            if not c.grad:
                with torch.no_grad():
                    hf(tokens, use_cache=False, logits_to_keep=c.kept)
                continue
            u = next(steps, None) if updates is not None else None
            if u is not None:
                last = optimizer_for(u, last)
            for _ in range(c.vmapped):
                loss(tokens, u is not None and u.layer_causal).backward()
                if u is not None:
                    last[1].step()
                hf.zero_grad(set_to_none=True)

    return run


def main() -> None:  # fresh-process entry of `peak_memory`
    request = json.loads(sys.argv[1])
    got = measure_in_process(request["setup"], request["kwargs"], request["rounds"],
                             request["device"])
    print(json.dumps(got))


if __name__ == "__main__":
    main()

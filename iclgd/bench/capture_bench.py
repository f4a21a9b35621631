"""Capture vs a plain HF forward: time and peak memory on the same tokens.

`ours` = `iclgd.hooks.capture(bridge, tokens, names, positions=-1, return_logits=True)` with
the hooks `iclgd compare` reads per prompt (`blocks.{l}.hook_attn_out` and
`blocks.{l}.attn.hook_attn_scores` of every layer, at the last position); `baseline` = the
bridge's own Hugging Face module called plainly, `hf(tokens, use_cache=False,
logits_to_keep=1)` under no_grad (same weights, same eager attention, and the logits at the one
position capture returns, which it too computes alone). TransformerLens' `run_with_cache` (every hook point,
every position) is measured alongside for scale: its memory must exceed the plain forward's.
"""

from __future__ import annotations

from typing import Any

from iclgd.bench import Row
from iclgd.bench.measure import interleaved, peak_memory, ratio_stats

TARGET_TIME, TARGET_MEMORY = "<= 1.03", "<= 1.02"


def variants(kind: str, batch: int, pos: int, tiny: bool, device: str) -> dict[str, Any]:
    """`{"plain", "capture", "run_with_cache"}` → zero-argument callables on one model."""
    import torch

    from iclgd.bench.models import hf_model
    from iclgd.hooks import act_name, capture, hf_module, load_model

    bridge = load_model(hf_model(kind, tiny), device=device)
    hf = hf_module(bridge)
    n_layers = int(bridge.cfg.n_layers)
    names = [act_name(hook, layer) for layer in range(n_layers)
             for hook in ("attn_out", "attn_scores")]
    tokens = torch.randint(0, int(hf.config.vocab_size), (batch, pos),
                           generator=torch.Generator().manual_seed(1)).to(device)

    def plain() -> Any:
        with torch.no_grad():
            return hf(tokens, use_cache=False, logits_to_keep=1).logits

    def hooked() -> Any:
        return capture(bridge, tokens, names, positions=-1, return_logits=True, to=None)

    def full_cache() -> Any:
        with torch.no_grad():
            return bridge.run_with_cache(tokens)

    return {"plain": plain, "capture": hooked, "run_with_cache": full_cache}


def run(quick: bool, device: str, tiny: bool = False) -> list[Row]:
    kinds = ("gpt2-small",) if quick else ("gpt2-small", "smollm2")
    batch, pos = (1, 128) if quick else (2, 256)
    if tiny:
        batch, pos = 1, 32
    rounds, mem_rounds = (3, 2) if quick or tiny else (7, 3)
    rows = []
    for kind in kinds:
        fns = variants(kind, batch, pos, tiny, device)
        times = interleaved(fns, rounds, device)
        mem = peak_memory("iclgd.bench.capture_bench:variants",
                          {"kind": kind, "batch": batch, "pos": pos, "tiny": tiny,
                           "device": device}, mem_rounds, device)
        shape = f"{kind}{' (tiny)' if tiny else ''}, {batch}x{pos} tokens"
        r, lo, hi = ratio_stats(times["capture"], times["plain"])
        rows.append(Row("capture", f"capture time, {shape}", times["capture"].median,
                        times["plain"].median, r, "s", TARGET_TIME, (lo, hi)))
        for variant, target in (("capture", TARGET_MEMORY), ("run_with_cache", None)):
            r, lo, hi = ratio_stats(mem[variant], mem["plain"])
            rows.append(Row("capture", f"{variant} peak memory, {shape}",
                            mem[variant].median / 2**20, mem["plain"].median / 2**20, r, "MiB",
                            target, (lo, hi),
                            "" if target else "every activation kept: for scale"))
        del fns
    return rows

"""Batched finetuning (`finetune_batched`: one `vmap(grad)` per step) vs a loop over tasks.

The loop is the plain PyTorch way to finetune many tasks: per task a `copy.deepcopy` of the
model, `torch.optim.SGD` and `loss.backward()`, the same loss (mean next-token cross-entropy
over the target tokens) and batches. Both give the same deltas (checked: the row's note holds
the largest difference). Regimes:
- GINC model (the default `iclgd train ginc` shape), 32 tasks, batch-1 SGD on all weights, 4
  demonstrations of 24 tokens (4 steps); and full-batch GD, 8 × 24 tokens, 2 epochs;
- SmolLM2-135M's shape, Dai's `kv` method (W_K, W_V of every layer, batch 1, SGD), 4 tasks of 4
  demonstrations × 16 tokens: the per-query finetuning `compare`/`order` run (full run only).
Ratio = loop time / batched time (a speed-up; target ≥ 5 on GINC).
"""

from __future__ import annotations

import copy
from typing import Any

from iclgd.bench import Row
from iclgd.bench.measure import interleaved, ratio_stats

TARGET = ">= 5"
MAX_DIFF = 1e-5


def make_tasks(n_tasks: int, n_demos: int, seq: int, vocab: int) -> Any:
    """Random-token demonstrations, the last two tokens of each being the label."""
    import torch

    from iclgd.data.tasks import demos_from_token_examples

    g = torch.Generator().manual_seed(1)
    tokens = torch.randint(0, vocab, (n_tasks, n_demos, seq), generator=g)
    return demos_from_token_examples(tokens, [seq - 2, seq - 1])


def torch_loop(hf: Any, demos: Any, *, lr: float, full_batch: bool, epochs: int, loss_on: str,
               trained: set[str] | None = None) -> list[dict[str, Any]]:
    """Per task: deepcopy, torch.optim.SGD over `trained` (None: all), backward; the deltas."""
    import torch
    import torch.nn.functional as F

    out = []
    for t in range(demos.tokens.shape[0]):
        m = copy.deepcopy(hf)
        params = {n: p for n, p in m.named_parameters() if trained is None or n in trained}
        for n, p in m.named_parameters():
            p.requires_grad_(n in params)
        start = {n: p.detach().clone() for n, p in params.items()}
        opt = torch.optim.SGD(params.values(), lr=lr)
        target = demos.target_mask(loss_on)[t]
        n_demos = demos.n_demos
        groups = [list(range(n_demos))] if full_batch else [[i] for i in range(n_demos)]
        for _ in range(epochs):
            for idx in groups:
                tok = demos.tokens[t, idx]
                logits = m(tok, use_cache=False).logits[:, :-1]
                ce = F.cross_entropy(logits.reshape(-1, logits.shape[-1]),
                                     tok[:, 1:].reshape(-1), reduction="none")
                loss = ce[target[idx, 1:].reshape(-1)].mean()
                opt.zero_grad()
                loss.backward()
                opt.step()
        out.append({n: p.detach() - start[n] for n, p in params.items()})
    return out


def max_diff(batched: list[Any], looped: list[dict[str, Any]]) -> float:
    return max(float((w.deltas[n] - d[n]).abs().max())
               for w, d in zip(batched, looped, strict=True) for n in w.deltas)


def regime(bridge: Any, label: str, method: str, demos: Any, *, epochs: int, full: bool,
           rounds: int, device: str) -> Row:
    from iclgd.hooks import hf_module
    from iclgd.probes.finetune import finetune_batched

    hf = hf_module(bridge)
    got: dict[str, Any] = {}

    def batched() -> None:
        got["batched"] = finetune_batched(bridge, demos, method=method, lr=1e-2, epochs=epochs)

    def loop() -> None:
        first = got["batched"][0]
        got["loop"] = torch_loop(hf, demos, lr=1e-2, full_batch=full, epochs=epochs,
                                 loss_on=first.loss_on, trained=set(first.deltas))

    from iclgd.data.tasks import TokenizedDemos

    warm = TokenizedDemos(demos.tokens[:1], demos.valid[:1], demos.label_mask[:1])
    finetune_batched(bridge, warm, method=method, lr=1e-2, epochs=1)  # first-call costs
    times = interleaved({"batched": batched, "loop": loop}, rounds, device, warmup=0)
    diff = max_diff(got["batched"], got["loop"])
    if diff > MAX_DIFF:
        raise RuntimeError(f"{label}: batched and looped deltas differ by {diff:.2e}")
    r, lo, hi = ratio_stats(times["loop"], times["batched"])
    return Row("finetune", label, times["batched"].median, times["loop"].median, r,
               "s (ratio = loop / batched)", TARGET if "GINC" in label else None, (lo, hi),
               f"max |Δ batched − Δ loop| = {diff:.1e}")


def run(quick: bool, device: str, tiny: bool = False) -> list[Row]:
    from iclgd.bench.models import hf_model
    from iclgd.hooks import load_model

    rounds = 1 if quick or tiny else 2
    n_tasks = 4 if tiny else (16 if quick else 32)
    ginc = load_model(hf_model("ginc"), device=device)
    vocab = int(ginc.cfg.d_vocab)
    rows = [
        regime(ginc, f"GINC model, {n_tasks} tasks, batch-1 SGD, 4 steps of 1x24 tokens", "sgd",
               make_tasks(n_tasks, 4, 24, vocab), epochs=1, full=False, rounds=rounds,
               device=device),
        regime(ginc, f"GINC model, {n_tasks} tasks, full-batch GD, 2 steps of 8x24 tokens", "gd",
               make_tasks(n_tasks, 8, 24, vocab), epochs=2, full=True, rounds=rounds,
               device=device),
    ]
    if not quick:
        smol = load_model(hf_model("smollm2", tiny), device=device)
        rows.append(regime(smol, f"SmolLM2-sized{' (tiny)' if tiny else ''}, 4 tasks, kv (Dai), "
                           "4 steps of 1x16 tokens", "kv",
                           make_tasks(4, 4, 16, int(smol.cfg.d_vocab)), epochs=1, full=False,
                           rounds=rounds, device=device))
    return rows

"""LSA training steps (`iclgd reproduce von-oswald`) vs a plain PyTorch loop of the same step.

Ours: `iclgd.analyses.von_oswald.train_lsa` (1 layer, batch 2048, d = n = 10, its default fast
path). Baseline: the same step written as a plain loop over the same parameters — fresh tasks
(`sample_linear_tasks`), von Oswald et al. (2023)'s tokens, each layer
`E ← E + Σ_h (E W_Q)(C W_K)^T (C W_V) W_O` over the context rows `C` (linear attention, no
softmax, queries do not attend to themselves), half-MSE at the query, Adam (0.9, 0.98, 1e-9),
global-norm clipping. Ratio = seconds per step, ours / plain.
"""

from __future__ import annotations

from typing import Any

from iclgd.bench import Row
from iclgd.bench.measure import interleaved, ratio_stats


def plain_steps(steps: int, batch: int, d: int = 10, n: int = 10, seed: int = 0) -> None:
    """`steps` training steps of the plain loop (module docstring)."""
    import torch

    from iclgd.analyses.von_oswald import lsa_config
    from iclgd.constructions.von_oswald import von_oswald_tokens
    from iclgd.data.regression import sample_linear_tasks
    from iclgd.hooks.linear_attention import LinearAttentionTransformer

    model = LinearAttentionTransformer(lsa_config(d, 1, shared=True), seed=seed)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3, betas=(0.9, 0.98), eps=1e-9)
    gen = torch.Generator().manual_seed(seed + 1)
    for _ in range(steps):
        t = sample_linear_tasks(batch, n, d, generator=gen, dtype=torch.float32)
        E = von_oswald_tokens(t.X, t.Y, t.x_query)
        for block in model.blocks:
            a, ctx = block.attn, E[:, :n]
            out: Any = 0
            for h in range(model.cfg.n_heads):
                scores = (E @ a.W_Q[h]) @ (ctx @ a.W_K[h]).transpose(1, 2)
                out = out + scores @ (ctx @ a.W_V[h]) @ a.W_O[h]
            E = E + out
        loss = 0.5 * ((-E[:, -1, d:] - t.y_query) ** 2).sum(-1).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 0.001)
        opt.step()


def run(quick: bool, device: str, tiny: bool = False) -> list[Row]:
    from iclgd.analyses.von_oswald import train_lsa

    steps, batch = (5, 64) if tiny else ((20, 2048) if quick else (60, 2048))
    rounds = 2 if quick or tiny else 3
    times = interleaved({
        "ours": lambda: train_lsa(steps=steps, batch=batch, progress=False),
        "plain": lambda: plain_steps(steps, batch),
    }, rounds, "cpu")
    r, lo, hi = ratio_stats(times["ours"], times["plain"])
    return [Row("lsa", f"LSA training, 1 layer, batch {batch}, {steps} steps",
                steps / times["ours"].median, steps / times["plain"].median, r,
                "steps/s (ratio = time ours / plain)", "<= 1", (lo, hi),
                "CPU (the step is small enough that one thread is fastest)")]

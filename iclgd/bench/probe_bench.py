"""Probe throughput: `icl_accuracy` in prompt tokens per second vs plain HF forwards.

`icl_accuracy` (`iclgd.probes.icl`) on the GINC-shaped model: 256 prompts per n for n = 4, 16
(GINC-like lengths, k = 3: 4(n + 1) tokens), default batch 64, logits read at the answer
position only. Its forward calls are recorded and replayed as plain `hf(tokens)` calls on the
same shapes (`iclgd.bench.measure.plain_replay`). Ratio = our tokens/s / plain tokens/s.
"""

from __future__ import annotations

from iclgd.bench import Row
from iclgd.bench.measure import interleaved, plain_replay, ratio_stats, record_lm_calls

TARGET = ">= 0.77"  # = 1 / 1.3: the sweep's budget, this being most of a sweep's work


def run(quick: bool, device: str, tiny: bool = False) -> list[Row]:
    import torch

    from iclgd.bench.models import hf_model
    from iclgd.hooks import hf_module, load_model
    from iclgd.probes.icl import IclPrompts, icl_accuracy

    model = load_model(hf_model("ginc"), device=device)
    vocab = int(model.cfg.d_vocab)
    n_prompts = 32 if tiny else (128 if quick else 256)
    g = torch.Generator().manual_seed(0)
    prompts = {n: IclPrompts.last_token(n, torch.randint(0, vocab, (n_prompts, 4 * (n + 1)),
                                                         generator=g),
                                        torch.randint(0, vocab, (n_prompts,), generator=g))
               for n in (4, 16)}
    with record_lm_calls() as calls:
        icl_accuracy(model, prompts)
    tokens = sum(c.shape[0] * c.shape[1] for c in calls)
    times = interleaved({
        "ours": lambda: icl_accuracy(model, prompts),
        "plain": plain_replay(hf_module(model), calls, vocab),
    }, 2 if quick or tiny else 5, device)
    r, lo, hi = ratio_stats(times["plain"], times["ours"])
    return [Row("probe", f"icl_accuracy throughput, GINC model, {len(calls)} batches",
                tokens / times["ours"].median, tokens / times["plain"].median, r,
                "tokens/s", TARGET, (lo, hi))]

"""In-context learning probes: accuracy by number of demonstrations, and the ICL score.

- `icl_accuracy` (Xie et al. 2022, GINC; Shen et al. 2024's accuracy reading): top-1
  token over the full vocabulary at the answer position equals the gold token; mean over prompts
  with the binomial standard error `sqrt(p (1 - p) / N)`, per number of demonstrations n.
- `icl_score` (Olsson et al. 2022, "In-context Learning and Induction Heads"): loss at a late token minus loss at an early
  token of the same context, averaged over sequences. Negative = the model predicts better with
  more context. Default positions are 50/512 and 500/512 of the model's context `n_ctx`.

Both read only the logits at the needed positions through `iclgd.hooks.capture` (no full
activation cache), in batches.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from jaxtyping import Int
from torch import Tensor

from iclgd.errors import IclgdError
from iclgd.hooks.capture import capture
from iclgd.hooks.names import act_name


@dataclass(frozen=True, eq=False)
class IclPrompts:
    """Prompts with `n_examples` demonstrations each, one answer per prompt.

    tokens `[batch, pos]` (right-padded rows are fine: only positions up to the answer position
    are read by a causal model), answer_positions `[batch]` (the position whose next-token
    prediction is scored, usually the last prompt token), gold `[batch]` (the correct next
    token id).
    """

    n_examples: int
    tokens: Int[Tensor, "batch pos"]
    answer_positions: Int[Tensor, " batch"]
    gold: Int[Tensor, " batch"]

    def __post_init__(self) -> None:
        tokens = torch.as_tensor(self.tokens)
        if tokens.ndim != 2 or tokens.shape[0] == 0 or tokens.shape[1] == 0:
            raise IclgdError(f"prompt tokens must be a non-empty [batch, pos] array, got {tuple(tokens.shape)}")
        pos = torch.as_tensor(self.answer_positions).long().reshape(-1)
        gold = torch.as_tensor(self.gold).long().reshape(-1)
        if pos.numel() != tokens.shape[0] or gold.numel() != tokens.shape[0]:
            raise IclgdError(
                f"need one answer position and one gold token per prompt: {tokens.shape[0]} prompts, "
                f"{pos.numel()} positions, {gold.numel()} gold tokens"
            )
        if int(pos.min()) < 0 or int(pos.max()) >= tokens.shape[1]:
            raise IclgdError(f"answer positions must lie in [0, {tokens.shape[1]}), got {pos.tolist()[:5]}...")
        object.__setattr__(self, "tokens", tokens.long())
        object.__setattr__(self, "answer_positions", pos)
        object.__setattr__(self, "gold", gold)

    def __len__(self) -> int:
        return int(self.tokens.shape[0])

    @classmethod
    def last_token(cls, n_examples: int, tokens: Any, gold: Any) -> IclPrompts:
        """Prompts of equal length whose answer follows the last token."""
        tokens = torch.as_tensor(tokens).long()
        pos = torch.full((tokens.shape[0],), tokens.shape[1] - 1, dtype=torch.long)
        return cls(n_examples, tokens, pos, torch.as_tensor(gold).long())


@dataclass(frozen=True)
class IclAccuracy:
    """Accuracy per number of demonstrations: `accuracy[n]`, `se[n]` (binomial), `count[n]`."""

    accuracy: dict[int, float]
    se: dict[int, float]
    count: dict[int, int]

    @property
    def n_values(self) -> list[int]:
        return sorted(self.accuracy)

    def to_dict(self) -> dict[str, dict[str, float]]:
        """JSON form with n as a string key: `{"accuracy": {"0": ..}, "se": {..}, "count": {..}}`."""
        return {
            "accuracy": {str(n): self.accuracy[n] for n in self.n_values},
            "se": {str(n): self.se[n] for n in self.n_values},
            "count": {str(n): self.count[n] for n in self.n_values},
        }


def binomial_se(p: float, count: int) -> float:
    """Standard error of a mean of `count` 0/1 outcomes with mean `p`: `sqrt(p(1-p)/count)`."""
    return math.sqrt(max(p * (1.0 - p), 0.0) / count)


def _last_hook(model: Any) -> str:
    return act_name("resid_post", int(model.cfg.n_layers) - 1)


def predictions_at(
    model: Any, tokens: Int[Tensor, "batch pos"], positions: Int[Tensor, " batch"], *,
    batch_size: int = 64,
) -> Int[Tensor, " batch"]:
    """Top-1 next-token prediction (argmax over the full vocabulary) at one position per row.

    Runs `capture(..., positions=<one per row>, return_logits=True)` in batches: only the logits
    at the answer positions leave the model.
    """
    out = []
    for lo in range(0, tokens.shape[0], batch_size):
        rows = tokens[lo: lo + batch_size]
        pos = positions[lo: lo + batch_size]
        # trim right padding beyond the last answer position of this batch
        rows = rows[:, : int(pos.max()) + 1]
        got = capture(model, rows, [_last_hook(model)], positions=pos, return_logits=True)
        out.append(got["logits"].argmax(dim=-1))
    return torch.cat(out)


def icl_accuracy(
    model: Any, prompts: Mapping[int, IclPrompts] | Iterable[IclPrompts], *, batch_size: int = 64,
) -> IclAccuracy:
    """ICL accuracy by number of demonstrations (Xie et al. 2022; Shen et al. 2024's accuracy reading).

    Args:
        model: a TransformerBridge (any model `iclgd.hooks.capture` accepts with token ids).
        prompts: `IclPrompts` per n (a mapping n → prompts, or an iterable; several sets with the
            same n are pooled).
        batch_size: prompts per forward pass.

    Returns:
        `IclAccuracy`: for each n the fraction of prompts whose argmax next token at the answer
        position equals the gold token, its binomial SE `sqrt(p(1-p)/N)` and N.
    """
    sets = list(prompts.values()) if isinstance(prompts, Mapping) else list(prompts)
    if not sets:
        raise IclgdError("no ICL prompts given: pass IclPrompts for at least one n")
    correct: dict[int, list[Tensor]] = {}
    for ps in sets:
        pred = predictions_at(model, ps.tokens, ps.answer_positions, batch_size=batch_size)
        correct.setdefault(int(ps.n_examples), []).append(pred.cpu() == ps.gold)
    acc, se, count = {}, {}, {}
    for n, parts in sorted(correct.items()):
        hits = torch.cat(parts).to(torch.float64)
        p = float(hits.mean())
        acc[n], se[n], count[n] = p, binomial_se(p, hits.numel()), int(hits.numel())
    return IclAccuracy(acc, se, count)


@dataclass(frozen=True)
class IclScore:
    """`score = loss_late - loss_early` (mean over sequences), with its SE over sequences.

    Losses are natural-log cross entropies of the token at index `early` / `late` (0-based)
    given all tokens before it. `n_ctx` is the context the default positions were scaled to.
    """

    score: float
    se: float
    loss_early: float
    loss_late: float
    early: int
    late: int
    n_ctx: int
    n_sequences: int

    def to_dict(self) -> dict[str, float | int]:
        return dict(self.__dict__)


def default_icl_positions(n_ctx: int) -> tuple[int, int]:
    """Olsson et al.'s token 50 and token 500 of a 512-token context, scaled to `n_ctx`:
    `(max(1, round(50 n_ctx / 512)), min(n_ctx - 1, round(500 n_ctx / 512)))`."""
    if n_ctx < 3:
        raise IclgdError(f"the ICL score needs a context of at least 3 tokens, the model has n_ctx={n_ctx}")
    early = max(1, round(50 * n_ctx / 512))
    late = min(n_ctx - 1, round(500 * n_ctx / 512))
    return early, max(late, early + 1)


def icl_score(
    model: Any, tokens: Int[Tensor, "batch pos"], early: int | None = None, late: int | None = None,
    *, batch_size: int = 32,
) -> IclScore:
    """ICL score of Olsson et al. 2022: loss at a late token minus loss at an early token.

    Args:
        model: a TransformerBridge.
        tokens: `[batch, pos]` natural (in-distribution) sequences, `pos > late`.
        early, late: 0-based token indices whose loss is measured (the logits at `early - 1`
            predict token `early`). Default `default_icl_positions(model.cfg.n_ctx)`: 50 and
            500 for n_ctx = 512. The positions used are recorded in the result.

    Returns:
        `IclScore` (mean over sequences of `loss[late] - loss[early]`, natural log, and its SE).
    """
    n_ctx = int(model.cfg.n_ctx)
    d_early, d_late = default_icl_positions(n_ctx)
    early = d_early if early is None else int(early)
    late = d_late if late is None else int(late)
    tokens = torch.as_tensor(tokens).long()
    if tokens.ndim != 2 or tokens.shape[0] == 0:
        raise IclgdError(f"ICL-score tokens must be a non-empty [batch, pos] array, got {tuple(tokens.shape)}")
    if not 1 <= early < late < tokens.shape[1]:
        raise IclgdError(
            f"ICL-score positions must satisfy 1 <= early < late < sequence length "
            f"({tokens.shape[1]}); got early={early}, late={late}: pass longer sequences or "
            "smaller positions"
        )
    diffs, lo_e, lo_l = [], [], []
    for lo in range(0, tokens.shape[0], batch_size):
        rows = tokens[lo: lo + batch_size, : late + 1]
        got = capture(model, rows, [_last_hook(model)], positions=[early - 1, late - 1],
                      return_logits=True)
        logp = torch.log_softmax(got["logits"].to(torch.float64), dim=-1)  # [b, 2, vocab]
        target = rows[:, [early, late]].unsqueeze(-1)
        loss = -logp.gather(-1, target).squeeze(-1)  # [b, 2]
        lo_e.append(loss[:, 0])
        lo_l.append(loss[:, 1])
        diffs.append(loss[:, 1] - loss[:, 0])
    d = torch.cat(diffs)
    n = d.numel()
    se = float(d.std(unbiased=True) / math.sqrt(n)) if n > 1 else float("nan")
    return IclScore(float(d.mean()), se, float(torch.cat(lo_e).mean()), float(torch.cat(lo_l).mean()),
                    early, late, n_ctx, n)


def stack_prompts(rows: Sequence[Sequence[int]], pad: int = 0) -> tuple[Tensor, Tensor]:
    """Right-pad variable-length prompts: `(tokens [batch, max_len], last_positions [batch])`."""
    if not rows:
        raise IclgdError("no prompts to stack")
    width = max(len(r) for r in rows)
    out = torch.full((len(rows), width), pad, dtype=torch.long)
    for i, r in enumerate(rows):
        out[i, : len(r)] = torch.as_tensor(list(r), dtype=torch.long)
    return out, torch.as_tensor([len(r) - 1 for r in rows], dtype=torch.long)

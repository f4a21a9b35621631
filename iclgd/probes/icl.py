"""In-context learning probes: accuracy by number of demonstrations, and the ICL score.

- `icl_accuracy` (Xie et al. 2022, GINC; Shen et al. 2024's accuracy reading): top-1
  token over the full vocabulary at the answer position equals the gold token; mean over prompts
  with the binomial standard error `sqrt(p (1 - p) / N)`, per number of demonstrations n.
- `icl_score` (Olsson et al. 2022, "In-context Learning and Induction Heads"): loss at a late token minus loss at an early
  token of the same context, averaged over sequences. Negative = the model predicts better with
  more context. Default positions are 50/512 and 500/512 of the model's context `n_ctx`.
- `icl_gain`: accuracy at the most demonstrations minus accuracy at the fewest (Xie et al.
  2022: in-context learning is accuracy rising with n), with its standard error and 95 % Wald
  interval; ICL has *emerged* when the interval's lower bound is above 0.

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
from iclgd.hooks.batching import BatchSize, model_device, run_batched
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


Z_95 = 1.959963984540054  # two-sided 95 % normal quantile


@dataclass(frozen=True)
class IclGain:
    """Accuracy gain from `n_from` to `n_to` demonstrations (fractions), its SE and 95 % interval.

    `emerged` is True when `ci95_low > 0`: the gain is distinguishable from no gain.
    """

    n_from: int
    n_to: int
    gain: float
    se: float
    ci95_low: float
    ci95_high: float
    emerged: bool

    def to_dict(self) -> dict[str, Any]:
        return {"n_from": self.n_from, "n_to": self.n_to, "gain": self.gain, "gain_se": self.se,
                "gain_ci95_low": self.ci95_low, "gain_ci95_high": self.ci95_high,
                "icl_emerged": self.emerged}


def icl_gain(
    accuracy: Mapping[Any, float], se: Mapping[Any, float], *, n_from: int | None = None,
    n_to: int | None = None,
) -> IclGain:
    """In-context gain `acc(n_to) - acc(n_from)` from per-n accuracies and their standard errors.

    Keys of `accuracy` / `se` are n (int or str, as in JSON rows); defaults: the fewest and the
    most demonstrations present. The accuracies at different n are measured on independent
    prompt sets, so `SE = sqrt(se_from**2 + se_to**2)` (difference of two independent binomial
    proportions) and the 95 % Wald interval is `gain +- 1.96 SE`; `emerged = lower bound > 0`.
    """
    acc = {int(n): float(v) for n, v in accuracy.items()}
    err = {int(n): float(v) for n, v in se.items()}
    if not acc:
        raise IclgdError("icl_gain needs accuracies for at least two values of n")
    lo = min(acc) if n_from is None else int(n_from)
    hi = max(acc) if n_to is None else int(n_to)
    missing = [n for n in (lo, hi) if n not in acc or n not in err]
    if missing or lo == hi:
        raise IclgdError(
            f"icl_gain needs accuracy and SE at two different n; got n={sorted(acc)}, asked "
            f"{lo} -> {hi}"
        )
    gain = acc[hi] - acc[lo]
    gain_se = math.sqrt(err[lo] ** 2 + err[hi] ** 2)
    low, high = gain - Z_95 * gain_se, gain + Z_95 * gain_se
    return IclGain(lo, hi, gain, gain_se, low, high, bool(low > 0.0))


def gain_verdict(gain: Mapping[str, Any], context: str = "") -> str:
    """One line for a user: the gain (`IclGain.to_dict()` form) in points with SE and 95 %
    interval, and whether ICL emerged; `context` names the prompt set."""
    where = f", {context}" if context else ""
    text = (f"ICL gain n = {gain['n_from']} -> {gain['n_to']}{where}: "
            f"{100 * gain['gain']:+.1f} points (SE {100 * gain['gain_se']:.1f}, 95 % CI "
            f"{100 * gain['gain_ci95_low']:+.1f} to {100 * gain['gain_ci95_high']:+.1f}): ")
    if gain["icl_emerged"]:
        return text + "ICL emerged (lower 95 % bound above 0)"
    return text + ("ICL did NOT emerge (gain not distinguishable from 0); comparisons of ICL "
                   "with GD on this model compare against no in-context learning")


def _last_hook(model: Any) -> str:
    return act_name("resid_post", int(model.cfg.n_layers) - 1)


def predictions_at(
    model: Any, tokens: Int[Tensor, "batch pos"], positions: Int[Tensor, " batch"], *,
    batch_size: BatchSize = 64,
) -> Int[Tensor, " batch"]:
    """Top-1 next-token prediction (argmax over the full vocabulary) at one position per row.

    Runs `capture(..., positions=<one per row>, return_logits=True)` in batches (`batch_size`
    an int, or `"auto"`/`AutoBatch`: halved on GPU out-of-memory): only the logits at the
    answer positions leave the model.
    """

    def step(lo: int, hi: int) -> Tensor:
        pos = positions[lo:hi]
        # trim right padding beyond the last answer position of this batch
        rows = tokens[lo:hi, : int(pos.max()) + 1]
        got = capture(model, rows, [_last_hook(model)], positions=pos, return_logits=True)
        return got["logits"].argmax(dim=-1)

    return torch.cat(run_batched(tokens.shape[0], batch_size, step, default=64,
                                 device=model_device(model), what="ICL accuracy"))


def icl_accuracy(
    model: Any, prompts: Mapping[int, IclPrompts] | Iterable[IclPrompts], *,
    batch_size: BatchSize = 64,
) -> IclAccuracy:
    """ICL accuracy by number of demonstrations (Xie et al. 2022; Shen et al. 2024's accuracy reading).

    Args:
        model: a TransformerBridge (any model `iclgd.hooks.capture` accepts with token ids).
        prompts: `IclPrompts` per n (a mapping n → prompts, or an iterable; several sets with the
            same n are pooled).
        batch_size: prompts per forward pass, or `"auto"` (halved on GPU out-of-memory).

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
    *, batch_size: BatchSize = 32,
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

    def step(lo: int, hi: int) -> Tensor:
        rows = tokens[lo:hi, : late + 1]
        got = capture(model, rows, [_last_hook(model)], positions=[early - 1, late - 1],
                      return_logits=True)
        logp = torch.log_softmax(got["logits"].to(torch.float64), dim=-1)  # [b, 2, vocab]
        target = rows[:, [early, late]].unsqueeze(-1)
        return -logp.gather(-1, target).squeeze(-1)  # [b, 2]

    loss = torch.cat(run_batched(tokens.shape[0], batch_size, step, default=32,
                                 device=model_device(model), what="ICL score"))
    d = loss[:, 1] - loss[:, 0]
    n = d.numel()
    se = float(d.std(unbiased=True) / math.sqrt(n)) if n > 1 else float("nan")
    return IclScore(float(d.mean()), se, float(loss[:, 0].mean()), float(loss[:, 1].mean()),
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

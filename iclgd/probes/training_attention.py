"""Attention to the training examples, ICL vs finetuning (Dai et al. 2023), pure functions.

Dai et al. read a finetuned model's update of a linear layer acting on the query, through their
dual form, as attention from the query to the training tokens, and compare it with the attention
ICL pays to the same tokens as demonstrations. Their released analysis
(`compute_training_example_attn.py`) fixes the recipe, followed here step by step:

- ICL side (`icl_training_attention`): the last token's **pre-softmax** attention scores (with
  the 1/sqrt(d_head) scaling the model applies) on the demonstration tokens, **summed over
  heads**, then a softmax over those tokens;
- FT side (`ft_training_attention`): the dot products of the finetuned model's query vector at
  the last token (all heads concatenated) with the query projections at the training tokens, then
  a softmax; their queries carry the 1/sqrt(d_head) factor, so each dot product carries 1/d_head;
- each demonstration's first token is left out on both sides (the caller slices);
- example level (`example_attention`): the softmax probabilities summed within each example;
- `topk_recall`: `|Top_K(ICL) ∩ Top_K(FT)| / K` with K = 100 tokens or 5 examples; its random
  baseline (`random_topk_recall`) draws K positions uniformly **with replacement** and counts
  those in `Top_K(FT)` (expected value K / n);
- Kendall τ-b (`iclgd.probes.metrics.kendall_tau`, scipy's default) between the two
  distributions; its random baseline (`random_kendall`) replaces FT's by U[0, 1)^n.

Two choices where Dai's code is silent: ties at the K-th place go to the lower index (a stable
sort; Dai's `np.argsort(-x)` breaks ties in an order that depends on numpy's sort
implementation — numpy 2's default is not stable even on 14 items), and K is clipped to the
number of items n (Dai's code raises an IndexError when n < K; here recall and its baseline are
then both 1, i.e. uninformative). Per row values are returned; Dai average them over test queries per
layer, then over layers.

Shapes: leading axes are batch axes (queries, layers); the last axis is tokens or examples.
Computation is in float64.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from jaxtyping import Float, Int
from torch import Tensor

from iclgd.errors import IclgdError
from iclgd.probes.metrics import kendall_tau

DAI_TOP_K_TOKENS = 100
DAI_TOP_K_EXAMPLES = 5


def _f64(x: Tensor) -> Tensor:
    return torch.as_tensor(x).detach().to(torch.float64)


def icl_training_attention(
    scores: Float[Tensor, "... n_heads n_tokens"],
) -> Float[Tensor, "... n_tokens"]:
    """ICL's attention to the demonstration tokens (Dai et al. 2023): `softmax(Σ_h s_h)` over the
    tokens, with `s_h` head h's pre-softmax scores from the last token (the model's own scaling,
    TransformerLens' `hook_attn_scores`). `[..., n_heads, n_tokens]` → `[..., n_tokens]`."""
    s = _f64(scores)
    if not torch.isfinite(s).all():
        raise IclgdError("attention scores on the demonstration tokens must be finite (masked "
                         "positions?): pass only tokens the last token can attend to")
    return torch.softmax(s.sum(-2), -1)


def ft_training_attention(
    q_query: Float[Tensor, "... d_q"],
    q_train: Float[Tensor, "... n_tokens d_q"],
    *,
    scale: float = 1.0,
) -> Float[Tensor, "... n_tokens"]:
    """FT's attention to its training tokens (Dai et al. 2023): `softmax_t(scale · q_t · q)`, with
    `q` the finetuned model's query vector at the last token and `q_t` the query projections at
    the training tokens, all heads concatenated. Dai's queries include 1/sqrt(d_head), so pass
    unscaled projections with `scale = 1 / d_head` to reproduce their numbers."""
    q, qt = _f64(q_query), _f64(q_train)
    if qt.shape[-1] != q.shape[-1] or qt.ndim != q.ndim + 1:
        raise IclgdError(f"q_train must be [..., n_tokens, {q.shape[-1]}] for q_query "
                         f"{tuple(q.shape)}, got {tuple(qt.shape)}")
    return torch.softmax(scale * torch.einsum("...td,...d->...t", qt, q), -1)


def example_attention(
    attn: Float[Tensor, "... n_tokens"], lengths: Int[Tensor, "... n_examples"] | Sequence[int]
) -> Float[Tensor, "... n_examples"]:
    """Token attention summed within each example (Dai et al.'s example level): the tokens are the
    examples' tokens in order, example `e` holding `lengths[..., e]` of them (shared by every row
    when 1-D). The lengths must add up to `n_tokens`."""
    a = _f64(attn)
    lens = torch.as_tensor(lengths, dtype=torch.long)
    if lens.ndim == 0 or (lens < 1).any() or (lens.sum(-1) != a.shape[-1]).any():
        raise IclgdError(f"example lengths must be >= 1 and add up to the {a.shape[-1]} tokens, "
                         f"got {lens.tolist()}")
    ends = lens.cumsum(-1)
    pos = torch.arange(a.shape[-1])
    member = (pos[:, None] >= (ends - lens)[..., None, :]) & (pos[:, None] < ends[..., None, :])
    return (a[..., :, None] * member.to(a.dtype)).sum(-2)


def _top(x: Tensor, k: int) -> Tensor:
    """Indices of the k largest entries of the last axis; ties go to the lower index."""
    return torch.sort(-x, dim=-1, stable=True).indices[..., :k]


def _clip_k(k: int, n: int) -> int:
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise IclgdError(f"K must be a positive integer, got {k!r}")
    return min(k, n)


def topk_recall(
    icl: Float[Tensor, "... n"], ft: Float[Tensor, "... n"], k: int
) -> Float[Tensor, "..."]:
    """Top-K recall (Dai et al. 2023): `|Top_K(icl) ∩ Top_K(ft)| / K` over the last axis, K
    clipped to n (module docstring); Dai use K = 100 tokens and K = 5 examples."""
    a, b = _f64(icl), _f64(ft)
    if a.shape != b.shape:
        raise IclgdError(f"icl and ft must have the same shape, got {tuple(a.shape)} and "
                         f"{tuple(b.shape)}")
    k = _clip_k(k, a.shape[-1])
    hit = (_top(a, k)[..., :, None] == _top(b, k)[..., None, :]).any(-1)
    return hit.sum(-1).to(torch.float64) / k


def random_topk_recall(
    ft: Float[Tensor, "... n"], k: int, generator: torch.Generator | None = None
) -> Float[Tensor, "..."]:
    """Dai et al.'s random baseline for `topk_recall`: K positions drawn uniformly from the n,
    with replacement (`torch.randint(0, n, (..., K), generator=generator)`), and the fraction of
    the draws that fall in `Top_K(ft)`; expected value K / n."""
    b = _f64(ft)
    k = _clip_k(k, b.shape[-1])
    draws = torch.randint(0, b.shape[-1], (*b.shape[:-1], k), generator=generator)
    hit = (draws[..., :, None] == _top(b, k)[..., None, :]).any(-1)
    return hit.sum(-1).to(torch.float64) / k


def random_kendall(
    icl: Float[Tensor, "... n"], generator: torch.Generator | None = None
) -> Float[Tensor, "..."]:
    """Dai et al.'s random baseline for the Kendall τ: τ-b between `icl` and a U[0, 1)^n vector
    drawn per row (`torch.rand(icl.shape, generator=generator, dtype=float64)`)."""
    a = _f64(icl)
    return kendall_tau(a, torch.rand(a.shape, generator=generator, dtype=torch.float64))


def training_attention_metrics(
    icl_scores: Float[Tensor, "... n_heads n_tokens"],
    q_query: Float[Tensor, "... d_q"],
    q_train: Float[Tensor, "... n_tokens d_q"],
    lengths: Int[Tensor, "... n_examples"] | Sequence[int],
    *,
    scale: float = 1.0,
    k_tokens: int = DAI_TOP_K_TOKENS,
    k_examples: int = DAI_TOP_K_EXAMPLES,
    generator: torch.Generator | None = None,
) -> dict[str, Float[Tensor, "..."]]:
    """Dai et al.'s whole training-attention analysis per row: Kendall τ-b and top-K recall at
    the token level (`kendall_tau`, `topk_recall_tokens`, K = `k_tokens`) and the example level
    (`kendall_tau_examples`, `topk_recall_examples`, K = `k_examples`), each with its random
    baseline (`..._random`). Inputs as in `icl_training_attention` / `ft_training_attention`
    (first tokens already left out); `lengths` = tokens per example."""
    icl = icl_training_attention(icl_scores)
    ft = ft_training_attention(q_query, q_train, scale=scale)
    return attention_agreement(icl, ft, lengths, k_tokens=k_tokens, k_examples=k_examples,
                               generator=generator)


def attention_agreement(
    icl: Float[Tensor, "... n_tokens"],
    ft: Float[Tensor, "... n_tokens"],
    lengths: Int[Tensor, "... n_examples"] | Sequence[int],
    *,
    k_tokens: int = DAI_TOP_K_TOKENS,
    k_examples: int = DAI_TOP_K_EXAMPLES,
    generator: torch.Generator | None = None,
) -> dict[str, Float[Tensor, "..."]]:
    """The comparison step of `training_attention_metrics` (Dai et al. 2023), on the two
    attention distributions already formed (`icl_training_attention`, `ft_training_attention`):
    for callers that form them in pieces, e.g. one layer at a time."""
    if icl.shape != ft.shape:
        raise IclgdError(f"ICL attends to {icl.shape[-1]} demonstration tokens but FT to "
                         f"{ft.shape[-1]} training tokens: they must be the same tokens")
    icl_ex, ft_ex = example_attention(icl, lengths), example_attention(ft, lengths)
    return {
        "kendall_tau": kendall_tau(icl, ft),
        "kendall_tau_random": random_kendall(icl, generator),
        "topk_recall_tokens": topk_recall(icl, ft, k_tokens),
        "topk_recall_tokens_random": random_topk_recall(ft, k_tokens, generator),
        "kendall_tau_examples": kendall_tau(icl_ex, ft_ex),
        "kendall_tau_examples_random": random_kendall(icl_ex, generator),
        "topk_recall_examples": topk_recall(icl_ex, ft_ex, k_examples),
        "topk_recall_examples_random": random_topk_recall(ft_ex, k_examples, generator),
    }

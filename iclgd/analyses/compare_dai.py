"""Dai et al.'s (2023) analyses that `iclgd compare` adds to the per-layer similarities.

- **Training-token attention** (`training_attention_layers`), their exact recipe
  (`iclgd.probes.training_attention`): ICL's pre-softmax scores from the answer position to the
  demonstration tokens, summed over heads, softmax; FT's query at the answer position dotted
  with its query projections (`hook_q`, heads concatenated, before any rotary embedding) at the
  training tokens, scaled by 1/d_head as their queries are, softmax. The tokens are every
  demonstration's tokens in the ICL prompt with **each demonstration's first token left out**,
  and the same tokens of the demonstration run as its own finetuning sequence (a BOS the
  template prepends there is left out too). Rows: Kendall τ-b (`kendall_tau`) and top-K recall
  at the token level (K = 100, `topk_recall_tokens`) and the example level (τ over examples,
  `kendall_tau_examples`; K = 5, `topk_recall_examples`), each with its random baseline
  (`..._random`), per layer, averaged over queries.
  One difference from Dai's pipeline: their queries at the training tokens are recorded during
  finetuning (demonstration i under the weights after i − 1 updates; with their k/v-only SGD
  `W_Q` never changes, only the layer inputs do); here they are computed under the finetuned
  weights, like the query at the answer position.
- **f2t mode** (`f2t_metrics`): SimAOU (normalised and raw, with their random baselines),
  SimAM before/after and SimAM_Δ averaged only over the queries where ZS is wrong and both FT and
  ICL are right (`..._f2t`, per layer; `n_f2t` = how many such queries; NaN when none), as
  Dai's `mode="f2t"`.

Random baselines here draw from the generator the caller passes (`iclgd compare` seeds its own
for these, so adding them left every earlier number unchanged).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from iclgd.analyses.runs import PromptSet, RunCapture
from iclgd.errors import IclgdError
from iclgd.probes import metrics
from iclgd.probes.training_attention import (
    DAI_TOP_K_EXAMPLES,
    DAI_TOP_K_TOKENS,
    attention_agreement,
    ft_training_attention,
    icl_training_attention,
)

TRAINING_ATTENTION_METRICS = (
    "kendall_tau",
    "kendall_tau_random",
    "topk_recall_tokens",
    "topk_recall_tokens_random",
    "kendall_tau_examples",
    "kendall_tau_examples_random",
    "topk_recall_examples",
    "topk_recall_examples_random",
)
F2T_METRICS = (
    "simaou_norm_f2t",
    "simaou_raw_f2t",
    "simaou_random_norm_f2t",
    "simaou_random_raw_f2t",
    "simam_before_f2t",
    "simam_after_f2t",
    "simam_delta_f2t",
)


def _demo_lengths(prompts: PromptSet) -> tuple[Tensor, Tensor]:
    """Tokens per demonstration in the ICL prompts (`[batch, n_demos]`) and in the finetuning
    sequences (`[batch, n_demos]`, real tokens)."""
    spans = prompts.icl.demo_spans
    span_len = spans[..., 1] - spans[..., 0]
    valid = prompts.demos.valid.sum(-1)
    if valid.ndim == 1:
        valid = valid.expand(len(prompts), -1)
    return span_len, valid


def token_alignment(prompts: PromptSet) -> tuple[Tensor, Tensor, Tensor] | None:
    """Dai's token selection: `(icl_idx, ft_idx, lengths)` with `icl_idx [batch, n_keep]` the
    kept positions relative to the first demonstration token of each ICL prompt, `ft_idx [batch,
    n_keep]` the same tokens' positions among the finetuning sequences' concatenated real tokens,
    and `lengths [batch, n_demos]` the kept tokens per demonstration. Each demonstration's first
    token is left out (and a BOS the finetuning sequence has in front). None when a
    demonstration has a single token (nothing left to compare)."""
    span_len, valid = _demo_lengths(prompts)
    offset = valid - span_len  # tokens the finetuning sequence has in front (BOS)
    if (offset < 0).any() or (span_len < 2).any():
        return None
    first = prompts.icl.demo_spans[:, :1, 0]
    icl_rows, ft_rows = [], []
    for b in range(len(prompts)):
        icl_pos, ft_pos, ft_start = [], [], 0
        for i in range(prompts.demos.n_demos):
            a, e = (int(x) for x in prompts.icl.demo_spans[b, i])
            o = int(offset[b, i])
            icl_pos += range(a + 1 - int(first[b]), e - int(first[b]))
            ft_pos += range(ft_start + o + 1, ft_start + int(valid[b, i]))
            _check_same_tokens(prompts, b, i, a + 1, e, o + 1)
            ft_start += int(valid[b, i])
        icl_rows.append(icl_pos)
        ft_rows.append(ft_pos)
    return torch.tensor(icl_rows), torch.tensor(ft_rows), span_len - 1


def _check_same_tokens(prompts: PromptSet, row: int, demo: int, a: int, e: int, o: int) -> None:
    tokens = prompts.demos.tokens
    seq = tokens[row, demo] if tokens.ndim == 3 else tokens[demo]
    if not torch.equal(seq[o : o + e - a], prompts.icl.tokens[row, a:e]):
        raise IclgdError(f"demonstration {demo} of query {row} is tokenised differently on its "
                         "own and inside the ICL prompt: tokenise demonstrations per segment")


def training_attention_layers(
    icl: RunCapture, ft: RunCapture, prompts: PromptSet, *, generator: torch.Generator
) -> dict[str, Tensor]:
    """Dai's training-token attention metrics per layer `[n_layers]`, averaged over queries (see
    the module docstring); NaN rows when the captures lack the inputs or no token is left."""
    n_layers = icl.attn_out.shape[1]
    aligned = token_alignment(prompts)
    if aligned is None or icl.demo_scores is None or ft.query_q is None or ft.demo_queries is None:
        return dict.fromkeys(TRAINING_ATTENTION_METRICS,
                             torch.full((n_layers,), float("nan"), dtype=torch.float64))
    icl_idx, ft_idx, lengths = aligned
    s = icl.demo_scores
    scores = s.gather(-1, icl_idx[:, None, None, :].expand(*s.shape[:3], icl_idx.shape[-1]))
    q, q_query = ft.demo_queries, ft.query_q
    idx = ft_idx[:, :, None].expand(-1, -1, q.shape[-1])
    d_head = q_query.shape[-1] // s.shape[2]
    # layer by layer: the training tokens' queries are shared by every query (an expanded
    # view), so gathering and widening all layers at once would copy them per query
    ft_attn = torch.stack([
        ft_training_attention(q_query[:, layer], q[:, layer].gather(1, idx), scale=1.0 / d_head)
        for layer in range(q.shape[1])], 1)
    got = attention_agreement(
        icl_training_attention(scores), ft_attn, lengths[:, None, :],
        k_tokens=DAI_TOP_K_TOKENS, k_examples=DAI_TOP_K_EXAMPLES, generator=generator,
    )
    return {name: got[name].mean(0) for name in TRAINING_ATTENTION_METRICS}


def f2t_metrics(
    zs: RunCapture, icl: RunCapture, ft: RunCapture, *, generator: torch.Generator
) -> dict[str, Any]:
    """Dai's f2t mode: the per-layer similarities over the queries with ZS wrong, FT right and
    ICL right only (`[n_layers]` each, NaN when there is none), and their count `n_f2t`."""
    keep = ~zs.correct & ft.correct & icl.correct
    out: dict[str, Any] = {"n_f2t": float(keep.sum())}
    n_layers = icl.attn_out.shape[1]
    if not keep.any():
        nan = torch.full((n_layers,), float("nan"), dtype=torch.float64)
        return {**out, **dict.fromkeys(F2T_METRICS, nan)}
    h_icl, h_zs, h_ft = icl.attn_out[keep], zs.attn_out[keep], ft.attn_out[keep]
    a_icl, a_zs, a_ft = icl.query_scores[keep], zs.query_scores[keep], ft.query_scores[keep]
    values = {
        "simaou_norm_f2t": metrics.simaou(h_icl, h_zs, h_ft, normalize=True),
        "simaou_raw_f2t": metrics.simaou(h_icl, h_zs, h_ft, normalize=False),
        "simaou_random_norm_f2t": metrics.random_baseline_simaou(h_icl, h_zs, generator),
        "simaou_random_raw_f2t": metrics.random_baseline_simaou(h_icl, h_zs, generator,
                                                                normalize=False),
        "simam_before_f2t": metrics.simam(a_zs, a_icl).mean(-1),
        "simam_after_f2t": metrics.simam(a_icl, a_ft).mean(-1),
        "simam_delta_f2t": metrics.simam_delta(a_icl, a_zs, a_ft).mean(-1),
    }
    return {**out, **{k: v.mean(0) for k, v in values.items()}}


def dai_metrics(
    zs: RunCapture,
    icl: RunCapture,
    ft: RunCapture,
    prompts: PromptSet,
    *,
    generator: torch.Generator,
) -> dict[str, Any]:
    """Everything this module adds for one FT run: training-token attention and f2t metrics."""
    return {**training_attention_layers(icl, ft, prompts, generator=generator),
            **f2t_metrics(zs, icl, ft, generator=generator)}

"""One batch of `iclgd.analyses.runs.run_prompts`: the hook names it captures, the
demonstrations' token range, and one forward pass with its activations gathered at the answer
position, the query's own tokens and (ICL) the demonstration tokens (the layout is described in
`iclgd.analyses.runs`, after Dai et al. 2023, §3)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from iclgd.data.tasks import TokenizedTask
from iclgd.errors import IclgdError
from iclgd.hooks.capture import capture, stack_layers
from iclgd.hooks.names import act_name


def capture_names(
    n_layers: int, *, pattern: bool, attn_in: bool, queries: bool = False
) -> list[str]:
    """The hook names of every layer that `run_prompts` captures."""
    hooks = ["attn_out", "scores", *(["pattern"] if pattern else []),
             *(["ln1"] if attn_in else []), *(["q"] if queries else [])]
    return [act_name(h, layer) for layer in range(n_layers) for h in hooks]


def demo_range(task: TokenizedTask) -> tuple[Tensor, int]:
    """Each prompt's first demonstration token and the (common) demonstration token count."""
    starts = task.demo_spans[:, 0, 0]
    counts = task.demo_spans[:, -1, 1] - starts
    if int(counts.min()) != int(counts.max()):
        raise IclgdError("every ICL prompt must have demonstrations of the same total length")
    return starts, int(counts[0])


@dataclass(frozen=True)
class BatchContext:
    """One `run_prompts` call as `capture_batch` sees it: the model, its hook `names`, the
    prompts, each query's token count (padded to `q_max`), the demonstrations' token ranges
    (`starts`, `n_demo_tok`; None, 0 without `demo_attention`) and the extras to keep."""

    model: Any
    task: TokenizedTask
    query_len: Tensor
    q_max: int
    names: list[str]
    n_layers: int
    starts: Tensor | None
    n_demo_tok: int
    attn_in: bool
    queries: bool
    token_inputs: bool


def capture_batch(ctx: BatchContext, lo: int, hi: int) -> dict[str, Tensor]:
    """Rows `lo:hi` of `run_prompts`: one forward pass, its activations gathered per position."""
    task, n_layers, q_max = ctx.task, ctx.n_layers, ctx.q_max
    rows = torch.arange(lo, hi)
    chunk: dict[str, Tensor] = {}
    width = int(task.lengths[rows].max())
    # query token j of row b sits at answer_pos - query_len + 1 + j
    offs = torch.arange(q_max)
    first = task.answer_pos[rows] - ctx.query_len[rows] + 1
    pos = (first[:, None] + offs[None, :]).clamp(max=width - 1)
    keep = offs[None, :] < ctx.query_len[rows, None]
    at: Any = task.answer_pos[rows]
    if ctx.token_inputs:  # ln1 at [demonstration tokens,] query tokens, answer position
        ln1 = {act_name("ln1", layer) for layer in range(n_layers)}
        spans = ([ctx.starts[rows, None] + torch.arange(ctx.n_demo_tok)[None, :]]
                 if ctx.starts is not None and ctx.n_demo_tok else [])
        ln1_pos = torch.cat([*spans, pos, task.answer_pos[rows, None]], 1)
        at = {n: ln1_pos if n in ln1 else task.answer_pos[rows] for n in [*ctx.names, "logits"]}
    got = capture(ctx.model, task.tokens[rows, :width], ctx.names, positions=at,
                  return_logits=True)
    chunk["out"] = stack_layers(got, "attn_out", n_layers)
    scores = stack_layers(got, "scores", n_layers)
    picked = scores.gather(-1, pos[:, None, None, :].expand(*scores.shape[:3], q_max))
    chunk["scores"] = torch.where(keep[:, None, None, :], picked, torch.zeros_like(picked))
    if ctx.starts is not None:
        pat = stack_layers(got, "pattern", n_layers)
        dpos = ctx.starts[rows, None] + torch.arange(ctx.n_demo_tok)[None, :]
        didx = dpos[:, None, None, :].expand(*pat.shape[:3], ctx.n_demo_tok)
        chunk["pattern"] = pat.gather(-1, didx)
        chunk["demo_scores"] = scores.gather(-1, didx)
    if ctx.token_inputs:
        x = stack_layers(got, "ln1", n_layers)  # [batch, n_layers, k, d_model]
        if ctx.starts is not None:
            chunk["demo_x"] = x[:, :, :ctx.n_demo_tok]
        chunk["query_x"] = torch.where(keep[:, None, :, None], x[:, :, -q_max - 1 : -1], 0.0)
        if ctx.attn_in:
            chunk["in"] = x[:, :, -1]
    elif ctx.attn_in:
        chunk["in"] = stack_layers(got, "ln1", n_layers)
    if ctx.queries:
        chunk["q"] = stack_layers(got, "q", n_layers).flatten(-2)
    chunk["logits"] = got["logits"]
    return chunk



"""The three settings the ICL-vs-GD probes compare (Dai et al. 2023), captured at the answer position.

- ZS (`run_zero_shot`): the query alone;
- ICL (`run_icl`): demonstrations + query;
- FT (`run_finetuned`): the query alone, on the model with a finetuning update (`WeightDelta`)
  added to its weights.

Each run is one `iclgd.hooks.capture` pass per batch of prompts, storing only the answer
position (the last prompt token, whose logits predict the answer) of, per layer `l`:

- `blocks.{l}.hook_attn_out` — the attention block's output (after W_O, before the residual
  add): SimAOU's `h`;
- `blocks.{l}.attn.hook_attn_scores` — pre-softmax attention scores (TransformerLens scales
  them by 1/sqrt(d_head)), kept only over the **query's own tokens** so ZS, ICL and FT score the
  same keys: SimAM's vectors. Query token `j` of a row sits at `answer_pos - query_len + 1 + j`
  in every setting (the query segment is tokenised identically with or without
  demonstrations), and the vectors are stored left-aligned, zero-padded to the longest query
  (zeros add nothing to a dot product or a norm, so cosines equal the unpadded ones);
- ICL only, from the answer position to every demonstration token: the attention probabilities
  (`blocks.{l}.attn.hook_pattern`) and the pre-softmax scores (`hook_attn_scores`), for the
  training-token attention (`iclgd.probes.training_attention`);
- `blocks.{l}.ln1.hook_out` — ZS and FT: the attention block's normalised input at the answer
  position (the query vector `x` of Dai's dual form, for FT's attention to training tokens);
- `blocks.{l}.attn.hook_q` — FT: the query projection at the answer position (all heads
  concatenated, before any rotary embedding), and the same at the training tokens (Dai's FT side
  of the training-token attention);
- the next-token logits.

FT runs add `ΔW` to the model's Hugging Face-named weights for the duration of the run
(`iclgd.hooks.finetuned`, which copies the original tensors back bit for bit afterwards), so the
hook names are the bridge's own and a zero delta reproduces `run_zero_shot` bit for bit.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from functools import partial
from typing import Any

import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor

from iclgd.analyses.runs_batch import BatchContext, capture_batch, capture_names, demo_range
from iclgd.data.tasks import TokenizedDemos, TokenizedTask
from iclgd.errors import IclgdError
from iclgd.hooks.batching import BatchSize, model_device, run_batched
from iclgd.hooks.capture import capture, stack_layers
from iclgd.hooks.edit import finetuned
from iclgd.hooks.names import act_name

DEFAULT_BATCH = 32


@dataclass(frozen=True, eq=False)
class RunCapture:
    """One setting's activations at the answer position of every query (CPU tensors).

    `attn_out [batch, n_layers, d_model]`; `query_scores [batch, n_layers, n_heads,
    max_query_len]` (left-aligned, zero-padded); `query_len [batch]`; `demo_attention` and
    `demo_scores [batch, n_layers, n_heads, n_demo_tokens]` (ICL only, else None: probabilities
    and pre-softmax scores from the answer position to the demonstration tokens); `attn_in [batch,
    n_layers, d_model]` (when requested, else None); `query_q [batch, n_layers, n_heads * d_head]`
    (when requested: `hook_q` at the answer position); `demo_inputs [batch, n_layers,
    n_train_tokens, d_model]` and `demo_queries [batch, n_layers, n_train_tokens, n_heads *
    d_head]` (FT with `kendall=True`: the finetuned model's normalised attention inputs and query
    projections at its training tokens, see `demo_activations`); with `token_inputs`, the
    normalised attention inputs `ln1.hook_out` at the query's own tokens, `query_inputs [batch,
    n_layers, max_query_len, d_model]` (left-aligned, zero-padded as `query_scores`), and (ICL)
    at the demonstration tokens, `demo_token_inputs [batch, n_layers, n_demo_tokens, d_model]`:
    the x of Dai's dual form for the weight-space comparison; `logits [batch, d_vocab]`;
    `answer_ids [batch]`.
    """

    setting: str
    attn_out: Float[Tensor, "batch n_layers d_model"]
    query_scores: Float[Tensor, "batch n_layers n_heads max_query_len"]
    query_len: Int[Tensor, " batch"]
    logits: Float[Tensor, "batch d_vocab"]
    answer_ids: Int[Tensor, " batch"]
    demo_attention: Float[Tensor, "batch n_layers n_heads n_demo_tokens"] | None = None
    attn_in: Float[Tensor, "batch n_layers d_model"] | None = None
    demo_inputs: Float[Tensor, "batch n_layers n_train_tokens d_model"] | None = None
    demo_scores: Float[Tensor, "batch n_layers n_heads n_demo_tokens"] | None = None
    query_q: Float[Tensor, "batch n_layers d_q"] | None = None
    demo_queries: Float[Tensor, "batch n_layers n_train_tokens d_q"] | None = None
    query_inputs: Float[Tensor, "batch n_layers max_query_len d_model"] | None = None
    demo_token_inputs: Float[Tensor, "batch n_layers n_demo_tokens d_model"] | None = None

    def __len__(self) -> int:
        return int(self.logits.shape[0])

    @property
    def probs(self) -> Float[Tensor, "batch d_vocab"]:
        """Next-token distribution at the answer position (float64 softmax of the logits)."""
        return torch.softmax(self.logits.double(), -1)

    @property
    def correct(self) -> Bool[Tensor, " batch"]:
        """Top-1 over the full vocabulary equals the gold first answer token (Shen's accuracy)."""
        return self.logits.argmax(-1) == self.answer_ids


@dataclass(frozen=True, eq=False)
class PromptSet:
    """The same queries as ICL and ZS prompts, with the demonstrations to finetune on.

    `icl` and `zs` are `TokenizedTask`s over the same queries in the same order; `demos` is
    `[n_demos, seq]` (one demonstration set shared by every query: text tasks) or `[batch,
    n_demos, seq]` (one set per query: GINC, where every prompt has its own concept);
    `query_len [batch]` counts the query's own tokens (the prompt after the last demonstration).
    """

    icl: TokenizedTask
    zs: TokenizedTask
    demos: TokenizedDemos
    query_len: Int[Tensor, " batch"]

    def __post_init__(self) -> None:
        if len(self.icl) != len(self.zs):
            raise IclgdError(f"ICL has {len(self.icl)} prompts but ZS has {len(self.zs)}")
        if not torch.equal(self.icl.answer_ids, self.zs.answer_ids):
            raise IclgdError("ICL and ZS prompts must ask the same queries in the same order")
        if self.demos.n_demos != self.icl.n_demos:
            raise IclgdError(
                f"{self.demos.n_demos} demonstrations to finetune on but "
                f"{self.icl.n_demos} in the ICL prompts"
            )
        if self.per_query_demos and self.demos.tokens.shape[0] != len(self.icl):
            raise IclgdError("per-query demonstrations need one set per query")
        for row in range(len(self.icl)):
            n = int(self.query_len[row])
            a, b = _query_slice(self.icl, row, n), _query_slice(self.zs, row, n)
            if not torch.equal(a, b):
                raise IclgdError(
                    f"query {row} is tokenised differently with and without "
                    "demonstrations: put template segment boundaries at whitespace"
                )

    def __len__(self) -> int:
        return len(self.icl)

    @property
    def per_query_demos(self) -> bool:
        """True when every query has its own demonstrations (`demos.tokens` is 3-D)."""
        return self.demos.tokens.ndim == 3

    def reordered(self, order: Sequence[int] | Tensor) -> PromptSet:
        """The same prompts with the demonstrations in another order (ICL prompts and the
        finetuning demonstrations alike)."""
        return PromptSet(
            reorder_demonstrations(self.icl, order),
            self.zs,
            self.demos.reordered(order),
            self.query_len,
        )

    def subset(self, rows: Sequence[int] | Tensor) -> PromptSet:
        """Only the queries `rows` (e.g. one query of a per-query-demonstration set)."""
        idx = torch.as_tensor(rows, dtype=torch.long)
        demos = self.demos
        if self.per_query_demos:
            demos = TokenizedDemos(demos.tokens[idx], demos.valid[idx], demos.label_mask[idx])
        return PromptSet(
            _task_rows(self.icl, idx), _task_rows(self.zs, idx), demos, self.query_len[idx]
        )


def _query_slice(task: TokenizedTask, row: int, n: int) -> Tensor:
    end = int(task.answer_pos[row]) + 1
    if n < 1 or end - n < 0:
        raise IclgdError(f"query {row} has {n} tokens: every query needs at least one token")
    return task.tokens[row, end - n : end]


def _task_rows(task: TokenizedTask, idx: Tensor) -> TokenizedTask:
    return TokenizedTask(
        tokens=task.tokens[idx],
        lengths=task.lengths[idx],
        answer_pos=task.answer_pos[idx],
        answer_ids=task.answer_ids[idx],
        answer_tokens=task.answer_tokens[idx],
        demo_spans=task.demo_spans[idx],
        label_spans=task.label_spans[idx],
        pad_id=task.pad_id,
        includes_answer=task.includes_answer,
    )


def query_lengths(icl: TokenizedTask) -> Int[Tensor, " batch"]:
    """Tokens of each ICL prompt after its last demonstration, through the answer position."""
    if icl.n_demos == 0:
        raise IclgdError("ICL prompts without demonstrations: pass the query length explicitly")
    return icl.answer_pos - icl.demo_spans[:, -1, 1] + 1


def reorder_demonstrations(task: TokenizedTask, order: Sequence[int] | Tensor) -> TokenizedTask:
    """ICL prompts with their demonstration blocks permuted (`order[i]` = old index of the new
    i-th demonstration). Tokens are moved block by block, which equals re-tokenising the
    reordered prompt because tasks are tokenised per segment."""
    idx = torch.as_tensor(order, dtype=torch.long)
    n = task.n_demos
    if sorted(idx.tolist()) != list(range(n)):
        raise IclgdError(f"order must be a permutation of 0..{n - 1}, got {idx.tolist()}")
    tokens = task.tokens.clone()
    spans = task.demo_spans.clone()
    lspans = task.label_spans.clone()
    for row in range(len(task)):
        start = int(task.demo_spans[row, 0, 0])
        pos = start
        for new, old in enumerate(idx.tolist()):
            a, b = (int(x) for x in task.demo_spans[row, old])
            tokens[row, pos : pos + b - a] = task.tokens[row, a:b]
            spans[row, new] = torch.tensor([pos, pos + b - a])
            lspans[row, new] = task.label_spans[row, old] - a + pos
            pos += b - a
    return TokenizedTask(
        tokens,
        task.lengths,
        task.answer_pos,
        task.answer_ids,
        task.answer_tokens,
        spans,
        lspans,
        task.pad_id,
        task.includes_answer,
    )


# ----------------------------------------------------------------------------- capture
def run_prompts(
    model: Any,
    task: TokenizedTask,
    query_len: Int[Tensor, " batch"],
    *,
    setting: str,
    demo_attention: bool = False,
    attn_in: bool = False,
    queries: bool = False,
    token_inputs: bool = False,
    batch_size: BatchSize = DEFAULT_BATCH,
) -> RunCapture:
    """Capture the answer-position activations of `task`'s prompts (see the module docstring).

    `query_len [batch]` = each query's own token count; `demo_attention` also keeps the
    attention probabilities and pre-softmax scores to the demonstration tokens (needs
    demonstrations), `attn_in` the attention blocks' normalised inputs, `queries` the query
    projections (heads concatenated), `token_inputs` the normalised attention inputs at the
    query's own tokens and, with `demo_attention`, at the demonstration tokens (`RunCapture`).
    Rows run in batches of `batch_size` (an int, or
    `"auto"`/`AutoBatch`: halved on GPU out-of-memory).
    """
    n_layers = int(model.cfg.n_layers)
    names = capture_names(n_layers, pattern=demo_attention, attn_in=attn_in or token_inputs,
                   queries=queries)
    starts, n_demo_tok = None, 0
    if demo_attention:
        if task.n_demos == 0:
            raise IclgdError("demo_attention needs prompts with demonstrations")
        starts, n_demo_tok = demo_range(task)
    query_len = torch.as_tensor(query_len, dtype=torch.long)
    if query_len.shape != (len(task),):
        raise IclgdError(f"query_len must have one entry per prompt ({len(task)})")
    ctx = BatchContext(model, task, query_len, int(query_len.max()), names, n_layers, starts,
                n_demo_tok, attn_in, queries, token_inputs)
    chunks = run_batched(len(task), batch_size, partial(capture_batch, ctx),
                         default=DEFAULT_BATCH, device=model_device(model),
                         what=f"{setting} capture")
    keys = ("out", "scores", "pattern", "demo_scores", "in", "q", "logits", "query_x", "demo_x")
    parts = {k: [c[k] for c in chunks if k in c] for k in keys}
    return RunCapture(
        setting=setting,
        attn_out=torch.cat(parts["out"]),
        query_scores=torch.cat(parts["scores"]),
        query_len=query_len.clone(),
        logits=torch.cat(parts["logits"]),
        answer_ids=task.answer_ids.clone(),
        demo_attention=torch.cat(parts["pattern"]) if demo_attention else None,
        attn_in=torch.cat(parts["in"]) if attn_in else None,
        demo_scores=torch.cat(parts["demo_scores"]) if demo_attention else None,
        query_q=torch.cat(parts["q"]) if queries else None,
        query_inputs=torch.cat(parts["query_x"]) if token_inputs else None,
        demo_token_inputs=torch.cat(parts["demo_x"]) if token_inputs and demo_attention else None,
    )


def run_zero_shot(
    model: Any, prompts: PromptSet, *, token_inputs: bool = False,
    batch_size: BatchSize = DEFAULT_BATCH,
) -> RunCapture:
    """ZS: the queries alone; also keeps the attention inputs (`attn_in`) for Kendall τ and,
    with `token_inputs`, at every query token (`query_inputs`, for the ΔW comparison)."""
    return run_prompts(model, prompts.zs, prompts.query_len, setting="zs", attn_in=True,
                       token_inputs=token_inputs, batch_size=batch_size)


def run_icl(
    model: Any, prompts: PromptSet, *, token_inputs: bool = False,
    batch_size: BatchSize = DEFAULT_BATCH,
) -> RunCapture:
    """ICL: demonstrations + query; also keeps the attention to the demonstration tokens and,
    with `token_inputs`, the attention inputs there (`demo_token_inputs`, for the ΔW
    comparison)."""
    return run_prompts(model, prompts.icl, prompts.query_len, setting="icl", demo_attention=True,
                       token_inputs=token_inputs, batch_size=batch_size)


# ----------------------------------------------------------------------------- finetuned runs
def run_finetuned(
    model: Any,
    prompts: PromptSet,
    delta: Any | Sequence[Any],
    *,
    kendall: bool = False,
    batch_size: BatchSize = DEFAULT_BATCH,
) -> RunCapture:
    """FT: the ZS prompts on the model with the finetuning update added (`iclgd.hooks.finetuned`:
    the model's weights are restored exactly afterwards).

    `delta` is one `WeightDelta` (or `{hf_name: ΔW}` mapping) shared by every query, or a
    sequence of one per query (per-query demonstrations, e.g. GINC), run one query at a time.
    `kendall` also keeps the finetuned model's attention inputs and query projections at the
    answer position (`attn_in`, `query_q`) and at its training tokens (`demo_inputs`,
    `demo_queries`). `batch_size`: prompts per forward pass, or "auto" (`iclgd.hooks.batching`).
    With a zero delta the result equals `run_zero_shot` exactly (for per-query deltas: `run_zero_shot(..., batch_size=1)`; other batch sizes agree
    to float rounding).
    """
    per_query = isinstance(delta, Sequence) and not isinstance(delta, Mapping)
    if per_query and len(delta) != len(prompts):
        raise IclgdError(f"{len(delta)} deltas for {len(prompts)} queries: pass one per query")
    if not per_query and prompts.per_query_demos and kendall:
        raise IclgdError("per-query demonstrations need one delta per query")
    groups = (
        [(delta, prompts)]
        if not per_query
        else [(d, prompts.subset([row])) for row, d in enumerate(delta)]
    )
    runs = []
    for d, sub in groups:
        with finetuned(model, d) as ft_model:
            run = run_prompts(ft_model, sub.zs, sub.query_len, setting="ft", attn_in=kendall,
                              queries=kendall, batch_size=batch_size)
            if kendall:
                acts = demo_activations(ft_model, sub.demos, DEMO_HOOKS, batch_size=batch_size)
        if kendall:
            if sub.demos.tokens.ndim == 2:  # shared: [n_layers, n_tok, d] for every query
                acts = {k: v.expand(len(sub), *v.shape) for k, v in acts.items()}
            run = replace(run, demo_inputs=acts["ln1.hook_out"], demo_queries=acts["attn.hook_q"])
        runs.append(run)
    return concat_runs(runs)


def concat_runs(runs: Sequence[RunCapture]) -> RunCapture:
    """Concatenate captures of one setting along the query axis (query scores re-padded). A
    single capture is returned as it is: its shared demonstration activations stay views
    expanded over the queries instead of one copy per query."""
    if not runs:
        raise IclgdError("nothing to concatenate")
    if len(runs) == 1:
        return runs[0]
    q_max = max(r.query_scores.shape[-1] for r in runs)

    def pad(x: Tensor) -> Tensor:
        return torch.nn.functional.pad(x, (0, q_max - x.shape[-1]))

    def cat(attr: str) -> Tensor | None:
        vals = [getattr(r, attr) for r in runs]
        return None if any(v is None for v in vals) else torch.cat(vals)

    return RunCapture(
        setting=runs[0].setting,
        attn_out=cat("attn_out"),
        query_scores=torch.cat([pad(r.query_scores) for r in runs]),
        query_len=cat("query_len"),
        logits=cat("logits"),
        answer_ids=cat("answer_ids"),
        demo_attention=cat("demo_attention"),
        attn_in=cat("attn_in"),
        demo_inputs=cat("demo_inputs"),
        demo_scores=cat("demo_scores"),
        query_q=cat("query_q"),
        demo_queries=cat("demo_queries"),
    )


DEMO_HOOKS = ("ln1.hook_out", "attn.hook_q")


def demo_attention_inputs(
    model: Any, demos: TokenizedDemos, *, batch_size: BatchSize = DEFAULT_BATCH
) -> Float[Tensor, "... n_layers n_tokens d_model"]:
    """The attention blocks' normalised inputs (`blocks.{l}.ln1.hook_out`) at every real token
    of the demonstrations, each run as its own sequence by `model`: the `x'_t` of Dai's dual
    form (see `demo_activations`)."""
    return demo_activations(model, demos, ("ln1.hook_out",), batch_size=batch_size)["ln1.hook_out"]


def demo_activations(
    model: Any,
    demos: TokenizedDemos,
    hooks: Sequence[str] = DEMO_HOOKS,
    *,
    batch_size: BatchSize = DEFAULT_BATCH,
) -> dict[str, Float[Tensor, "... n_layers n_tokens d"]]:
    """Per-layer activations `blocks.{l}.{hook}` at every real token of the demonstrations, each
    demonstration run as its own sequence by `model` (for FT: the finetuned model). `demos
    [..., n_demos, seq]` → `{hook: [..., n_layers, n_tokens, d]}` with the demonstrations' real
    tokens concatenated in order (every task must have the same number of real tokens); per-head
    hooks (`attn.hook_q`) have their heads concatenated."""
    n_layers = int(model.cfg.n_layers)
    lead = demos.tokens.shape[:-2]
    flat_tok = demos.tokens.reshape(-1, demos.tokens.shape[-1])
    flat_valid = demos.valid.reshape(-1, demos.tokens.shape[-1])
    names = [act_name(h, i) for h in hooks for i in range(n_layers)]

    def step(lo: int, hi: int) -> dict[str, Tensor]:
        got = capture(model, flat_tok[lo:hi], names)
        out: dict[str, Tensor] = {}
        for h in hooks:  # [b, n_layers, seq, d]
            act = stack_layers(got, h, n_layers)
            out[h] = act.flatten(3) if act.ndim == 5 else act
        return out

    parts = run_batched(flat_tok.shape[0], batch_size, step, default=DEFAULT_BATCH,
                        device=model_device(model), what="demonstration capture")
    chunks = {h: [c[h] for c in parts] for h in hooks}
    valid = flat_valid.reshape(*lead, demos.n_demos, -1)
    counts = valid.reshape(-1, demos.n_demos * valid.shape[-1]).sum(-1)
    if int(counts.min()) != int(counts.max()):
        raise IclgdError("every task must have the same number of demonstration tokens")
    out = {}
    for h in hooks:
        acts = torch.cat(chunks[h]).reshape(*lead, demos.n_demos, n_layers, flat_tok.shape[-1], -1)
        moved = acts.movedim(-3, -4)  # [..., n_layers, n_demos, seq, d]
        mask = valid.unsqueeze(-3).expand(*moved.shape[:-1])
        out[h] = moved[mask].reshape(*lead, n_layers, int(counts[0]), moved.shape[-1])
    return out

"""In-context learning tasks: demonstrations + queries + a prompt template.

A text task (`Task`) holds `Example(input, output)` pairs and a `Template`. It becomes token ids
through an HF tokenizer in two forms, both shared with GINC (whose prompts are already token ids):

- `TokenizedTask` — ICL/ZS prompts `tokens [batch, pos]` (right-padded), `answer_pos [batch]`
  (the last prompt token: `logits[b, answer_pos[b]]` predicts the first answer token),
  `answer_ids [batch]` (first answer token), all answer tokens, and each demonstration's span;
- `TokenizedDemos` — each demonstration as its own sequence, with the positions that carry the
  finetuning loss (label tokens or all tokens), the input of `iclgd.probes.finetune`.

Reading fixed here (documented, tested):
- prompt = `instruction` + for each demonstration `input_prefix + x + output_prefix`,
  `answer_prefix + y`, `separator`; then the query's `input_prefix + x + output_prefix`.
  With the default template: "Input: France Output: Paris\\nInput: Spain Output:" and the
  answer " Madrid".
- **Tokenisation is per segment** (the three pieces above are tokenised separately, without
  special tokens, and concatenated), so the answer tokens are exactly `tokenize(answer_prefix +
  y)` and their positions are known; put segment boundaries at whitespace (the default does).
- Multi-token answers: `first_token_logprob` / `first_token_correct` score the **first** answer
  token (Shen's accuracy: top-1 over the full vocabulary equals the gold first token);
  `mean_answer_logprob` is the **mean log-probability over all answer tokens** (teacher forced,
  needs prompts built with `include_answer=True`).
- A zero-shot (ZS) prompt is the same template with no demonstrations (`demonstrations=[]`).

Loaders (`iclgd.data.task_loaders`): `load_task(name_or_path)` reads a built-in task (`capitals`, `antonyms`,
`number_words`, stored in `iclgd/data/builtin/`) or a local JSONL/CSV file with `input`/`output`
columns, or text/label columns mapped to words by a verbaliser (your own AGNews / SST-2 copy).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor

from iclgd.errors import IclgdError


@dataclass(frozen=True)
class Example:
    """One input → output pair (strings)."""

    input: str
    output: str


@dataclass(frozen=True)
class Template:
    """How demonstrations and a query become a prompt (see the module docstring)."""

    input_prefix: str = "Input: "
    output_prefix: str = " Output:"
    answer_prefix: str = " "
    separator: str = "\n"
    instruction: str = ""
    bos: bool = False  # prepend tokenizer.bos_token_id

    def demonstration_text(self, ex: Example) -> str:
        """One demonstration as text, separator included."""
        return f"{self.input_prefix}{ex.input}{self.output_prefix}{self.answer_prefix}{ex.output}{self.separator}"

    def prompt_text(self, demonstrations: Sequence[Example], query: Example) -> str:
        """The ICL prompt as text, ending right before the answer (`answer_prefix + output`)."""
        demos = "".join(self.demonstration_text(d) for d in demonstrations)
        return f"{self.instruction}{demos}{self.input_prefix}{query.input}{self.output_prefix}"


@dataclass(frozen=True, eq=False)
class TokenizedTask:
    """Prompts as token ids, the common input of the probes for text and GINC tasks alike.

    `tokens [batch, pos]` right-padded with `pad_id` (causal attention: padding after a row's
    end does not change its real positions); `lengths [batch]` real tokens per row;
    `answer_pos [batch]` last prompt token (its logits predict the answer); `answer_ids [batch]`
    first answer token; `answer_tokens [batch, max_answer_len]` all answer tokens padded with
    -1; `demo_spans [batch, n_demos, 2]` and `label_spans [batch, n_demos, 2]` half-open
    `[start, end)` token ranges of each demonstration and of its answer tokens.
    With `includes_answer`, the answer tokens follow `answer_pos` in `tokens`.
    """

    tokens: Int[Tensor, "batch pos"]
    lengths: Int[Tensor, " batch"]
    answer_pos: Int[Tensor, " batch"]
    answer_ids: Int[Tensor, " batch"]
    answer_tokens: Int[Tensor, "batch max_answer_len"]
    demo_spans: Int[Tensor, "batch n_demos 2"]
    label_spans: Int[Tensor, "batch n_demos 2"]
    pad_id: int = 0
    includes_answer: bool = False

    def __len__(self) -> int:
        return int(self.tokens.shape[0])

    @property
    def n_demos(self) -> int:
        return int(self.demo_spans.shape[1])


@dataclass(frozen=True, eq=False)
class TokenizedDemos:
    """Demonstrations as separate sequences, for finetuning (one or many tasks).

    `tokens [..., n_demos, seq]` right-padded; `valid [..., n_demos, seq]` marks real tokens;
    `label_mask [..., n_demos, seq]` marks the label (answer) tokens. The loss on token `t` is
    read from the logits at `t - 1`, so position 0 is never a target. Leading axes (e.g. a task
    axis from `stack_demos`) are batch axes.

    Example:
        >>> demos = demos_from_token_examples(torch.tensor([[5, 6, 7], [8, 9, 10]]))
        >>> demos.target_mask("label")[0].tolist(), demos.target_mask("all")[0].tolist()
        ([False, False, True], [False, True, True])
    """

    tokens: Int[Tensor, "... n_demos seq"]
    valid: Bool[Tensor, "... n_demos seq"]
    label_mask: Bool[Tensor, "... n_demos seq"]

    @property
    def n_demos(self) -> int:
        return int(self.tokens.shape[-2])

    def target_mask(self, loss_on: str = "label") -> Bool[Tensor, "... n_demos seq"]:
        """Positions whose token is a loss target: `"label"` = answer tokens, `"all"` = every
        real token but the first of each sequence (Dai: all tokens of each demonstration)."""
        if loss_on == "label":
            return self.label_mask.clone()
        if loss_on == "all":
            m = self.valid.clone()
            m[..., 0] = False
            return m
        raise IclgdError(f"loss_on must be 'label' or 'all', got {loss_on!r}")

    def reordered(self, order: Sequence[int] | Tensor) -> TokenizedDemos:
        """The same demonstrations in another order (along the `n_demos` axis)."""
        idx = torch.as_tensor(order, dtype=torch.long)
        if sorted(idx.tolist()) != list(range(self.n_demos)):
            raise IclgdError(f"order must be a permutation of 0..{self.n_demos - 1}")
        return TokenizedDemos(self.tokens[..., idx, :], self.valid[..., idx, :],
                              self.label_mask[..., idx, :])


@dataclass
class Task:
    """A task: a pool of demonstrations, queries, and the template that joins them."""

    name: str
    demonstrations: list[Example]
    queries: list[Example]
    template: Template = field(default_factory=Template)

    def __post_init__(self) -> None:
        if not self.demonstrations:
            raise IclgdError(f"task {self.name!r} has no demonstrations: give at least one example")
        if not self.queries:
            raise IclgdError(f"task {self.name!r} has no queries: give at least one query example")

    def with_demonstrations(self, demonstrations: Sequence[Example]) -> Task:
        """The same task with other demonstrations (e.g. from `sample_demonstrations`)."""
        return replace(self, demonstrations=list(demonstrations))

    def prompt_text(self, query: Example, demonstrations: Sequence[Example] | None = None) -> str:
        """ICL prompt text for `query` (ZS when `demonstrations=[]`)."""
        demos = self.demonstrations if demonstrations is None else demonstrations
        return self.template.prompt_text(demos, query)

    def tokenized_prompts(
        self,
        tokenizer: Any,
        *,
        demonstrations: Sequence[Example] | None = None,
        queries: Sequence[Example] | None = None,
        include_answer: bool = False,
        n_ctx: int | None = None,
    ) -> TokenizedTask:
        """Tokenise one prompt per query (same demonstrations in each; `[]` gives ZS prompts).

        `n_ctx` (default: `tokenizer.model_max_length` when it is a real limit) bounds every
        row; a longer prompt raises `IclgdError`.
        """
        demos = list(self.demonstrations if demonstrations is None else demonstrations)
        qs = list(self.queries if queries is None else queries)
        if not qs:
            raise IclgdError("no queries to tokenise: pass at least one query")
        t = self.template
        head = ([_bos(tokenizer)] if t.bos else []) + _ids(tokenizer, t.instruction)
        body: list[int] = list(head)
        spans, lspans = [], []
        for d in demos:
            start = len(body)
            body += _ids(tokenizer, f"{t.input_prefix}{d.input}{t.output_prefix}")
            ans = _answer_ids(tokenizer, t, d)
            lspans.append((len(body), len(body) + len(ans)))
            body += ans + _ids(tokenizer, t.separator)
            spans.append((start, len(body)))
        rows, answers = [], []
        for q in qs:
            prompt = body + _ids(tokenizer, f"{t.input_prefix}{q.input}{t.output_prefix}")
            ans = _answer_ids(tokenizer, t, q)
            rows.append(prompt + (ans if include_answer else []))
            answers.append((len(prompt) - 1, ans))
        limit = n_ctx if n_ctx is not None else _model_limit(tokenizer)
        longest = max(len(r) for r in rows)
        if limit is not None and longest > limit:
            raise IclgdError(
                f"task {self.name!r}: a prompt has {longest} tokens but the context holds "
                f"{limit}: use fewer or shorter demonstrations"
            )
        pad = _pad_id(tokenizer)
        n_spans = len(demos)
        return TokenizedTask(
            tokens=_pad([r for r in rows], pad),
            lengths=torch.tensor([len(r) for r in rows]),
            answer_pos=torch.tensor([a[0] for a in answers]),
            answer_ids=torch.tensor([a[1][0] for a in answers]),
            answer_tokens=_pad([a[1] for a in answers], -1),
            demo_spans=torch.tensor(spans, dtype=torch.long).reshape(1, n_spans, 2).repeat(len(qs), 1, 1),
            label_spans=torch.tensor(lspans, dtype=torch.long).reshape(1, n_spans, 2).repeat(len(qs), 1, 1),
            pad_id=pad,
            includes_answer=include_answer,
        )

    def tokenized_demonstrations(
        self, tokenizer: Any, *, demonstrations: Sequence[Example] | None = None,
        n_ctx: int | None = None,
    ) -> TokenizedDemos:
        """Each demonstration as its own sequence (`template.demonstration_text`, tokenised per
        segment exactly as inside a prompt), with its answer tokens marked in `label_mask`."""
        demos = list(self.demonstrations if demonstrations is None else demonstrations)
        if not demos:
            raise IclgdError("no demonstrations to tokenise: finetuning needs at least one")
        t = self.template
        head = ([_bos(tokenizer)] if t.bos else [])
        rows, labels = [], []
        for d in demos:
            a = head + _ids(tokenizer, f"{t.input_prefix}{d.input}{t.output_prefix}")
            ans = _answer_ids(tokenizer, t, d)
            rows.append(a + ans + _ids(tokenizer, t.separator))
            labels.append((len(a), len(a) + len(ans)))
        limit = n_ctx if n_ctx is not None else _model_limit(tokenizer)
        if limit is not None and max(map(len, rows)) > limit:
            raise IclgdError(f"a demonstration is longer than the context ({limit} tokens)")
        tokens = _pad(rows, _pad_id(tokenizer))
        pos = torch.arange(tokens.shape[1])
        lengths = torch.tensor([len(r) for r in rows])
        lab = torch.tensor(labels)
        return TokenizedDemos(
            tokens=tokens,
            valid=pos[None, :] < lengths[:, None],
            label_mask=(pos[None, :] >= lab[:, :1]) & (pos[None, :] < lab[:, 1:]),
        )


# ----------------------------------------------------------------------------- token tasks
def demos_from_token_examples(
    examples: Int[Tensor, "... n_demos seq"], label_positions: Sequence[int] | int = -1,
) -> TokenizedDemos:
    """Demonstrations given directly as token ids (e.g. GINC examples with their delimiter):
    every row is real; `label_positions` (indices along `seq`, default the last) are the labels.

    Example:
        >>> demos = demos_from_token_examples(torch.tensor([[5, 6, 7], [8, 9, 10]]))
        >>> demos.n_demos, demos.label_mask[0].tolist()
        (2, [False, False, True])
    """
    tokens = torch.as_tensor(examples, dtype=torch.long)
    if tokens.ndim < 2 or tokens.shape[-2] == 0 or tokens.shape[-1] < 2:
        raise IclgdError(
            f"token demonstrations need shape [..., n_demos >= 1, seq >= 2], got {tuple(tokens.shape)}"
        )
    label = torch.zeros(tokens.shape[-1], dtype=torch.bool)
    label[torch.as_tensor(label_positions)] = True
    if label[0]:
        raise IclgdError("position 0 of a demonstration cannot be a label (nothing predicts it)")
    return TokenizedDemos(tokens, torch.ones_like(tokens, dtype=torch.bool),
                          label.expand(tokens.shape).clone())


def tokenized_from_ginc(prompts: Any) -> tuple[TokenizedTask, TokenizedDemos]:
    """A GINC prompt batch (`iclgd.data.ginc_prompts.GincPrompts`: `tokens`, `labels`,
    `n_examples`, `k`) as a `TokenizedTask` plus its per-prompt demonstrations.

    Each prompt row is its own task: demonstration i spans `[i(k+1), (i+1)(k+1))` (its k tokens
    and the delimiter), its label is its k-th token (the slot the query asks for);
    `answer_pos` is the last token, `answer_ids` the Bayes-optimal label. The demonstrations come
    back as `TokenizedDemos` with shape `[batch, n, k+1]`.
    """
    tokens = torch.as_tensor(prompts.tokens, dtype=torch.long)
    n, k = int(prompts.n_examples), int(prompts.k)
    b, length = tokens.shape
    if n < 1:
        raise IclgdError("GINC prompts with 0 examples have no demonstrations to finetune on")
    starts = torch.arange(n) * (k + 1)
    spans = torch.stack([starts, starts + k + 1], -1).expand(b, n, 2).clone()
    lspans = torch.stack([starts + k - 1, starts + k], -1).expand(b, n, 2).clone()
    labels = torch.as_tensor(prompts.labels, dtype=torch.long)
    task = TokenizedTask(
        tokens=tokens, lengths=torch.full((b,), length), answer_pos=torch.full((b,), length - 1),
        answer_ids=labels, answer_tokens=labels[:, None].clone(), demo_spans=spans,
        label_spans=lspans, pad_id=0, includes_answer=False,
    )
    body = tokens[:, : n * (k + 1)].reshape(b, n, k + 1)
    return task, demos_from_token_examples(body, k - 1)


def stack_demos(demos: Sequence[TokenizedDemos], pad_id: int = 0) -> TokenizedDemos:
    """Stack single-task demonstrations `[n_demos, seq_i]` into `[n_tasks, n_demos, max seq]`
    (right-padded; every task must have the same number of demonstrations)."""
    if not demos:
        raise IclgdError("stack_demos needs at least one task")
    if len({d.tokens.shape[:-1] for d in demos}) != 1:
        raise IclgdError("every task must have the same number of demonstrations to be stacked")
    seq = max(d.tokens.shape[-1] for d in demos)

    def padded(x: Tensor, value: int | bool) -> Tensor:
        return torch.nn.functional.pad(x, (0, seq - x.shape[-1]), value=value)

    return TokenizedDemos(
        torch.stack([padded(d.tokens, pad_id) for d in demos]),
        torch.stack([padded(d.valid, False) for d in demos]),
        torch.stack([padded(d.label_mask, False) for d in demos]),
    )


# ----------------------------------------------------------------------------- scoring
def first_token_logprob(
    logits: Float[Tensor, "batch pos d_vocab"], task: TokenizedTask
) -> Float[Tensor, " batch"]:
    """log p(first answer token | prompt), read at `answer_pos` (float64)."""
    rows = torch.arange(len(task))
    lp = torch.log_softmax(logits[rows, task.answer_pos].double(), -1)
    return lp[rows, task.answer_ids]


def first_token_correct(
    logits: Float[Tensor, "batch pos d_vocab"], task: TokenizedTask
) -> Bool[Tensor, " batch"]:
    """Accuracy (Shen's reading): the top-1 token over the full vocabulary at `answer_pos`
    equals the gold first answer token."""
    rows = torch.arange(len(task))
    return logits[rows, task.answer_pos].argmax(-1) == task.answer_ids


def mean_answer_logprob(
    logits: Float[Tensor, "batch pos d_vocab"], task: TokenizedTask
) -> Float[Tensor, " batch"]:
    """Mean over the answer's tokens of log p(answer token t | prompt, answer tokens < t),
    teacher forced; needs prompts tokenised with `include_answer=True`."""
    if not task.includes_answer:
        raise IclgdError("mean_answer_logprob needs prompts built with include_answer=True")
    n_ans = task.answer_tokens.shape[1]
    offs = torch.arange(n_ans)
    present = task.answer_tokens >= 0
    pos = (task.answer_pos[:, None] + offs[None, :]).clamp(max=logits.shape[1] - 1)
    rows = torch.arange(len(task))[:, None]
    lp = torch.log_softmax(logits[rows, pos].double(), -1)
    picked = lp.gather(-1, task.answer_tokens.clamp(min=0)[..., None])[..., 0]
    return (picked * present).sum(-1) / present.sum(-1)


# ----------------------------------------------------------------------------- loading
def _ids(tokenizer: Any, text: str) -> list[int]:
    if not text:
        return []
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def _answer_ids(tokenizer: Any, t: Template, ex: Example) -> list[int]:
    ans = _ids(tokenizer, f"{t.answer_prefix}{ex.output}")
    if not ans:
        raise IclgdError(
            f"the answer {ex.output!r} (for input {ex.input!r}) tokenises to nothing: "
            "fix the data or the template's answer_prefix"
        )
    return ans


def _bos(tokenizer: Any) -> int:
    bos = getattr(tokenizer, "bos_token_id", None)
    if bos is None:
        raise IclgdError("template asks for a BOS token but the tokenizer has none: set bos=False")
    return int(bos)


def _pad_id(tokenizer: Any) -> int:
    for attr in ("pad_token_id", "eos_token_id"):
        v = getattr(tokenizer, attr, None)
        if v is not None:
            return int(v)
    return 0


def _model_limit(tokenizer: Any) -> int | None:
    m = getattr(tokenizer, "model_max_length", None)
    return int(m) if isinstance(m, int) and m < 1_000_000 else None


def _pad(rows: Sequence[Sequence[int]], value: int) -> Tensor:
    width = max(len(r) for r in rows)
    return torch.tensor([list(r) + [value] * (width - len(r)) for r in rows], dtype=torch.long)

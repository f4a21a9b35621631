"""Aligned ZS / ICL prompts + finetuning demonstrations (`PromptSet`) for text and GINC tasks.

Demonstration counts are nested: the prompts for N demonstrations use the first N of one draw
of `max(N)` demonstrations, and every N asks the same queries, so results across N differ only
in the number of demonstrations.

- Text tasks (`Task`): one demonstration set shared by every query (sampled with `seed` from the
  task's demonstration pool); the queries are the task's first `n_queries` queries.
- GINC (`--task ginc`): the world is rebuilt from the model folder's `ginc.json`; prompts are
  sampled with in-distribution concepts and example length `k` (default 3), each prompt with its
  own concept and demonstrations (so FT trains one update per query); the ZS prompt is the test
  example's first `k − 1` tokens, the label the Bayes-optimal next token.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch

from iclgd.analyses.runs import PromptSet, query_lengths
from iclgd.data.task_loaders import load_task, sample_demonstrations
from iclgd.data.tasks import (
    Task,
    TokenizedTask,
    tokenized_from_ginc,
)
from iclgd.errors import IclgdError

GINC_K = 3


def _check_counts(n_demos: Sequence[int]) -> list[int]:
    counts = sorted({int(n) for n in n_demos})
    if not counts or counts[0] < 1:
        raise IclgdError(f"numbers of demonstrations must be >= 1, got {list(n_demos)}")
    return counts


def text_prompt_sets(
    task: Task,
    tokenizer: Any,
    n_demos: Sequence[int],
    *,
    n_queries: int | None = None,
    seed: int = 0,
    n_ctx: int | None = None,
) -> dict[int, PromptSet]:
    """`{N: PromptSet}` for a text task (see the module docstring); prompts longer than `n_ctx`
    or N larger than the demonstration pool raise `IclgdError`."""
    counts = _check_counts(n_demos)
    pool = sample_demonstrations(task, counts[-1], seed)
    queries = list(task.queries if n_queries is None else task.queries[:n_queries])
    if n_queries is not None and n_queries < 1:
        raise IclgdError(f"need at least one query, got {n_queries}")
    zs = task.tokenized_prompts(tokenizer, demonstrations=[], queries=queries, n_ctx=n_ctx)
    out = {}
    for n in counts:
        demos = pool[:n]
        icl = task.tokenized_prompts(tokenizer, demonstrations=demos, queries=queries, n_ctx=n_ctx)
        train = task.tokenized_demonstrations(tokenizer, demonstrations=demos, n_ctx=n_ctx)
        out[n] = PromptSet(icl, zs, train, query_lengths(icl))
    return out


def ginc_prompt_sets(
    world: Any,
    n_demos: Sequence[int],
    *,
    k: int = GINC_K,
    n_queries: int = 16,
    seed: int = 0,
    n_ctx: int | None = None,
    concepts: str = "in",
) -> dict[int, PromptSet]:
    """`{N: PromptSet}` of GINC prompts (see the module docstring): `n_queries` prompts with
    `max(N)` examples of length `k` are sampled once and cut to their first N examples."""
    from iclgd.data.ginc_prompts import GincPrompts, prompt_length, sample_prompts

    counts = _check_counts(n_demos)
    if n_queries < 1:
        raise IclgdError(f"need at least one query, got {n_queries}")
    longest = prompt_length(counts[-1], k)
    if n_ctx is not None and longest > n_ctx:
        raise IclgdError(
            f"a GINC prompt with {counts[-1]} examples of length {k} has {longest} "
            f"tokens but the model's context holds {n_ctx}: use fewer demonstrations"
        )
    full = sample_prompts(world, counts[-1], k, n_queries, concepts=concepts, seed=seed)
    test = full.test_input  # [batch, k-1]
    b = len(full)
    zs = TokenizedTask(
        tokens=torch.as_tensor(test, dtype=torch.long),
        lengths=torch.full((b,), k - 1),
        answer_pos=torch.full((b,), k - 2),
        answer_ids=torch.as_tensor(full.labels),
        answer_tokens=torch.as_tensor(full.labels)[:, None].clone(),
        demo_spans=torch.zeros(b, 0, 2, dtype=torch.long),
        label_spans=torch.zeros(b, 0, 2, dtype=torch.long),
    )
    out = {}
    for n in counts:
        body = full.tokens[:, : n * (k + 1)]
        cut = GincPrompts(
            np.concatenate([body, test], axis=1),
            full.labels,
            full.concept,
            full.start_property,
            n,
            k,
        )
        icl, demos = tokenized_from_ginc(cut)
        out[n] = PromptSet(icl, zs, demos, query_lengths(icl))
    return out


def find_ginc_folder(model: Any) -> Path:
    """The folder holding the model's `ginc.json`: its source folder or that folder's parent."""
    source = getattr(model.cfg, "iclgd_source", None)
    if not source or source == "native":
        raise IclgdError("--task ginc needs a model loaded from a GINC checkpoint folder")
    folder = Path(source)
    for cand in (folder, folder.parent):
        if (cand / "ginc.json").is_file():
            return cand
    raise IclgdError(
        f"{folder} has no ginc.json: --task ginc needs a model trained by "
        "`iclgd train ginc` (or pass a task name or a JSONL/CSV file)"
    )


TUNING_SEED_OFFSET = 7919  # GINC tuning prompts: a draw of their own, never the evaluation draw


def tuning_prompt_set(
    model: Any,
    task: str | Path,
    n_demos: int,
    *,
    n_heldout: int = 8,
    seed: int = 0,
    k: int = GINC_K,
) -> PromptSet:
    """Prompts for choosing finetuning settings without touching the evaluation queries.

    Text tasks: the task is split as `load_prompt_sets` splits it (same `seed`); the last
    `n_heldout` items of the demonstration pool become the held-out queries and the
    `n_demos` demonstrations are drawn from the rest, so no evaluation query is ever seen.
    GINC: `n_heldout` fresh prompts from another seed (prompts are i.i.d. draws of the HMM).
    """
    n_ctx = int(model.cfg.n_ctx)
    if str(task) == "ginc":
        from iclgd.data.ginc_hmm import load_ginc_world

        world = load_ginc_world(find_ginc_folder(model))
        sets = ginc_prompt_sets(world, [n_demos], k=k, n_queries=n_heldout,
                                seed=seed + TUNING_SEED_OFFSET, n_ctx=n_ctx)
        return sets[n_demos]
    loaded = load_task(task, seed=seed)
    pool = list(loaded.demonstrations)
    if len(pool) < n_heldout + n_demos:
        raise IclgdError(
            f"task {loaded.name!r} has {len(pool)} demonstrations: too few to hold out "
            f"{n_heldout} for tuning and draw {n_demos} (use fewer, or fix the settings by hand)"
        )
    split = Task(loaded.name, pool[:-n_heldout], pool[-n_heldout:], loaded.template)
    return text_prompt_sets(split, model.tokenizer, [n_demos], seed=seed, n_ctx=n_ctx)[n_demos]


def load_prompt_sets(
    model: Any,
    task: str | Path,
    n_demos: Sequence[int],
    *,
    n_queries: int | None = None,
    seed: int = 0,
    k: int = GINC_K,
) -> tuple[dict[int, PromptSet], dict[str, Any]]:
    """Prompt sets for `task` = `"ginc"`, a built-in task name, or a JSONL/CSV path, sized to
    the model's context; also returns a description of the task for provenance."""
    n_ctx = int(model.cfg.n_ctx)
    if str(task) == "ginc":
        from iclgd.data.ginc_hmm import load_ginc_world

        folder = find_ginc_folder(model)
        world = load_ginc_world(folder)
        nq = 16 if n_queries is None else n_queries
        sets = ginc_prompt_sets(world, n_demos, k=k, n_queries=nq, seed=seed, n_ctx=n_ctx)
        return sets, {
            "task": "ginc",
            "ginc_json": str(folder / "ginc.json"),
            "k": k,
            "concepts": "in",
            "n_queries": nq,
            "per_query_demonstrations": True,
        }
    loaded = load_task(task, seed=seed)
    if model.tokenizer is None:
        raise IclgdError("the model has no tokenizer: text tasks need one")
    nq = min(len(loaded.queries), 32) if n_queries is None else n_queries
    if nq > len(loaded.queries):
        raise IclgdError(
            f"task {loaded.name!r} has {len(loaded.queries)} queries, {nq} were "
            "requested: ask for fewer"
        )
    sets = text_prompt_sets(loaded, model.tokenizer, n_demos, n_queries=nq, seed=seed, n_ctx=n_ctx)
    return sets, {
        "task": loaded.name,
        "n_queries": nq,
        "per_query_demonstrations": False,
        "template": asdict(loaded.template),
    }

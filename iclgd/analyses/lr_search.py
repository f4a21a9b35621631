"""Choosing each finetuning method's learning rate on held-out data, as a fair GD baseline.

Comparing ICL with a GD that barely moves the model (or one that wrecks it) says nothing about
ICL. Shen et al. (2024, §4) tune the finetuning learning rate per setting (grid 1e-4 … 5e-3) before
comparing; iclgd does the same, on data the comparison never evaluates: for each method and each
learning rate of its grid, finetune on `n_demos` demonstrations and score the finetuned model
zero-shot on held-out queries (`iclgd.analyses.prompt_sets.tuning_prompt_set`). The chosen rate
maximises held-out accuracy (top-1 = gold first token), ties broken by the mean log-probability
of the gold token; a rate whose update diverges is skipped. The untuned defaults stay available
(`DEFAULT_LR` in `iclgd.analyses.compare`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch

from iclgd.analyses.compare import finetune_prompts
from iclgd.analyses.runs import PromptSet, RunCapture, run_finetuned
from iclgd.errors import IclgdError

# Plain (S)GD moves a pretrained LM only at much larger rates than Adam, whose steps are
# normalised: one decade apart on either side of the usual values.
SGD_GRID: tuple[float, ...] = (1e-3, 1e-2, 1e-1)
ADAM_GRID: tuple[float, ...] = (1e-5, 1e-4, 1e-3)


def default_grid(method: str) -> tuple[float, ...]:
    """The learning rates searched for `method` (`ADAM_GRID` for adam, else `SGD_GRID`)."""
    return ADAM_GRID if method == "adam" else SGD_GRID


def heldout_scores(run: RunCapture) -> tuple[float, float]:
    """(accuracy, mean log-probability of the gold first answer token) over the queries."""
    logp = torch.log_softmax(run.logits.double(), -1)
    gold = logp.gather(-1, run.answer_ids[:, None])[:, 0]
    return float(run.correct.double().mean()), float(gold.mean())


def search_learning_rates(
    model: Any,
    prompts: PromptSet,
    methods: Sequence[str],
    *,
    epochs: int = 1,
    seed: int = 0,
    grids: Mapping[str, Sequence[float]] | None = None,
    wv_layer: int | None = None,
    progress: Callable[[str], None] | None = None,
) -> tuple[dict[str, float], list[dict[str, Any]]]:
    """Per method the learning rate with the best held-out score, and the tidy search rows.

    `prompts` are tuning prompts (held out from the evaluation); rows are `{method, lr,
    epochs, n_demos, heldout_accuracy, heldout_logprob, diverged, chosen}`.
    """
    n_layers = int(model.cfg.n_layers)
    layer = n_layers // 2 if wv_layer is None else wv_layer
    chosen: dict[str, float] = {}
    rows: list[dict[str, Any]] = []
    for method in methods:
        grid = list((grids or {}).get(method, default_grid(method)))
        scored = []
        for lr in grid:
            acc, logp, diverged = _try(model, prompts, method, lr, epochs, seed, layer)
            rows.append({"method": method, "lr": lr, "epochs": epochs,
                         "n_demos": prompts.demos.n_demos, "heldout_accuracy": acc,
                         "heldout_logprob": logp, "diverged": diverged, "chosen": False})
            if not diverged:
                scored.append(((acc, logp), lr, len(rows) - 1))
            if progress is not None:
                progress(f"tune {method} lr={lr:g}")
        if not scored:
            raise IclgdError(f"{method}: every learning rate in {grid} diverged: give smaller "
                             "ones with --lr-grid or set --lr by hand")
        _, best, index = max(scored, key=lambda t: t[0])
        chosen[method] = best
        rows[index]["chosen"] = True
    return chosen, rows


def _try(model: Any, prompts: PromptSet, method: str, lr: float, epochs: int, seed: int,
         layer: int) -> tuple[float, float, bool]:
    try:
        deltas = finetune_prompts(model, prompts, method, lr=lr, epochs=epochs, seed=seed,
                                  layer=layer)
    except IclgdError:  # non-finite loss or gradient: this rate diverges
        return float("nan"), float("nan"), True
    shared = deltas if prompts.per_query_demos else deltas[0]
    run = run_finetuned(model, prompts, shared)
    if not torch.isfinite(run.logits).all():
        return float("nan"), float("nan"), True
    acc, logp = heldout_scores(run)
    return acc, logp, False

"""In-context accuracy on GINC prompts (Xie et al. 2022), for any next-token predictor.

Accuracy = fraction of prompts whose argmax next token (over every logit column, as Xie et
al.'s greedy decoding) equals the prompt's label (the Bayes-optimal next token under the true
concept, `iclgd.data.ginc_prompts`). Standard errors are binomial, `sqrt(p (1 - p) / N)`.
Each row also reports the ideal in-context learner's accuracy on the same prompts
(`iclgd.data.ginc_bayes.ideal_accuracy`: knows the pretraining concepts and that examples are
independent segments, infers the concept) and the Bayes-optimal pretraining LM's accuracy
(`pretrained_lm_accuracy`: the prompt read as one document under the pretraining mixture, with
transitions smoothed by 0.1; the reference a well-fitted pretrained model can be compared to).
`icl_gain_summary` turns the rows into the in-context gain from the fewest to the most examples
per prompt set, with its standard error and whether ICL emerged (`iclgd.probes.icl.icl_gain`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from iclgd.data.ginc_bayes import accuracy_with_se, ideal_accuracy, pretrained_lm_accuracy
from iclgd.data.ginc_hmm import GincWorld
from iclgd.data.ginc_prompts import sample_prompts
from iclgd.probes.icl import icl_gain

LogitsFn = Callable[[Any], Any]  # tokens [batch, pos] (torch long) -> logits [batch, vocab]


def hf_next_token_logits(model: Any, *, batch_size: int = 256) -> LogitsFn:
    """Wrap an HF causal LM (or a folder holding one) as `tokens [B, pos] -> logits [B, V]`."""
    import torch

    if isinstance(model, str | Path):
        from transformers import AutoModelForCausalLM

        model = AutoModelForCausalLM.from_pretrained(str(model), attn_implementation="eager")
    model.eval()
    device = next(model.parameters()).device

    def logits_fn(tokens: Any) -> Any:
        tokens = torch.as_tensor(tokens, dtype=torch.long)
        outs = []
        with torch.no_grad():
            for lo in range(0, tokens.shape[0], batch_size):
                part = tokens[lo: lo + batch_size].to(device)
                outs.append(model(input_ids=part).logits[:, -1].float().cpu())
        return torch.cat(outs)

    return logits_fn


def evaluate_icl(
    model_or_folder: Any, world: GincWorld, ns: Sequence[int] = (0, 1, 2, 4, 8, 16, 32), k: int = 3,
    n_prompts: int = 500, concepts: str = "in", seed: int = 0, *, with_ideal: bool = True,
) -> list[dict[str, Any]]:
    """ICL accuracy per number of examples `n` at example length `k`.

    `model_or_folder`: an HF causal LM, a checkpoint folder, or a callable
    `next_token_logits(tokens [batch, pos] long tensor) -> [batch, vocab]`. Prompts come from
    `sample_prompts(world, n, k, n_prompts, concepts=concepts, seed=seed)`. Returns one row per
    n: {n, k, concepts, n_prompts, accuracy, se, ideal_accuracy, ideal_se,
    pretrained_bayes_accuracy, pretrained_bayes_se} (fractions in 0..1; the last four columns
    only when `with_ideal`).
    """
    import torch

    if callable(model_or_folder) and not hasattr(model_or_folder, "config"):
        logits_fn = model_or_folder
    else:
        logits_fn = hf_next_token_logits(model_or_folder)
    rows = []
    for n in ns:
        prompts = sample_prompts(world, n, k, n_prompts, concepts=concepts, seed=seed)
        logits = logits_fn(torch.from_numpy(prompts.tokens))
        pred = np.asarray(torch.as_tensor(logits).argmax(dim=-1))
        acc, se = accuracy_with_se(pred == prompts.labels)
        row = {"n": n, "k": k, "concepts": concepts, "n_prompts": n_prompts,
               "accuracy": acc, "se": se}
        if with_ideal:
            row["ideal_accuracy"], row["ideal_se"] = ideal_accuracy(world, prompts, "in")
            row["pretrained_bayes_accuracy"], row["pretrained_bayes_se"] = pretrained_lm_accuracy(
                world, prompts, "in")
        rows.append(row)
    return rows


def icl_gain_summary(rows: Sequence[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per prompt set (`"in"` / `"out"` concepts) of `evaluate_icl` rows: the accuracy gain from
    the fewest to the most examples (`icl_gain`: gain, gain_se, 95 % interval, icl_emerged;
    fractions in 0..1) with the set's k and prompts per n."""
    out: dict[str, dict[str, Any]] = {}
    for concepts in dict.fromkeys(r["concepts"] for r in rows):
        part = [r for r in rows if r["concepts"] == concepts]
        gain = icl_gain({r["n"]: r["accuracy"] for r in part}, {r["n"]: r["se"] for r in part})
        out[concepts] = {"k": part[0]["k"], "n_prompts": part[0]["n_prompts"], **gain.to_dict()}
    return out

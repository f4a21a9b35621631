"""Learning-rate search on held-out demonstrations: disjoint data, argmax rule, divergence."""

from __future__ import annotations

import json
import math

import torch

from iclgd.analyses.lr_search import heldout_scores, search_learning_rates
from iclgd.analyses.prompt_sets import load_prompt_sets, tuning_prompt_set
from iclgd.analyses.runs import RunCapture
from iclgd.data.task_loaders import load_task
from iclgd.hooks import load_model


def _task(tmp_path):
    path = tmp_path / "pairs.jsonl"
    path.write_text("".join(json.dumps({"input": f"w{i}", "output": f"w{i + 20}"}) + "\n"
                            for i in range(2, 42)))
    return path


def test_heldout_scores_by_hand():
    logits = torch.tensor([[2.0, 0.0, 0.0], [0.0, 1.0, 3.0]])
    run = RunCapture("ft", torch.zeros(2, 1, 1), torch.zeros(2, 1, 1, 1), torch.ones(2),
                     logits, torch.tensor([0, 1]))
    acc, logp = heldout_scores(run)
    lse0, lse1 = math.log(math.exp(2) + 2), math.log(1 + math.e + math.exp(3))
    assert acc == 0.5
    assert abs(logp - ((2 - lse0) + (1 - lse1)) / 2) < 1e-12


def test_tuning_queries_never_evaluated(tiny_models, tmp_path):
    model = load_model(tiny_models["llama"], device="cpu")
    path = _task(tmp_path)
    held = tuning_prompt_set(model, path, 3, n_heldout=5, seed=1)
    sets, _ = load_prompt_sets(model, path, [3], n_queries=10, seed=1)
    task = load_task(path, seed=1)
    tok = model.tokenizer
    held_answers = set(tok.convert_ids_to_tokens(held.zs.answer_ids.tolist()))
    eval_answers = set(tok.convert_ids_to_tokens(sets[3].zs.answer_ids.tolist()))
    assert len(held) == 5 and held_answers.isdisjoint(eval_answers)
    assert held_answers <= {e.output for e in task.demonstrations}


def test_search_picks_best_heldout_and_skips_divergence(tiny_models, tmp_path):
    model = load_model(tiny_models["llama"], device="cpu")
    held = tuning_prompt_set(model, _task(tmp_path), 4, n_heldout=6, seed=0)
    chosen, rows = search_learning_rates(model, held, ["gd", "adam"], epochs=2,
                                         grids={"gd": [1e-3, 0.3, 1e30], "adam": [1e-3, 1e-2]})
    assert [r["lr"] for r in rows] == [1e-3, 0.3, 1e30, 1e-3, 1e-2]
    huge = rows[2]
    assert huge["diverged"] and not huge["chosen"]
    for method in ("gd", "adam"):
        ok = [r for r in rows if r["method"] == method and not r["diverged"]]
        best = max(ok, key=lambda r: (r["heldout_accuracy"], r["heldout_logprob"]))
        assert chosen[method] == best["lr"] and best["chosen"]
        assert sum(r["chosen"] for r in rows if r["method"] == method) == 1

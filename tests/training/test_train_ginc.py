"""`train_ginc`: tiny end-to-end run, loadable checkpoints, ginc.json, exact resume, evaluation."""

from __future__ import annotations

import argparse
import csv
import json
import math

import numpy as np
import pytest
import torch

from iclgd.data.ginc import (
    GincConfig,
    GincPrompts,
    build_world,
    ideal_next_token_probs,
    load_ginc_world,
)
from iclgd.errors import IclgdError
from iclgd.training.checkpointing import checkpoint_steps, latest_checkpoint, list_step_folders
from iclgd.training.ginc import GincTrainConfig, build_model, build_optimizer, train_ginc
from iclgd.training.ginc_eval import evaluate_icl

TINY = GincTrainConfig(
    layers=1, d_model=16, heads=2, window=40, batch=4, steps=8, time_budget=None, checkpoints=4,
    corpus_docs=20, doc_length=300, threads=1, log_every=2, ginc=GincConfig(seed=7),
)


def test_checkpoint_steps_log_spaced():
    assert checkpoint_steps(8, 4) == [0, 1, 3, 8]
    steps = checkpoint_steps(10000, 12)
    assert steps[0] == 0 and steps[-1] == 10000 and len(steps) == 12
    ratios = np.diff(np.log(steps[4:]))  # integer rounding distorts only the first few
    assert np.allclose(ratios, ratios[0], atol=0.01)


def test_tiny_run_writes_loadable_checkpoints(tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    summary = train_ginc(tmp_path, TINY, progress=False)
    assert summary["steps"] == 8
    assert [s for s, _ in list_step_folders(tmp_path)] == [0, 1, 3, 8]
    last = tmp_path / "step8"
    model = AutoModelForCausalLM.from_pretrained(str(last), local_files_only=True)
    assert type(model).__name__ == "GPTNeoXForCausalLM"
    assert model.config.num_hidden_layers == 1 and model.config.vocab_size == 52
    tok = AutoTokenizer.from_pretrained(str(last), local_files_only=True)
    assert tok("/ a b")["input_ids"] == [0, 1, 2]
    world, again = load_ginc_world(last), build_world(GincConfig(seed=7))
    np.testing.assert_array_equal(world.property_transitions, again.property_transitions)
    np.testing.assert_array_equal(world.memory, again.memory)
    meta = json.loads((last / "ginc.json").read_text())
    assert meta["step"] == 8 and meta["train"]["d_model"] == 16
    with (tmp_path / "train_log.csv").open() as fh:
        steps = [int(r["step"]) for r in csv.DictReader(fh)]
    assert steps == sorted(set(steps)) and steps[-1] == 8
    # the weights moved and differ between checkpoints
    first = AutoModelForCausalLM.from_pretrained(str(tmp_path / "step0"))
    assert not torch.equal(first.gpt_neox.embed_in.weight, model.gpt_neox.embed_in.weight)


def test_sdpa_training_matches_eager_and_saves_eager_checkpoints(tmp_path):
    from dataclasses import replace

    from safetensors.torch import load_file

    # AdamW isolates the attention kernel: Muon's bfloat16 Newton-Schulz step would turn float
    # rounding differences into bfloat16 rounding differences
    cfg = replace(TINY, optimizer="adamw")
    train_ginc(tmp_path / "sdpa", cfg, progress=False)
    train_ginc(tmp_path / "eager", replace(cfg, train_attention="eager"), progress=False)
    a = load_file(str(tmp_path / "sdpa/step8/model.safetensors"))
    b = load_file(str(tmp_path / "eager/step8/model.safetensors"))
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=0, atol=1e-4)
    assert TINY.train_attention == "sdpa"  # the default trains with SDPA


def test_muon_takes_the_hidden_matrices_and_adamw_the_rest():
    from dataclasses import replace

    cfg = replace(TINY, optimizer="muon", muon_lr=0.02, lr=1e-3)
    model = build_model(cfg)
    opt = build_optimizer(model, cfg)
    muon, adam = opt.optimizers
    assert type(muon).__name__ == "Muon" and type(adam).__name__ == "AdamW"
    name_of = {id(p): n for n, p in model.named_parameters()}
    in_muon = {name_of[id(p)] for g in muon.param_groups for p in g["params"]}
    in_adam = {name_of[id(p)] for g in adam.param_groups for p in g["params"]}
    assert in_muon == {
        "gpt_neox.layers.0.attention.query_key_value.weight", "gpt_neox.layers.0.attention.dense.weight",
        "gpt_neox.layers.0.mlp.dense_h_to_4h.weight", "gpt_neox.layers.0.mlp.dense_4h_to_h.weight"}
    assert in_muon.isdisjoint(in_adam) and in_muon | in_adam == set(name_of.values())
    assert {"gpt_neox.embed_in.weight", "lm_head.weight"} <= in_adam
    assert [g["lr_scale"] for g in opt.param_groups] == [20.0, 1.0]
    with pytest.raises(IclgdError, match="optimizer must be"):
        build_optimizer(model, replace(cfg, optimizer="sgd"))


def test_configs_saved_before_the_optimizer_field_read_as_adamw():
    saved = TINY.to_dict()
    del saved["optimizer"], saved["muon_lr"]
    assert GincTrainConfig.from_dict(saved).optimizer == "adamw"
    assert GincTrainConfig.from_dict(TINY.to_dict()) == TINY


@pytest.mark.parametrize("optimizer", ["muon", "adamw"])
def test_resume_after_interruption_matches_uninterrupted_run(tmp_path, optimizer):
    from dataclasses import replace

    from safetensors.torch import load_file

    cfg = replace(TINY, optimizer=optimizer)
    full, cut = tmp_path / "full", tmp_path / "cut"
    train_ginc(full, cfg, progress=False)
    partial = train_ginc(cut, cfg, progress=False, stop_after_steps=5)  # "killed" after step 5
    assert partial["stopped_early"] and latest_checkpoint(cut)[0] == 3
    train_ginc(cut, cfg, progress=False)
    assert [s for s, _ in list_step_folders(cut)] == [0, 1, 3, 8]
    assert not any(p.name.startswith(".tmp") for p in cut.iterdir())
    a, b = load_file(str(full / "step8/model.safetensors")), load_file(str(cut / "step8/model.safetensors"))
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=0, atol=1e-6)
    with (cut / "train_log.csv").open() as fh:
        steps = [int(r["step"]) for r in csv.DictReader(fh)]
    assert steps == [1, 2, 3, 4, 6, 8]  # no duplicated or lost rows
    summary = train_ginc(cut, cfg, progress=False)  # finished run: nothing more to do
    assert summary["steps"] == 8


def test_evaluate_icl_with_a_callable_equals_ideal_accuracy():
    world = build_world(GincConfig())
    k = 3

    def ideal_logits(tokens: torch.Tensor) -> torch.Tensor:
        n = (tokens.shape[1] - k + 1) // (k + 1)
        zeros = np.zeros(tokens.shape[0], dtype=np.int64)
        prompts = GincPrompts(tokens.numpy(), zeros, zeros, zeros, n, k)
        return torch.from_numpy(np.log(ideal_next_token_probs(world, prompts) + 1e-300))

    rows = evaluate_icl(ideal_logits, world, ns=(0, 2), k=k, n_prompts=80, seed=1)
    for row in rows:
        assert row["accuracy"] == row["ideal_accuracy"] and row["se"] == row["ideal_se"]
        assert row["n_prompts"] == 80 and 0.0 < row["se"] < 0.1
    assert rows[1]["accuracy"] > rows[0]["accuracy"]


def test_cli_trains_and_evaluates(tmp_path, capsys):
    from iclgd.commands import train_ginc as cmd

    parser = argparse.ArgumentParser()
    cmd.register(parser.add_subparsers())
    args = parser.parse_args([
        "ginc", "--out", str(tmp_path), "--layers", "1", "--d-model", "16", "--heads", "2",
        "--window", "140", "--batch", "2", "--steps", "3", "--checkpoints", "2", "--threads", "1",
        "--corpus-docs", "5", "--doc-length", "400", "--eval-prompts", "10", "--quiet",
    ])
    assert args.func(args) == 0
    assert [s for s, _ in list_step_folders(tmp_path)] == [0, 3]
    with (tmp_path / "icl_eval.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 14 and {r["concepts"] for r in rows} == {"in", "out"}
    assert all(0.0 <= float(r["pretrained_bayes_accuracy"]) <= 1.0 for r in rows)
    printed = capsys.readouterr().out
    assert "accuracy" in printed
    report = json.loads((tmp_path / "icl_eval.json").read_text())
    acc = {(r["concepts"], int(r["n"])): (float(r["accuracy"]), float(r["se"])) for r in rows}
    for concepts in ("in", "out"):
        g = report["icl_gain"][concepts]
        (a0, s0), (a32, s32) = acc[(concepts, 0)], acc[(concepts, 32)]
        assert (g["n_from"], g["n_to"], g["k"], g["n_prompts"]) == (0, 32, 3, 10)
        assert g["gain"] == pytest.approx(a32 - a0, abs=1e-12)
        assert g["gain_se"] == pytest.approx(math.hypot(s0, s32), abs=1e-12)
        assert g["icl_emerged"] == (g["gain_ci95_low"] > 0)
    assert report["icl_emerged"] == report["icl_gain"]["in"]["icl_emerged"]
    last_line = printed.strip().splitlines()[-1]
    assert last_line.startswith("ICL gain n = 0 -> 32, in-distribution k = 3, 10 prompts per n")
    assert ("ICL emerged" in last_line) == report["icl_emerged"]
    det = report["provenance"]["train"]["determinism"]
    assert det["threads"] == 1 and det["deterministic_algorithms"] is True
    assert det["cpu_capability"] == torch.backends.cpu.get_cpu_capability()
    assert not torch.are_deterministic_algorithms_enabled()  # restored after training


def test_time_budget_run_stops_and_checkpoints(tmp_path):
    from dataclasses import replace

    cfg = replace(TINY, steps=None, time_budget=1.5, checkpoints=3)
    summary = train_ginc(tmp_path, cfg, progress=False)
    steps = [s for s, _ in list_step_folders(tmp_path)]
    assert steps[0] == 0 and steps[-1] == summary["steps"] > 0 and 2 <= len(steps) <= 3
    assert summary["train_seconds"] >= 1.5

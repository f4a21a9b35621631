"""Checkpoint series: numeric ordering, in-place reloading, errors naming the labels."""

from __future__ import annotations

import shutil

import pytest
import torch
from transformers import AutoModelForCausalLM

from iclgd.errors import IclgdError
from iclgd.hooks import iter_checkpoints, list_checkpoints, load_model


def test_numeric_order(tiny_series):
    assert [c[0] for c in list_checkpoints(tiny_series)] == ["step0", "step2", "step10", "step100"]
    assert [c[1] for c in list_checkpoints(tiny_series)] == [0, 2, 10, 100]


def test_iter_reuses_one_bridge_and_matches_hf(tiny_series):
    tokens = torch.randint(0, 64, (2, 9), generator=torch.Generator().manual_seed(0))
    seen = []
    for label, step, model in iter_checkpoints(tiny_series, device="cpu"):
        hf = AutoModelForCausalLM.from_pretrained(tiny_series / label, attn_implementation="eager")
        with torch.no_grad():
            assert (model(tokens) - hf(tokens).logits).abs().max() <= 1e-4, label
        assert model.cfg.iclgd_checkpoint == label
        seen.append((label, step, id(model)))
    assert [s[0] for s in seen] == ["step0", "step2", "step10", "step100"]
    assert len({s[2] for s in seen}) == 1  # one skeleton


def test_every_keeps_last(tiny_series):
    assert [lab for lab, _, _ in iter_checkpoints(tiny_series, device="cpu", every=2)] == [
        "step0", "step10", "step100"]


def test_select_and_errors(tiny_series, tmp_path):
    assert load_model(tiny_series, device="cpu").cfg.iclgd_checkpoint == "step100"
    assert load_model(tiny_series, device="cpu", checkpoint="step2").cfg.iclgd_checkpoint == "step2"
    assert load_model(tiny_series, device="cpu", checkpoint=0).cfg.iclgd_checkpoint == "step0"
    with pytest.raises(IclgdError, match="available are step0, step2, step10, step100"):
        load_model(tiny_series, checkpoint="step7")
    (tmp_path / "empty").mkdir()
    with pytest.raises(IclgdError, match="no checkpoints"):
        list_checkpoints(tmp_path / "empty")


def test_incompatible_and_broken_checkpoints(tiny_series, tmp_path):
    from conftest import save_tiny

    series = tmp_path / "series"
    shutil.copytree(tiny_series / "step0", series / "step0")
    save_tiny(series / "step5", "gpt2")
    with pytest.raises(IclgdError, match="different architecture"):
        list(iter_checkpoints(series, device="cpu"))
    shutil.rmtree(series / "step5")
    shutil.copytree(tiny_series / "step2", series / "step5")
    (series / "step5" / "model.safetensors").write_bytes(b"garbage")
    shutil.copytree(tiny_series / "step10", series / "step9")
    failures = []
    labels = [lab for lab, _, _ in iter_checkpoints(
        series, device="cpu", on_error=lambda lab, step, err: failures.append(lab))]
    assert labels == ["step0", "step9"] and failures == ["step5"]


def test_one_description_of_an_architecture_difference(tiny_series, tmp_path):
    from conftest import save_tiny

    from iclgd.hooks.checkpoints import arch_difference, arch_signature, check_one_architecture

    ref = arch_signature(tiny_series / "step0")
    assert arch_difference(ref, arch_signature(tiny_series / "step100")) is None
    assert arch_difference({"a": 1, "b": 2, "c": 3}, {"c": 3, "b": 5, "z": 0}) == "a, b, z"
    assert arch_difference({f"k{i}": i for i in range(7)}, {}) == "k0, k1, k2, k3, k4"
    save_tiny(tmp_path / "gpt2", "gpt2")
    (tmp_path / "broken").mkdir()  # no config.json: skipped, left to loading
    series = [("step0", tiny_series / "step0"), ("step1", tmp_path / "broken"),
              ("step2", tiny_series / "step2")]
    check_one_architecture(series)
    diff = arch_difference(ref, arch_signature(tmp_path / "gpt2"))
    with pytest.raises(IclgdError) as err:
        check_one_architecture([*series, ("step9", tmp_path / "gpt2")])
    assert str(err.value).startswith(f"incompatible architectures: step9 differs from step0 in {diff};")

"""Hook names (`act_name`, `act_names`), `stack_layers`, and checkpoint naming (`iclgd.specs`)."""

from __future__ import annotations

import pytest
import torch

from iclgd.errors import IclgdError
from iclgd.hooks import act_name, act_names, stack_layers
from iclgd.hooks.names import SHORT_NAMES
from iclgd.specs import checkpoint_step, every_kth, list_checkpoints, select_checkpoint
from iclgd.training.checkpointing import list_step_folders


def test_short_names_are_bridge_hook_points(tiny_models):
    from iclgd.hooks import load_model

    hooks = load_model(tiny_models["gpt2"], device="cpu").hook_dict
    for short in SHORT_NAMES:
        assert act_name(short, 1) in hooks, short
    assert act_name("embed") in hooks and act_name("ln_final") in hooks


def test_act_name_forms_and_errors():
    assert act_name("resid_post", 2) == "blocks.2.hook_resid_post"
    assert act_name("blocks.2.ln1.hook_out", 2) == "blocks.2.ln1.hook_out"
    assert act_name("hook_embed") == "hook_embed"
    assert act_names("q", [0, 2]) == ["blocks.0.attn.hook_q", "blocks.2.attn.hook_q"]
    with pytest.raises(IclgdError, match="per layer"):
        act_name("attn_out")
    with pytest.raises(IclgdError, match="layer must be"):
        act_name("attn_out", -1)
    with pytest.raises(IclgdError, match="unknown hook name"):
        act_name("attention_output", 0)


def test_stack_layers_puts_layers_on_axis_1():
    acts = {f"blocks.{i}.hook_attn_out": torch.full((3, 5), float(i)) for i in range(2)}
    stacked = stack_layers(acts, "attn_out", 2)
    assert stacked.shape == (3, 2, 5) and torch.equal(stacked[:, 1], acts["blocks.1.hook_attn_out"])
    with pytest.raises(IclgdError, match="capture it first"):
        stack_layers(acts, "attn_out", 3)


def test_checkpoint_naming_is_shared_by_loader_and_trainers(tmp_path):
    assert [checkpoint_step(n) for n in ("step7", "checkpoint-7", "global_step7", "step7b")] == \
        [7, 7, 7, None]
    for name in ("step10", "checkpoint-2", "step0", "notes"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "config.json").write_text("{}")
    series = list_checkpoints(tmp_path)
    assert [c[1] for c in series] == [0, 2, 10]
    assert [step for step, _ in list_step_folders(tmp_path)] == [0, 2, 10]
    assert select_checkpoint(series, "checkpoint-2")[1] == 2 and select_checkpoint(series, -1)[1] == 10
    assert [c[1] for c in every_kth(series, 2)] == [0, 10]
    with pytest.raises(IclgdError, match="every"):
        every_kth(series, 0)

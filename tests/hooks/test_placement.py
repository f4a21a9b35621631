"""`load_model(..., device_map=, max_memory=, offload_folder=)`: multi-device loading on CPU."""

from __future__ import annotations

import pytest
import torch

from iclgd.errors import IclgdError
from iclgd.hooks import attention_weights, capture, load_model, read_hf_weights
from iclgd.hooks.placement import offloaded

pytest.importorskip("accelerate")

NEOX_DISK_LAYER1 = {
    "gpt_neox.embed_in": "cpu", "gpt_neox.emb_dropout": "cpu", "gpt_neox.layers.0": "cpu",
    "gpt_neox.layers.1": "disk", "gpt_neox.final_layer_norm": "cpu",
    "gpt_neox.rotary_emb": "cpu", "lm_head": "cpu",
}


@pytest.fixture(scope="module")
def plain(tiny_models):
    return load_model(tiny_models["neox"], device="cpu")


def _tokens() -> torch.Tensor:
    return torch.randint(0, 64, (3, 12), generator=torch.Generator().manual_seed(0))


def test_device_map_cpu_matches_plain_load(tiny_models, plain):
    model = load_model(tiny_models["neox"], device_map={"": "cpu"})
    assert torch.equal(model(_tokens()), plain(_tokens()))


def test_disk_offload_runs_hooks_and_refuses_raw_weight_reads(tiny_models, plain, tmp_path):
    model = load_model(tiny_models["neox"], device_map=NEOX_DISK_LAYER1,
                       offload_folder=tmp_path / "offload")
    names = offloaded(model)
    assert names and all(n.startswith("gpt_neox.layers.1.") for n in names)
    hook = ["blocks.1.attn.hook_pattern", "blocks.1.hook_attn_out"]
    got, want = capture(model, _tokens(), hook), capture(plain, _tokens(), hook)
    for name in hook:
        assert torch.equal(got[name], want[name]), name
    with pytest.raises(IclgdError, match="offloaded to disk: pass params=read_hf_weights"):
        attention_weights(model, 1)
    w = attention_weights(model, 1, params=read_hf_weights(tiny_models["neox"]))
    assert torch.equal(w.W_V, attention_weights(plain, 1).W_V)


def test_max_memory_spills_to_disk(tiny_models, plain, tmp_path):
    model = load_model(tiny_models["neox"], max_memory={"cpu": "40KB"},
                       offload_folder=tmp_path / "o")
    assert "disk" in set(model.original_model.hf_device_map.values())
    assert torch.equal(model(_tokens()), plain(_tokens()))


def test_placement_errors(tiny_models, tmp_path):
    from conftest import tiny_hf_model

    with pytest.raises(IclgdError, match="unknown device_map 'everywhere'"):
        load_model(tiny_models["neox"], device_map="everywhere")
    with pytest.raises(IclgdError, match="offload_folder needs a device_map"):
        load_model(tiny_models["neox"], offload_folder=tmp_path)
    with pytest.raises(IclgdError, match="folder or a hub name"):
        load_model(tiny_hf_model("gpt2"), device_map="auto")

"""load_model on the three tiny architectures: logits match the HF model; errors are clear."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM

from iclgd.errors import IclgdError
from iclgd.hooks import load_model, model_info


@pytest.mark.parametrize("arch", ["gpt2", "neox", "llama"])
def test_logits_match_hf(tiny_models, arch):
    folder = tiny_models[arch]
    bridge = load_model(folder, device="cpu")
    hf = AutoModelForCausalLM.from_pretrained(folder, attn_implementation="eager").eval()
    tokens = torch.randint(0, 64, (3, 17), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        diff = (bridge(tokens) - hf(tokens).logits).abs().max().item()
    assert diff <= 1e-4
    assert not bridge.training
    assert bridge.cfg.iclgd_processing == "raw"


def test_model_info_llama_gqa(tiny_models):
    info = model_info(load_model(tiny_models["llama"], device="cpu"))
    assert (info["n_layers"], info["n_heads"], info["n_key_value_heads"]) == (2, 4, 2)
    assert (info["d_model"], info["d_head"], info["d_mlp"], info["d_vocab"]) == (32, 8, 64, 64)
    assert info["normalization"] == "RMS" and info["positional_embedding"] == "rotary"
    hf = AutoModelForCausalLM.from_pretrained(tiny_models["llama"])
    assert info["n_params"] == sum(p.numel() for p in hf.parameters())
    assert "blocks.0.hook_attn_out" in info["hook_names_layer0"]


def test_folder_without_tokenizer_gets_id_tokenizer(tmp_path):
    import tempfile

    from conftest import save_tiny

    folder = save_tiny(tmp_path / "m", "neox", tokenizer=False)
    before = set(Path(tempfile.gettempdir()).glob("iclgd-id-tokenizer-*"))
    bridge = load_model(folder, device="cpu")
    assert bridge.tokenizer("<3> <5>")["input_ids"][-2:] == [3, 5]
    # the tokenizer's temporary folder is gone once the model is loaded
    assert set(Path(tempfile.gettempdir()).glob("iclgd-id-tokenizer-*")) <= before


def test_native_config_dict():
    bridge = load_model({"n_layers": 1, "d_model": 16, "n_heads": 2, "d_head": 8, "d_mlp": 32,
                         "d_vocab": 20, "n_ctx": 12, "act_fn": "gelu"}, device="cpu")
    assert bridge(torch.zeros(1, 5, dtype=torch.long)).shape == (1, 5, 20)


def test_errors(tmp_path, tiny_models, monkeypatch):
    with pytest.raises(IclgdError, match="no config.json"):
        load_model(tmp_path)
    with pytest.raises(IclgdError, match="no such folder"):
        load_model(tmp_path / "missing")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(IclgdError, match="not in the local Hugging Face cache"):
        load_model("EleutherAI/pythia-14m-not-cached")
    with pytest.raises(IclgdError, match="not a checkpoint series"):
        load_model(tiny_models["gpt2"], checkpoint="step1")


def test_nan_weights_rejected(tmp_path):
    from conftest import tiny_hf_model

    model = tiny_hf_model("gpt2")
    with torch.no_grad():
        model.transformer.h[1].mlp.c_fc.weight[0, 0] = float("nan")
    model.save_pretrained(tmp_path / "nan")
    with pytest.raises(IclgdError, match=r"non-finite weights .* transformer\.h\.1\.mlp\.c_fc"):
        load_model(tmp_path / "nan")

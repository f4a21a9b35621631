"""Raw per-head weights equal the checkpoint's HF tensors (fused QKV, Conv1D, GQA)."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file

from iclgd.errors import IclgdError
from iclgd.hooks import attention_weights, hf_module, load_model, mlp_weights

H, D, DH = 4, 32, 8


def _sd(folder):
    return load_file(str(folder / "model.safetensors"))


def test_gpt2_conv1d(tiny_models):
    sd = _sd(tiny_models["gpt2"])
    aw = attention_weights(load_model(tiny_models["gpt2"], device="cpu"), 1)
    c_attn = sd["transformer.h.1.attn.c_attn.weight"]  # [d_model, 3 d_model], x @ W
    for j, w in enumerate((aw.W_Q, aw.W_K, aw.W_V)):
        for h in range(H):
            assert torch.equal(w[h], c_attn[:, j * D + h * DH: j * D + (h + 1) * DH])
    bias = sd["transformer.h.1.attn.c_attn.bias"]
    assert torch.equal(aw.b_K[2], bias[D + 2 * DH: D + 3 * DH])
    c_proj = sd["transformer.h.1.attn.c_proj.weight"]
    assert torch.equal(aw.W_O[3], c_proj[3 * DH: 4 * DH])
    assert torch.equal(aw.b_O, sd["transformer.h.1.attn.c_proj.bias"])
    mw = mlp_weights(load_model(tiny_models["gpt2"], device="cpu"), 0)
    assert torch.equal(mw.W_in, sd["transformer.h.0.mlp.c_fc.weight"])
    assert torch.equal(mw.W_out, sd["transformer.h.0.mlp.c_proj.weight"])
    assert mw.W_gate is None


def test_neox_fused_interleaved(tiny_models):
    sd = _sd(tiny_models["neox"])
    aw = attention_weights(load_model(tiny_models["neox"], device="cpu"), 0)
    qkv = sd["gpt_neox.layers.0.attention.query_key_value.weight"]  # [3 d_model, d_model], W x
    for h in range(H):
        rows = qkv[h * 3 * DH: (h + 1) * 3 * DH]
        assert torch.equal(aw.W_Q[h], rows[:DH].T)
        assert torch.equal(aw.W_K[h], rows[DH: 2 * DH].T)
        assert torch.equal(aw.W_V[h], rows[2 * DH:].T)
    b = sd["gpt_neox.layers.0.attention.query_key_value.bias"]
    assert torch.equal(aw.b_V[1], b[3 * DH + 2 * DH: 3 * DH + 3 * DH])
    dense = sd["gpt_neox.layers.0.attention.dense.weight"]  # [d_model, d_model], W z
    assert torch.equal(aw.W_O[2], dense[:, 2 * DH: 3 * DH].T)
    mw = mlp_weights(load_model(tiny_models["neox"], device="cpu"), 1)
    assert torch.equal(mw.W_in, sd["gpt_neox.layers.1.mlp.dense_h_to_4h.weight"].T)
    assert torch.equal(mw.W_out, sd["gpt_neox.layers.1.mlp.dense_4h_to_h.weight"].T)


def test_llama_gqa(tiny_models):
    sd = _sd(tiny_models["llama"])
    model = load_model(tiny_models["llama"], device="cpu")
    aw = attention_weights(model, 1)
    assert aw.W_Q.shape == (4, D, DH) and aw.W_K.shape == (2, D, DH) and aw.W_V.shape == (2, D, DH)
    assert aw.n_key_value_heads == 2 and aw.grouped_query and aw.kv_head_of(3) == 1
    k = sd["model.layers.1.self_attn.k_proj.weight"]  # [n_kv d_head, d_model]
    assert torch.equal(aw.W_K[1], k[DH: 2 * DH].T)
    assert torch.equal(aw.W_O[0], sd["model.layers.1.self_attn.o_proj.weight"][:, :DH].T)
    assert aw.b_Q is None and aw.b_O is None
    mw = mlp_weights(model, 1)
    assert torch.equal(mw.W_gate, sd["model.layers.1.mlp.gate_proj.weight"].T)
    assert torch.equal(mw.W_in, sd["model.layers.1.mlp.up_proj.weight"].T)
    assert torch.equal(mw.W_out, sd["model.layers.1.mlp.down_proj.weight"].T)


@pytest.mark.parametrize("arch", ["gpt2", "neox", "llama"])
def test_per_head_weights_reproduce_attention(tiny_models, arch):
    """q for head h from raw weights equals the bridge's hook_q (rotary applied after hook_q)."""
    from iclgd.hooks import capture

    model = load_model(tiny_models[arch], device="cpu")
    tokens = torch.randint(0, 64, (2, 9), generator=torch.Generator().manual_seed(3))
    got = capture(model, tokens, ["blocks.1.ln1.hook_out", "blocks.1.attn.hook_q",
                                  "blocks.1.attn.hook_v"])
    x = got["blocks.1.ln1.hook_out"]
    aw = attention_weights(model, 1)
    q = torch.einsum("bpd,hde->bphe", x, aw.W_Q) + (0 if aw.b_Q is None else aw.b_Q)
    v = torch.einsum("bpd,hde->bphe", x, aw.W_V) + (0 if aw.b_V is None else aw.b_V)
    assert torch.allclose(v, got["blocks.1.attn.hook_v"], atol=1e-5)
    if arch == "gpt2":  # rotary models rotate q after projecting; hook_q is pre-rotation there too
        assert torch.allclose(q, got["blocks.1.attn.hook_q"], atol=1e-5)


def test_params_override_and_plain_module(tiny_models):
    model = load_model(tiny_models["neox"], device="cpu")
    plain = hf_module(model)
    tokens = torch.randint(0, 64, (2, 7), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.allclose(plain(tokens).logits, model(tokens), atol=1e-5)
    params = {k: v.clone() for k, v in plain.state_dict().items()}
    key = "gpt_neox.layers.1.attention.query_key_value.weight"
    params[key][DH: 2 * DH] += 1.0  # head 0's K rows
    delta = attention_weights(model, 1, params=params).W_K - attention_weights(model, 1).W_K
    assert torch.allclose(delta[0], torch.ones(D, DH)) and delta[1:].abs().sum() == 0


def test_plain_module_is_kept_until_a_weight_is_replaced(tiny_models):
    """`hf_module` returns the same plain model while the bridge's tensors are unchanged and a
    fresh one, with the new weights, once a tensor is replaced."""
    from iclgd.hooks import finetuned

    model = load_model(tiny_models["neox"], device="cpu")
    plain = hf_module(model)
    assert hf_module(model) is plain
    key = "gpt_neox.layers.1.attention.query_key_value.weight"
    bump = {key: torch.full_like(dict(plain.named_parameters())[key], 0.5)}
    with finetuned(model, bump):  # swaps a new W + ΔW tensor into the bridge
        inside = hf_module(model)
        assert inside is not plain
        assert torch.equal(dict(inside.named_parameters())[key],
                           dict(plain.named_parameters())[key] + 0.5)
    after = hf_module(model)
    assert torch.equal(dict(after.named_parameters())[key], dict(plain.named_parameters())[key])


def test_layer_out_of_range(tiny_models):
    with pytest.raises(IclgdError, match="out of range"):
        attention_weights(load_model(tiny_models["gpt2"], device="cpu"), 5)

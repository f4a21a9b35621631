"""Induction scores: prefix matching against HF attentions, copying against the full OV matrix."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM

from iclgd.errors import IclgdError
from iclgd.hooks import load_model
from iclgd.hooks.checkpoints import read_hf_weights
from iclgd.probes.induction import (
    induction_scores,
    prefix_matching_from_patterns,
    repeated_random_tokens,
)


def test_repeated_tokens_and_pattern_reading():
    toks = repeated_random_tokens(3, 10, 64, seed=1)
    assert toks.shape == (3, 20)
    assert torch.equal(toks[:, :10], toks[:, 10:])
    assert all(len(set(r[:10].tolist())) == 10 for r in toks)
    assert torch.equal(toks, repeated_random_tokens(3, 10, 64, seed=1))
    t = 4  # a perfect induction head (head 0) and a uniform head (head 1)
    pattern = torch.zeros(2, 2, t, 2 * t)
    for i in range(t):
        pattern[:, 0, i, i + 1] = 1.0
        pattern[:, 1, i, : t + i + 1] = 1.0 / (t + i + 1)
    got = prefix_matching_from_patterns(pattern, t)
    expected_uniform = sum(1.0 / (t + i + 1) for i in range(t)) / t
    assert got.tolist() == pytest.approx([1.0, expected_uniform], abs=1e-7)
    with pytest.raises(IclgdError):
        repeated_random_tokens(1, 1, 64, seed=0)


def test_scores_match_independent_computation(tiny_models):
    folder = tiny_models["neox"]
    bridge = load_model(folder, device="cpu")
    res = induction_scores(bridge, seq_len=12, n_seqs=3, seed=5, batch_size=2)
    assert res.prefix_matching.shape == res.copying.shape == (2, 4)
    # prefix matching from the plain HF model's attention probabilities
    hf = AutoModelForCausalLM.from_pretrained(folder, attn_implementation="eager").eval()
    toks = repeated_random_tokens(3, 12, 64, seed=5)
    with torch.no_grad():
        att = hf(toks, output_attentions=True).attentions
    q = torch.arange(12, 24)
    for layer in range(2):
        want = att[layer][:, :, q, q - 12 + 1].double().mean(dim=(0, 2))
        assert torch.allclose(res.prefix_matching[layer], want, atol=1e-5)
    # copying from the full [vocab, vocab] OV circuit built from the raw fused QKV tensor
    sd = {k: v.double() for k, v in read_hf_weights(folder).items()}
    w_e, w_u = sd["gpt_neox.embed_in.weight"], sd["lm_head.weight"].T
    for layer in range(2):
        qkv = sd[f"gpt_neox.layers.{layer}.attention.query_key_value.weight"].reshape(4, 3, 8, 32)
        dense = sd[f"gpt_neox.layers.{layer}.attention.dense.weight"]  # [d_model, h*d_head]
        for h in range(4):
            w_v = qkv[h, 2].T  # [d_model, d_head]
            w_o = dense[:, h * 8:(h + 1) * 8].T  # [d_head, d_model]
            full = w_e @ w_v @ w_o @ w_u  # [vocab, vocab]
            lam = torch.linalg.eigvals(full)
            want = float(lam.real.sum() / lam.abs().sum())
            assert res.copying[layer, h].item() == pytest.approx(want, abs=1e-8)
            top1 = float((full.argmax(-1) == torch.arange(64)).double().mean())
            assert res.copying_top1[layer, h].item() == pytest.approx(top1, abs=1e-12)
    best = res.top("prefix_matching", 2)
    assert best[0]["score"] == pytest.approx(res.prefix_matching.max().item())
    assert best[0]["score"] >= best[1]["score"]
    with pytest.raises(IclgdError, match="n_ctx"):
        induction_scores(bridge, seq_len=40)

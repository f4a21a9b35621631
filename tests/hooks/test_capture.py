"""capture stores only the requested hook points, sliced inside the hook."""

from __future__ import annotations

import pytest
import torch

from iclgd.errors import IclgdError
from iclgd.hooks import capture, load_model


@pytest.fixture(scope="module")
def gpt2(tiny_models):
    return load_model(tiny_models["gpt2"], device="cpu")


def _tokens(batch=3, pos=11, seed=0):
    return torch.randint(0, 64, (batch, pos), generator=torch.Generator().manual_seed(seed))


def test_only_requested_names_and_values_match_cache(gpt2):
    tokens = _tokens()
    names = ["blocks.0.hook_attn_out", "blocks.1.attn.hook_attn_scores"]
    got = capture(gpt2, tokens, names, return_logits=True)
    assert set(got) == set(names) | {"logits"}
    _, cache = gpt2.run_with_cache(tokens)
    for n in names:
        assert torch.allclose(got[n], cache[n].cpu(), atol=1e-6)
    assert got["blocks.0.hook_attn_out"].shape == (3, 11, 32)
    assert got["blocks.1.attn.hook_attn_scores"].shape == (3, 4, 11, 11)
    assert not got["blocks.0.hook_attn_out"].requires_grad


def test_positions_sliced(gpt2):
    tokens = _tokens()
    full = capture(gpt2, tokens, ["blocks.1.hook_attn_out", "blocks.1.attn.hook_pattern"],
                   return_logits=True)
    last = capture(gpt2, tokens, ["blocks.1.hook_attn_out", "blocks.1.attn.hook_pattern"],
                   positions=-1, return_logits=True)
    assert last["blocks.1.hook_attn_out"].shape == (3, 32)
    assert torch.equal(last["blocks.1.hook_attn_out"], full["blocks.1.hook_attn_out"][:, -1])
    assert torch.equal(last["blocks.1.attn.hook_pattern"], full["blocks.1.attn.hook_pattern"][:, :, -1])
    assert torch.equal(last["logits"], full["logits"][:, -1])
    per_row = torch.tensor([2, 5, 10])
    picked = capture(gpt2, tokens, "blocks.1.hook_attn_out", positions=per_row)
    want = full["blocks.1.hook_attn_out"][torch.arange(3), per_row]
    assert torch.equal(picked["blocks.1.hook_attn_out"], want)
    several = capture(gpt2, tokens, "blocks.1.hook_attn_out", positions=[0, 4])
    assert torch.equal(several["blocks.1.hook_attn_out"], full["blocks.1.hook_attn_out"][:, [0, 4]])


def test_k_positions_per_row_and_positions_per_name(gpt2):
    tokens = _tokens()
    names = ["blocks.1.hook_attn_out", "blocks.1.attn.hook_pattern"]
    full = capture(gpt2, tokens, names, return_logits=True)
    k = torch.tensor([[0, 3], [5, 5], [10, 1]])
    got = capture(gpt2, tokens, names, positions=k)
    rows = torch.arange(3)[:, None]
    assert torch.equal(got[names[0]], full[names[0]][rows, k])  # [batch, k, d_model]
    assert torch.equal(got[names[1]], full[names[1]].movedim(2, 1)[rows, k].movedim(1, 2))
    mixed = capture(gpt2, tokens, names, positions={names[0]: k, "logits": -1},
                    return_logits=True)
    assert torch.equal(mixed[names[0]], got[names[0]])
    assert torch.equal(mixed[names[1]], full[names[1]])  # not in the mapping: every position
    assert torch.equal(mixed["logits"], full["logits"][:, -1])
    with pytest.raises(IclgdError, match="one row per sequence"):
        capture(gpt2, tokens, names, positions=k[:2])


def test_filter_callable(gpt2):
    got = capture(gpt2, _tokens(), lambda n: n.endswith("hook_resid_post"), positions=0)
    assert sorted(got) == ["blocks.0.hook_resid_post", "blocks.1.hook_resid_post"]


def test_errors(gpt2):
    with pytest.raises(IclgdError, match="longer than the model's context n_ctx=64"):
        capture(gpt2, _tokens(pos=65), ["blocks.0.hook_attn_out"])
    with pytest.raises(IclgdError, match="empty"):
        capture(gpt2, torch.zeros(1, 0, dtype=torch.long), ["blocks.0.hook_attn_out"])
    with pytest.raises(IclgdError, match="integer token ids"):
        capture(gpt2, torch.zeros(1, 4), ["blocks.0.hook_attn_out"])
    with pytest.raises(IclgdError, match=r"shape \[batch, pos\]"):
        capture(gpt2, torch.zeros(1, 2, 3, dtype=torch.long), ["blocks.0.hook_attn_out"])
    with pytest.raises(IclgdError, match="did you mean"):
        capture(gpt2, _tokens(), ["blocks.0.hook_attn_outt"])
    with pytest.raises(IclgdError, match="vocabulary|must lie in"):
        capture(gpt2, torch.full((1, 3), 64), ["blocks.0.hook_attn_out"])


# ----------------------------------------------------------------------------- every model kind
def _check_against_cache(model, inputs, names, **kw):
    got = capture(model, inputs, names, positions=-1, return_logits=True, **kw)
    out, cache = model.run_with_cache(inputs, **kw.get("forward_kwargs", {}))
    for n in names:
        pos_axis = 2 if n.endswith(("hook_attn_scores", "hook_pattern")) else 1
        assert torch.allclose(got[n], cache[n].select(pos_axis, -1).cpu(), rtol=1e-5, atol=1e-6), n
    assert torch.allclose(got["logits"], out[:, -1].cpu(), rtol=1e-5, atol=1e-6)
    return got


@pytest.mark.parametrize("kind", ["gpt2", "neox", "llama", "series", "in-memory", "native"])
def test_capture_on_every_bridge_load_model_returns(kind, tiny_models, tiny_series):
    from conftest import tiny_hf_model

    spec = {
        "series": tiny_series,
        "in-memory": tiny_hf_model("neox", seed=3),
        "native": {"n_layers": 1, "d_model": 16, "n_heads": 2, "d_head": 8, "d_mlp": 32,
                   "d_vocab": 64, "n_ctx": 16, "act_fn": "gelu"},
    }.get(kind, tiny_models.get(kind))
    model = load_model(spec, device="cpu")
    _check_against_cache(model, _tokens(pos=9), ["blocks.0.hook_attn_out",
                                                 "blocks.0.attn.hook_attn_scores"])


@pytest.mark.parametrize("attention", ["linear", "softmax"])
def test_capture_on_the_linear_attention_transformer(attention):
    from iclgd.hooks import LinearAttentionConfig, LinearAttentionTransformer

    model = LinearAttentionTransformer(LinearAttentionConfig(d_model=6, n_layers=2, n_heads=2,
                                                             attention=attention,
                                                             dtype=torch.float64), seed=1)
    x = torch.randn(3, 5, 6, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    names = ["blocks.1.hook_attn_out", "blocks.0.attn.hook_pattern"]
    _check_against_cache(model, x, names)
    # forward arguments reach the model: n_context changes which keys are read
    a = _check_against_cache(model, x, names, forward_kwargs={"n_context": 2})
    b = capture(model, x, names, positions=-1)
    assert not torch.allclose(a["blocks.1.hook_attn_out"], b["blocks.1.hook_attn_out"])
    one = capture(model, x[0], "blocks.1.hook_attn_out")  # 2-D: one sequence
    assert torch.allclose(one["blocks.1.hook_attn_out"], capture(model, x, "blocks.1.hook_attn_out")
                          ["blocks.1.hook_attn_out"][:1], rtol=1e-5)
    with pytest.raises(IclgdError, match="float token vectors"):
        capture(model, torch.zeros(1, 5, dtype=torch.long), names)
    with pytest.raises(IclgdError, match="empty"):
        capture(model, torch.zeros(1, 0, 6, dtype=torch.float64), names)


@pytest.mark.parametrize("arch", ["gpt2", "neox", "llama"])
def test_logits_computed_only_where_kept_equal_the_full_ones(arch, tiny_models):
    model = load_model(tiny_models[arch], device="cpu")
    tokens = torch.randint(1, 64, (3, 9), generator=torch.Generator().manual_seed(0))
    seen = []
    handle = model.original_model.register_forward_pre_hook(
        lambda _m, _a, kw: seen.append(kw.get("logits_to_keep")), with_kwargs=True)
    try:
        with torch.no_grad():
            full = model(tokens)
        rows = torch.arange(3)
        cases = [(-1, full[:, -1]), (torch.tensor([2, 8, 5]), full[rows, [2, 8, 5]]),
                 (torch.tensor([[1, 4], [4, 0], [8, 8]]), full[rows[:, None], [[1, 4], [4, 0], [8, 8]]]),
                 ([0, 3], full[:, [0, 3]]), (slice(6, None), full[:, 6:])]
        for where, want in cases:
            seen.clear()
            got = capture(model, tokens, ["blocks.0.hook_attn_out"], positions={"logits": where}, return_logits=True)
            assert seen[-1] is not None and len(seen[-1]) < 9, where  # fewer positions computed
            assert got["logits"].shape == want.shape
            assert (got["logits"] - want).abs().max() < 1e-5, where
        seen.clear()
        all_pos = capture(model, tokens, ["blocks.0.hook_attn_out"], return_logits=True)["logits"]
        assert seen[-1] is None and torch.equal(all_pos, full)
    finally:
        handle.remove()

"""`finetuned`: runs W + ΔW, restores the weights bit for bit; `copy_model`, `write_weights`."""

from __future__ import annotations

import pytest
import torch
from torch.func import functional_call

from iclgd.data.tasks import demos_from_token_examples
from iclgd.errors import IclgdError
from iclgd.hooks import finetuned, hf_module, hf_state_dict, load_model
from iclgd.hooks.edit import copy_model, write_weights
from iclgd.probes.finetune import finetune

FUSED = "gpt_neox.layers.0.attention.query_key_value.weight"


@pytest.fixture(scope="module")
def neox(tiny_models):
    return load_model(tiny_models["neox"], device="cpu")


def _tokens(seed: int) -> torch.Tensor:
    return torch.randint(0, 64, (2, 7), generator=torch.Generator().manual_seed(seed))


def _snapshot(model) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in hf_state_dict(model).items()}


def test_runs_the_finetuned_weights_and_restores_them_exactly(neox):
    demos = demos_from_token_examples(_tokens(1))
    delta = finetune(neox, demos, method="sgd", lr=0.1)  # every weight, fused q/k/v included
    tok = _tokens(2)
    before = _snapshot(neox)
    with torch.no_grad():
        plain = neox(tok)
        expect = functional_call(hf_module(neox), delta.params_after(neox), (tok,)).logits
        with finetuned(neox, delta) as ft:
            assert ft is neox
            inside = ft(tok)
        after = neox(tok)
    assert (inside - expect).abs().max() < 1e-5
    assert (inside - plain).abs().max() > 1e-3
    assert torch.equal(after, plain)
    assert all(torch.equal(before[k], v) for k, v in hf_state_dict(neox).items())


def test_fused_qkv_copies_follow_and_zero_delta_is_bit_identical(neox):
    tok = _tokens(3)
    live = hf_state_dict(neox)[FUSED]
    bump = torch.zeros_like(live)
    bump[8:16] = 0.5  # head 0's key rows (interleaved [head, q|k|v, d_head])
    with torch.no_grad():
        plain = neox(tok)
        with finetuned(neox, {FUSED: bump}):
            bumped = neox(tok)
        with finetuned(neox, {FUSED: torch.zeros_like(live)}):
            zero = neox(tok)
        with finetuned(neox, None):
            none = neox(tok)
    assert (bumped - plain).abs().max() > 1e-4  # the bridge's split q/k/v copies were refreshed
    assert torch.equal(zero, plain) and torch.equal(none, plain)


def test_restores_when_the_block_raises(neox):
    before = _snapshot(neox)
    with pytest.raises(RuntimeError, match="inside"), finetuned(neox, {FUSED: torch.ones_like(before[FUSED])}):
        assert not torch.equal(hf_state_dict(neox)[FUSED], before[FUSED])
        raise RuntimeError("inside")
    assert torch.equal(hf_state_dict(neox)[FUSED], before[FUSED])


def test_bad_deltas(neox):
    with pytest.raises(IclgdError, match="lacks"), finetuned(neox, {"no.such.weight": torch.zeros(1)}):
        pass
    nan = torch.full_like(hf_state_dict(neox)[FUSED], float("nan"))
    before = _snapshot(neox)
    with pytest.raises(IclgdError, match="not finite"), finetuned(neox, {FUSED: nan}):
        pass
    assert torch.equal(hf_state_dict(neox)[FUSED], before[FUSED])
    with pytest.raises(IclgdError, match="WeightDelta"), finetuned(neox, 3):  # type: ignore[arg-type]
        pass


def test_copy_model_and_write_weights_leave_the_original_alone(neox):
    tok = _tokens(4)
    before = _snapshot(neox)
    clone = copy_model(neox)
    write_weights(clone, {FUSED: torch.zeros_like(before[FUSED])})
    with torch.no_grad():
        assert not torch.allclose(clone(tok), neox(tok))
    assert torch.equal(hf_state_dict(clone)[FUSED], torch.zeros_like(before[FUSED]))
    assert all(torch.equal(before[k], v) for k, v in hf_state_dict(neox).items())
    with pytest.raises(IclgdError, match="lacks"):
        write_weights(clone, {"no.such.weight": torch.zeros(1)})


def test_bf16_weights_get_w_plus_delta_rounded_once_and_exact_restore(tiny_models):
    model = load_model(tiny_models["neox"], device="cpu", dtype="bfloat16")
    name = FUSED
    live = hf_state_dict(model)[name]
    before = live.clone()
    # a float32 ΔW on the weights' scale: rounding ΔW to bf16 first, then the sum, rounds twice
    delta = 0.02 * torch.randn(live.shape, generator=torch.Generator().manual_seed(0))
    expect = (before.float() + delta).to(torch.bfloat16)
    with finetuned(model, {name: delta}):
        inside = hf_state_dict(model)[name].clone()
    assert inside.dtype == torch.bfloat16
    assert torch.equal(inside, expect)
    assert not torch.equal(expect, before + delta.to(torch.bfloat16))  # the rule matters here
    assert torch.equal(hf_state_dict(model)[name], before)


def test_original_tensors_are_never_written_and_tied_aliases_restore(tiny_models):
    model = load_model(tiny_models["gpt2"], device="cpu")  # GPT-2 ties wte and lm_head
    live = hf_state_dict(model)
    assert live["lm_head.weight"].data_ptr() == live["transformer.wte.weight"].data_ptr()
    view, before = live["transformer.wte.weight"], live["transformer.wte.weight"].clone()
    d = torch.full_like(before, 0.5)
    with finetuned(model, {"transformer.wte.weight": d, "lm_head.weight": d}):
        inside = hf_state_dict(model)
        assert torch.equal(view, before)  # the original storage keeps W
        assert torch.equal(inside["lm_head.weight"], before + d + d)  # one tensor, both deltas
        assert inside["transformer.wte.weight"].data_ptr() == inside["lm_head.weight"].data_ptr()
    after = hf_state_dict(model)
    assert after["transformer.wte.weight"].data_ptr() == view.data_ptr()
    assert after["lm_head.weight"].data_ptr() == view.data_ptr()
    assert torch.equal(after["lm_head.weight"], before)

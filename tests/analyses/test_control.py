"""The untrained control's two initialisations."""

from __future__ import annotations

import pytest
import torch

from iclgd.analyses.control import (
    describe_init,
    reinitialized_names,
    untrained_control,
    untrained_params,
)
from iclgd.errors import IclgdError
from iclgd.hooks import hf_state_dict, load_model


def test_default_init_is_the_architectures_own(tiny_models):
    from transformers import GPT2LMHeadModel

    model = load_model(tiny_models["gpt2"], device="cpu")
    before = {k: v.clone() for k, v in hf_state_dict(model).items()}
    rng = torch.random.get_rng_state()
    untrained_params(model, seed=5, init="default")
    assert torch.equal(rng, torch.random.get_rng_state())  # the fresh model's draws are private
    control = untrained_control(model, seed=5, init="default")
    after = hf_state_dict(control)
    torch.manual_seed(5)
    fresh = dict(GPT2LMHeadModel(model.original_model.config).named_parameters())
    names = set(reinitialized_names(model))
    for key in before:
        want = fresh[key] if key in names else before[key]
        assert torch.equal(after[key], want.detach()), key
    # GPT-2's own init scales the residual projections by 1/sqrt(2 n_layers) = 1/2
    c_proj = torch.cat([after[k].flatten() for k in names if k.endswith("attn.c_proj.weight")])
    c_attn = torch.cat([after[k].flatten() for k in names if k.endswith("attn.c_attn.weight")])
    assert float(c_attn.std()) == pytest.approx(0.02, rel=0.1)
    assert float(c_proj.std()) == pytest.approx(0.01, rel=0.1)
    assert "GPT2LMHeadModel's own initialisation" in control.cfg.iclgd_control_init
    assert "N(0, 0.02^2)" in describe_init(model, init="normal")


def test_unknown_init_is_bad_input(tiny_models):
    model = load_model(tiny_models["neox"], device="cpu")
    with pytest.raises(IclgdError, match="initialisation"):
        untrained_control(model, init="xavier")

"""ICL accuracy and ICL score against hand computations on the plain HF model's logits."""

from __future__ import annotations

import math

import pytest
import torch
from transformers import AutoModelForCausalLM

from iclgd.errors import IclgdError
from iclgd.hooks import load_model
from iclgd.probes.icl import (
    IclPrompts,
    default_icl_positions,
    gain_verdict,
    icl_accuracy,
    icl_gain,
    icl_score,
    stack_prompts,
)


@pytest.fixture(scope="module")
def neox(tiny_models):
    folder = tiny_models["neox"]
    hf = AutoModelForCausalLM.from_pretrained(folder, attn_implementation="eager").eval()
    return load_model(folder, device="cpu"), hf


def test_icl_accuracy_matches_hand_count(neox):
    bridge, hf = neox
    gen = torch.Generator().manual_seed(3)
    lengths = [5, 9, 7, 9, 4, 6, 8, 9]
    rows = [torch.randint(1, 64, (n,), generator=gen).tolist() for n in lengths]
    tokens, last = stack_prompts(rows, pad=0)
    with torch.no_grad():
        logits = hf(tokens).logits
    argmax = logits[torch.arange(len(rows)), last].argmax(-1)
    gold = argmax.clone()
    gold[[1, 4, 6]] = (gold[[1, 4, 6]] + 1) % 64  # three wrong on purpose
    ps = IclPrompts(2, tokens, last, gold)
    zero = IclPrompts.last_token(0, tokens[:, :4], hf(tokens[:, :4]).logits[:, -1].argmax(-1))
    res = icl_accuracy(bridge, {2: ps, 0: zero}, batch_size=3)
    assert res.n_values == [0, 2]
    assert res.accuracy[2] == 5 / 8 and res.count[2] == 8
    assert res.se[2] == pytest.approx(math.sqrt(5 / 8 * 3 / 8 / 8), abs=1e-12)
    assert res.accuracy[0] == 1.0 and res.se[0] == 0.0
    assert res.to_dict()["accuracy"] == {"0": 1.0, "2": 0.625}


def test_icl_score_matches_hand_losses(neox):
    bridge, hf = neox
    tokens = torch.randint(0, 64, (5, 40), generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        logp = torch.log_softmax(hf(tokens).logits.double(), -1)
    loss = -logp[:, :-1].gather(-1, tokens[:, 1:, None]).squeeze(-1)  # loss[:, t-1] = token t
    early, late = 3, 30
    diff = loss[:, late - 1] - loss[:, early - 1]
    sc = icl_score(bridge, tokens, early, late, batch_size=2)
    assert sc.score == pytest.approx(float(diff.mean()), abs=1e-5)
    assert sc.se == pytest.approx(float(diff.std() / math.sqrt(5)), abs=1e-5)
    assert sc.loss_early == pytest.approx(float(loss[:, early - 1].mean()), abs=1e-5)
    assert (sc.early, sc.late, sc.n_ctx, sc.n_sequences) == (3, 30, 64, 5)
    default = icl_score(bridge, torch.randint(0, 64, (2, 64)))
    assert (default.early, default.late) == default_icl_positions(64) == (6, 62)


def test_default_positions_follow_olsson():
    assert default_icl_positions(512) == (50, 500)
    assert default_icl_positions(1024) == (100, 1000)
    with pytest.raises(IclgdError):
        default_icl_positions(2)


def test_errors(neox):
    bridge, _ = neox
    with pytest.raises(IclgdError, match="answer position"):
        IclPrompts(1, torch.zeros(2, 3, dtype=torch.long), torch.tensor([0]), torch.tensor([0, 1]))
    with pytest.raises(IclgdError, match=r"lie in \[0, 3\)"):
        IclPrompts(1, torch.zeros(2, 3, dtype=torch.long), torch.tensor([0, 3]), torch.tensor([0, 1]))
    with pytest.raises(IclgdError, match="no ICL prompts"):
        icl_accuracy(bridge, {})
    with pytest.raises(IclgdError, match="early < late"):
        icl_score(bridge, torch.zeros(2, 10, dtype=torch.long), 5, 10)
    too_long = IclPrompts.last_token(1, torch.zeros(1, 65, dtype=torch.long), torch.tensor([0]))
    with pytest.raises(IclgdError, match="n_ctx"):
        icl_accuracy(bridge, [too_long])


def test_icl_gain_by_hand():
    # 0.40 (SE 0.03) -> 0.55 (SE 0.04): gain 0.15, SE 0.05, lower bound 0.15 - 1.96 * 0.05 > 0
    g = icl_gain({"0": 0.40, "4": 0.47, "32": 0.55}, {"0": 0.03, "4": 0.02, "32": 0.04})
    assert (g.n_from, g.n_to) == (0, 32)
    assert g.gain == pytest.approx(0.15, abs=1e-12) and g.se == pytest.approx(0.05, abs=1e-12)
    assert g.ci95_low == pytest.approx(0.15 - 1.959963984540054 * 0.05, abs=1e-12)
    assert g.ci95_high == pytest.approx(0.15 + 1.959963984540054 * 0.05, abs=1e-12)
    assert g.emerged
    # 0.40 -> 0.45 with the same SEs: lower bound 0.05 - 0.098 < 0, not emerged
    small = icl_gain({0: 0.40, 32: 0.45}, {0: 0.03, 32: 0.04})
    assert small.ci95_low == pytest.approx(0.05 - 1.959963984540054 * 0.05, abs=1e-12)
    assert not small.emerged
    mid = icl_gain({0: 0.40, 4: 0.47, 32: 0.55}, {0: 0.03, 4: 0.02, 32: 0.04}, n_to=4)
    assert mid.gain == pytest.approx(0.07, abs=1e-12) and mid.se == pytest.approx(math.sqrt(0.0013))
    assert "ICL emerged" in gain_verdict(g.to_dict(), "in:3")
    assert "+15.0 points (SE 5.0" in gain_verdict(g.to_dict())
    assert "did NOT emerge" in gain_verdict(small.to_dict())
    with pytest.raises(IclgdError, match="two different n"):
        icl_gain({0: 0.5}, {0: 0.1})
    with pytest.raises(IclgdError, match="two different n"):
        icl_gain({0: 0.5, 4: 0.6}, {0: 0.1, 4: 0.1}, n_to=8)

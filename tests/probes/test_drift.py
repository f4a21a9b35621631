"""Weight drift: relative Frobenius distance over the raw attention/MLP matrices."""

from __future__ import annotations

import math

import pytest
import torch
from conftest import save_tiny

from iclgd.errors import IclgdError
from iclgd.hooks import load_model
from iclgd.hooks.checkpoints import read_hf_weights
from iclgd.probes.drift import frobenius_norm, layer_matrices, weight_distance, weight_drift


def test_drift_hand_computation():
    a = {"x": torch.tensor([[1.0, 2.0], [3.0, 4.0]]), "y": torch.tensor([5.0])}
    b = {"x": torch.tensor([[1.0, 0.0], [0.0, 4.0]]), "y": torch.tensor([1.0])}
    # differences 0, 2, 3, 0, 4 -> 29 ; reference 1 + 16 + 1 -> 18
    assert weight_distance(a, b) == pytest.approx(math.sqrt(29), abs=1e-12)
    assert frobenius_norm(b) == pytest.approx(math.sqrt(18), abs=1e-12)
    assert weight_drift(a, b) == pytest.approx(math.sqrt(29 / 18), abs=1e-12)
    assert weight_drift(b, b) == 0.0
    assert weight_drift(torch.tensor([3.0, 4.0]), torch.tensor([0.0, 4.0])) == pytest.approx(3 / 4)


def test_drift_errors():
    with pytest.raises(IclgdError, match="differ"):
        weight_drift({"x": torch.ones(2)}, {"y": torch.ones(2)})
    with pytest.raises(IclgdError, match="shape"):
        weight_drift({"x": torch.ones(2)}, {"x": torch.ones(3)})
    with pytest.raises(IclgdError, match="all zero"):
        weight_drift({"x": torch.ones(2)}, {"x": torch.zeros(2)})


def test_model_drift_matches_raw_hf_tensors(tmp_path):
    """θ = exactly the fused QKV, attention output and MLP matrices of every layer (no biases,
    embeddings or norms): the per-head rearrangement keeps the Frobenius norms."""
    a = save_tiny(tmp_path / "a", "neox", seed=1)
    b = save_tiny(tmp_path / "b", "neox", seed=2)
    model = load_model(a, device="cpu")
    sa, sb = read_hf_weights(a), read_hf_weights(b)
    theta_a, theta_b = layer_matrices(model), layer_matrices(model, params=sb)
    assert len(theta_a) == 2 * 6  # W_Q, W_K, W_V, W_O, W_in, W_out per layer
    keep = ("attention.query_key_value.weight", "attention.dense.weight",
            "mlp.dense_h_to_4h.weight", "mlp.dense_4h_to_h.weight")
    names = [k for k in sa if k.endswith(keep)]
    assert len(names) == 8
    num = sum(float((sa[k].double() - sb[k].double()).pow(2).sum()) for k in names)
    den = sum(float(sb[k].double().pow(2).sum()) for k in names)
    assert weight_drift(theta_a, theta_b) == pytest.approx(math.sqrt(num / den), rel=1e-12)
    assert weight_drift(layer_matrices(model, params=sa), theta_a) == 0.0

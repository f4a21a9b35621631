"""Weight drift between checkpoints (Shen, Mishra & Khashabi 2024's weight-evolution
argument).

`θ` is every attention and MLP weight matrix of every layer — `W_Q`, `W_K`, `W_V`, `W_O`,
`W_in`, `W_out` (and `W_gate` for gated MLPs) — taken raw (no LayerNorm folding, no centering)
and concatenated; biases, embeddings, the unembedding and norms are excluded.

    weight_drift(θ_a, θ_b) = ||θ_a − θ_b||_F / ||θ_b||_F

(relative Frobenius distance, computed in float64; `θ_b` is the reference).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor

from iclgd.errors import IclgdError


def layer_matrices(model: Any, params: Mapping[str, Tensor] | None = None) -> dict[str, Tensor]:
    """`θ` as a dict `"{layer}.{name}" → raw tensor` (per-head tensors kept as they are).

    `params` is an HF-named state dict (e.g. `iclgd.hooks.read_hf_weights(folder)`) to read
    instead of the model's own weights; the model then only supplies the layout.
    """
    from iclgd.hooks import attention_weights, mlp_weights

    out: dict[str, Tensor] = {}
    for layer in range(int(model.cfg.n_layers)):
        for name, w in attention_weights(model, layer, params=params).matrices().items():
            out[f"{layer}.{name}"] = w.detach()
        for name, w in mlp_weights(model, layer, params=params).matrices().items():
            out[f"{layer}.{name}"] = w.detach()
    return out


def _check_same(theta_a: Mapping[str, Tensor], theta_b: Mapping[str, Tensor]) -> None:
    if set(theta_a) != set(theta_b):
        extra = sorted(set(theta_a) ^ set(theta_b))
        raise IclgdError(f"weight sets differ in {', '.join(extra[:4])}: drift needs one architecture")
    for key in theta_a:
        if tuple(theta_a[key].shape) != tuple(theta_b[key].shape):
            raise IclgdError(
                f"weight {key} has shape {tuple(theta_a[key].shape)} vs {tuple(theta_b[key].shape)}: "
                "drift needs one architecture"
            )


def frobenius_norm(theta: Mapping[str, Tensor]) -> float:
    """`||θ||_F`: the Euclidean norm of all entries of all tensors (float64)."""
    return math.sqrt(sum(float(t.detach().to(torch.float64).pow(2).sum()) for t in theta.values()))


def weight_distance(theta_a: Mapping[str, Tensor], theta_b: Mapping[str, Tensor]) -> float:
    """`||θ_a − θ_b||_F` over the concatenation of all tensors (same keys and shapes)."""
    _check_same(theta_a, theta_b)
    total = 0.0
    for key, a in theta_a.items():
        b = theta_b[key].to(a.device)
        total += float((a.detach().to(torch.float64) - b.detach().to(torch.float64)).pow(2).sum())
    return math.sqrt(total)


def weight_drift(theta_a: Mapping[str, Tensor] | Tensor, theta_b: Mapping[str, Tensor] | Tensor) -> float:
    """Relative drift `||θ_a − θ_b||_F / ||θ_b||_F` (module docstring), float64.

    `θ` is a dict of tensors (same keys and shapes on both sides, e.g. from `layer_matrices`)
    or a single tensor. Raises `IclgdError` when the reference `θ_b` is all zero.
    """
    if isinstance(theta_a, Tensor):
        theta_a = {"w": theta_a}
    if isinstance(theta_b, Tensor):
        theta_b = {"w": theta_b}
    if not theta_b:
        raise IclgdError("no weights given: drift needs at least one weight matrix")
    dist = weight_distance(theta_a, theta_b)
    ref = frobenius_norm(theta_b)
    if ref == 0.0:
        raise IclgdError("the reference weights are all zero: relative drift is undefined")
    return dist / ref

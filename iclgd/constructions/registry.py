"""The published constructions by name, built with one set of keyword arguments.

Names and what each claims (the algorithm its `reference` runs):

- `von-oswald-gd` — one (or K) GD steps on the half-MSE loss (von Oswald et al. 2023, §2);
- `von-oswald-gdpp` — GD++: a GD step on y plus data-dependent preconditioning of x per layer
  (von Oswald et al. 2023, §3);
- `von-oswald-standard-tokens` — the two-layer version on alternating x / (0, y) tokens, a
  softmax copy layer then the GD layer (von Oswald et al. 2023, §4; approximate: the copy
  is a low-temperature softmax);
- `akyurek-sgd` — one SGD step from the read-arithmetic-write operators (Akyürek et al. 2023,
  §3; approximate: products by a GeLU-based multiplication);
- `ahn-pgd` — preconditioned GD steps of linear attention (Ahn et al. 2023);
- `dual-form` — Dai et al. (2023)'s identity: linear attention over the demonstrations equals a
  linear layer with the update `ΔW_ICL = Σ_i (W_V x'_i) ⊗ (W_K x'_i)`.
"""

from __future__ import annotations

import math

import torch

from iclgd.constructions.ahn import ahn_preconditioned_gd
from iclgd.constructions.akyurek import akyurek_sgd_step
from iclgd.constructions.base import Construction
from iclgd.constructions.dual_form import dual_form_layer
from iclgd.constructions.standard_tokens import von_oswald_standard_tokens
from iclgd.constructions.von_oswald import von_oswald_gd, von_oswald_gdpp
from iclgd.errors import IclgdError

NAMES = (
    "von-oswald-gd",
    "von-oswald-gdpp",
    "von-oswald-standard-tokens",
    "akyurek-sgd",
    "ahn-pgd",
    "dual-form",
)


def default_eta(d: int) -> float:
    """The default GD rate `0.6 d`: von Oswald et al.'s tuned one-step rate for d = n = 10 with
    x ~ U(-0.5, 0.5) is about 6, and 0.6 d keeps one step near optimal for that input law."""
    return 0.6 * d


def build_construction(
    name: str,
    *,
    d: int = 10,
    n: int = 10,
    d_out: int = 1,
    eta: float | None = None,
    gamma: float = 0.01,
    steps: int = 1,
    layers: int = 2,
    temperature: float = 0.02,
    mul_scale: float = 1e4,
    seed: int = 0,
    dtype: torch.dtype = torch.float64,
) -> Construction:
    """The `Construction` called `name` (see the module docstring); arguments are validated by
    the builders, bad ones raise `IclgdError`."""
    if name not in NAMES:
        raise IclgdError(f"unknown construction {name!r}: use one of {', '.join(NAMES)}")
    eta = default_eta(d) if eta is None else eta
    if not math.isfinite(eta):
        raise IclgdError(f"eta must be finite, got {eta}")
    if name == "von-oswald-gd":
        return von_oswald_gd(d, n=n, eta=eta, d_out=d_out, steps=steps, dtype=dtype)
    if name == "von-oswald-gdpp":
        return von_oswald_gdpp(d, n=n, eta=eta, gamma=gamma, layers=layers, d_out=d_out,
                               dtype=dtype)
    if name == "von-oswald-standard-tokens":
        return von_oswald_standard_tokens(d, n=n, eta=eta, d_out=d_out,
                                          temperature=temperature, dtype=dtype)
    if name == "akyurek-sgd":
        if d_out != 1:
            raise IclgdError("akyurek-sgd is built for d_out = 1")
        return akyurek_sgd_step(d, n=n, alpha=eta / 2 / d, steps=steps, mul_scale=mul_scale,
                                dtype=dtype)
    if name == "ahn-pgd":
        if d < 1:
            raise IclgdError(f"d must be >= 1, got {d}")
        if d_out != 1:
            raise IclgdError("ahn-pgd is built for d_out = 1")
        Q = -eta * torch.eye(d, dtype=torch.float64)
        return ahn_preconditioned_gd(torch.zeros(d, d, dtype=torch.float64), Q, layers=layers,
                                     n=n, dtype=dtype)
    return dual_form_layer(d, n=n, d_out=d_out, seed=seed, dtype=dtype)

"""Audit a construction: agreement with its algorithm, loss, weight density, robustness to noise.

A measurement of a model like the other probes (its density comes from `iclgd.probes.density`),
of the hand-built models in `iclgd.constructions`.

Conventions (recorded in every report):
- error: `|y_hat_construction - y_hat_reference|` over tasks and output dims (max and mean);
- loss: half MSE `0.5 mean ||y_hat - y||^2` (von Oswald) unless the construction says "mse" (Ahn);
- density: per matrix in the paper's column form, `fraction_below` at `DEFAULT_THRESHOLDS`
  (keys "%.0e") via `iclgd.probes.density`;
- density_at_width: non-zero fractions at residual width 4096 computed from non-zero counts:
  "embedded" = the same matrices placed in a 4096-wide residual stream (nnz / 4096²);
  "scaled" = the construction rebuilt at width 4096 (Shen et al.'s reading: d = d_out = 2048,
  dense W_0), when the construction defines it;
- perturbation: every weight matrix of the model (parameters with >= 2 dims) gets i.i.d. Gaussian
  noise of std `eps * ||W||_F / sqrt(numel(W))` (eps relative to the matrix's RMS entry; zero
  matrices stay zero), for eps in 1e-6 ... 1e-1; error vs the reference and loss are reported.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Sequence

import torch
from torch import Tensor

from iclgd.constructions.base import Construction
from iclgd.constructions.reference import half_mse, mse
from iclgd.data.regression import sample_linear_tasks
from iclgd.errors import IclgdError
from iclgd.hooks.linear_attention import LinearAttentionTransformer
from iclgd.probes.density import DEFAULT_THRESHOLDS, fractions_below, nonzero_count

PERTURBATION_EPS: tuple[float, ...] = (1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 1e-1)
WIDTH = 4096


def _loss_fn(convention: str) -> Callable[[Tensor, Tensor], float]:
    if convention not in ("half_mse", "mse"):
        raise IclgdError(f"loss convention must be 'half_mse' or 'mse', got {convention!r}")
    return half_mse if convention == "half_mse" else mse


def density_table(
    weights: dict[str, Tensor], thresholds: Sequence[float] = DEFAULT_THRESHOLDS
) -> dict:
    """Per matrix: shape, non-zero count, `fraction_below` at each threshold (keys "%.0e")."""
    return {
        name: {
            "shape": list(w.shape),
            "nonzero": nonzero_count(w),
            "numel": int(w.numel()),
            "fraction_below": fractions_below(w, tuple(thresholds)),
        }
        for name, w in weights.items()
    }


def density_at_width(
    weights: dict[str, Tensor],
    nonzero_at_width: Callable[[int], dict[str, tuple[int, int, int]]] | None = None,
    width: int = WIDTH,
) -> dict:
    """Non-zero fractions at residual width `width` (see the module docstring), from counts only."""
    embedded = {}
    for name, w in weights.items():
        if w.ndim == 2 and max(w.shape) <= width:
            embedded[name] = nonzero_count(w) / (width * width)
    out: dict = {"width": width, "embedded": embedded}
    if nonzero_at_width is not None:
        counts = nonzero_at_width(width)
        out["scaled"] = {name: nnz / (r * c) for name, (r, c, nnz) in counts.items()}
        out["scaled_reading"] = (
            "construction rebuilt at this width (d = d_out = width / 2, dense W_0)"
        )
    return out


def perturbed_model(
    model: LinearAttentionTransformer, eps: float, generator: torch.Generator
) -> LinearAttentionTransformer:
    """A deep copy of `model` with relative Gaussian noise on every weight matrix (>= 2 dims)."""
    noisy = copy.deepcopy(model)
    with torch.no_grad():
        seen: set[int] = set()
        for p in noisy.parameters():
            if p.ndim < 2 or id(p) in seen:
                continue
            seen.add(id(p))
            rms = float(p.double().norm()) / math.sqrt(p.numel())
            noise = torch.randn(p.shape, generator=generator, dtype=torch.float64) * (eps * rms)
            p.add_(noise.to(p.dtype))
    return noisy


def audit_construction(
    construction: Construction,
    *,
    tasks: int = 1000,
    seed: int = 0,
    d_out: int = 1,
    x_dist: str = "uniform",
    eps_values: Sequence[float] = PERTURBATION_EPS,
) -> dict:
    """Audit report (dict) of `construction` on `tasks` random tasks (x ~ U(-0.5, 0.5), w ~ N(0, I)).

    Example:
        >>> report = audit_construction(von_oswald_gd(2, n=4, eta=0.1), tasks=20)
        >>> report["max_abs_error"] < 1e-12, report["loss_convention"]
        (True, 'half_mse')
    """
    if isinstance(tasks, bool) or not isinstance(tasks, int) or tasks < 1:
        raise IclgdError(f"tasks must be an integer >= 1, got {tasks!r}")
    p = construction.params
    n, d = construction.n or p.get("n"), p.get("d")
    d_out = p.get("d_out", d_out)
    dtype = construction.model.cfg.dtype
    t = sample_linear_tasks(
        tasks,
        n,
        d,
        d_out=d_out,
        x_dist=x_dist,
        generator=torch.Generator().manual_seed(seed),
        dtype=dtype,
    )
    loss = _loss_fn(construction.loss_convention)
    with torch.no_grad():
        pred = construction.predict(t.X, t.Y, t.x_query)
        ref = construction.reference(t.X, t.Y, t.x_query)
        err = (pred - ref).abs()
        gen = torch.Generator().manual_seed(seed + 1)
        curve = []
        for eps in eps_values:
            noisy = perturbed_model(construction.model, eps, gen)
            pn = construction.predict(t.X, t.Y, t.x_query, model=noisy)
            e = (pn - ref).abs()
            curve.append({
                "eps": eps, "max_abs_error": float(e.max()), "mean_abs_error": float(e.mean()),
                "loss": loss(pn, t.y_query),
            })  # fmt: skip
    weights = construction.weights()
    return {
        "construction": construction.name,
        "reference": construction.reference_name or "user-supplied reference_fn",
        "params": p,
        "exact": construction.exact,
        "notes": construction.notes,
        "tasks": tasks,
        "seed": seed,
        "dtype": str(dtype).replace("torch.", ""),
        "x_dist": x_dist,
        "max_abs_error": float(err.max()),
        "mean_abs_error": float(err.mean()),
        "loss_convention": construction.loss_convention,
        "loss_construction": loss(pred, t.y_query),
        "loss_reference": loss(ref, t.y_query),
        "density": density_table(weights),
        "density_at_width": density_at_width(weights, construction.nonzero_at_width),
        "perturbation": {
            "noise": "N(0, (eps * ||W||_F / sqrt(numel W))^2) on every weight matrix of the model",
            "curve": curve,
        },
    }


def audit(
    model_or_weights: LinearAttentionTransformer | Construction,
    reference_fn: Callable[[Tensor, Tensor, Tensor], Tensor],
    *,
    d: int,
    n: int,
    d_out: int = 1,
    tokens_fn: Callable | None = None,
    readout_fn: Callable[[Tensor], Tensor] | None = None,
    weights: dict[str, Tensor] | None = None,
    name: str = "user",
    loss_convention: str = "half_mse",
    tasks: int = 1000,
    seed: int = 0,
) -> dict:
    """Audit user-supplied weights (a `LinearAttentionTransformer`) against `reference_fn`.

    Defaults follow von Oswald's layout: tokens `(x_i, y_i)`, query `(x_q, 0)`, keys/values the
    context, `y_hat = -` (query y-slot). Pass `tokens_fn(X, Y, x_query) -> (tokens, kwargs)` and
    `readout_fn(resid) -> y_hat` for other layouts; `weights` are the named matrices to measure
    (default: the model's raw per-layer `W_Q`, `W_K`, `W_V`, `W_O`, row form).
    """
    if isinstance(model_or_weights, Construction):
        return audit_construction(model_or_weights, tasks=tasks, seed=seed)
    if not isinstance(model_or_weights, LinearAttentionTransformer):
        raise IclgdError("audit needs a LinearAttentionTransformer or a Construction")
    from iclgd.constructions.von_oswald import von_oswald_tokens

    model = model_or_weights
    if model.cfg.d_model < d + d_out and tokens_fn is None:
        raise IclgdError(f"model width {model.cfg.d_model} < d + d_out = {d + d_out}")
    if weights is None:
        weights = {}
        for layer in range(model.cfg.n_layers):
            for k, v in model.attention_weights(layer).matrices().items():
                for h in range(v.shape[0]):
                    weights[f"{k}.{layer}.{h}"] = v[h]
    c = Construction(
        name=name,
        model=model,
        tokens_fn=tokens_fn
        or (lambda X, Y, xq: (von_oswald_tokens(X, Y, xq), {"n_context": X.shape[1]})),
        readout_fn=readout_fn or (lambda resid: -resid[:, -1, d : d + d_out]),
        reference_fn=reference_fn,
        weights_fn=lambda: weights,
        params={"d": d, "n": n, "d_out": d_out},
        exact=False,
        loss_convention=loss_convention,
        n=n,
    )
    return audit_construction(c, tasks=tasks, seed=seed)


def approximation_sweep(
    build: Callable[[float], Construction],
    values: Sequence[float],
    *,
    tasks: int = 200,
    seed: int = 0,
) -> list[dict]:
    """Error vs reference of an approximate construction for each value of its scale parameter.

    `build(value)` returns the construction (e.g. a temperature or GeLU scale); each row has
    `value`, `max_abs_error`, `mean_abs_error` on the same tasks.
    """
    rows = []
    for value in values:
        c = build(value)
        p = c.params
        t = sample_linear_tasks(
            tasks, c.n, p["d"], d_out=p.get("d_out", 1), generator=torch.Generator().manual_seed(seed),
            dtype=c.model.cfg.dtype,
        )  # fmt: skip
        with torch.no_grad():
            e = (c.predict(t.X, t.Y, t.x_query) - c.reference(t.X, t.Y, t.x_query)).abs()
        rows.append(
            {"value": value, "max_abs_error": float(e.max()), "mean_abs_error": float(e.mean())}
        )
    return rows

"""Per-layer weight density of a model (the weight-density test of Shen, Mishra &
Khashabi 2024).

Reads raw weights (`iclgd.hooks.attention_weights` / `mlp_weights`): no LayerNorm folding, no
centering, so the numbers describe the checkpoint as stored.
"""

from __future__ import annotations

from typing import Any

from iclgd.hooks import attention_weights, mlp_weights
from iclgd.probes.density import (
    DEFAULT_THRESHOLDS,
    fractions_below,
    hoyer,
    stable_rank,
    threshold_key,
)


def density_report(
    model: Any, *, thresholds: tuple[float, ...] = DEFAULT_THRESHOLDS, model_name: str = ""
) -> dict[str, Any]:
    """Density of every attention and MLP matrix of every layer, plus a summary.

    Per matrix (`W_Q`, `W_K`, `W_V`, `W_O` as `[n_heads, ...]` per-head tensors, `W_in`,
    `W_out`, `W_gate`): `fraction_below` (|w| < τ, keys `%.0e`), Hoyer sparsity, and stable
    rank (of the full 2-D matrix: per-head tensors are flattened back to `[d_model, n_heads·
    d_head]` or `[n_heads·d_head, d_model]`). The summary averages each measure per matrix name
    and over all matrices (unweighted mean over matrices).
    """
    rows: list[dict[str, Any]] = []
    for layer in range(int(model.cfg.n_layers)):
        mats = dict(attention_weights(model, layer).matrices())
        mats.update(mlp_weights(model, layer).matrices())
        for name, w in mats.items():
            rows.append({
                "layer": layer,
                "name": name,
                "shape": list(w.shape),
                "fraction_below": fractions_below(w, thresholds),
                "hoyer": hoyer(w),
                "stable_rank": stable_rank(_as_matrix(name, w)),
            })
    return {
        "model": model_name or getattr(model.cfg, "iclgd_source", ""),
        "checkpoint": getattr(model.cfg, "iclgd_checkpoint", None),
        "processing": "raw",
        "thresholds": [threshold_key(t) for t in thresholds],
        "matrices": rows,
        "summary": summarize(rows, thresholds),
    }


def _as_matrix(name: str, w: Any) -> Any:
    if w.ndim != 3:
        return w
    if name == "W_O":  # [h, d_head, d_model] -> [h*d_head, d_model]
        return w.reshape(-1, w.shape[-1])
    return w.permute(1, 0, 2).reshape(w.shape[1], -1)  # [h, d_model, d_head] -> [d_model, h*d_head]


def summarize(rows: list[dict[str, Any]], thresholds: tuple[float, ...]) -> dict[str, Any]:
    """Mean of each density measure per matrix name and over all matrices."""
    keys = [threshold_key(t) for t in thresholds]

    def mean(sel: list[dict[str, Any]]) -> dict[str, Any]:
        n = len(sel)
        return {
            "n_matrices": n,
            "fraction_below": {k: sum(r["fraction_below"][k] for r in sel) / n for k in keys},
            "hoyer": sum(r["hoyer"] for r in sel) / n,
            "stable_rank": sum(r["stable_rank"] for r in sel) / n,
        }

    names = list(dict.fromkeys(r["name"] for r in rows))
    return {"all": mean(rows), "by_matrix": {n: mean([r for r in rows if r["name"] == n]) for n in names}}

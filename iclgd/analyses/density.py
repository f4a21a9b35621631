"""Per-layer weight density of a model (the weight-density test of Shen, Mishra &
Khashabi 2024, §3.2).

Reads raw weights (`iclgd.hooks.attention_weights` / `mlp_weights`): no LayerNorm folding, no
centering, so the numbers describe the checkpoint as stored.

Quantised sources (a named model dequantised from GGUF, `iclgd.hooks.named_models`): every block
of 32 weights lies on a grid `m + d·q`. Around zero, a threshold τ below half a block's step `d`
catches at most the one grid point nearest zero, so `fraction_below(τ)` there counts where the
grid happens to fall, not how the model's weights are spread. Each matrix row then carries its
block steps (`grid_step_min`, `grid_step_median`) and `grid_limited[τ]` = τ < `grid_step_min` / 2
(true for every block); the summary lists the thresholds that are grid-limited for all matrices.
"""

from __future__ import annotations

from typing import Any

from iclgd.hooks import attention_weights, mlp_weights
from iclgd.hooks.named_models import grid_of_view, quantisation_grid
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
    grid = _grid(model)
    rows: list[dict[str, Any]] = []
    for layer in range(int(model.cfg.n_layers)):
        mats = dict(attention_weights(model, layer).matrices())
        mats.update(mlp_weights(model, layer).matrices())
        for name, w in mats.items():
            row = {
                "layer": layer,
                "name": name,
                "shape": list(w.shape),
                "fraction_below": fractions_below(w, thresholds),
                "hoyer": hoyer(w),
                "stable_rank": stable_rank(_as_matrix(name, w)),
            }
            row.update(_grid_fields(grid_of_view(grid, layer, name), thresholds))
            rows.append(row)
    summary = summarize(rows, thresholds)
    if grid:
        summary["grid_limited_thresholds"] = [
            threshold_key(t) for t in thresholds
            if all(r.get("grid_limited", {}).get(threshold_key(t)) for r in rows)]
    return {
        "model": model_name or getattr(model.cfg, "iclgd_source", ""),
        "checkpoint": getattr(model.cfg, "iclgd_checkpoint", None),
        "processing": "raw",
        "quantisation": (getattr(model.cfg, "iclgd_weights", None) or {}).get("quantisation"),
        "thresholds": [threshold_key(t) for t in thresholds],
        "matrices": rows,
        "summary": summary,
    }


def _grid(model: Any) -> dict[str, dict[str, Any]]:
    folder = (getattr(model.cfg, "iclgd_weights", None) or {}).get("folder")
    return quantisation_grid(folder) if folder else {}


def _grid_fields(record: dict[str, Any] | None, thresholds: tuple[float, ...]) -> dict[str, Any]:
    if record is None:
        return {}
    return {
        "grid_type": record["type"],
        "grid_step_min": record["d_min"],
        "grid_step_median": record["d_median"],
        "grid_limited": {threshold_key(t): t < record["d_min"] / 2 for t in thresholds},
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

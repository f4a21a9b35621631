"""The demo's two ICL-objective sections: the constructions audit and trained-vs-constructed.

- `constructions` — each published construction (`iclgd.constructions.registry`) against the
  algorithm it claims, in float64 (`iclgd.probes.audit.audit_construction`): error,
  loss, non-zero fraction per matrix at its own width and at residual width 4096, and error
  under dense relative Gaussian noise on every matrix.
- `trained_vs_constructed` — von Oswald et al. (2023)'s comparison: linear self-attention
  trained on the ICL objective (`iclgd.analyses.von_oswald.reproduce`), 1 layer against one GD
  step, 3 shared layers against 3 GD steps and GD++; losses, the sensitivity cosine
  `cos(∂ŷ_TF/∂x_q, ∂ŷ_alg/∂x_q)` with its standard error over tasks, and the merged matrices
  trained against constructed.

Both are `Section`s (`iclgd.analyses.section_base`): one part per construction / per depth.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from iclgd.analyses.section_base import (
    ModelRef,
    NotAvailable,
    Part,
    RunContext,
    Section,
    SectionResult,
)

BREAK_ERROR = 1e-2  # error vs the algorithm above which a perturbed construction is "broken"


@dataclass(frozen=True)
class ConstructionSettings:
    """Audit size: `tasks` random regression tasks (d = n = 10), `seed`."""

    tasks: int = 1000
    seed: int = 0

    @classmethod
    def quick(cls) -> ConstructionSettings:
        return cls(tasks=100)


def _width_counts(report: dict[str, Any]) -> tuple[dict[str, float], str]:
    width = report["density_at_width"]
    if width.get("scaled"):
        return width["scaled"], "scaled"
    return width["embedded"], "embedded"


def measure_construction(ref: ModelRef, settings: ConstructionSettings, ctx: RunContext) -> Part:
    """Audit the construction named `ref.spec` (float64, CPU)."""
    from iclgd.constructions.registry import build_construction
    from iclgd.probes.audit import audit_construction

    report = audit_construction(build_construction(ref.spec, seed=settings.seed),
                                tasks=settings.tasks, seed=settings.seed)
    at_width, reading = _width_counts(report)
    rows: list[dict[str, Any]] = []
    for name, m in report["density"].items():
        rows.append({"quantity": "nonzero_fraction", "matrix": name,
                     "value": m["nonzero"] / m["numel"]})
        for tau, frac in m["fraction_below"].items():
            rows.append({"quantity": "fraction_below", "matrix": name, "threshold": tau,
                         "value": frac})
    for name, frac in at_width.items():
        rows.append({"quantity": "nonzero_fraction_4096", "matrix": name, "value": frac,
                     "reading": reading})
    curve = report["perturbation"]["curve"]
    for c in curve:
        rows.append({"quantity": "perturbed_max_abs_error", "eps": c["eps"],
                     "value": c["max_abs_error"]})
        rows.append({"quantity": "perturbed_loss", "eps": c["eps"], "value": c["loss"]})
    qk = [v for k, v in at_width.items() if k.startswith(("W_K", "W_Q"))]
    broken = [c["eps"] for c in curve if c["max_abs_error"] > BREAK_ERROR]
    headline = {
        "reference": report["reference"],
        "exact": report["exact"],
        "max_abs_error": report["max_abs_error"],
        "mean_abs_error": report["mean_abs_error"],
        "loss_convention": report["loss_convention"],
        "loss_construction": report["loss_construction"],
        "loss_reference": report["loss_reference"],
        "nonzero_fraction": _mean([m["nonzero"] / m["numel"] for m in report["density"].values()]),
        "nonzero_fraction_4096": _mean(list(at_width.values())),
        "zero_fraction_4096_qk": 1.0 - _mean(qk) if qk else None,
        "width_reading": reading,
        "error_at_eps_1e-3": next((c["max_abs_error"] for c in curve if c["eps"] == 1e-3), None),
        "smallest_breaking_eps": min(broken) if broken else None,
    }
    return Part(ref.label, ref.spec, rows=rows, headline=headline,
                extra={"curve": curve, "params": report["params"]},
                provenance={"dtype": report["dtype"], "device": "cpu"})


def _mean(values: list[float]) -> float:
    return sum(values) / len(values) if values else float("nan")


# ----------------------------------------------------------------------------- trained LSA
@dataclass(frozen=True)
class TrainedSettings:
    """von Oswald et al.'s training (Adam 1e-3, clipping, init 0.002/L, fresh tasks each step),
    shortened for a CPU: `steps_1layer` at batch `batch_1layer` (they train 5000 at 2048),
    `steps_3layer` at `batch_3layer` (they need >= 7000 at 2048); GD++'s (η_l, γ_l) learned in
    `gdpp_steps`; everything evaluated on `eval_tasks` held-out tasks."""

    steps_1layer: int = 1500
    batch_1layer: int = 2048
    steps_3layer: int = 1000
    batch_3layer: int = 1024
    gdpp_steps: int = 1000
    eval_tasks: int = 10_000
    seed: int = 0

    @classmethod
    def quick(cls) -> TrainedSettings:
        return cls(steps_1layer=40, batch_1layer=256, steps_3layer=30, batch_3layer=256,
                   gdpp_steps=30, eval_tasks=500)


def lsa_layers(spec: str) -> int:
    """`"lsa-1"` → 1, `"lsa-3"` → 3 (the depths this section trains)."""
    try:
        layers = int(spec.removeprefix("lsa-"))
    except ValueError:
        layers = 0
    if not spec.startswith("lsa-") or layers < 1:
        raise NotAvailable(f"{spec!r} is not an LSA depth: use lsa-1 or lsa-3")
    return layers


def measure_trained(ref: ModelRef, settings: TrainedSettings, ctx: RunContext) -> Part:
    """Train one LSA (`ref.spec` = "lsa-L") and compare it with GD (and GD++ when L > 1)."""
    import torch

    from iclgd.analyses.von_oswald import reproduce

    layers = lsa_layers(ref.spec)
    steps = settings.steps_1layer if layers == 1 else settings.steps_3layer
    batch = settings.batch_1layer if layers == 1 else settings.batch_3layer
    torch.set_num_threads(1)
    summary, result = reproduce(layers=layers, steps=steps, batch=batch, seed=settings.seed,
                                eval_tasks=settings.eval_tasks, gdpp_steps=settings.gdpp_steps,
                                device="cpu", progress=False)
    headline: dict[str, Any] = {
        "layers": layers, "steps": steps, "batch": batch, "eval_tasks": settings.eval_tasks,
        "loss_convention": "half_mse", "tf_loss": summary["tf_loss"],
        "gd_loss": summary["gd_loss"], "zero_loss": summary["zero_loss"], "eta": summary["eta"],
        "cos_gd": summary["vs_gd"]["model_cos"], "cos_gd_se": summary["vs_gd"]["model_cos_se"],
        "model_diff_gd": summary["vs_gd"]["model_diff"],
        "pred_diff_gd": summary["vs_gd"]["pred_diff"],
    }
    if "vs_gdpp" in summary:
        headline.update({
            "gdpp_loss": summary["gdpp_loss"], "cos_gdpp": summary["vs_gdpp"]["model_cos"],
            "cos_gdpp_se": summary["vs_gdpp"]["model_cos_se"],
            "model_diff_gdpp": summary["vs_gdpp"]["model_diff"],
        })
    rows = [{"quantity": k, "value": v} for k, v in headline.items()
            if isinstance(v, int | float) and not isinstance(v, bool)]
    return Part(ref.label, ref.spec, rows=rows, headline=headline,
                extra={"history": result.history, **_matrices(result.model, summary),
                       "weights": _lsa_weights(result.model)},
                provenance={"dtype": "float32 (train), float64 (eval)", "device": "cpu"})


def _matrices(model: Any, summary: dict[str, Any]) -> dict[str, Any]:
    """Merged layer-0 matrices `W_K^T W_Q` and `P W_V`, trained (scaled so the x-block of
    `W_K^T W_Q` has unit mean diagonal, which leaves the layer's function unchanged) and
    constructed (GD for one layer; GD++ with the learned layer-0 (η, γ) for deeper models)."""
    from iclgd.analyses.von_oswald import gd_merged
    from iclgd.constructions import von_oswald_gdpp

    d, n = summary["d"], summary["n"]
    qk = model.merged_qk(0).detach().double().cpu()
    ov = model.merged_ov(0).detach().double().cpu()
    c = float(qk[:d, :d].diagonal().mean())
    c = c if abs(c) > 1e-12 else 1.0
    if "gdpp_etas" in summary:
        con = von_oswald_gdpp(d, n=n, eta=summary["gdpp_etas"][0],
                              gamma=summary["gdpp_gammas"][0], layers=1).model
        qk_c, ov_c, name = con.merged_qk(0), con.merged_ov(0), "GD++ (layer 0)"
    else:
        (qk_c, ov_c), name = gd_merged(d, n, summary["eta"]), "GD"
    return {"trained_qk": (qk / c).tolist(), "trained_ov": (ov * c).tolist(),
            "constructed_qk": qk_c.tolist(), "constructed_ov": ov_c.tolist(),
            "constructed_name": name}


def _lsa_weights(model: Any) -> dict[str, Any]:
    """Raw per-layer, per-head attention matrices (for the density section)."""
    out = {}
    for layer in range(model.cfg.n_layers):
        for k, v in model.attention_weights(layer).matrices().items():
            out[f"{k}.{layer}"] = v.detach().double().cpu().tolist()
    return out


def _plot_constructions(result: SectionResult) -> dict[str, Any]:
    from iclgd.analyses.section_plots import construction_density, construction_noise

    return {"constructions_noise.png": construction_noise(result),
            "constructions_density.png": construction_density(result)}


def _plot_trained(result: SectionResult) -> dict[str, Any]:
    from iclgd.analyses.section_plots import lsa_heatmaps, lsa_losses

    figs = {f"heatmaps_{label}.png": lsa_heatmaps(extra, label)
            for label, extra in result.extra.items()}
    if result.extra:
        figs["loss_curves.png"] = lsa_losses(result)
    return figs


CONSTRUCTIONS = Section("constructions", "Constructions audit", ConstructionSettings,
                        measure_construction, _plot_constructions)
TRAINED = Section("trained_vs_constructed", "Trained against constructed", TrainedSettings,
                  measure_trained, _plot_trained)

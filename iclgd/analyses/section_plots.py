"""Figures of the demo's sections, drawn from a `SectionResult` (rows, headline, extra) alone,
so they can be redrawn from the saved files. Every function returns a matplotlib figure (Agg).
Parts that are not ok are absent from `result.extra` / `result.headline` and so not drawn.
"""

from __future__ import annotations

from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from iclgd.analyses.section_base import SectionResult  # noqa: E402


def _empty(title: str, message: str = "no model measured") -> Figure:
    fig, ax = plt.subplots(figsize=(5, 2))
    ax.axis("off")
    ax.text(0.5, 0.5, message, ha="center", va="center")
    ax.set_title(title)
    return fig


# ----------------------------------------------------------------------------- constructions
def construction_noise(result: SectionResult) -> Figure:
    """Max |ŷ − reference| against relative dense noise ε on every matrix, per construction."""
    if not result.extra:
        return _empty("error under dense noise")
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for label, extra in result.extra.items():
        eps = [c["eps"] for c in extra["curve"]]
        err = [max(c["max_abs_error"], 1e-300) for c in extra["curve"]]
        ax.loglog(eps, err, marker="o", label=label)
    ax.axhline(1e-2, color="grey", linestyle=":", label="error 1e-2")
    ax.set_xlabel("relative noise ε (std = ε · RMS entry of each matrix)")
    ax.set_ylabel("max |ŷ − ŷ_algorithm|")
    ax.set_title("constructions under dense Gaussian noise")
    ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


def construction_density(result: SectionResult) -> Figure:
    """Mean non-zero fraction of each construction's matrices at its own width and at 4096."""
    heads = result.headline
    if not heads:
        return _empty("construction density")
    fig, ax = plt.subplots(figsize=(7, 4))
    labels = list(heads)
    x = range(len(labels))
    ax.bar([i - 0.2 for i in x], [heads[k]["nonzero_fraction"] for k in labels], 0.4,
           label="own width (d = n = 10)")
    ax.bar([i + 0.2 for i in x], [heads[k]["nonzero_fraction_4096"] for k in labels], 0.4,
           label="residual width 4096")
    ax.set_yscale("log")
    ax.set_xticks(list(x), labels, rotation=25, ha="right", fontsize=8)
    ax.set_ylabel("non-zero fraction (mean over matrices)")
    ax.set_title("how dense the constructions are")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


# ----------------------------------------------------------------------------- trained LSA
def lsa_heatmaps(extra: dict[str, Any], label: str) -> Figure:
    """Trained against constructed merged matrices (`iclgd.analyses.von_oswald_plots`)."""
    import torch

    from iclgd.analyses.von_oswald_plots import merged_heatmaps

    t = {"W_K^T W_Q": torch.tensor(extra["trained_qk"]), "P W_V": torch.tensor(extra["trained_ov"])}
    c = {"W_K^T W_Q": torch.tensor(extra["constructed_qk"]),
         "P W_V": torch.tensor(extra["constructed_ov"])}
    return merged_heatmaps(t, c, f"{label}: trained (top) vs {extra['constructed_name']} (bottom)")


def lsa_losses(result: SectionResult) -> Figure:
    """Training loss of each LSA against step, with its GD / GD++ losses as lines."""
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for i, (label, extra) in enumerate(result.extra.items()):
        steps, losses = zip(*extra["history"], strict=True)
        ax.plot(steps, losses, color=f"C{i}", label=f"{label} trained")
        h = result.headline[label]
        ax.axhline(h["gd_loss"], color=f"C{i}", linestyle="--",
                   label=f"{label}: {h['layers']}-step GD {h['gd_loss']:.4f}")
        if "gdpp_loss" in h:
            ax.axhline(h["gdpp_loss"], color=f"C{i}", linestyle=":",
                       label=f"{label}: GD++ {h['gdpp_loss']:.4f}")
    ax.set_yscale("log")
    ax.set_xlabel("training step")
    ax.set_ylabel("half MSE")
    ax.set_title("trained linear self-attention against GD / GD++")
    ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


# ----------------------------------------------------------------------------- density
def density_curves(result: SectionResult) -> Figure:
    """Fraction of |w| < τ against τ for every model: trained solid, untrained copies dashed,
    constructions at residual width 4096 dotted (their own width is in the CSV); a quantised
    model's half grid step as a vertical band."""
    if not result.headline:
        return _empty("weight density")
    fig, ax = plt.subplots(figsize=(7.2, 4.6))
    for i, (label, h) in enumerate(result.headline.items()):
        color = f"C{i % 10}"
        for key, style, suffix in (("fraction_below", "-", ""),
                                   ("fraction_below_untrained", "--", " (untrained copy)"),
                                   ("fraction_below_4096", ":", " at width 4096")):
            curve = h.get(key)
            if not curve:
                continue
            if key == "fraction_below" and h.get("kind") == "construction":
                continue  # their own width (d = 10) is in the CSV; the figure shows 4096
            taus = sorted(curve, key=float)
            ax.plot([float(t) for t in taus], [curve[t] for t in taus], linestyle=style,
                    marker="o", markersize=3, color=color, label=f"{label}{suffix}")
        grid = h.get("grid") or {}
        if grid.get("on_grid"):
            ax.axvline(grid["median_step"] / 2, color=color, linewidth=3, alpha=0.3,
                       label=f"{label}: half its quantisation step ({grid['median_step'] / 2:.1e})")
    ax.set_xscale("log")
    ax.set_xlabel("threshold τ")
    ax.set_ylabel("fraction of entries with |w| < τ")
    ax.set_ylim(-0.02, 1.02)
    ax.set_title("weight density: constructions vs trained models (raw weights)")
    ax.legend(fontsize=6, loc="center left", bbox_to_anchor=(1.0, 0.5))
    fig.tight_layout()
    return fig


# ----------------------------------------------------------------------------- emergent ICL
def emergent_ginc(part: Any) -> Figure:
    """GINC accuracy against n, in-distribution and held-out, with both Bayes references."""
    fig, axes = plt.subplots(1, 2, figsize=(10, 4), sharey=True)
    for ax, concepts in zip(axes, ("in", "out"), strict=True):
        rows = [r for r in part.rows if r["concepts"] == concepts]
        ns = [max(r["n"], 0.5) for r in rows]
        ax.errorbar(ns, [r["accuracy"] for r in rows], [r["se"] for r in rows], marker="o",
                    label="model", capsize=2)
        ax.plot(ns, [r["ideal_accuracy"] for r in rows], "k--", label="ideal learner")
        ax.plot(ns, [r["pretrained_bayes_accuracy"] for r in rows], "g:",
                label="pretraining-view Bayes")
        ax.set_xscale("log", base=2)
        ax.set_xlabel("examples n (n = 0 drawn at 0.5)")
        ax.set_title(f"{'in-distribution' if concepts == 'in' else 'held-out'} concepts")
    axes[0].set_ylabel("accuracy")
    axes[0].legend(fontsize=8)
    fig.suptitle(f"{part.label}: GINC ICL accuracy, k = {part.headline['k']}")
    fig.tight_layout()
    return fig


def emergent_lm(part: Any) -> Figure:
    """A text LM's accuracy against the number of demonstrations, one line per task."""
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for task in part.headline["tasks"]:
        rows = sorted((r for r in part.rows if r["task"] == task), key=lambda r: r["n"])
        ax.errorbar([max(r["n"], 0.5) for r in rows], [r["accuracy"] for r in rows],
                    [r["se"] for r in rows], marker="o", capsize=2, label=task)
    ax.set_xscale("log", base=2)
    ax.set_xlabel("demonstrations N (N = 0 drawn at 0.5)")
    ax.set_ylabel("accuracy (top-1 = gold first token)")
    ax.set_ylim(-0.02, 1.02)
    ax.set_title(f"{part.label}: ICL on real tasks")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


# ----------------------------------------------------------------------------- evolution
def evolution(part: Any) -> Figure:
    """Across checkpoints: ICL gain (± SE) and ICL score; weight drift; induction scores."""
    rows = sorted(part.rows, key=lambda r: r["step"])
    steps = [r["step"] for r in rows]
    pos = [s for s in steps if s > 0]
    fig, axes = plt.subplots(1, 3, figsize=(14, 4))
    ax = axes[0]
    ax.errorbar(steps, [r["gain"] for r in rows], [r["gain_se"] for r in rows], marker="o",
                capsize=2, label="ICL gain (acc n_max − n 0)")
    ax.plot(steps, [r["bayes_gain"] for r in rows], "g:", label="pretraining-view Bayes gain")
    ax.set_ylabel("accuracy gain")
    ax.legend(fontsize=7)
    ax2 = axes[1]
    ax2.plot(steps, [r["drift_final"] for r in rows], "o-", color="C3",
             label="‖θ_t − θ_last‖ / ‖θ_last‖")
    ax2.plot(steps, [r["drift_prev"] for r in rows], "s--", color="C4",
             label="‖θ_t − θ_prev‖ / ‖θ_prev‖")
    ax2.set_ylabel("relative weight drift")
    ax2.legend(fontsize=7)
    ax3 = axes[2]
    ax3.plot(steps, [r["induction_prefix_max"] for r in rows], "o-", label="best prefix matching")
    ax3.plot(steps, [r["icl_score"] for r in rows], "s--", label="ICL score (late − early loss)")
    ax3.axhline(part.headline["induction_threshold"], color="grey", linestyle=":",
                label="induction threshold")
    ax3.legend(fontsize=7)
    for a in axes:
        a.set_xscale("symlog", linthresh=min(pos) if pos else 1)
        a.set_xlabel("training step (symlog)")
    fig.suptitle(f"{part.label}: ICL and weights across training")
    fig.tight_layout()
    return fig


# ----------------------------------------------------------------------------- ICL vs FT
def order_panels(result: SectionResult) -> Figure:
    """Order sensitivity against epochs per method (± SE), ICL as a band, one panel per model."""
    parts = [p for p in result.parts if p.ok]
    if not parts:
        return _empty("order sensitivity")
    fig, axes = plt.subplots(1, len(parts), figsize=(6 * len(parts), 4.2), squeeze=False)
    for ax, part in zip(axes[0], parts, strict=True):
        methods = sorted({r["method"] for r in part.rows if r["setting"] == "ft"})
        for i, m in enumerate(methods):
            pts = sorted((r for r in part.rows if r["method"] == m), key=lambda r: r["epoch"])
            y = [max(r["order_sensitivity"], 1e-9) for r in pts]
            ax.errorbar([r["epoch"] for r in pts], y, [r["se"] or 0 for r in pts], marker="o",
                        capsize=2, color=f"C{i + 1}", label=m)
        h = part.headline
        ax.axhspan(h["icl"] - h["icl_se"], h["icl"] + h["icl_se"], color="C0", alpha=0.2)
        ax.axhline(h["icl"], color="C0", linewidth=2, label="ICL (prompt reordered)")
        ax.set_yscale("log")
        ax.set_xlabel("finetuning epochs")
        ax.set_ylabel("Σ_vocab std over orderings")
        ax.set_title(f"{part.label}: N = {h['n_demos']}, {h['task']}")
        ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


def outputs_panels(part: Any) -> Figure:
    """Accuracy (ZS, ICL, FT per method), token overlap and overlap cosine against N, with the
    ICL-reordered noise floor; ± SE over queries."""
    fig, axes = plt.subplots(1, 3, figsize=(14, 4))
    methods = sorted({r["method"] for r in part.rows})

    def series(method: str, metric: str) -> tuple[list[int], list[float], list[float]]:
        pts = sorted((r for r in part.rows if r["method"] == method and r["metric"] == metric),
                     key=lambda r: r["n_demos"])
        return ([r["n_demos"] for r in pts], [r["value"] for r in pts],
                [r["se"] if r["se"] == r["se"] else 0 for r in pts])

    for i, m in enumerate(methods):
        axes[0].errorbar(*series(m, "accuracy_ft"), marker="o", capsize=2, color=f"C{i + 2}",
                         label=f"FT {m}")
        for ax, metric in ((axes[1], "token_overlap"), (axes[2], "overlap_cosine")):
            ax.errorbar(*series(m, metric), marker="o", capsize=2, color=f"C{i + 2}", label=m)
    axes[0].errorbar(*series(methods[0], "accuracy_icl"), marker="s", capsize=2, color="C0",
                     linewidth=2, label="ICL")
    axes[0].errorbar(*series(methods[0], "accuracy_zs"), color="black", label="ZS")
    for ax, metric in ((axes[1], "token_overlap"), (axes[2], "overlap_cosine")):
        ax.errorbar(*series(methods[0], f"{metric}_floor"), color="grey", linestyle="--",
                    label="ICL vs reordered ICL (floor)")
        ax.set_title(f"{metric} (ICL vs FT, K = 10)")
    axes[0].set_title("accuracy (top-1 = gold)")
    for ax in axes:
        ax.set_xscale("log", base=2)
        ax.set_xlabel("demonstrations N")
        ax.set_ylim(-0.02, 1.05)
        ax.legend(fontsize=7)
    fig.suptitle(f"{part.label}: ICL against finetuning, {part.headline['task']}")
    fig.tight_layout()
    return fig


def dual_form_panels(part: Any) -> Figure:
    """Per-layer SimAOU (norm, raw), SimAM, SimAM_Δ, Kendall τ and cos(ΔW_ICL, ΔW_FT) per
    method; untrained control dashed; random baseline / SimAM 'before' in grey."""
    panels = (("simaou_norm", "simaou_random_norm"), ("simaou_raw", "simaou_random_raw"),
              ("simam_after", "simam_before"), ("simam_delta", None), ("kendall_tau", None),
              ("dw_cosine", None))
    fig, axes = plt.subplots(2, 3, figsize=(14, 7.5))
    methods = sorted({r["method"] for r in part.rows if r["method"]})
    for ax, (metric, base) in zip(axes.reshape(-1), panels, strict=True):
        for copy, style in (("trained", "-"), ("untrained", "--")):
            for i, m in enumerate(methods):
                x, y = _layers(part.rows, copy, m, metric)
                if x:
                    ax.plot(x, y, style, marker="o", markersize=3, color=f"C{i}",
                            label=f"{m} ({copy})")
            if base:
                x, y = _layers(part.rows, copy, "", base)
                if x:
                    ax.plot(x, y, style, color="grey", label=f"{base} ({copy})")
        ax.axhline(0, color="black", linewidth=0.5)
        ax.set_title(metric)
        ax.set_xlabel("layer")
    axes[0][0].legend(fontsize=6)
    fig.suptitle(f"{part.label}: ICL vs FT layer by layer, N = {part.headline['n_demos']}")
    fig.tight_layout()
    return fig


def _layers(rows: list[dict[str, Any]], copy: str, method: str, metric: str):
    pts = sorted((r for r in rows if r.get("copy") == copy and r["method"] == method
                  and r["metric"] == metric and r["layer"] != ""), key=lambda r: r["layer"])
    return [r["layer"] for r in pts], [r["value"] for r in pts]

"""Figures of `iclgd compare` and `iclgd order` (matplotlib, Agg backend; functions return figures).

Every similarity is drawn next to its controls: SimAOU with Dai's random baseline, SimAM "after"
with the ZS-vs-ICL "before" baseline, token overlap with the ICL-vs-reordered-ICL noise floor,
and, when present, the same curves on the untrained control (dashed).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

_STYLE = {"trained": "-", "untrained": "--"}


def _select(rows: Sequence[dict[str, Any]], **where: Any) -> list[dict[str, Any]]:
    return [r for r in rows if all(r.get(k) == v for k, v in where.items())]


def _per_layer(rows: Sequence[dict[str, Any]], **where: Any) -> tuple[list[int], list[float]]:
    picked = sorted((r for r in _select(rows, **where) if r["layer"] != ""), key=lambda r: r["layer"])
    return [r["layer"] for r in picked], [r["value"] for r in picked]


def _labels(rows: Sequence[dict[str, Any]]) -> list[str]:
    return sorted({r["model"] for r in rows}, key=lambda m: m != "trained")


def plot_layer_metric(
    rows: Sequence[dict[str, Any]], metric: str, *, n_demos: int, baseline: str | None = None,
    title: str | None = None,
) -> Figure:
    """One per-layer similarity (e.g. `simaou_norm`) per method at `n_demos` demonstrations,
    with its `baseline` metric: method-free (e.g. `simaou_random_norm`) in grey, or per method
    (e.g. `kendall_tau_random`) faded in the method's colour; untrained control dashed."""
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    methods = sorted({r["method"] for r in rows if r["method"]})
    colors = {m: f"C{i}" for i, m in enumerate(methods)}
    for label in _labels(rows):
        style = _STYLE.get(label, ":")
        for method in methods:
            x, y = _per_layer(rows, model=label, n_demos=n_demos, method=method, metric=metric)
            if x:
                ax.plot(x, y, style, marker="o", color=colors[method], label=f"{method} ({label})")
        if baseline:
            x, y = _per_layer(rows, model=label, n_demos=n_demos, method="", metric=baseline)
            if x:
                ax.plot(x, y, style, color="grey", label=f"{baseline} ({label})")
            for method in methods if not x else ():
                bx, by = _per_layer(rows, model=label, n_demos=n_demos, method=method,
                                    metric=baseline)
                if bx:
                    ax.plot(bx, by, style, color=colors[method], alpha=0.35,
                            label=f"{method} {baseline} ({label})")
    ax.axhline(0.0, color="black", linewidth=0.5)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("layer")
    ax.set_ylabel(metric)
    ax.set_title(title or f"{metric}, N = {n_demos}")
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    return fig


def plot_vs_demos(
    summary: Sequence[dict[str, Any]], metrics: Sequence[str], *, title: str = "",
    floors: Mapping[str, str] | None = None,
) -> Figure:
    """Summary metrics (e.g. token overlap) against the number of demonstrations, one panel per
    metric, one line per method; `floors[metric]` (e.g. `token_overlap_floor`, the ICL-vs-
    reordered-ICL noise floor) is drawn in grey in that panel; untrained control dashed."""
    floors = floors or {}
    fig, axes = plt.subplots(1, len(metrics), figsize=(4.2 * len(metrics), 3.8), squeeze=False)
    methods = sorted({r["method"] for r in summary})
    colors = {m: f"C{i}" for i, m in enumerate(methods)}
    for ax, metric in zip(axes[0], metrics, strict=True):
        for label in _labels(summary):
            style = _STYLE.get(label, ":")
            for method in methods:
                pts = sorted((r["n_demos"], r.get(metric)) for r in _select(summary, model=label, method=method))
                if pts:
                    ax.plot([p[0] for p in pts], [p[1] for p in pts], style, marker="o",
                            color=colors[method], label=f"{method} ({label})")
            floor = floors.get(metric)
            if floor and methods:
                pts = sorted((r["n_demos"], r.get(floor)) for r in _select(summary, model=label, method=methods[0]))
                ax.plot([p[0] for p in pts], [p[1] for p in pts], style, color="grey",
                        label=f"{floor} ({label})")
        ax.set_xscale("log", base=2)
        ax.set_xlabel("demonstrations N")
        ax.set_title(metric)
    axes[0][0].legend(fontsize=7)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig


def plot_accuracy(summary: Sequence[dict[str, Any]], *, title: str = "") -> Figure:
    """ZS, ICL and FT accuracy against N: ZS and ICL (± its standard error over queries) as
    black/blue lines, FT per method."""
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    methods = sorted({r["method"] for r in summary})
    for label in _labels(summary):
        style = _STYLE.get(label, ":")
        for i, method in enumerate(methods):
            pts = sorted((r["n_demos"], r["accuracy_ft"]) for r in _select(summary, model=label, method=method))
            ax.plot([p[0] for p in pts], [p[1] for p in pts], style, marker="o", color=f"C{i + 2}",
                    label=f"FT {method} ({label})")
        if methods:
            ref = sorted(_select(summary, model=label, method=methods[0]), key=lambda r: r["n_demos"])
            ax.errorbar([r["n_demos"] for r in ref], [r["accuracy_icl"] for r in ref],
                        yerr=[r.get("accuracy_icl_se", 0.0) for r in ref], fmt=style, marker="s",
                        color="C0", linewidth=2, capsize=2, label=f"ICL ± SE ({label})")
            ax.plot([r["n_demos"] for r in ref], [r["accuracy_zs"] for r in ref], style,
                    color="black", label=f"ZS ({label})")
    ax.set_xscale("log", base=2)
    ax.set_xlabel("demonstrations N")
    ax.set_ylabel("accuracy (top-1 = gold)")
    ax.set_ylim(-0.02, 1.02)
    ax.set_title(title or "accuracy")
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    return fig


def plot_order(rows: Sequence[dict[str, Any]], *, title: str = "") -> Figure:
    """Order sensitivity against finetuning epochs, one line per method (± standard error over
    queries), ICL as a horizontal line; untrained control dashed."""
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    methods = sorted({r["method"] for r in rows if r["setting"] == "ft"})
    for label in _labels(rows):
        style = _STYLE.get(label, ":")
        for i, method in enumerate(methods):
            pts = sorted(_select(rows, model=label, setting="ft", method=method), key=lambda r: r["epoch"])
            x = [r["epoch"] for r in pts]
            y = [r["order_sensitivity"] for r in pts]
            ax.plot(x, y, style, marker="o", color=f"C{i + 1}", label=f"{method} ({label})")
            se = [r["se"] if r["se"] == r["se"] else 0.0 for r in pts]
            ax.fill_between(x, [a - b for a, b in zip(y, se, strict=True)],
                            [a + b for a, b in zip(y, se, strict=True)], color=f"C{i + 1}", alpha=0.15)
        for r in _select(rows, model=label, setting="icl"):
            ax.axhline(r["order_sensitivity"], linestyle=style, color="C0", linewidth=2,
                       label=f"ICL ({label})")
    ax.set_xlabel("finetuning epochs")
    ax.set_ylabel("order sensitivity (Σ_vocab std over orderings)")
    ax.set_title(title or "order sensitivity")
    ax.legend(fontsize=7)
    fig.tight_layout()
    return fig

"""Figures of the layer-wise probes: distance of each layer to each algorithm's iterates.

`distance_heatmaps`: one panel per algorithm, layer on the x-axis, step (or ridge lambda index) on
the y-axis, colour log10 of the prediction error, the layer's best match marked. `distance_curves`:
per algorithm the error of its best iterate at each layer, the overall best marked.
`lens_curves`: logit-lens metrics by layer, one panel per metric, one line per (setting, N).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

_FLOOR = 1e-32


def _algorithms(rows: Sequence[dict[str, Any]]) -> list[str]:
    return list(dict.fromkeys(r["algorithm"] for r in rows))


def distance_heatmaps(rows: Sequence[dict[str, Any]], best: Sequence[dict[str, Any]], *,
                      title: str = "") -> Figure:
    """Heatmaps (layer x iterate) of log10 error, one per algorithm, on one colour scale (errors
    below 1e-16 share the darkest colour); best match per layer = x."""
    algs = _algorithms(rows)
    logs = [math.log10(max(r["error"], 1e-16)) for r in rows if math.isfinite(r["error"])]
    vmin, vmax = (min(logs), max(logs)) if logs else (-16, 0)
    layers = sorted({r["layer"] for r in rows})
    fig, axes = plt.subplots(1, len(algs), figsize=(2.9 * len(algs) + 1.5, 3.8), squeeze=False,
                             layout="constrained")
    for ax, alg in zip(axes[0], algs, strict=True):
        steps = sorted({r["step"] for r in rows if r["algorithm"] == alg})
        grid = np.full((len(steps), len(layers)), np.nan)
        for r in rows:
            if r["algorithm"] == alg:
                grid[steps.index(r["step"]), layers.index(r["layer"])] = math.log10(
                    max(r["error"], 1e-16)) if math.isfinite(r["error"]) else np.nan
        im = ax.imshow(grid, aspect="auto", origin="lower", cmap="viridis_r", vmin=vmin,
                       vmax=vmax)
        for b in best:
            if b["algorithm"] == alg:
                ax.plot(layers.index(b["layer"]), steps.index(b["step"]), "rx", ms=10, mew=2)
        ax.set_xticks(range(len(layers)), [str(layer) for layer in layers])
        ticks = range(0, len(steps), max(1, len(steps) // 8))
        ax.set_yticks(list(ticks), [str(steps[i]) for i in ticks])
        ax.set_xlabel("layer")
        ax.set_ylabel("lambda index" if alg == "ridge" else "step")
        ax.set_title(alg)
    fig.colorbar(im, ax=axes[0].tolist(), fraction=0.03, pad=0.01, label="log10 E[(y_layer - y_alg)^2]")
    if title:
        fig.suptitle(title)
    return fig


def distance_curves(rows: Sequence[dict[str, Any]], best: Sequence[dict[str, Any]], *,
                    title: str = "") -> Figure:
    """Per algorithm, its closest iterate's error at each layer (log scale); best per layer = o."""
    fig, ax = plt.subplots(figsize=(6, 4))
    layers = sorted({r["layer"] for r in rows})
    for alg in _algorithms(rows):
        errs = [min((r["error"] for r in rows if r["algorithm"] == alg and r["layer"] == layer),
                    default=np.nan) for layer in layers]
        ax.plot(layers, [max(e, _FLOOR) for e in errs], "-", marker=".", label=alg)
    ax.plot([b["layer"] for b in best], [max(b["error"], _FLOOR) for b in best], "ko", mfc="none",
            ms=11, label="best match")
    for b in best:
        ax.annotate(f"{b['algorithm']}:{b['step']}", (b["layer"], max(b["error"], _FLOOR)),
                    textcoords="offset points", xytext=(4, 6), fontsize=8)
    ax.set_yscale("log")
    ax.set_xticks(layers)
    ax.set_xlabel("layer")
    ax.set_ylabel("E[(y_layer - y_alg)^2] at the closest iterate")
    ax.legend(fontsize=8)
    if title:
        ax.set_title(title)
    fig.tight_layout()
    return fig


def lens_curves(rows: Sequence[dict[str, Any]], *, title: str = "") -> Figure:
    """Logit-lens metrics by layer: accuracy per setting; overlap and overlap cosine of ICL with
    each other setting, at every N (line style by N), trained solid / untrained dashed."""
    panels = ("accuracy", "token_overlap", "overlap_cosine")
    fig, axes = plt.subplots(1, 3, figsize=(14, 4))
    ns = sorted({r["n_demos"] for r in rows})
    colors = {}
    for ax, metric in zip(axes, panels, strict=True):
        sel = [r for r in rows if r["metric"] == metric]
        for key in dict.fromkeys((r["model"], r["setting"], r["n_demos"]) for r in sel):
            model, setting, n = key
            pts = sorted((r["layer"], r["value"]) for r in sel
                         if (r["model"], r["setting"], r["n_demos"]) == key)
            color = colors.setdefault(setting, f"C{len(colors)}")
            alpha = 0.35 + 0.65 * (ns.index(n) + 1) / len(ns)
            ax.plot(*zip(*pts, strict=True), ls="-" if model == "trained" else "--",
                    color=color, alpha=alpha, marker=".",
                    label=f"{setting} N={n}" + ("" if model == "trained" else f" ({model})"))
        ax.set_xlabel("layer")
        ax.set_title(metric)
        ax.set_ylim(-0.02, 1.02)
    axes[0].legend(fontsize=6, ncol=2)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig

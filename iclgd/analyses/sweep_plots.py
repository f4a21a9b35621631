"""Figures of a checkpoint sweep (rows as written by `iclgd.analyses.sweep`).

Step axes are **symlog** (`linthresh` = the smallest positive step): logarithmic over training,
linear below the first positive step so that step 0 is drawn at 0. Failure rows are skipped.
Every function returns a matplotlib figure (Agg backend); `save_sweep_plots` writes the PNGs.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from iclgd.probes.icl import Z_95  # noqa: E402
from iclgd.results import save_figure  # noqa: E402


def _ok(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return sorted((r for r in rows if "error" not in r), key=lambda r: r["step"])


def _step_axis(ax: Any, steps: list[int]) -> None:
    positive = [s for s in steps if s > 0]
    ax.set_xscale("symlog", linthresh=min(positive) if positive else 1)
    ax.set_xlabel("training step (symlog)")


def _n_key(acc: dict[str, float], target: int) -> str | None:
    """The largest n <= target present in `acc` (string keys)."""
    ns = sorted(int(n) for n in acc if int(n) <= target)
    return str(ns[-1]) if ns else None


def _series(rows: list[dict[str, Any]], get: Any) -> tuple[list[int], list[float]]:
    xs, ys = [], []
    for r in rows:
        try:
            v = get(r)
        except (KeyError, TypeError):
            continue
        if v is not None:
            xs.append(r["step"])
            ys.append(v)
    return xs, ys


def plot_metrics_vs_step(rows: list[dict[str, Any]]) -> Figure:
    """One panel per metric against step: ICL accuracy (n = 0 and the largest n, default set),
    ICL score, best prefix-matching and copying scores, density, weight drift."""
    rows = _ok(rows)
    steps = [r["step"] for r in rows]
    fig, axes = plt.subplots(2, 3, figsize=(14, 7.5))
    ax = axes[0, 0]
    if rows and "icl_accuracy" in rows[0]:
        ns = sorted(int(n) for n in rows[0]["icl_accuracy"])
        for n in sorted({ns[0], ns[-1]}):
            xs, ys = _series(rows, lambda r, n=n: r["icl_accuracy"][str(n)])
            ax.plot(xs, ys, "o-", label=f"model, n={n}")
            xs, ys = _series(rows, lambda r, n=n: r["bayes_accuracy"][str(n)])
            ax.plot(
                xs, ys, "--", color="k", alpha=0.4 if n == ns[0] else 0.8, label=f"Bayes, n={n}"
            )
        ax.legend(fontsize=7)
        ax.set_title(f"ICL accuracy ({rows[0].get('icl_task', '')})")
    else:
        ax.set_title("ICL accuracy (not measured)")
    panels = [
        (
            axes[0, 1],
            "ICL score (loss late − early, nats)",
            [("icl_score", lambda r: r["icl_score"])],
        ),
        (
            axes[0, 2],
            "induction heads (best head)",
            [
                ("prefix matching", lambda r: r["induction_prefix_max"]),
                ("copying (eigenvalues)", lambda r: r["induction_copying_max"]),
            ],
        ),
        (
            axes[1, 1],
            "weight drift (relative Frobenius)",
            [
                ("vs previous", lambda r: r["weight_drift_prev"]),
                ("vs final", lambda r: r["weight_drift_final"]),
            ],
        ),
    ]
    taus = list(rows[0].get("density_fraction_below", {})) if rows else []
    panels.append(
        (
            axes[1, 0],
            "fraction of |w| < τ (mean over matrices)",
            [(f"τ={t}", lambda r, t=t: r["density_fraction_below"][t]) for t in taus],
        )
    )
    for ax, title, lines in panels:
        for label, get in lines:
            xs, ys = _series(rows, get)
            if xs:
                ax.plot(xs, ys, "o-", label=label, ms=3)
        ax.set_title(title)
        if len(lines) > 1:
            ax.legend(fontsize=7)
    axes[1, 2].axis("off")
    for ax in axes.flat[:5]:
        _step_axis(ax, steps or [1])
    fig.tight_layout()
    return fig


def plot_icl_vs_n(rows: list[dict[str, Any]], task: str | None = None) -> Figure:
    """ICL accuracy against the number of demonstrations, one line per checkpoint (colour =
    step), with the exact Bayes-optimal ceiling (black dashed); n on a symlog axis."""
    rows = [r for r in _ok(rows) if "icl_accuracy_by_task" in r]
    fig, ax = plt.subplots(figsize=(7, 4.5))
    if not rows:
        ax.set_title("ICL accuracy vs n (not measured)")
        return fig
    task = task or rows[0]["icl_task"]
    cmap = plt.get_cmap("viridis")
    for i, r in enumerate(rows):
        t = r["icl_accuracy_by_task"][task]
        ns = sorted(int(n) for n in t["accuracy"])
        ax.errorbar(
            ns,
            [t["accuracy"][str(n)] for n in ns],
            yerr=[t["se"][str(n)] for n in ns],
            color=cmap(i / max(1, len(rows) - 1)),
            marker="o",
            ms=3,
            capsize=2,
            label=r["checkpoint"],
        )
    t = rows[-1]["icl_accuracy_by_task"][task]
    ns = sorted(int(n) for n in t["bayes_accuracy"])
    ax.plot(ns, [t["bayes_accuracy"][str(n)] for n in ns], "k--", lw=2,
            label="Bayes-optimal (ideal learner)")
    if "pretrained_bayes_accuracy" in t:
        ax.plot(ns, [t["pretrained_bayes_accuracy"][str(n)] for n in ns], "k:", lw=2,
                label="Bayes pretrained LM")
    ax.set_xscale("symlog", linthresh=1)
    ax.set_xlabel("number of in-context examples n (symlog)")
    ax.set_ylabel("accuracy")
    gain = t.get("gain")
    verdict = "" if gain is None else (
        f"\nlast checkpoint: gain {100 * gain['gain']:+.1f} ± {100 * Z_95 * gain['gain_se']:.1f} "
        "points "
        f"(95 %), ICL {'emerged' if gain['icl_emerged'] else 'did NOT emerge'}")
    ax.set_title(f"ICL accuracy vs n, {task}{verdict}", fontsize=10)
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    return fig


def _gain_halfwidth(row: dict[str, Any], key: str) -> float:
    """1.96 x the SE of accuracy(n=key) − accuracy(n=0) (independent prompt sets)."""
    se = row["icl_accuracy_se"]
    return Z_95 * (se[key] ** 2 + se["0"] ** 2) ** 0.5


def plot_icl_stability(rows: list[dict[str, Any]], n: int = 32) -> Figure:
    """Shen et al.'s weight-evolution figure: ICL accuracy at n and its gain over n = 0 (left
    axis) with the weight drift to the final and to the previous checkpoint (right axis)."""
    rows = _ok(rows)
    fig, ax = plt.subplots(figsize=(8, 4.5))
    steps = [r["step"] for r in rows] or [1]
    key = _n_key(rows[0]["icl_accuracy"], n) if rows and "icl_accuracy" in rows[0] else None
    if key is not None:
        xs, acc = _series(rows, lambda r: r["icl_accuracy"][key])
        _, gain = _series(rows, lambda r: r["icl_accuracy"][key] - r["icl_accuracy"]["0"])
        ax.plot(xs, acc, "o-", color="C0", label=f"ICL accuracy, n={key}")
        if len(gain) == len(xs):
            ax.plot(xs, gain, "s-", color="C2", label=f"accuracy(n={key}) − accuracy(n=0)")
            half = [_gain_halfwidth(r, key) for r in rows if key in (r.get("icl_accuracy") or {})]
            if len(half) == len(xs):
                ax.fill_between(xs, [g - h for g, h in zip(gain, half, strict=True)],
                                [g + h for g, h in zip(gain, half, strict=True)], color="C2",
                                alpha=0.2, label="gain, 95 % interval")
            ax.axhline(0.0, color="grey", lw=0.8)
    ax.set_ylabel("accuracy")
    _step_axis(ax, steps)
    right = ax.twinx()
    for label, field, style in (
        ("drift vs final", "weight_drift_final", "^--"),
        ("drift vs previous", "weight_drift_prev", "v:"),
    ):
        xs, ys = _series(rows, lambda r, f=field: r[f])
        if xs:
            right.plot(xs, ys, style, color="C3", label=label)
    right.set_ylabel("relative weight drift ||θ−θ_ref||/||θ_ref||")
    lines = ax.get_legend_handles_labels()
    more = right.get_legend_handles_labels()
    ax.legend(lines[0] + more[0], lines[1] + more[1], fontsize=7, loc="best")
    ax.set_title("Does ICL stay stable while the weights keep moving?")
    fig.tight_layout()
    return fig


def save_sweep_plots(rows: list[dict[str, Any]], out: str | Path) -> list[Path]:
    """Write `metrics_vs_step.png`, `icl_accuracy_vs_n_<task>.png` and `icl_stability.png`."""
    out = Path(out)
    figures = {
        "metrics_vs_step.png": plot_metrics_vs_step(rows),
        "icl_stability.png": plot_icl_stability(rows),
    }
    good = [r for r in _ok(rows) if "icl_accuracy_by_task" in r]
    for task in good[0]["icl_accuracy_by_task"] if good else {}:
        figures[f"icl_accuracy_vs_n_{task}.png"] = plot_icl_vs_n(rows, task)
    paths = []
    for name, fig in figures.items():
        save_figure(fig, out / name, dpi=110)
        plt.close(fig)
        paths.append(out / name)
    return paths

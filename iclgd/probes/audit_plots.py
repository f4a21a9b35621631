"""Figure of an audit's perturbation curve (error and loss against relative weight noise)."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402


def perturbation_figure(report: dict) -> Figure:
    """Max |error| vs reference and loss against noise size eps (log-log), from an audit report."""
    curve = report["perturbation"]["curve"]
    eps = [r["eps"] for r in curve]
    fig, (a, b) = plt.subplots(1, 2, figsize=(9, 3.6))
    a.loglog(eps, [max(r["max_abs_error"], 1e-300) for r in curve], marker="o")
    a.set_xlabel("relative noise eps")
    a.set_ylabel("max |y_hat - reference|")
    b.semilogx(eps, [r["loss"] for r in curve], marker="o", label="perturbed")
    b.axhline(report["loss_reference"], linestyle="--", color="k", label="reference")
    b.set_xlabel("relative noise eps")
    b.set_ylabel(f"loss ({report['loss_convention']})")
    b.legend()
    fig.suptitle(report["construction"])
    fig.tight_layout()
    return fig

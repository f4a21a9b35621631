"""Result objects of the layer-wise probes: tidy rows, saved with provenance, plotted on demand.

`LayerwiseResult` (ICL-objective models, `iclgd.analyses.layerwise`) and `LensResult` (language
models, `iclgd.analyses.layerwise_lm`) share the contract a report composes: `.rows` (tidy dicts),
`.plot()` (matplotlib figures by file name) and `.save(folder)` (CSV + JSON with provenance +
PNG, each written atomically).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from iclgd.results import save_figure, to_json, write_csv, write_json


@dataclass
class _Tidy:
    rows: list[dict[str, Any]]
    settings: dict[str, Any] = field(default_factory=dict)
    provenance: dict[str, Any] = field(default_factory=dict)
    stem = "layers"

    def summary(self) -> dict[str, Any]:
        """The JSON object printed by `--json` (everything but the rows)."""
        return {"settings": self.settings}

    def plot(self) -> dict[str, Any]:  # pragma: no cover - overridden
        return {}

    def save(self, folder: str | Path) -> dict[str, Path]:
        """Write `{stem}.csv`, `{stem}.json` (provenance, settings, summary, rows) and PNGs."""
        import matplotlib.pyplot as plt

        folder = Path(folder)
        paths = {
            "csv": write_csv(folder / f"{self.stem}.csv", self.rows),
            "json": write_json(folder / f"{self.stem}.json", {
                "provenance": self.provenance, **self.summary(), "rows": self.rows}),
        }
        for name, fig in self.plot().items():
            paths[name] = save_figure(fig, folder / name, dpi=110)
            plt.close(fig)
        return paths

    def to_json(self) -> str:
        return to_json(self.summary())


@dataclass
class LayerwiseResult(_Tidy):
    """Rows per (layer, algorithm, step) and `best`: one record per layer (see
    `iclgd.analyses.layerwise`)."""

    best: list[dict[str, Any]] = field(default_factory=list)

    def summary(self) -> dict[str, Any]:
        return {"model": self.settings.get("model"), "best": self.best,
                "settings": self.settings}

    def plot(self) -> dict[str, Any]:
        from iclgd.analyses.layerwise_plots import distance_curves, distance_heatmaps

        title = f"{self.settings.get('model')}: fit = {self.settings.get('fit')}"
        return {"layers_heatmap.png": distance_heatmaps(self.rows, self.best, title=title),
                "layers_curves.png": distance_curves(self.rows, self.best, title=title)}

    def save(self, folder: str | Path) -> dict[str, Path]:
        paths = super().save(folder)
        paths["best_csv"] = write_csv(Path(folder) / "layers_best.csv", self.best)
        return paths


@dataclass
class LensResult(_Tidy):
    """Rows `{model, n_demos, setting, metric, layer, value}` of the logit-lens comparison."""

    stem = "layers_lm"

    def summary(self) -> dict[str, Any]:
        return {"model": self.settings.get("model"), "settings": self.settings}

    def plot(self) -> dict[str, Any]:
        from iclgd.analyses.layerwise_plots import lens_curves

        return {"layers_lm.png": lens_curves(self.rows, title=str(self.settings.get("model")))}

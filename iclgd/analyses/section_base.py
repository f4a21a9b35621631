"""What every section of the demo report shares: model references, parts, results on disk.

A *section* (`iclgd.analyses.sections`) measures one test of the ICL-as-GD debate on one or
more models. Each model is one **part**: measured on its own (`Section.measure(ref, settings)`),
saved on its own (`parts/<label>.json`, atomically), so a killed run resumes part by part and a
model that cannot be loaded (e.g. a real LM not installed) only marks its own part
"not available: <reason>" while the other parts are kept. A `SectionResult` merges the parts:

- `rows` — tidy records, every one tagged with its part's `model` label;
- `headline[label]` — the part's key numbers (plain floats, `*_se` for standard errors);
- `extra[label]` — what the figures need beyond the rows (JSON-serialisable);
- `status[label]` — "ok", "not available: ..." or "failed: ...";
- `cpu_s[label]` — process CPU seconds the part took (the timing that does not depend on load).

`save(folder)` writes `rows.csv`, `result.json` (provenance, settings, status, headline, extra,
CPU seconds) and the figures of `plot()`; `SectionResult.load(folder)` reads them back, so the
report and the verdicts are rebuilt from files alone.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, is_dataclass
from pathlib import Path
from typing import Any

from iclgd.errors import IclgdError, first_line
from iclgd.results import provenance, save_figure, write_csv, write_json

OK = "ok"
RESULT_JSON = "result.json"
ROWS_CSV = "rows.csv"


class NotAvailable(Exception):
    """A part's model (or data) is not installed here; the message is one line saying why."""


@dataclass(frozen=True)
class ModelRef:
    """A model a section measures: `label` (file names, report columns), `spec` (what
    `iclgd.hooks.load_model` or the section's own loader takes: a folder, a registry name, a
    construction name) and `kind`: "ginc" (a GINC series or checkpoint: prompts rebuilt from
    its ginc.json), "lm" (a text LM: built-in/real tasks), "construction" or "lsa"."""

    label: str
    spec: str
    kind: str

    @classmethod
    def parse(cls, spec: str | Path, label: str | None = None) -> ModelRef:
        """A user's `--model` value: a GINC folder (series or checkpoint with ginc.json) is
        "ginc", anything else a text LM."""
        path = Path(spec).expanduser()
        kind = "lm"
        if path.is_dir():
            if (path / "ginc.json").is_file() or any(path.glob("step*/ginc.json")):
                kind = "ginc"
        name = label or (path.name if path.exists() else str(spec))
        return cls(name.replace("/", "_"), str(spec), kind)


def load_lm(ref: ModelRef, device: str = "cpu", dtype: str | None = None) -> Any:
    """The bridge of `ref` (last checkpoint of a series), or `NotAvailable` with one line."""
    from iclgd.hooks import load_model

    try:
        return load_model(ref.spec, device=device, dtype=dtype)
    except Exception as err:  # noqa: BLE001 - any load failure means "not available here"
        raise NotAvailable(first_line(err, 200)) from err


def lm_provenance(model: Any, **extra: Any) -> dict[str, Any]:
    """A part's provenance for a loaded model: `iclgd.hooks.model_provenance` (source,
    checkpoint, processing, dtype, quantised source file) plus `extra`."""
    from iclgd.hooks import model_provenance

    return {**model_provenance(model), **extra}


def settings_dict(settings: Any) -> dict[str, Any]:
    """A settings dataclass as JSON-ready data (tuples become lists)."""
    data = asdict(settings) if is_dataclass(settings) else dict(settings or {})
    return json.loads(json.dumps(data, default=list))


@dataclass
class Part:
    """One model's share of a section (see the module docstring)."""

    label: str
    spec: str
    status: str = OK
    rows: list[dict[str, Any]] = field(default_factory=list)
    headline: dict[str, Any] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)
    cpu_s: float = 0.0
    provenance: dict[str, Any] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.status == OK


@dataclass(frozen=True)
class RunContext:
    """Where a part runs: the torch `device`, the `dtype` models are loaded in (None: float32)
    and a `workdir` for its own resumable files (e.g. the checkpoint sweep's rows),
    `<section folder>/work/<label>`."""

    device: str = "cpu"
    workdir: Path | None = None
    dtype: str | None = None


@dataclass
class Section:
    """A section: name, title, settings type (with `.quick()`), `measure(ref, settings, ctx)
    -> Part` for one model, and `plot(result) -> {file name: Figure}`."""

    name: str
    title: str
    settings_type: type
    measure: Callable[[ModelRef, Any, RunContext], Part]
    plot: Callable[[SectionResult], dict[str, Any]]


@dataclass
class SectionResult:
    """A section's merged parts (see the module docstring)."""

    section: str
    title: str
    settings: dict[str, Any]
    parts: list[Part]
    plotter: Callable[[SectionResult], dict[str, Any]] | None = field(default=None, repr=False)

    @property
    def rows(self) -> list[dict[str, Any]]:
        """Every part's tidy rows (each tagged with its `model` label)."""
        return [{"model": p.label, **r} for p in self.parts for r in p.rows]

    @property
    def headline(self) -> dict[str, dict[str, Any]]:
        return {p.label: p.headline for p in self.parts if p.ok}

    @property
    def extra(self) -> dict[str, dict[str, Any]]:
        return {p.label: p.extra for p in self.parts if p.ok}

    @property
    def status(self) -> dict[str, str]:
        return {p.label: p.status for p in self.parts}

    @property
    def failed(self) -> list[str]:
        """Labels of parts that failed (a bug or bad input, not a missing model)."""
        return [p.label for p in self.parts if p.status.startswith("failed")]

    @property
    def cpu_s(self) -> float:
        return sum(p.cpu_s for p in self.parts)

    def plot(self) -> dict[str, Any]:
        """`{file name: matplotlib Figure}` of this section (parts that are not ok skipped)."""
        return {} if self.plotter is None else self.plotter(self)

    def save(self, folder: str | Path, *, figures: bool = True) -> list[Path]:
        """Write rows.csv, result.json and the figures (PNG) into `folder`; return the paths."""
        import matplotlib.pyplot as plt

        folder = Path(folder)
        files = [write_csv(folder / ROWS_CSV, self.rows) if self.rows else None]
        names = []
        if figures:
            for name, fig in self.plot().items():
                files.append(save_figure(fig, folder / name, dpi=100))
                names.append(name)
                plt.close(fig)
        record = {
            "section": self.section,
            "title": self.title,
            "settings": self.settings,
            "status": self.status,
            "headline": self.headline,
            "extra": self.extra,
            "cpu_s": {p.label: round(p.cpu_s, 2) for p in self.parts},
            "provenance": {p.label: p.provenance for p in self.parts},
            "figures": names,
            "rows_file": ROWS_CSV if self.rows else None,
        }
        files.append(write_json(folder / RESULT_JSON, record))
        return [f for f in files if f is not None]

    @classmethod
    def load(cls, folder: str | Path, section: Section | None = None) -> SectionResult:
        """Read a saved section back: each part from `parts/<label>.json` when saved there
        (rows included), else its status, headline and extra from result.json."""
        folder = Path(folder)
        rec = json.loads((folder / RESULT_JSON).read_text(encoding="utf-8"))
        parts = []
        for label, status in rec["status"].items():
            saved = load_part(folder, label) if status == OK else None
            parts.append(saved or Part(
                label, "", status, headline=rec["headline"].get(label, {}),
                extra=rec["extra"].get(label, {}), cpu_s=rec["cpu_s"].get(label, 0.0)))
        return cls(rec["section"], rec["title"], rec["settings"], parts,
                   plotter=None if section is None else section.plot)


# ----------------------------------------------------------------------------- parts on disk
def part_path(folder: Path, label: str) -> Path:
    return Path(folder) / "parts" / f"{label}.json"


def save_part(folder: Path, part: Part) -> Path:
    """Write one finished part atomically (only parts with status ok are reused on resume)."""
    return write_json(part_path(folder, part.label), asdict(part))


def load_part(folder: Path, label: str, settings: dict[str, Any] | None = None) -> Part | None:
    """A saved ok part of `label` (None when absent, unreadable, not ok, or measured with other
    `settings`)."""
    path = part_path(folder, label)
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        part = Part(**data)
    except (OSError, json.JSONDecodeError, TypeError):
        return None
    if not part.ok:
        return None
    if settings is not None and part.provenance.get("settings") != settings:
        return None
    return part


def measure_part(
    section: Section, ref: ModelRef, settings: Any, device: str = "cpu",
    out: str | Path | None = None, dtype: str | None = None,
) -> Part:
    """Run `section.measure` for one model, catching a missing model ("not available: ...")
    and any other error ("failed: ..."), with the process CPU seconds it took. `out` is the
    section's folder (its `work/<label>` is the part's workdir)."""
    start = time.process_time()
    ctx = RunContext(device, None if out is None else Path(out) / "work" / ref.label, dtype)
    try:
        part = section.measure(ref, settings, ctx)
    except NotAvailable as err:
        part = Part(ref.label, ref.spec, f"not available: {first_line(err, 200)}")
    except Exception as err:  # noqa: BLE001 - a failing part must not take the others down
        import os

        if os.environ.get("ICLGD_DEBUG"):
            raise
        part = Part(ref.label, ref.spec, f"failed: {type(err).__name__}: {first_line(err, 200)}")
    part.cpu_s = time.process_time() - start
    part.provenance = {
        **provenance(model=ref.spec, checkpoint=None, seed=getattr(settings, "seed", None),
                     dtype=dtype or "float32", device=device, weight_processing="raw"),
        **part.provenance,
        "section": section.name,
        "kind": ref.kind,
        "settings": settings_dict(settings),
    }
    return part


def run_section(
    section: Section,
    models: Sequence[ModelRef],
    settings: Any,
    *,
    out: str | Path | None = None,
    device: str = "cpu",
    resume: bool = True,
    progress: Callable[[Part], None] | None = None,
    dtype: str | None = None,
) -> SectionResult:
    """Measure every model of `models` (reusing saved ok parts under `out` when `resume`), save
    the result there when `out` is given, and return it."""
    if not models:
        raise IclgdError(f"section {section.name}: no model given")
    labels = [m.label for m in models]
    if len(set(labels)) != len(labels):
        raise IclgdError(f"section {section.name}: model labels must differ, got {labels}")
    wanted = settings_dict(settings)
    parts = []
    for ref in models:
        part = load_part(Path(out), ref.label, wanted) if out is not None and resume else None
        if part is None:
            part = measure_part(section, ref, settings, device, out, dtype)
            if out is not None and part.ok:
                save_part(Path(out), part)
        parts.append(part)
        if progress is not None:
            progress(part)
    result = SectionResult(section.name, section.title, wanted, parts, plotter=section.plot)
    if out is not None:
        result.save(out)
    return result


def merge_parts(section: Section, settings: Any, parts: Sequence[Part]) -> SectionResult:
    """A `SectionResult` from parts measured elsewhere (e.g. by the demo's worker processes)."""
    return SectionResult(section.name, section.title, settings_dict(settings), list(parts),
                         plotter=section.plot)

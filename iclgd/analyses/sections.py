"""The eight sections of the demo report, each runnable on your own model.

```python
from iclgd.analyses import sections

res = sections.order("runs/demo/ginc")             # a GINC series, a HF folder, a cached name
res = sections.order(["runs/demo/ginc", "smollm2-135m"], out="results/order")
res.rows; res.headline; res.save("results/order"); figs = res.plot()
```

Every function takes a model spec (or a list; `ModelRef`s too), optional settings (the
section's settings dataclass; `quick=True` for its reduced size), an optional `out` folder
(parts saved there as they finish, reused on a rerun with the same settings) and `device`, and
returns a `SectionResult`. A model that cannot be loaded gives its part the status
"not available: <reason>"; the others are still measured.

| section | what it measures | default models |
|---|---|---|
| `constructions` | each construction against its algorithm: error, density, width 4096, noise | the six constructions |
| `trained_vs_constructed` | von Oswald's LSA trained on the ICL objective vs GD / GD++ | `lsa-1`, `lsa-3` |
| `density` | fraction of |w| < τ, trained vs untrained copy, constructions at width 4096 | given |
| `emergent_icl` | accuracy against the number of demonstrations | given |
| `order` | order sensitivity of ICL vs GD, SGD, Adam across epochs | given |
| `outputs` | accuracy, token overlap, overlap cosine of ICL vs each GD variant, with the floor | given |
| `dual_form` | SimAOU, SimAM, SimAM_Δ, Rec2FTP, Kendall τ, ΔW per layer, with controls | given |
| `weight_evolution` | checkpoint sweep: ICL gain and score vs weight drift, induction heads | given |
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from iclgd.analyses.section_base import ModelRef, Section, SectionResult, run_section
from iclgd.analyses.sections_ft import DUAL_FORM, ORDER, OUTPUTS
from iclgd.analyses.sections_lm import DENSITY, EMERGENT, EVOLUTION
from iclgd.analyses.sections_toy import CONSTRUCTIONS, TRAINED
from iclgd.constructions.registry import NAMES
from iclgd.errors import IclgdError

SECTIONS: dict[str, Section] = {s.name: s for s in (
    CONSTRUCTIONS, TRAINED, DENSITY, EMERGENT, ORDER, OUTPUTS, DUAL_FORM, EVOLUTION)}
DEFAULT_MODELS = {"constructions": NAMES, "trained_vs_constructed": ("lsa-1", "lsa-3")}


def get_section(name: str) -> Section:
    """The section called `name` (dashes allowed for underscores)."""
    key = name.replace("-", "_")
    if key not in SECTIONS:
        raise IclgdError(f"unknown section {name!r}: use one of {', '.join(SECTIONS)}")
    return SECTIONS[key]


def model_ref(spec: str | Path | ModelRef, label: str | None = None) -> ModelRef:
    """A `ModelRef` for a construction name, an LSA depth (`lsa-1`), a saved LSA part
    (`.../trained_vs_constructed/parts/lsa-1.json`) or a model (`ModelRef.parse`)."""
    if isinstance(spec, ModelRef):
        return spec
    text = str(spec)
    if text in NAMES:
        return ModelRef(label or text, text, "construction")
    if re.fullmatch(r"lsa-\d+", text):
        return ModelRef(label or text, text, "lsa")
    if text.endswith(".json") and Path(text).is_file():
        return ModelRef(label or Path(text).stem, text, "lsa")
    return ModelRef.parse(text, label)


def settings_for(section: Section, settings: Any = None, *, quick: bool = False) -> Any:
    """`settings`, or the section's default (reduced with `quick`)."""
    if settings is not None:
        if not isinstance(settings, section.settings_type):
            raise IclgdError(f"section {section.name} takes {section.settings_type.__name__} "
                             f"settings, got {type(settings).__name__}")
        return settings
    return section.settings_type.quick() if quick else section.settings_type()


def analyse(
    name: str,
    models: str | Path | ModelRef | Sequence[str | Path | ModelRef] | None = None,
    settings: Any = None,
    *,
    quick: bool = False,
    out: str | Path | None = None,
    device: str = "cpu",
    resume: bool = True,
    dtype: str | None = None,
) -> SectionResult:
    """Run section `name` on `models` (see the module docstring); saves under `out` if given;
    `dtype` is the dtype models are loaded in (None: float32; trainings stay float32)."""
    section = get_section(name)
    if models is None:
        if section.name not in DEFAULT_MODELS:
            raise IclgdError(f"section {section.name} needs a model: pass --model")
        models = DEFAULT_MODELS[section.name]
    if isinstance(models, str | Path | ModelRef):
        models = [models]
    refs = [model_ref(m) for m in models]
    return run_section(section, refs, settings_for(section, settings, quick=quick), out=out,
                       device=device, resume=resume, dtype=dtype)


def load_section(folder: str | Path) -> SectionResult:
    """A saved section (its `result.json` and parts), able to redraw its figures."""
    import json

    rec = json.loads((Path(folder) / "result.json").read_text(encoding="utf-8"))
    return SectionResult.load(folder, get_section(rec["section"]))


def _runner(name: str):
    def run(models=None, settings=None, **kwargs):
        return analyse(name, models, settings, **kwargs)

    run.__name__ = name
    run.__doc__ = f"Section `{name}`: `analyse({name!r}, models, settings, ...)`."
    return run


constructions = _runner("constructions")
trained_vs_constructed = _runner("trained_vs_constructed")
density = _runner("density")
emergent_icl = _runner("emergent_icl")
order = _runner("order")
outputs = _runner("outputs")
dual_form = _runner("dual_form")
weight_evolution = _runner("weight_evolution")

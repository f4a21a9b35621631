"""The demo's sections on weights and emergent ICL: density, emergent ICL, weight evolution.

- `density` (Shen et al. 2024's weight-density test) — fraction of raw entries with |w| < τ at
  the same thresholds for the constructions (at residual width 4096, their LLM-width reading,
  and at their own width), the trained linear-attention model, the GINC model, a real LM, and an
  untrained copy of each LM (`iclgd.analyses.control.untrained_control`: attention/MLP weights
  re-initialised). For a quantised checkpoint the per-block grid (`probes.density.block_grid`)
  is measured, since thresholds below half its step measure the grid, not the model.
- `emergent_icl` — GINC accuracy against the number of examples n, in-distribution and held-out
  concepts, next to the ideal learner and the pretraining-view Bayes predictor (Xie et al.
  2022); a text LM's accuracy against the number of demonstrations on real tasks.
- `weight_evolution` (Shen et al. 2024; Olsson et al. 2022) — the checkpoint sweep
  (`iclgd.analyses.sweep.run_sweep`): ICL gain and ICL score against weight drift, and when
  induction heads form or fail to.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from iclgd.analyses.section_base import (
    ModelRef,
    NotAvailable,
    Part,
    RunContext,
    Section,
    SectionResult,
    lm_provenance,
    load_lm,
)
from iclgd.errors import first_line
from iclgd.probes.density import DEFAULT_THRESHOLDS, fractions_below, threshold_key

DEFAULT_LM_TASKS = ("sentiment", "country-capital", "past-tense")
GRID_RESIDUAL = 0.05  # mean block residual below which weights count as lying on a grid


def available_tasks(names: tuple[str, ...]) -> tuple[list[str], dict[str, str]]:
    """The tasks of `names` that load here, and `{name: reason}` for the others."""
    from iclgd.data.task_loaders import load_task

    ok, missing = [], {}
    for name in names:
        try:
            load_task(name)
            ok.append(name)
        except Exception as err:  # noqa: BLE001 - a task that does not load is not available
            missing[name] = first_line(err, 160) if str(err).strip() else "not found"
    return ok, missing


# ----------------------------------------------------------------------------- density
@dataclass(frozen=True)
class DensitySettings:
    """Thresholds τ of `fraction_below` and the seed of the untrained copies."""

    thresholds: tuple[float, ...] = DEFAULT_THRESHOLDS
    seed: int = 0

    @classmethod
    def quick(cls) -> DensitySettings:
        return cls()


def _pooled(mats: dict[str, Any], thresholds: tuple[float, ...]) -> dict[str, float]:
    """Mean over matrices of each matrix's `fraction_below` (Shen et al.: per matrix)."""
    fr = [fractions_below(w, thresholds) for w in mats.values()]
    return {k: sum(f[k] for f in fr) / len(fr) for k in fr[0]}


def _lm_matrices(model: Any) -> dict[str, Any]:
    from iclgd.hooks import attention_weights, mlp_weights

    out = {}
    for layer in range(int(model.cfg.n_layers)):
        for name, w in {**attention_weights(model, layer).matrices(),
                        **mlp_weights(model, layer).matrices()}.items():
            out[f"{name}.{layer}"] = w
    return out


def quantisation_grid(model: Any) -> dict[str, Any]:
    """`block_grid` pooled over the 2-D weights inside the transformer layers (HF layout, blocks
    along the input axis); `on_grid` when the mean residual is below `GRID_RESIDUAL`."""
    from iclgd.hooks import hf_module
    from iclgd.hooks.weights import layer_layout
    from iclgd.probes.density import block_grid

    prefix = layer_layout(model).layer_prefix
    steps, residuals = [], []
    for name, p in hf_module(model).named_parameters():
        if name.startswith(prefix) and p.ndim == 2 and p.shape[-1] % 32 == 0:
            g = block_grid(p)
            if g["blocks"]:
                steps.append(g["median_step"])
                residuals.append(g["mean_residual"])
    if not steps:
        return {"on_grid": False, "median_step": None, "mean_residual": None}
    residual = sum(residuals) / len(residuals)
    step = sorted(steps)[len(steps) // 2]
    return {"on_grid": residual < GRID_RESIDUAL, "median_step": step, "mean_residual": residual}


def verdict_threshold(thresholds: tuple[float, ...], grid: dict[str, Any]) -> float:
    """The threshold the density verdict reads: 1e-3, or for weights on a quantisation grid the
    smallest threshold at or above half the grid's median step (below it, the grid is measured)."""
    base = 1e-3 if 1e-3 in thresholds else max(thresholds)
    if not grid.get("on_grid"):
        return base
    half = grid["median_step"] / 2
    above = [t for t in sorted(thresholds) if t >= half]
    return max(base, above[0]) if above else max(thresholds)


def measure_density(ref: ModelRef, settings: DensitySettings, ctx: RunContext) -> Part:
    """Fractions below τ of one model (and of its untrained copy, for LMs)."""
    th = tuple(settings.thresholds)
    rows: list[dict[str, Any]] = []
    headline: dict[str, Any] = {"kind": ref.kind}
    prov: dict[str, Any] = {}
    if ref.kind == "construction":
        from iclgd.constructions.registry import build_construction
        from iclgd.probes.audit import density_at_width

        weights = build_construction(ref.spec).weights()
        width = density_at_width(weights, build_construction(ref.spec).nonzero_at_width)
        at = width.get("scaled") or width["embedded"]
        zero = 1.0 - sum(at.values()) / len(at)
        headline.update({"fraction_below": _pooled(weights, th),
                         "fraction_below_4096": {threshold_key(t): zero for t in th}})
    elif ref.kind == "lsa":
        import torch

        data = json.loads(Path(ref.spec).read_text(encoding="utf-8"))
        weights = {k: torch.tensor(v) for k, v in data["extra"]["weights"].items()}
        headline["fraction_below"] = _pooled(weights, th)
    else:
        from iclgd.analyses.control import untrained_control

        model = load_lm(ref, ctx.device, ctx.dtype)
        grid = quantisation_grid(model)
        headline.update({
            "fraction_below": _pooled(_lm_matrices(model), th),
            "fraction_below_untrained": _pooled(
                _lm_matrices(untrained_control(model, seed=settings.seed)), th),
            "grid": grid, "verdict_threshold": threshold_key(verdict_threshold(th, grid)),
        })
        prov = lm_provenance(model)
    for key in ("fraction_below", "fraction_below_4096", "fraction_below_untrained"):
        for tau, value in headline.get(key, {}).items():
            rows.append({"weights": key.removeprefix("fraction_below").strip("_") or "trained",
                         "threshold": tau, "fraction_below": value})
    return Part(ref.label, ref.spec, rows=rows, headline=headline, provenance=prov)


# ----------------------------------------------------------------------------- emergent ICL
@dataclass(frozen=True)
class EmergentSettings:
    """GINC: `ginc_n` example counts at length `k`, `ginc_prompts` per n and concept set; text
    LMs: `lm_n` demonstration counts (0 = zero-shot) on `lm_tasks`, `lm_queries` per task."""

    ginc_n: tuple[int, ...] = (0, 1, 2, 4, 8, 16, 32)
    k: int = 3
    ginc_prompts: int = 300
    lm_n: tuple[int, ...] = (0, 1, 2, 4, 8)
    lm_tasks: tuple[str, ...] = DEFAULT_LM_TASKS
    lm_queries: int = 16
    seed: int = 0

    @classmethod
    def quick(cls) -> EmergentSettings:
        return cls(ginc_n=(0, 2, 8), ginc_prompts=20, lm_n=(0, 2), lm_queries=4)


def _gain(rows: list[dict[str, Any]], key: str = "accuracy", se: str = "se") -> tuple[float, float]:
    first, last = rows[0], rows[-1]
    return last[key] - first[key], (last[se] ** 2 + first[se] ** 2) ** 0.5


def measure_emergent(ref: ModelRef, settings: EmergentSettings, ctx: RunContext) -> Part:
    """Accuracy against the number of demonstrations for one model."""
    model = load_lm(ref, ctx.device, ctx.dtype)
    if ref.kind == "ginc":
        return _emergent_ginc(ref, model, settings)
    return _emergent_lm(ref, model, settings)


def _emergent_ginc(ref: ModelRef, model: Any, settings: EmergentSettings) -> Part:
    from iclgd.analyses.prompt_sets import find_ginc_folder
    from iclgd.data.ginc_hmm import load_ginc_world
    from iclgd.data.ginc_prompts import prompt_length
    from iclgd.hooks import hf_module
    from iclgd.training.ginc_eval import evaluate_icl

    world = load_ginc_world(find_ginc_folder(model))
    ns = [n for n in settings.ginc_n if prompt_length(n, settings.k) <= int(model.cfg.n_ctx)]
    rows, headline = [], {"k": settings.k, "prompts": settings.ginc_prompts, "n_max": ns[-1]}
    for concepts in ("in", "out"):
        got = evaluate_icl(hf_module(model), world, ns=ns, k=settings.k,
                           n_prompts=settings.ginc_prompts, concepts=concepts, seed=settings.seed)
        rows += got
        from iclgd.probes.icl import icl_gain

        gain = icl_gain({r["n"]: r["accuracy"] for r in got}, {r["n"]: r["se"] for r in got})
        g, g_se = gain.gain, gain.se
        headline[f"{concepts}_icl_emerged"] = gain.emerged
        headline.update({f"{concepts}_acc_n0": got[0]["accuracy"], f"{concepts}_acc_n0_se":
                         got[0]["se"], f"{concepts}_acc_nmax": got[-1]["accuracy"],
                         f"{concepts}_acc_nmax_se": got[-1]["se"], f"{concepts}_gain": g,
                         f"{concepts}_gain_se": g_se,
                         f"{concepts}_ideal_gain": _gain(got, "ideal_accuracy", "ideal_se")[0],
                         f"{concepts}_pretrained_bayes_gain": _gain(
                             got, "pretrained_bayes_accuracy", "pretrained_bayes_se")[0]})
    headline.update({"gain": headline["in_gain"], "gain_se": headline["in_gain_se"],
                     "icl_emerged": headline["in_icl_emerged"]})
    return Part(ref.label, ref.spec, rows=rows, headline=headline,
                provenance=lm_provenance(model))


def _emergent_lm(ref: ModelRef, model: Any, settings: EmergentSettings) -> Part:
    from iclgd.analyses.prompt_sets import text_prompt_sets
    from iclgd.data.task_loaders import load_task
    from iclgd.probes.icl import binomial_se, predictions_at

    tasks, missing = available_tasks(tuple(settings.lm_tasks))
    if not tasks:
        raise NotAvailable(f"none of the tasks {', '.join(settings.lm_tasks)} is installed")
    rows, per_task = [], {}
    shots = [n for n in settings.lm_n if n > 0]
    for name in tasks:
        task = load_task(name, seed=settings.seed)
        sets = text_prompt_sets(task, model.tokenizer, shots, n_queries=min(
            settings.lm_queries, len(task.queries)), seed=settings.seed)
        first = next(iter(sets.values()))
        cells = ([(0, first.zs)] if 0 in settings.lm_n else []) + [(n, s.icl) for n, s in
                                                                    sets.items()]
        got = []
        for n, t in cells:
            hit = (predictions_at(model, t.tokens, t.answer_pos, batch_size=16) == t.answer_ids)
            p = float(hit.double().mean())
            got.append({"task": name, "n": n, "accuracy": p, "se": binomial_se(p, len(t)),
                        "queries": len(t)})
        rows += got
        per_task[name] = _gain(got)
    gain = sum(g for g, _ in per_task.values()) / len(per_task)
    gain_se = sum(s**2 for _, s in per_task.values()) ** 0.5 / len(per_task)
    return Part(ref.label, ref.spec, rows=rows, headline={
        "tasks": tasks, "unavailable_tasks": missing, "gain": gain, "gain_se": gain_se,
        "n_max": max(settings.lm_n), "gain_by_task": {k: v[0] for k, v in per_task.items()}},
        provenance=lm_provenance(model))


# ----------------------------------------------------------------------------- evolution
@dataclass(frozen=True)
class EvolutionSettings:
    """The checkpoint sweep's size: example counts `n_values` (first and last give the ICL
    gain), `prompts` per n (k = 3, in-distribution), ICL-score and induction sequences."""

    n_values: tuple[int, ...] = (0, 32)
    prompts: int = 200
    score_seqs: int = 16
    induction_seqs: int = 8
    induction_threshold: float = 0.4
    seed: int = 0

    @classmethod
    def quick(cls) -> EvolutionSettings:
        return cls(n_values=(0, 8), prompts=16, score_seqs=4, induction_seqs=4)


def measure_evolution(ref: ModelRef, settings: EvolutionSettings, ctx: RunContext) -> Part:
    """Sweep every checkpoint of a GINC series (resumable in the part's workdir)."""
    import tempfile

    from iclgd.analyses.sweep import SweepSettings, run_sweep
    from iclgd.hooks import list_checkpoints

    path = Path(ref.spec)
    if ref.kind != "ginc" or not path.is_dir() or len(list_checkpoints(path)) < 2:
        raise NotAvailable("weight evolution needs a series of training checkpoints "
                           f"(step{{N}}/ folders); {ref.spec} has none")
    sweep_settings = SweepSettings(
        icl_sets=("in:3",), n_values=tuple(settings.n_values), n_prompts=settings.prompts,
        n_score_seqs=settings.score_seqs, induction_seqs=settings.induction_seqs,
        seed=settings.seed, dtype=ctx.dtype)
    work = ctx.workdir or Path(tempfile.mkdtemp(prefix="iclgd-sweep-"))
    sweep = run_sweep(path, work / "sweep", sweep_settings, device=ctx.device, plots=False,
                      progress=False)
    from iclgd.analyses.sweep import last_checkpoint_verdict

    rows = [_evolution_row(r) for r in sweep.rows if "error" not in r]
    if not rows:
        raise NotAvailable(f"no checkpoint of {ref.spec} could be evaluated")
    headline = _evolution_headline(rows, settings.induction_threshold)
    headline["sweep_verdict"] = last_checkpoint_verdict(sweep.rows)
    return Part(ref.label, ref.spec, rows=rows, headline=headline)


def _evolution_row(r: dict[str, Any]) -> dict[str, Any]:
    from iclgd.probes.icl import icl_gain

    acc, se = r["icl_accuracy"], r["icl_accuracy_se"]
    ns = sorted(acc, key=int)
    lo, hi = ns[0], ns[-1]
    gain = icl_gain(acc, se).to_dict()
    return {
        "checkpoint": r["checkpoint"], "step": r["step"], "acc_n0": acc[lo], "acc_nmax": acc[hi],
        "gain": gain["gain"], "gain_se": gain["gain_se"], "icl_emerged": gain["icl_emerged"],
        "bayes_gain": r["pretrained_bayes_accuracy"][hi] - r["pretrained_bayes_accuracy"][lo],
        "icl_score": r.get("icl_score"), "icl_score_se": r.get("icl_score_se"),
        "drift_prev": r.get("weight_drift_prev"), "drift_final": r.get("weight_drift_final"),
        "induction_prefix_max": r.get("induction_prefix_max"),
        "induction_copying_max": r.get("induction_copying_max"),
        "density_below_1e-03": (r.get("density_fraction_below") or {}).get("1e-03"),
    }


def _evolution_headline(rows: list[dict[str, Any]], threshold: float) -> dict[str, Any]:
    """ICL has emerged when the last checkpoint's gain has its lower 95 % bound above 0
    (`iclgd.probes.icl.icl_gain`). The late window starts at the first
    checkpoint from a quarter of the final step on (the one before the last if none is): its
    gain and its relative weight distance to the last checkpoint are the late-training
    measurements. Induction heads "formed" at the first checkpoint whose best prefix-matching
    score reaches `threshold`."""
    final = rows[-1]
    late = next((r for r in rows if r["step"] >= final["step"] / 4 and r is not final),
                rows[-2] if len(rows) > 1 else final)
    formed = next((r["step"] for r in rows if (r["induction_prefix_max"] or 0) >= threshold),
                  None)
    return {
        "checkpoints": len(rows), "final_step": final["step"],
        "icl_emerged": final["icl_emerged"],
        "late_step": late["step"], "late_gain": late["gain"], "late_gain_se": late["gain_se"],
        "late_drift": late["drift_final"],
        "final_gain": final["gain"], "final_gain_se": final["gain_se"],
        "icl_score_final": final["icl_score"], "icl_score_final_se": final["icl_score_se"],
        "induction_prefix_max": max((r["induction_prefix_max"] or 0) for r in rows),
        "induction_threshold": threshold, "induction_formed_step": formed,
    }


# ----------------------------------------------------------------------------- plots
def _plot_density(result: SectionResult) -> dict[str, Any]:
    from iclgd.analyses.section_plots import density_curves

    return {"density.png": density_curves(result)}


def _plot_emergent(result: SectionResult) -> dict[str, Any]:
    from iclgd.analyses.section_plots import emergent_ginc, emergent_lm

    figs = {}
    for part in result.parts:
        if part.ok:
            draw = emergent_ginc if part.headline.get("k") else emergent_lm
            figs[f"emergent_{part.label}.png"] = draw(part)
    return figs


def _plot_evolution(result: SectionResult) -> dict[str, Any]:
    from iclgd.analyses.section_plots import evolution

    return {f"evolution_{p.label}.png": evolution(p) for p in result.parts if p.ok}


DENSITY = Section("density", "Density", DensitySettings, measure_density, _plot_density)
EMERGENT = Section("emergent_icl", "Emergent ICL", EmergentSettings, measure_emergent,
                   _plot_emergent)
EVOLUTION = Section("weight_evolution", "Weight evolution", EvolutionSettings,
                    measure_evolution, _plot_evolution)

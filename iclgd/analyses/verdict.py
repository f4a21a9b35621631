"""The verdict table: one row per claim of the ICL-as-GD debate, one cell per model, each
computed by an explicit rule from the sections' `result.json` files (never typed in).

Every claim is phrased the way its proponents state it; a cell says whether the evidence here
**supports** it, **contradicts** it, or is **inconclusive**, with the measured number, its
control, and the file it was read from. "z" below is a difference divided by its standard
error `sqrt(se_a² + se_b²)`; |z| > 2 is the significance line everywhere.

Columns: "toy" (the constructions and the linear-attention models trained on the ICL
objective) and one per language model (GINC, a real LM) in the order the sections list them.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

SUPPORTS, CONTRADICTS, INCONCLUSIVE = "supports", "contradicts", "inconclusive"
Z = 2.0
EXACT_TOL = 1e-8  # exact constructions: float64 rounding
APPROX_TOL = 1e-4  # approximate constructions (softmax copy, GeLU products)
BROKEN = 1e-2  # error vs the algorithm that no longer counts as implementing it
COS_SUPPORT, COS_CONTRADICT = 0.99, 0.95
ORDER_FACTOR = 2.0
DRIFT_MOVING = 0.1
OVERLAP_SE_MAX = 0.05
SPARSE_CONSTRUCTIONS = ("von-oswald-gd", "von-oswald-gdpp", "von-oswald-standard-tokens",
                        "akyurek-sgd", "ahn-pgd")


@dataclass
class Cell:
    """One model's verdict on one claim: `verdict`, the `measurement` and `control` as text
    with their numbers, and the `source` file."""

    verdict: str
    measurement: str
    control: str
    source: str


@dataclass
class Claim:
    """A claim, how it is tested, and the rule (the docstring of its rule function)."""

    key: str
    claim: str
    test: str
    rule: Callable[[dict[str, dict[str, Any]]], dict[str, Cell]]
    section: str


def _z(a: float, sa: float | None, b: float, sb: float | None) -> float:
    se = math.sqrt((sa or 0.0) ** 2 + (sb or 0.0) ** 2)
    if se == 0:
        return math.inf if a > b else -math.inf if a < b else 0.0
    return (a - b) / se


def _pm(v: float | None, se: float | None = None, fmt: str = ".3g") -> str:
    if v is None or v != v:
        return "n/a"
    return f"{v:{fmt}}" + (f" ± {se:.2g}" if se is not None and se == se else "")


def _lm_parts(rec: dict[str, Any] | None) -> dict[str, dict[str, Any]]:
    """Headlines of the ok language-model parts of a section record."""
    if not rec:
        return {}
    return {label: h for label, h in rec["headline"].items()
            if rec["provenance"].get(label, {}).get("kind") in ("ginc", "lm")}


def _src(section: str) -> str:
    return f"{section}/result.json"


# ----------------------------------------------------------------------------- rules
def rule_emerges(res: dict[str, dict[str, Any]]) -> dict[str, Cell]:
    """ICL emerges from plain next-token pretraining (Xie et al. 2022; the setting Shen et al.
    2024 ask about). Supports when the accuracy gain from n = 0 to the largest n is above 0 at
    95 % (GINC, in-distribution: `iclgd.probes.icl.icl_gain`'s lower bound) or exceeds 2 SE (a
    text LM, mean over tasks); else inconclusive."""
    out = {}
    for label, h in _lm_parts(res.get("emergent_icl")).items():
        ok = h["icl_emerged"] if "icl_emerged" in h else h["gain"] > Z * h["gain_se"]
        ctrl = (f"held-out concepts gain {_pm(h.get('out_gain'), h.get('out_gain_se'))}; "
                f"pretraining-view Bayes gain {_pm(h.get('in_pretrained_bayes_gain'))}"
                if "out_gain" in h else f"tasks: {', '.join(h.get('tasks', []))}")
        out[label] = Cell(SUPPORTS if ok else INCONCLUSIVE,
                          f"gain 0 → {h['n_max']} demos {_pm(h['gain'], h['gain_se'])}", ctrl,
                          _src("emergent_icl"))
    return out


def rule_dual_form(res: dict[str, dict[str, Any]]) -> dict[str, Cell]:
    """Dai et al. (2023): attention over demonstrations acts as an implicit finetuning update.
    Toy: the dual-form identity holds when the construction's max error ≤ 1e-8. Models: raw
    SimAOU (Deutch et al. 2024's unnormalised reading; Dai's normalised one inflates unrelated
    updates) of ICL against Dai's k/v finetuning, per query averaged over layers, compared with
    the same number on the untrained control: supports when trained − untrained > 2 SE and the
    trained value exceeds Dai's random baseline by 2 SE; contradicts when the untrained control
    scores higher by 2 SE (the similarity does not come from what the model learned, Deutch et
    al. 2024); inconclusive otherwise."""
    out = {}
    con = (res.get("constructions") or {}).get("headline", {}).get("dual-form")
    if con:
        err = con["max_abs_error"]
        out["toy"] = Cell(SUPPORTS if err <= EXACT_TOL else CONTRADICTS,
                          f"dual-form identity max error {_pm(err)}",
                          "float64 rounding (1e-8)", _src("constructions"))
    for label, h in _lm_parts(res.get("dual_form")).items():
        m = "kv" if "kv" in h["methods"] else h["methods"][0]
        t, st = h[f"simaou_raw_{m}_trained"], h[f"simaou_raw_{m}_trained_se"]
        u, su = h[f"simaou_raw_{m}_untrained"], h[f"simaou_raw_{m}_untrained_se"]
        r, sr = h[f"simaou_random_raw_{m}_trained"], h[f"simaou_random_raw_{m}_trained_se"]
        z = _z(t, st, u, su)
        verdict = (SUPPORTS if z > Z and _z(t, st, r, sr) > Z else
                   CONTRADICTS if z < -Z else INCONCLUSIVE)
        others = "; ".join(
            f"{o}: {_pm(h[f'simaou_raw_{o}_trained'], h[f'simaou_raw_{o}_trained_se'])} vs "
            f"untrained {_pm(h[f'simaou_raw_{o}_untrained'], h[f'simaou_raw_{o}_untrained_se'])}"
            for o in h["methods"] if o != m and f"simaou_raw_{o}_trained" in h)
        out[label] = Cell(verdict, f"SimAOU raw ({m}, N = {h['n_demos']}) {_pm(t, st)}",
                          f"untrained {_pm(u, su)}; random {_pm(r, sr)}"
                          + (f" (other methods, not in the verdict: {others})" if others else ""),
                          _src("dual_form"))
    return out


def rule_constructions(res: dict[str, dict[str, Any]]) -> dict[str, Cell]:
    """von Oswald et al. (2023) and Ahn et al. (2023): hand-set linear self-attention weights
    run GD, GD++ and preconditioned GD exactly. Supports when every such construction matches
    its algorithm within 1e-8 (exact ones) or 1e-4 (approximate ones) in float64; contradicts
    when one is off by more than 1e-2; the control is the dense noise level that breaks them."""
    heads = (res.get("constructions") or {}).get("headline", {})
    names = [n for n in ("von-oswald-gd", "von-oswald-gdpp", "von-oswald-standard-tokens",
                         "ahn-pgd") if n in heads]
    if not names:
        return {}
    errs = {n: heads[n]["max_abs_error"] for n in names}
    within = all(e <= (EXACT_TOL if heads[n]["exact"] else APPROX_TOL) for n, e in errs.items())
    worst = max(errs, key=errs.get)
    breaks = [heads[n]["smallest_breaking_eps"] for n in names if heads[n]["smallest_breaking_eps"]]
    verdict = SUPPORTS if within else CONTRADICTS if max(errs.values()) > BROKEN else INCONCLUSIVE
    return {"toy": Cell(verdict, f"max error {_pm(errs[worst])} ({worst}; {len(names)} constructions)",
                        f"dense noise ε ≥ {_pm(min(breaks)) if breaks else 'n/a'} breaks them "
                        f"(error > {BROKEN:g})", _src("constructions"))}


def rule_trained(res: dict[str, dict[str, Any]]) -> dict[str, Cell]:
    """von Oswald et al. (2023): linear self-attention trained on the ICL objective converges to
    the construction — one layer to one GD step, deeper shared layers to GD++ rather than GD.
    Sensitivity cosine (mean over tasks, ± SE): supports when the 1-layer cosine with GD and the
    3-layer cosine with GD++ are ≥ 0.99 and the 3-layer model is closer to GD++ than to GD by 2
    SE; contradicts when either cosine is < 0.95; inconclusive otherwise."""
    heads = (res.get("trained_vs_constructed") or {}).get("headline", {})
    if not heads:
        return {}
    parts, ok, bad = [], True, False
    for label, h in sorted(heads.items()):
        cos, se, alg = (h["cos_gdpp"], h["cos_gdpp_se"], "GD++") if "cos_gdpp" in h else (
            h["cos_gd"], h["cos_gd_se"], "GD")
        parts.append(f"{label}: cos vs {alg} {_pm(cos, se, '.4f')}")
        ok &= cos >= COS_SUPPORT
        bad |= cos < COS_CONTRADICT
        if "cos_gdpp" in h:
            ok &= _z(h["cos_gdpp"], h["cos_gdpp_se"], h["cos_gd"], h["cos_gd_se"]) > Z
    ctrl = "; ".join(f"{label}: loss {_pm(h['tf_loss'], fmt='.4f')} vs GD {_pm(h['gd_loss'], fmt='.4f')}"
                     + (f", GD++ {_pm(h['gdpp_loss'], fmt='.4f')}, cos vs GD "
                        f"{_pm(h['cos_gd'], h['cos_gd_se'], '.4f')}" if "gdpp_loss" in h else "")
                     for label, h in sorted(heads.items()))
    return {"toy": Cell(CONTRADICTS if bad else SUPPORTS if ok else INCONCLUSIVE,
                        "; ".join(parts), ctrl, _src("trained_vs_constructed"))}


def rule_akyurek(res: dict[str, dict[str, Any]]) -> dict[str, Cell]:
    """Akyürek et al. (2023): read-arithmetic-write operators (mov, aff, mul, div) compose into a
    transformer that runs an SGD step. Supports when the construction matches one SGD step within
    1e-4 (products are GeLU approximations); contradicts above 1e-2. Control: its error under
    the smallest dense noise (1e-6 of each matrix's RMS entry)."""
    h = (res.get("constructions") or {}).get("headline", {}).get("akyurek-sgd")
    if not h:
        return {}
    err = h["max_abs_error"]
    curve = (res["constructions"]["extra"].get("akyurek-sgd") or {}).get("curve", [])
    noisy = curve[0] if curve else None
    return {"toy": Cell(
        SUPPORTS if err <= APPROX_TOL else CONTRADICTS if err > BROKEN else INCONCLUSIVE,
        f"max error vs one SGD step {_pm(err)}",
        f"with noise ε = {noisy['eps']:g}: error {_pm(noisy['max_abs_error'])}" if noisy else "n/a",
        _src("constructions"))}


def rule_order(res: dict[str, dict[str, Any]]) -> dict[str, Cell]:
    """Shen et al. (2024), order: if ICL were GD-type finetuning it would be about as order
    sensitive as the GD variant closest to it. Ratio r = ICL / method at the last epoch for the
    order-dependent variants (SGD, Adam; full-batch GD is invariant by construction and is the
    control); bounds r_lo = (ICL − 2 SE)/(method + 2 SE), r_hi = (ICL + 2 SE)/(method − 2 SE).
    For the variant with the smallest r: contradicts when r_lo > 2 or r_hi < 1/2; supports when
    1/2 ≤ r_lo and r_hi ≤ 2; inconclusive otherwise."""
    out = {}
    for label, h in _lm_parts(res.get("order")).items():
        methods = [m for m in ("sgd", "adam") if m in h] or [m for m in h if f"ratio_{m}" in h]
        if not methods:
            continue
        m = min(methods, key=lambda k: h[f"ratio_{k}"])
        i, si, g, sg = h["icl"], h["icl_se"] or 0.0, h[m], h[f"{m}_se"] or 0.0
        lo = (i - Z * si) / (g + Z * sg) if g + Z * sg > 0 else math.inf
        hi = (i + Z * si) / (g - Z * sg) if g - Z * sg > 0 else math.inf
        verdict = (CONTRADICTS if lo > ORDER_FACTOR or hi < 1 / ORDER_FACTOR else
                   SUPPORTS if lo >= 1 / ORDER_FACTOR and hi <= ORDER_FACTOR else INCONCLUSIVE)
        ctrl = f"{m} {_pm(g, sg)}" + (f"; full-batch gd {_pm(h['gd'])}" if "gd" in h else "")
        out[label] = Cell(verdict, f"ICL {_pm(i, si)}, ratio ICL/{m} "
                          f"{_pm(h[f'ratio_{m}'], h[f'ratio_{m}_se'])}", ctrl, _src("order"))
    return out


def rule_density(res: dict[str, dict[str, Any]]) -> dict[str, Cell]:
    """Shen et al. (2024), density: the constructions need near-zero weights almost everywhere
    at LLM width (the least sparse of von Oswald's, Akyürek's and Ahn's key/query matrices at
    residual width 4096). For a model, the fraction of raw attention/MLP entries with |w| < τ
    (τ = 1e-3, or for weights on a quantisation grid the first threshold at or above half its
    step, the largest one when none is): supports when it
    reaches the constructions' zero fraction; contradicts when it is more than 0.01 below;
    inconclusive in between. Controls: the untrained copy (and, for the ICL-objective
    linear-attention model, the same rule)."""
    cons = (res.get("constructions") or {}).get("headline", {})
    need = [cons[n]["zero_fraction_4096_qk"] for n in SPARSE_CONSTRUCTIONS
            if n in cons and cons[n].get("zero_fraction_4096_qk") is not None]
    dens = (res.get("density") or {}).get("headline", {})
    if not need or not dens:
        return {}
    required = min(need)
    out = {}
    for label, h in dens.items():
        kind = h.get("kind")
        if kind not in ("ginc", "lm", "lsa"):
            continue
        tau = h.get("verdict_threshold", "1e-03")
        frac = h["fraction_below"][tau]
        verdict = SUPPORTS if frac >= required else CONTRADICTS if frac < required - 0.01 \
            else INCONCLUSIVE
        ctrl = f"constructions need {required:.5f}"
        if "fraction_below_untrained" in h:
            ctrl += f"; untrained copy {h['fraction_below_untrained'][tau]:.3f}"
        if (h.get("grid") or {}).get("on_grid"):
            half = h["grid"]["median_step"] / 2
            ctrl += (f"; weights on a quantisation grid, half step {half:.1e}"
                     + (" (τ below it: counts grid points)" if float(tau) < half else ""))
        cell = Cell(verdict, f"fraction |w| < {tau}: {frac:.3f}", ctrl, _src("density"))
        if kind == "lsa":
            out.setdefault("toy", cell)
        else:
            out[label] = cell
    return out


def rule_evolution(res: dict[str, dict[str, Any]]) -> dict[str, Cell]:
    """Shen et al. (2024), weight evolution: if one (sparse) weight setting implemented ICL, ICL
    ability would change when the weights move. Late window: the checkpoints from a quarter of
    the final step on; gain there (first vs last, ± SE) against the relative weight distance
    between them. Contradicts when ICL has emerged (final gain > 2 SE), the gain stays within
    2 SE and the weights moved ≥ 10 %; supports when the gain changes by more than 2 SE while
    they move; inconclusive when ICL did not emerge or the weights barely moved."""
    rec = res.get("weight_evolution") or {}
    out = {}
    for label, h in rec.get("headline", {}).items():
        if "late_gain" not in h:
            continue
        z = _z(h["final_gain"], h["final_gain_se"], h["late_gain"], h["late_gain_se"])
        moved = (h["late_drift"] or 0.0) >= DRIFT_MOVING
        verdict = (INCONCLUSIVE if not h["icl_emerged"] or not moved else
                   CONTRADICTS if abs(z) <= Z else SUPPORTS)
        out[label] = Cell(verdict, f"gain step {h['late_step']} → {h['final_step']}: "
                          f"{_pm(h['late_gain'], h['late_gain_se'])} → "
                          f"{_pm(h['final_gain'], h['final_gain_se'])}",
                          f"weights moved {_pm(h['late_drift'])} (relative)",
                          _src("weight_evolution"))
    return out


def rule_outputs(res: dict[str, dict[str, Any]]) -> dict[str, Cell]:
    """Shen et al. (2024), outputs: ICL and GD-finetuned models give the same next-token
    distributions. Top-10 token overlap of ICL with the closest method at the largest N
    against the noise floor (ICL vs ICL with its demonstrations reordered): contradicts when the
    floor exceeds the overlap by 2 SE; supports when it does not and that SE is ≤ 0.05;
    inconclusive otherwise."""
    out = {}
    for label, h in _lm_parts(res.get("outputs")).items():
        m = h["best_method"]
        to, s = h[f"token_overlap_{m}"], h[f"token_overlap_{m}_se"]
        fl, sf = h["token_overlap_floor"], h["token_overlap_floor_se"]
        z = _z(fl, sf, to, s)
        se = math.sqrt((s or 0) ** 2 + (sf or 0) ** 2)
        verdict = CONTRADICTS if z > Z else SUPPORTS if se <= OVERLAP_SE_MAX else INCONCLUSIVE
        out[label] = Cell(verdict, f"token overlap ICL vs {m} (N = {h['n_demos']}) "
                          f"{_pm(to, s)}", f"floor (reordered ICL) {_pm(fl, sf)}",
                          _src("outputs"))
    return out


CLAIMS = (
    Claim("emergence", "ICL emerges from next-token pretraining (the setting in question)",
          "accuracy gain with demonstrations", rule_emerges, "emergent_icl"),
    Claim("dual_form", "Dai et al.: ICL is implicit finetuning (dual form)",
          "SimAOU vs untrained control and random", rule_dual_form, "dual_form"),
    Claim("constructions", "von Oswald et al.: constructed attention runs GD / GD++",
          "error vs the algorithm, float64", rule_constructions, "constructions"),
    Claim("trained", "von Oswald et al.: trained attention = constructed",
          "sensitivity cosine", rule_trained, "trained_vs_constructed"),
    Claim("akyurek", "Akyürek et al.: RAW operators run an SGD step",
          "error vs one SGD step", rule_akyurek, "constructions"),
    Claim("order", "Shen et al., order: ICL is as order-sensitive as GD",
          "ICL / SGD-Adam order sensitivity", rule_order, "order"),
    Claim("density", "Shen et al., density: real weights are as sparse as the constructions",
          "fraction of |w| < τ vs construction at width 4096", rule_density, "density"),
    Claim("evolution", "Shen et al., evolution: ICL is tied to one weight setting",
          "late-training ICL gain vs weight drift", rule_evolution, "weight_evolution"),
    Claim("outputs", "Shen et al., outputs: ICL and GD give the same outputs",
          "top-10 token overlap vs reordering floor", rule_outputs, "outputs"),
)


def read_results(root: str | Path) -> dict[str, dict[str, Any]]:
    """`{section: result.json record}` of every section folder under `root`."""
    out = {}
    for path in sorted(Path(root).glob("*/result.json")):
        out[path.parent.name] = json.loads(path.read_text(encoding="utf-8"))
    return out


def verdicts(root: str | Path) -> list[dict[str, Any]]:
    """The verdict table from the results under `root`: one record per claim with its cells
    `{column: Cell as dict}` (a rule that fails on odd data gives no cell, not a crash)."""
    res = read_results(root)
    table = []
    for c in CLAIMS:
        try:
            cells = c.rule(res)
        except (KeyError, TypeError, ValueError, ZeroDivisionError) as err:
            cells = {"error": Cell(INCONCLUSIVE, f"rule could not be applied: {err!r}", "", "")}
        rec = res.get(c.section) or {}
        for label, status in rec.get("status", {}).items():
            kind = rec.get("provenance", {}).get(label, {}).get("kind")
            if status != "ok" and kind in ("ginc", "lm") and label not in cells:
                word = "failed" if status.startswith("failed") else "not available"
                cells[label] = Cell(word, status.split(": ", 1)[-1][:120], "", _src(c.section))
        table.append({"key": c.key, "claim": c.claim, "test": c.test,
                      "rule": " ".join((c.rule.__doc__ or "").split()),
                      "cells": {k: asdict(v) for k, v in cells.items()}})
    return table

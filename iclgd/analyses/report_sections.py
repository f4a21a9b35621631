"""What each report section says: `SECTION_TEXT[name](record)` returns `{"what", "numbers",
"lead", "note"}` — what was measured and on which models (from the record's settings), its
key numbers with standard errors (from the headline), the lead figure and a caveat — and
`HEADLINE[name](headline)` the one number `summary.json` carries per model. Only numbers read
from the record appear; published reference values are cited with their paper.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any


def fmt(v: Any, spec: str = ".3g") -> str:
    """A number for prose ("n/a" for missing / NaN)."""
    if v is None or (isinstance(v, float) and v != v):
        return "n/a"
    if isinstance(v, bool | str):
        return str(v)
    return f"{v:{spec}}"


def pm(v: Any, se: Any = None, spec: str = ".3g") -> str:
    """`value ± se`."""
    if se is None or (isinstance(se, float) and se != se):
        return fmt(v, spec)
    return f"{fmt(v, spec)} ± {fmt(se, '.2g')}"


def pct(v: Any, se: Any = None) -> str:
    """A fraction as percent with its SE."""
    if v is None:
        return "n/a"
    return f"{100 * v:.1f} %" + (f" ± {100 * se:.1f}" if se is not None and se == se else "")


def _models(rec: dict[str, Any]) -> str:
    return ", ".join(f"`{k}`" for k in rec["status"]) or "none"


def constructions(rec: dict[str, Any]) -> dict[str, Any]:
    s, heads = rec["settings"], rec["headline"]
    nums = []
    for name, h in heads.items():
        nums.append(f"`{name}` vs {h['reference']}: max error {fmt(h['max_abs_error'])} "
                    f"({'exact' if h['exact'] else 'approximate'}); non-zero entries "
                    f"{pct(h['nonzero_fraction'])} at its own width, "
                    f"{fmt(h['nonzero_fraction_4096'])} at width 4096 ({h['width_reading']}); "
                    f"error > 1e-2 from noise ε = {fmt(h['smallest_breaking_eps'])}")
    return {"what": f"Each construction run on {s['tasks']} random regression tasks (d = n = 10, "
                    "x ~ U(−0.5, 0.5), w ~ N(0, I)) in float64 against the algorithm it "
                    "claims; density of its matrices in the paper's column form; the same "
                    "matrices at residual width 4096 (“scaled”: rebuilt at that width with a "
                    "dense W_0, Shen et al.'s reading; “embedded”: placed in a 4096-wide "
                    "stream); and the error when every matrix gets dense Gaussian noise of "
                    "relative size ε.",
            "numbers": nums, "lead": "constructions_noise.png",
            "note": "An exact construction matches its algorithm to float64 rounding by "
                    "design: these numbers test the implementations, and the noise curve shows "
                    "how little dense perturbation the equivalence survives."}


def trained(rec: dict[str, Any]) -> dict[str, Any]:
    nums = []
    for label, h in sorted(rec["headline"].items()):
        line = (f"`{label}` ({h['layers']} layer(s), {h['steps']} steps at batch {h['batch']}): "
                f"loss {fmt(h['tf_loss'], '.4f')} vs {h['layers']}-step GD "
                f"{fmt(h['gd_loss'], '.4f')} (zero predictor {fmt(h['zero_loss'], '.4f')}); "
                f"sensitivity cosine with GD {pm(h['cos_gd'], h['cos_gd_se'], '.4f')}")
        if "cos_gdpp" in h:
            line += (f", with GD++ {pm(h['cos_gdpp'], h['cos_gdpp_se'], '.4f')} "
                     f"(GD++ loss {fmt(h['gdpp_loss'], '.4f')})")
        nums.append(line)
    return {"what": "Linear self-attention trained on the ICL objective with von Oswald et al. "
                    "(2023)'s settings (fresh tasks each step, d = n = 10, half MSE, Adam 1e-3, "
                    "clipping, init 0.002/L), shortened for a CPU, then compared on "
                    f"{rec['settings']['eval_tasks']} held-out tasks with GD at its tuned rate "
                    "and with GD++ (η, γ per layer learned). Heatmaps: the merged matrices "
                    "W_K^T W_Q and P W_V of layer 0, trained (rescaled so the x-block of "
                    "W_K^T W_Q has unit mean diagonal, which leaves the layer's function "
                    "unchanged) against the construction.",
            "numbers": nums, "lead": "heatmaps_lsa-1.png",
            "note": "von Oswald et al. (2023) report a cosine of 0.9993 for one layer after "
                    "5000 steps and, for 3 shared layers after 15k steps, 0.995 with GD++ "
                    "against 0.964 with GD; the runs here are shorter (steps above)."}


def density(rec: dict[str, Any]) -> dict[str, Any]:
    nums = []
    for label, h in rec["headline"].items():
        if h.get("kind") in ("ginc", "lm"):
            tau = h["verdict_threshold"]
            line = (f"`{label}`: {pct(h['fraction_below'][tau])} of raw attention/MLP entries "
                    f"below {tau} (untrained copy {pct(h['fraction_below_untrained'][tau])})"
                    + (f"; below 1e-02: {pct(h['fraction_below']['1e-02'])}" if tau != "1e-02"
                       else ""))
            grid = h.get("grid") or {}
            if grid.get("on_grid"):
                line += (f"; the weights lie on a per-block quantisation grid (median step "
                         f"{fmt(grid['median_step'])}, mean residual "
                         f"{fmt(grid['mean_residual'])}): thresholds below half a step "
                         f"({fmt(grid['median_step'] / 2)}) count grid points near zero, a fact "
                         "about the weights as run, not about the model before quantisation")
            nums.append(line)
        elif h.get("kind") == "lsa":
            nums.append(f"`{label}` (trained on the ICL objective): "
                        f"{pct(h['fraction_below']['1e-03'])} below 1e-03")
        elif "fraction_below_4096" in h:
            nums.append(f"`{label}` at width 4096: {pct(h['fraction_below_4096']['1e-03'])} "
                        "of entries are exactly zero")
    return {"what": "Fraction of entries with |w| < τ (τ = 1e-2 … 1e-6, raw weights: no "
                    f"folding or centering) on {_models(rec)}, each language model next to an "
                    "untrained copy (attention and MLP weights re-initialised N(0, 0.02²), "
                    "embeddings and norms kept).",
            "numbers": nums, "lead": "density.png",
            "note": "Shen et al. (2024) report below ~60 % for LLaMA-7B / GPT-J and ≥ 99.99 % "
                    "for the constructions' key/query matrices at LLM width."}


def emergent(rec: dict[str, Any]) -> dict[str, Any]:
    nums, lead = [], None
    for label, h in rec["headline"].items():
        if "in_gain" in h:
            lead = lead or f"emergent_{label}.png"
            nums.append(f"`{label}` (GINC, k = {h['k']}, {h['prompts']} prompts per n): "
                        f"in-distribution {pct(h['in_acc_n0'], h['in_acc_n0_se'])} at n = 0 → "
                        f"{pct(h['in_acc_nmax'], h['in_acc_nmax_se'])} at n = {h['n_max']} "
                        f"(gain {pct(h['in_gain'], h['in_gain_se'])}; pretraining-view Bayes "
                        f"gain {pct(h['in_pretrained_bayes_gain'])}, ideal learner "
                        f"{pct(h['in_ideal_gain'])}); held-out concepts gain "
                        f"{pct(h['out_gain'], h['out_gain_se'])}")
        else:
            lead = lead or f"emergent_{label}.png"
            by = ", ".join(f"{t} {pct(g)}" for t, g in h["gain_by_task"].items())
            nums.append(f"`{label}`: mean gain 0 → {h['n_max']} demonstrations "
                        f"{pct(h['gain'], h['gain_se'])} ({by})"
                        + (f"; not installed: {', '.join(h['unavailable_tasks'])}"
                           if h.get("unavailable_tasks") else ""))
    return {"what": "Top-1 accuracy against the number of demonstrations. GINC: the label is "
                    "the Bayes-optimal next token under the prompt's concept; references are "
                    "the ideal learner (knows the concepts and that examples are independent) "
                    "and the pretraining-view Bayes predictor (reads the prompt as one "
                    "document, what a perfectly fitted pretrained LM reaches; Xie et al. "
                    "2022). Text LMs: the gold answer's first token.",
            "numbers": nums, "lead": lead}


def order(rec: dict[str, Any]) -> dict[str, Any]:
    nums = []
    for label, h in rec["headline"].items():
        ms = [m for m in ("gd", "sgd", "adam") if m in h]
        nums.append(f"`{label}` ({h['task']}, N = {h['n_demos']}, {h['perms']} orderings, "
                    f"after {h['epochs']} epochs): ICL {pm(h['icl'], h['icl_se'])}; "
                    + ", ".join(f"{m} {pm(h[m], h[m + '_se'])} (ICL/{m} "
                                f"{pm(h['ratio_' + m], h['ratio_' + m + '_se'])})" for m in ms))
    return {"what": "For P orderings of the same N demonstrations: per vocabulary entry the "
                    "std over orderings of the next-token probability, summed over the "
                    "vocabulary, mean ± SE over queries (Shen et al. 2024). ICL reorders the "
                    "prompt; each finetuning method trains on the demonstrations in that order "
                    "(full-batch GD averages them, so it is order invariant by construction).",
            "numbers": nums, "lead": "order.png",
            "note": "Shen et al. (2024) report ICL 3–5× more order sensitive than GD/SGD/Adam "
                    "on LLaMA-7B (AGNews, N = 8)."}


def outputs(rec: dict[str, Any]) -> dict[str, Any]:
    nums, lead = [], None
    for label, h in rec["headline"].items():
        lead = lead or f"outputs_{label}.png"
        m = h["best_method"]
        nums.append(f"`{label}` ({h['task']}, N = {h['n_demos']}): accuracy ZS "
                    f"{pct(h['accuracy_zs'], h['accuracy_zs_se'])}, ICL "
                    f"{pct(h['accuracy_icl'], h['accuracy_icl_se'])}, FT {m} "
                    f"{pct(h['accuracy_ft_' + m], h['accuracy_ft_' + m + '_se'])}; top-10 token "
                    f"overlap ICL vs {m} {pm(h['token_overlap_' + m], h['token_overlap_' + m + '_se'])} "
                    f"against the reordering floor {pm(h['token_overlap_floor'], h['token_overlap_floor_se'])}; "
                    f"overlap cosine {pm(h['overlap_cosine_' + m], h['overlap_cosine_' + m + '_se'])} "
                    f"(floor {pm(h['overlap_cosine_floor'], h['overlap_cosine_floor_se'])})")
    return {"what": "ICL against each finetuning method (one epoch on the demonstrations, then "
                    "zero-shot) by number of demonstrations: top-1 accuracy over the full "
                    "vocabulary, top-10 token overlap and overlap cosine (Shen et al. 2024), "
                    "next to the noise floor: ICL against ICL with its demonstrations in another "
                    "order. Mean ± SE over queries; figures show every N.",
            "numbers": nums, "lead": lead}


def _dual_line(label: str, h: dict[str, Any], m: str) -> str:
    def g(key: str, copy: str = "trained") -> str:
        return pm(h.get(f"{key}_{m}_{copy}"), h.get(f"{key}_{m}_{copy}_se"))

    return (f"`{label}`, {m} (N = {h['n_demos']}): SimAOU normalised {g('simaou_norm')} "
            f"(untrained {g('simaou_norm', 'untrained')}, random {g('simaou_random_norm')}); "
            f"raw {g('simaou_raw')} (untrained {g('simaou_raw', 'untrained')}, random "
            f"{g('simaou_random_raw')}); SimAM before → after "
            f"{fmt(h.get('simam_before_trained'))} → {g('simam_after')}; SimAM_Δ "
            f"{g('simam_delta')}; Kendall τ {g('kendall_tau')} (untrained "
            f"{g('kendall_tau', 'untrained')}); Rec2FTP {g('rec2ftp')}; cos(ΔW_ICL, ΔW_FT) "
            f"{g('dw_cosine')} (untrained {g('dw_cosine', 'untrained')}), ‖ΔW_ICL‖/‖ΔW_FT‖ "
            f"{g('dw_norm_ratio')} (untrained {g('dw_norm_ratio', 'untrained')})")


def dual_form(rec: dict[str, Any]) -> dict[str, Any]:
    nums, lead = [], None
    for label, h in rec["headline"].items():
        lead = lead or f"dual_form_{label}.png"
        nums += [_dual_line(label, h, m) for m in h["methods"]]
    return {"what": "Dai et al. (2023)'s layer-wise comparison of ICL with finetuning (kv: only "
                    "k/v projections, SGD, one demonstration per step; gd: whole model; "
                    "layer-causal: Deutch et al. 2024), each on the model and on its untrained "
                    "control, averaged over layers (per-layer curves in the figure). SimAOU "
                    "normalised is Dai's (unit vectors before subtracting), raw is Deutch's; "
                    "the random baseline replaces the update by U[0,1)^d (Dai). SE over queries.",
            "numbers": nums, "lead": lead,
            "note": "Scale of ‖ΔW_ICL‖/‖ΔW_FT‖: ΔW_ICL sums value ⊗ key outer products over every "
                    "demonstration token with no learning rate, while ΔW_FT is the change of the "
                    "attention weights after learning-rate-scaled steps, so the ratio grows with "
                    "the number of demonstration tokens and shrinks with the learning rate; it "
                    "has no natural value of 1. Read the cosine, and the ratio only against the "
                    "untrained control's."}


def evolution(rec: dict[str, Any]) -> dict[str, Any]:
    nums, lead = [], None
    for label, h in rec["headline"].items():
        lead = lead or f"evolution_{label}.png"
        formed = (f"induction heads formed at step {h['induction_formed_step']}"
                  if h["induction_formed_step"] is not None else
                  f"no induction head (best prefix-matching score {fmt(h['induction_prefix_max'])}"
                  f" < {h['induction_threshold']})")
        nums.append(f"`{label}` ({h['checkpoints']} checkpoints): ICL gain at step "
                    f"{h['late_step']} {pct(h['late_gain'], h['late_gain_se'])} → step "
                    f"{h['final_step']} {pct(h['final_gain'], h['final_gain_se'])} while the "
                    f"weights moved {fmt(h['late_drift'])} (relative distance); ICL score "
                    f"{pm(h['icl_score_final'], h['icl_score_final_se'])} nats; {formed}"
                    + (f". Sweep: {h['sweep_verdict']}" if h.get("sweep_verdict") else ""))
    return {"what": "Every training checkpoint of the series: ICL gain (accuracy at the largest "
                    "n minus n = 0, GINC in-distribution, k = 3), Olsson et al. (2022)'s ICL "
                    "score (late minus early token loss), induction-head scores (prefix "
                    "matching, copying) and the relative weight distance to the previous and to "
                    "the last checkpoint. A released LM ships one checkpoint, so only the "
                    "trained-from-scratch series is swept.",
            "numbers": nums, "lead": lead}


SECTION_TEXT: dict[str, Callable[[dict[str, Any]], dict[str, Any]]] = {
    "constructions": constructions, "trained_vs_constructed": trained, "density": density,
    "emergent_icl": emergent, "order": order, "outputs": outputs, "dual_form": dual_form,
    "weight_evolution": evolution,
}


def _order_headline(h: dict[str, Any]) -> tuple[str, Any, Any] | None:
    ms = [m for m in ("sgd", "adam") if f"ratio_{m}" in h]
    if not ms:
        return None
    m = min(ms, key=lambda k: h[f"ratio_{k}"])
    return f"ICL/{m} order sensitivity", h[f"ratio_{m}"], h[f"ratio_{m}_se"]


def _density_headline(h: dict[str, Any]) -> tuple[str, Any, Any] | None:
    if h.get("kind") in ("ginc", "lm", "lsa"):
        tau = h.get("verdict_threshold", "1e-03")
        return f"fraction |w| < {tau}", h["fraction_below"][tau], None
    if "fraction_below_4096" in h:
        return "zero fraction at width 4096", h["fraction_below_4096"]["1e-03"], None
    return None


def _dual_headline(h: dict[str, Any]) -> tuple[str, Any, Any]:
    m = "kv" if "kv" in h["methods"] else h["methods"][0]
    return f"SimAOU raw ({m})", h[f"simaou_raw_{m}_trained"], h[f"simaou_raw_{m}_trained_se"]


HEADLINE: dict[str, Callable[[dict[str, Any]], tuple[str, Any, Any] | None]] = {
    "constructions": lambda h: ("max error vs algorithm", h["max_abs_error"], None),
    "trained_vs_constructed": lambda h: (
        ("cos vs GD++", h["cos_gdpp"], h["cos_gdpp_se"]) if "cos_gdpp" in h
        else ("cos vs GD", h["cos_gd"], h["cos_gd_se"])),
    "density": _density_headline,
    "emergent_icl": lambda h: ("accuracy gain", h["gain"], h["gain_se"]),
    "order": _order_headline,
    "outputs": lambda h: (f"token overlap ICL vs {h['best_method']}",
                          h[f"token_overlap_{h['best_method']}"],
                          h[f"token_overlap_{h['best_method']}_se"]),
    "dual_form": _dual_headline,
    "weight_evolution": lambda h: ("final ICL gain", h["final_gain"], h["final_gain_se"]),
}

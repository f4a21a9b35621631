"""The demo's ICL-against-finetuning sections: order, outputs, dual form (layer by layer).

- `order` (Shen et al. 2024) — order sensitivity of ICL (prompt reordered) against GD, SGD and
  Adam finetuned on the demonstrations in each order, across epochs
  (`iclgd.analyses.order.order_experiment`), with ICL/method ratios and their standard errors.
- `outputs` (Shen et al. 2024) — accuracy, top-K token overlap and overlap cosine of ICL against
  each GD variant by number of demonstrations, with the ICL-vs-reordered-ICL noise floor
  (`iclgd.analyses.compare.compare_model`); standard errors over queries.
- `dual_form` (Dai et al. 2023; Deutch et al. 2024) — SimAOU (normalised and raw), SimAM,
  SimAM_Δ, Rec2FTP, Kendall τ and ΔW_ICL against ΔW_FT per layer, each next to Dai's random
  baseline and to the untrained control (`iclgd.analyses.control`).

A GINC model (kind "ginc") is prompted with its own world's prompts (each query its own
concept and demonstrations); a text LM with the first installed task of `lm_tasks`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch

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
from iclgd.analyses.sections_lm import DEFAULT_LM_TASKS, available_tasks


def prompt_sets(model: Any, ref: ModelRef, demos: list[int], queries: int,
                lm_tasks: tuple[str, ...], seed: int) -> tuple[dict[int, Any], dict[str, Any]]:
    """`{N: PromptSet}` and the task description for `ref` (GINC world or a text task)."""
    from iclgd.analyses.prompt_sets import load_prompt_sets

    return load_prompt_sets(model, lm_task(ref, lm_tasks), demos, n_queries=queries, seed=seed)


def lm_task(ref: ModelRef, lm_tasks: tuple[str, ...]) -> str:
    """The task a part prompts with: "ginc" for a GINC model, else the first installed task."""
    if ref.kind == "ginc":
        return "ginc"
    tasks, _ = available_tasks(tuple(lm_tasks))
    if not tasks:
        raise NotAvailable(f"none of the tasks {', '.join(lm_tasks)} is installed")
    return tasks[0]


def learning_rates_for(model: Any, ref: ModelRef, settings: Any, methods: list[str],
                       n_tune: int) -> tuple[dict[str, float], dict[str, Any]]:
    """Each method's learning rate: `settings.lr` = "auto" (chosen on held-out demonstrations,
    `iclgd.analyses.lr_search`, one epoch, `settings.tune_queries` held-out queries),
    "default" (the untuned `DEFAULT_LR`) or explicit `(method, rate)` pairs."""
    from iclgd.analyses.compare import learning_rates

    if settings.lr == "default":
        return learning_rates(None, methods), {"lr": "default"}
    if settings.lr != "auto":
        given = dict(settings.lr)
        return learning_rates({m: given[m] for m in methods if m in given}, methods), {
            "lr": "given"}
    from iclgd.analyses.lr_search import search_learning_rates
    from iclgd.analyses.prompt_sets import tuning_prompt_set

    held = tuning_prompt_set(model, lm_task(ref, settings.lm_tasks), n_tune,
                             n_heldout=settings.tune_queries, seed=settings.seed)
    chosen, rows = search_learning_rates(model, held, methods, seed=settings.seed)
    return chosen, {"lr": "auto", "lr_search": rows}


def _mean_se(x: torch.Tensor) -> tuple[float, float]:
    x = x.double().reshape(-1)
    x = x[torch.isfinite(x)]
    if x.numel() == 0:
        return float("nan"), float("nan")
    se = float(x.std() / math.sqrt(x.numel())) if x.numel() > 1 else float("nan")
    return float(x.mean()), se


def ratio_se(a: float, sa: float, b: float, sb: float) -> tuple[float, float]:
    """`a / b` with its delta-method standard error `|a/b| sqrt((sa/a)² + (sb/b)²)`."""
    if b == 0 or not math.isfinite(a) or not math.isfinite(b):
        return float("nan"), float("nan")
    r = a / b
    rel = sum((s / v) ** 2 for s, v in ((sa, a), (sb, b)) if v and math.isfinite(s))
    return r, abs(r) * math.sqrt(rel)


# ----------------------------------------------------------------------------- order
@dataclass(frozen=True)
class OrderSettings:
    """N demonstrations in `perms` orderings, `queries` queries, finetuned for up to `epochs`
    epochs by each of `methods`; a GINC model and a text LM may use different sizes."""

    ginc_demos: int = 8
    ginc_queries: int = 16
    lm_demos: int = 4
    lm_queries: int = 4
    perms: int = 6
    lm_perms: int = 3
    epochs: int = 8
    lm_epochs: int = 2
    methods: tuple[str, ...] = ("gd", "sgd", "adam")
    lm_tasks: tuple[str, ...] = DEFAULT_LM_TASKS
    lr: Any = "auto"
    tune_queries: int = 8
    seed: int = 0

    @classmethod
    def quick(cls) -> OrderSettings:
        return cls(ginc_demos=4, ginc_queries=2, lm_demos=2, lm_queries=2, perms=3, lm_perms=2,
                   epochs=2, lm_epochs=1, lr="default")


def measure_order(ref: ModelRef, settings: OrderSettings, ctx: RunContext) -> Part:
    """ICL and each method's order sensitivity; ratios ICL/method at the last epoch."""
    from iclgd.analyses.order import order_experiment

    model = load_lm(ref, ctx.device, ctx.dtype)
    ginc = ref.kind == "ginc"
    n = settings.ginc_demos if ginc else settings.lm_demos
    sets, info = prompt_sets(model, ref, [n], settings.ginc_queries if ginc else
                             settings.lm_queries, settings.lm_tasks, settings.seed)
    methods = list(settings.methods)
    epochs = settings.epochs if ginc else settings.lm_epochs
    lr, lr_info = learning_rates_for(model, ref, settings, methods, n)
    rows = order_experiment(model, sets[n], methods, n_perms=settings.perms if ginc else
                            settings.lm_perms, epochs=epochs, lr=lr, seed=settings.seed)
    icl = next(r for r in rows if r["setting"] == "icl")
    headline: dict[str, Any] = {"task": info["task"], "n_demos": n, "epochs": epochs,
                                "perms": icl["n_perms"], "lr": lr,
                                "icl": icl["order_sensitivity"], "icl_se": icl["se"]}
    for m in methods:
        last = max((r for r in rows if r["method"] == m), key=lambda r: r["epoch"])
        r, se = ratio_se(icl["order_sensitivity"], icl["se"], last["order_sensitivity"],
                         last["se"])
        headline.update({m: last["order_sensitivity"], f"{m}_se": last["se"],
                         f"ratio_{m}": r, f"ratio_{m}_se": se})
    return Part(ref.label, ref.spec, rows=[{k: v for k, v in r.items() if k != "model"}
                                           for r in rows], headline=headline,
                extra=lr_info,
                provenance=lm_provenance(model, task=info))


# ----------------------------------------------------------------------------- outputs
@dataclass(frozen=True)
class OutputSettings:
    """Demonstration counts, queries and methods of the output comparison (1 epoch, K = 10)."""

    ginc_demos: tuple[int, ...] = (1, 2, 4, 8)
    ginc_queries: int = 16
    lm_demos: tuple[int, ...] = (1, 4)
    lm_queries: int = 8
    methods: tuple[str, ...] = ("gd", "sgd", "adam")
    lm_tasks: tuple[str, ...] = DEFAULT_LM_TASKS
    top_k: int = 10
    lr: Any = "auto"
    tune_queries: int = 8
    seed: int = 0

    @classmethod
    def quick(cls) -> OutputSettings:
        return cls(ginc_demos=(1, 2), ginc_queries=3, lm_demos=(1,), lm_queries=2,
                   methods=("gd", "sgd"), lr="default")


def _per_query(store: dict[tuple[int, str], dict[str, torch.Tensor]], top_k: int):
    from iclgd.probes import metrics

    def collect(n: int, method: str, runs: dict[str, Any]) -> None:
        icl, ft, re = runs["icl"], runs["ft"], runs["icl_reordered"]
        k = min(top_k, icl.logits.shape[-1])
        store[(n, method)] = {
            "accuracy_icl": icl.correct.double(), "accuracy_ft": ft.correct.double(),
            "accuracy_zs": runs["zs"].correct.double(),
            "token_overlap": metrics.token_overlap(icl.probs, ft.probs, k),
            "overlap_cosine": metrics.overlap_cosine(icl.probs, ft.probs, k),
            "token_overlap_floor": metrics.token_overlap(icl.probs, re.probs, k),
            "overlap_cosine_floor": metrics.overlap_cosine(icl.probs, re.probs, k),
        }
    return collect


def measure_outputs(ref: ModelRef, settings: OutputSettings, ctx: RunContext) -> Part:
    """Whole-model output metrics per N and method, with standard errors over queries."""
    from iclgd.analyses.compare import compare_model

    model = load_lm(ref, ctx.device, ctx.dtype)
    ginc = ref.kind == "ginc"
    demos = list(settings.ginc_demos if ginc else settings.lm_demos)
    sets, info = prompt_sets(model, ref, demos, settings.ginc_queries if ginc else
                             settings.lm_queries, settings.lm_tasks, settings.seed)
    methods = list(settings.methods)
    lr, lr_info = learning_rates_for(model, ref, settings, methods, max(demos))
    store: dict[tuple[int, str], dict[str, torch.Tensor]] = {}
    compare_model(model, sets, methods, lr=lr, seed=settings.seed,
                  top_k=settings.top_k, delta_w=False, on_runs=_per_query(store, settings.top_k))
    rows = []
    for (n, method), values in sorted(store.items()):
        for metric, v in values.items():
            mean, se = _mean_se(v)
            rows.append({"n_demos": n, "method": method, "metric": metric, "value": mean,
                         "se": se, "queries": int(v.numel())})
    n_max = max(sets)
    at = {(r["method"], r["metric"]): r for r in rows if r["n_demos"] == n_max}
    best = max(methods, key=lambda m: at[(m, "token_overlap")]["value"])
    headline: dict[str, Any] = {"task": info["task"], "n_demos": n_max, "best_method": best,
                                "lr": lr, "queries": at[(best, "accuracy_icl")]["queries"]}
    for key in ("accuracy_zs", "accuracy_icl", "token_overlap_floor", "overlap_cosine_floor"):
        headline[key], headline[f"{key}_se"] = at[(best, key)]["value"], at[(best, key)]["se"]
    for m in methods:
        for key in ("accuracy_ft", "token_overlap", "overlap_cosine"):
            headline[f"{key}_{m}"] = at[(m, key)]["value"]
            headline[f"{key}_{m}_se"] = at[(m, key)]["se"]
    return Part(ref.label, ref.spec, rows=rows, headline=headline, extra=lr_info,
                provenance=lm_provenance(model, task=info))


# ----------------------------------------------------------------------------- dual form
@dataclass(frozen=True)
class DualFormSettings:
    """One demonstration count per model kind, `queries`, the methods (Dai: `kv`, Deutch:
    `layer-causal`, and whole-model `gd`), each on the model and its untrained control."""

    ginc_demos: int = 8
    ginc_queries: int = 16
    lm_demos: int = 4
    lm_queries: int = 8
    methods: tuple[str, ...] = ("kv", "gd", "layer-causal")
    lm_methods: tuple[str, ...] = ("kv", "gd")
    lm_tasks: tuple[str, ...] = DEFAULT_LM_TASKS
    lr: Any = "auto"
    tune_queries: int = 8
    seed: int = 0

    @classmethod
    def quick(cls) -> DualFormSettings:
        return cls(ginc_demos=2, ginc_queries=3, lm_demos=1, lm_queries=2, methods=("kv",),
                   lm_methods=("kv",), lr="default")


LAYER_METRICS = ("simaou_norm", "simaou_raw", "simam_after", "simam_delta", "kendall_tau",
                 "dw_cosine", "dw_norm_ratio")


def _simaou_store(store: dict[tuple[str, str], dict[str, torch.Tensor]], label: str, seed: int):
    from iclgd.probes import metrics

    gen = torch.Generator().manual_seed(seed + 17)

    def collect(n: int, method: str, runs: dict[str, Any]) -> None:
        icl, zs, ft = runs["icl"], runs["zs"], runs["ft"]
        got = {}
        for name, norm in (("norm", True), ("raw", False)):
            got[f"simaou_{name}"] = metrics.simaou(icl.attn_out, zs.attn_out, ft.attn_out,
                                                   normalize=norm).double().mean(-1)
            got[f"simaou_random_{name}"] = metrics.random_baseline_simaou(
                icl.attn_out, zs.attn_out, gen, normalize=norm).double().mean(-1)
        store[(label, method)] = got
    return collect


def measure_dual_form(ref: ModelRef, settings: DualFormSettings, ctx: RunContext) -> Part:
    """Per-layer similarities on the model and on its untrained control; per-query SimAOU
    (mean over layers) gives the headline standard errors."""
    from iclgd.analyses.compare import compare_model
    from iclgd.analyses.control import untrained_control

    model = load_lm(ref, ctx.device, ctx.dtype)
    ginc = ref.kind == "ginc"
    n = settings.ginc_demos if ginc else settings.lm_demos
    sets, info = prompt_sets(model, ref, [n], settings.ginc_queries if ginc else
                             settings.lm_queries, settings.lm_tasks, settings.seed)
    methods = list(settings.methods if ginc else settings.lm_methods)
    lr, lr_info = learning_rates_for(model, ref, settings, methods, n)
    store: dict[tuple[str, str], dict[str, torch.Tensor]] = {}
    rows = []
    for label, m in (("trained", model), ("untrained", untrained_control(model, seed=settings.seed))):
        rows += compare_model(m, sets, methods, lr=lr, seed=settings.seed, label=label,
                              on_runs=_simaou_store(store, label, settings.seed))
    headline: dict[str, Any] = {"task": info["task"], "n_demos": n, "methods": methods,
                                "n_layers": int(model.cfg.n_layers), "lr": lr,
                                "queries": len(sets[n])}
    for (label, method), values in store.items():
        for metric, v in values.items():
            mean, se = _mean_se(v)
            headline[f"{metric}_{method}_{label}"] = mean
            headline[f"{metric}_{method}_{label}_se"] = se
    for r in rows:
        if r["layer"] == "" and r["method"] and r["metric"] == "rec2ftp":
            headline[f"rec2ftp_{r['method']}_{r['model']}"] = r["value"]
    for label in ("trained", "untrained"):
        for method in methods:
            for metric in ("simam_after", "simam_delta", "kendall_tau", "dw_cosine"):
                vals = [r["value"] for r in rows if r["model"] == label and r["method"] == method
                        and r["metric"] == metric and r["value"] == r["value"]]
                headline[f"{metric}_{method}_{label}"] = sum(vals) / len(vals) if vals else None
            ratios = [r["value"] for r in rows if r["model"] == label and r["method"] == method
                      and r["metric"] == "dw_norm_ratio" and r["value"] == r["value"]
                      and r["value"] > 0]
            headline[f"dw_norm_ratio_{method}_{label}"] = (
                math.exp(sum(math.log(v) for v in ratios) / len(ratios)) if ratios else None)
        before = [r["value"] for r in rows if r["model"] == label and r["metric"] ==
                  "simam_before" and r["value"] == r["value"]]
        headline[f"simam_before_{label}"] = sum(before) / len(before) if before else None
    return Part(ref.label, ref.spec, rows=[{("copy" if k == "model" else k): v for k, v in
                                            r.items()} for r in rows],
                headline=headline, extra=lr_info,
                provenance=lm_provenance(model, task=info))


# ----------------------------------------------------------------------------- plots
def _plot_order(result: SectionResult) -> dict[str, Any]:
    from iclgd.analyses.section_plots import order_panels

    return {"order.png": order_panels(result)} if result.extra is not None else {}


def _plot_outputs(result: SectionResult) -> dict[str, Any]:
    from iclgd.analyses.section_plots import outputs_panels

    return {f"outputs_{p.label}.png": outputs_panels(p) for p in result.parts if p.ok}


def _plot_dual_form(result: SectionResult) -> dict[str, Any]:
    from iclgd.analyses.section_plots import dual_form_panels

    return {f"dual_form_{p.label}.png": dual_form_panels(p) for p in result.parts if p.ok}


ORDER = Section("order", "Order sensitivity", OrderSettings, measure_order, _plot_order)
OUTPUTS = Section("outputs", "Outputs", OutputSettings, measure_outputs, _plot_outputs)
DUAL_FORM = Section("dual_form", "Dual form, layer by layer", DualFormSettings,
                    measure_dual_form, _plot_dual_form)

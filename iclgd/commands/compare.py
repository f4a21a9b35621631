"""`iclgd compare --model M --task T`: ICL vs ZS vs finetuning (several GD variants), per layer.

Writes `compare.csv` (tidy: model, n_demos, method, metric, layer, value), `compare_summary.csv`
(per-layer metrics averaged over layers), `compare.json` (provenance, settings, summary, rows)
and PNG figures to `--out`; prints the summary table (or JSON with `--json`).
"""

from __future__ import annotations

import argparse


def parse_ints(text: str, what: str) -> list[int]:
    """`"1,2,4"` → `[1, 2, 4]`; a clear `IclgdError` otherwise."""
    from iclgd.errors import IclgdError

    try:
        values = [int(t) for t in text.split(",") if t.strip()]
    except ValueError as err:
        raise IclgdError(f"{what} must be comma-separated integers, got {text!r}") from err
    if not values:
        raise IclgdError(f"{what} is empty: give e.g. 1,2,4,8")
    return values


def parse_lr(text: str | None) -> float | dict[str, float] | None:
    """`--lr 0.01` (all methods) or `--lr gd=0.01,adam=0.001` (others keep their default);
    `default` (or None) → None, the untuned defaults."""
    from iclgd.errors import IclgdError

    if text is None or text == "default":
        return None
    try:
        if "=" not in text:
            return float(text)
        return {k.strip(): float(v) for k, v in (p.split("=", 1) for p in text.split(",") if p.strip())}
    except ValueError as err:
        raise IclgdError(f"--lr must be a number or method=number pairs, got {text!r}") from err


def add_common(p: argparse.ArgumentParser, *, methods: str, demos: str, epochs: int) -> None:
    """Arguments shared by `compare` and `order`."""
    p.add_argument("--model", required=True,
                   help="HF folder, checkpoint-series folder (last checkpoint), or cached hub name")
    p.add_argument("--checkpoint", default=None, help="checkpoint label or index of a series")
    p.add_argument("--task", required=True,
                   help="'ginc' (prompts regenerated from the model's ginc.json), a named task "
                        "(`iclgd tasks` lists them: sentiment, country-capital, past-tense, ...), "
                        "or a .jsonl/.csv file")
    p.add_argument("--demos", default=demos, help=f"numbers of demonstrations (default {demos})")
    p.add_argument("--methods", default=methods, help=f"finetuning methods (default {methods})")
    p.add_argument("--queries", type=int, default=None,
                   help="queries per N (default: 16 for ginc, else up to 32)")
    p.add_argument("--lr", default="auto",
                   help="'auto' (default: each method's rate chosen on held-out demonstrations, "
                        "see --tune-demos), 'default' (untuned: gd/sgd/kv/layer-causal/wv-layer "
                        "1e-2, adam 1e-3), one rate for all methods, or method=lr pairs")
    p.add_argument("--lr-grid", default=None,
                   help="rates searched by --lr auto, for every method (default: adam 1e-5,1e-4,"
                        "1e-3; the others 1e-3,1e-2,1e-1)")
    p.add_argument("--tune-demos", type=int, default=None,
                   help="N used by --lr auto (default: the largest --demos, at most 8)")
    p.add_argument("--tune-queries", type=int, default=8,
                   help="held-out queries scored by --lr auto (default 8)")
    p.add_argument("--epochs", type=int, default=epochs, help=f"finetuning epochs (default {epochs})")
    p.add_argument("--wv-layer", type=int, default=None,
                   help="layer whose W_V the wv-layer method trains (default: middle layer)")
    p.add_argument("--k", type=int, default=3, help="GINC example length (default 3)")
    p.add_argument("--control", choices=("none", "untrained"), default="none",
                   help="also run everything on a copy with attention/MLP weights re-initialised")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=1,
                   help="torch CPU threads (default 1: small models gain nothing from more, and "
                        "on a shared 2-core machine 2 threads ran several times slower)")
    p.add_argument("--dtype", default=None, help="float32 (default), float64, bfloat16, ...")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the `compare` subcommand."""
    p = subparsers.add_parser(
        "compare", help="ICL vs zero-shot vs finetuned: accuracy, overlap, SimAOU, SimAM, ΔW",
        description="Per number of demonstrations and finetuning method: ZS/ICL/FT accuracy, "
                    "token overlap and overlap cosine (with the ICL-reordered noise floor), "
                    "SimAOU (normalised/raw, random baseline), SimAM, SimAM_Δ, Kendall τ, "
                    "Rec2FTP and the ΔW comparison, per layer.")
    add_common(p, methods="gd,sgd,adam,kv,layer-causal,wv-layer", demos="1,2,4,8", epochs=1)
    p.add_argument("--top-k", type=int, default=10, help="K of token overlap (default 10)")
    p.add_argument("--out", default="results/compare", help="output folder (default results/compare)")
    p.set_defaults(func=run)


def load_for_experiment(args: argparse.Namespace) -> tuple:
    """Model, prompt sets, task info, methods and learning rates from the shared arguments."""
    import torch

    from iclgd.analyses.compare import check_methods, learning_rates
    from iclgd.analyses.prompt_sets import load_prompt_sets
    from iclgd.errors import IclgdError
    from iclgd.hooks import load_model

    if args.threads is not None:
        if args.threads < 1:
            raise IclgdError(f"--threads must be >= 1, got {args.threads}")
        torch.set_num_threads(args.threads)
    demos = parse_ints(args.demos, "--demos")
    methods = check_methods(args.methods.split(","))
    auto = args.lr == "auto"
    grid = parse_floats(args.lr_grid, "--lr-grid") if args.lr_grid else None
    lr = None if auto else learning_rates(parse_lr(args.lr), methods)
    model = load_model(args.model, device=args.device, dtype=args.dtype, checkpoint=args.checkpoint)
    sets, info = load_prompt_sets(model, args.task, demos, n_queries=args.queries, seed=args.seed,
                                  k=args.k)
    if auto:
        lr, info["lr_search"] = tune(model, args, methods, demos, grid)
    return model, sets, info, methods, lr


def parse_floats(text: str, what: str) -> list[float]:
    """`"1e-3,1e-2"` → `[0.001, 0.01]`; a clear `IclgdError` otherwise."""
    from iclgd.errors import IclgdError

    try:
        values = [float(t) for t in text.split(",") if t.strip()]
    except ValueError as err:
        raise IclgdError(f"{what} must be comma-separated numbers, got {text!r}") from err
    if not values or min(values) <= 0:
        raise IclgdError(f"{what} needs positive numbers, got {text!r}")
    return values


def tune(model, args: argparse.Namespace, methods, demos, grid) -> tuple[dict, dict]:
    """`--lr auto`: each method's rate chosen on held-out demonstrations (`lr_search`)."""
    from iclgd.analyses.lr_search import search_learning_rates
    from iclgd.analyses.prompt_sets import tuning_prompt_set

    n_tune = args.tune_demos or min(max(demos), 8)
    epochs = getattr(args, "tune_epochs", None) or args.epochs
    held = tuning_prompt_set(model, args.task, n_tune, n_heldout=args.tune_queries,
                             seed=args.seed, k=args.k)
    grids = None if grid is None else dict.fromkeys(methods, grid)
    chosen, rows = search_learning_rates(model, held, methods, epochs=epochs, seed=args.seed,
                                         grids=grids, wv_layer=args.wv_layer)
    return chosen, {"n_demos": n_tune, "n_heldout": args.tune_queries, "epochs": epochs,
                    "chosen": chosen, "rows": rows}


def provenance_for(model, args: argparse.Namespace, **extra):
    """The provenance record of one run: the model's (`iclgd.hooks.model_provenance`: source,
    checkpoint, processing, quantised source file) plus seed, dtype and device."""
    from iclgd.hooks import model_provenance
    from iclgd.results import provenance

    record = {**model_provenance(model), "model": args.model}
    record["dtype"] = str(next(model.parameters()).dtype).removeprefix("torch.")
    return provenance(**record, seed=args.seed, device=args.device, **extra)


def run(args: argparse.Namespace) -> int:
    """Run the comparison, write the results, print the summary."""
    from pathlib import Path

    from tqdm import tqdm

    from iclgd.analyses.compare import compare_model, summarize
    from iclgd.analyses.control import untrained_control
    from iclgd.results import to_json, write_csv, write_json

    model, sets, info, methods, lr = load_for_experiment(args)
    models = [("trained", model)]
    if args.control == "untrained":
        models.append(("untrained", untrained_control(model, seed=args.seed)))
    rows = []
    with tqdm(total=len(models) * len(sets) * len(methods), desc="compare", unit="run",
              leave=False, disable=None) as bar:
        for label, m in models:
            rows += compare_model(m, sets, methods, lr=lr, epochs=args.epochs, seed=args.seed,
                                  wv_layer=args.wv_layer, top_k=args.top_k, label=label,
                                  progress=lambda msg: (bar.set_postfix_str(msg), bar.update(1)))
    summary = summarize(rows)
    settings = {"demos": sorted(sets), "methods": methods, "lr": lr, "epochs": args.epochs,
                "top_k": args.top_k, "control": args.control, "wv_layer": args.wv_layer,
                **info}
    out = Path(args.out)
    prov = provenance_for(model, args, analysis="compare")
    write_csv(out / "compare.csv", rows)
    write_csv(out / "compare_summary.csv", summary)
    if "lr_search" in info:
        write_csv(out / "lr_search.csv", info["lr_search"]["rows"])
    write_json(out / "compare.json", {"provenance": prov, "settings": settings,
                                      "summary": summary, "rows": rows})
    write_figures(out, rows, summary, title=f"{Path(args.model).name} / {info['task']}")
    if args.json:
        print(to_json({"settings": settings, "summary": summary}))
        return 0
    print_summary(summary, out)
    if "lr_search" in info:
        print("learning rates chosen on held-out demonstrations: "
              + ", ".join(f"{m} {v:g}" for m, v in lr.items()) + " (lr_search.csv)")
    return 0


def write_figures(out, rows, summary, *, title: str) -> None:
    """compare_accuracy.png, compare_overlap.png and per-layer figures at the largest N."""
    import matplotlib.pyplot as plt

    from iclgd.analyses import compare_plots as cp
    from iclgd.results import save_figure

    n_max = max(r["n_demos"] for r in rows)
    figs = {
        "compare_accuracy.png": cp.plot_accuracy(summary, title=title),
        "compare_overlap.png": cp.plot_vs_demos(summary, ["token_overlap", "overlap_cosine"],
                                                title=title, floors={
                                                    "token_overlap": "token_overlap_floor",
                                                    "overlap_cosine": "overlap_cosine_floor"}),
        "compare_simaou.png": cp.plot_layer_metric(rows, "simaou_norm", n_demos=n_max,
                                                   baseline="simaou_random_norm"),
        "compare_simaou_raw.png": cp.plot_layer_metric(rows, "simaou_raw", n_demos=n_max,
                                                       baseline="simaou_random_raw"),
        "compare_simam.png": cp.plot_layer_metric(rows, "simam_after", n_demos=n_max,
                                                  baseline="simam_before"),
        "compare_simam_delta.png": cp.plot_layer_metric(rows, "simam_delta", n_demos=n_max),
        "compare_kendall.png": cp.plot_layer_metric(rows, "kendall_tau", n_demos=n_max),
    }
    if any(r["metric"].startswith("dw_cosine") for r in rows):
        figs["compare_delta_w.png"] = cp.plot_layer_metric(
            rows, "dw_cosine", n_demos=n_max, title=f"cos(ΔW_ICL, ΔW_FT), N = {n_max}")
    out.mkdir(parents=True, exist_ok=True)
    for name, fig in figs.items():
        save_figure(fig, out / name, dpi=110)
        plt.close(fig)


def print_summary(summary, out) -> None:
    """The summary as a fixed-width table."""
    cols = ("accuracy_zs", "accuracy_icl", "accuracy_ft", "token_overlap", "token_overlap_floor",
            "overlap_cosine", "simaou_norm", "simaou_random_norm", "simaou_raw", "simam_before",
            "simam_after", "simam_delta", "kendall_tau", "rec2ftp", "dw_cosine")
    short = ("zs", "icl", "ft", "TO", "TO_fl", "OCS", "AOU", "AOU_r", "AOUraw", "AM_bef", "AM_aft",
             "AM_d", "tau", "rec2ftp", "dW_cos")
    print(f"{'model':<9} {'N':>3} {'method':<12}" + "".join(f" {s:>7}" for s in short))
    for r in summary:
        cells = []
        for c in cols:
            v = r.get(c)
            cells.append(f" {'':>7}" if v is None or v != v else f" {v:>7.3f}")
        print(f"{r['model']:<9} {r['n_demos']:>3} {r['method']:<12}" + "".join(cells))
    print(f"results in {out}/ (compare.csv, compare_summary.csv, compare.json, *.png)")

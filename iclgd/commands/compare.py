"""`iclgd compare --model M --task T`: ICL vs ZS vs finetuning (several GD variants), per layer.

Writes `compare.csv` (tidy: model, n_demos, method, metric, layer, value), `compare_summary.csv`
(per-layer metrics averaged over layers), `compare.json` (provenance, settings, summary, rows)
and PNG figures to `--out`; prints the summary table (or JSON with `--json`).
"""

from __future__ import annotations

import argparse

CONTROLS = {"none": None, "untrained": "normal", "untrained-default-init": "default"}


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
    `default`, `auto` (searched later, see `tune`) or None → None."""
    from iclgd.errors import IclgdError

    if text is None or text in ("default", "auto"):
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
    p.add_argument("--control", choices=tuple(CONTROLS), default="none",
                   help="also run everything on a copy whose attention/MLP parameters are "
                        "re-initialised (embeddings, norms, unembedding kept): 'untrained' draws "
                        "weights ~ N(0, initializer_range^2) with zero biases; "
                        "'untrained-default-init' uses the architecture's own initialisation "
                        "(Deutch et al.'s variant). The choice is recorded in the provenance")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=1,
                   help="torch CPU threads (default 1: small models gain nothing from more, and "
                        "on a shared 2-core machine 2 threads ran several times slower)")
    p.add_argument("--dtype", default=None,
                   help="model dtype: float32 (default), float64, bfloat16, float16; metrics "
                        "accumulate in float32/float64, bf16/fp16 finetuning keeps float32 "
                        "master weights")
    p.add_argument("--batch-size", default="32",
                   help="prompts per forward pass (default 32), or 'auto': as large as fits, "
                        "halved on GPU out-of-memory")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the `compare` subcommand."""
    p = subparsers.add_parser(
        "compare", help="ICL vs zero-shot vs finetuned: accuracy, overlap, SimAOU, SimAM, ΔW",
        description="Per number of demonstrations and finetuning method: ZS/ICL/FT accuracy, "
                    "token overlap and overlap cosine (with the ICL-reordered noise floor), "
                    "SimAOU (normalised/raw, random baseline), SimAM, SimAM_Δ, Rec2FTP, Dai et "
                    "al.'s training-token attention (Kendall τ-b and top-K recall over tokens and "
                    "examples, random baselines; the dual-form τ variant), the same similarities "
                    "in Dai's f2t mode, and the ΔW comparison, per layer.")
    add_common(p, methods="gd,sgd,adam,kv,layer-causal,wv-layer", demos="1,2,4,8", epochs=1)
    p.add_argument("--top-k", type=int, default=10, help="K of token overlap (default 10)")
    p.add_argument("--out", default="results/compare", help="output folder (default results/compare)")
    p.add_argument("--shard", default=None, metavar="I/N",
                   help="compute only worker I's share of the N-way split of the (model, N, "
                        "method) cells into --out; combine the N folders with `iclgd merge`")
    p.set_defaults(func=run)


TASK_SUFFIXES = (".jsonl", ".json", ".csv", ".tsv")


def check_common(args: argparse.Namespace) -> None:
    """The shared arguments that need no heavy import, checked first so bad input is answered
    at once: the model and task paths, `--out`, `--demos`, `--lr`, `--threads`."""
    from iclgd.errors import IclgdError
    from iclgd.specs import check_input_file, check_model_spec, check_output_folder

    check_model_spec(args.model)
    if args.task != "ginc":
        check_input_file(args.task, "--task", TASK_SUFFIXES)
    check_output_folder(args.out)
    parse_ints(args.demos, "--demos")
    parse_lr(args.lr)
    if args.lr_grid:
        parse_floats(args.lr_grid, "--lr-grid")
    if args.threads is not None and args.threads < 1:
        raise IclgdError(f"--threads must be >= 1, got {args.threads}")


def load_for_experiment(args: argparse.Namespace) -> tuple:
    """Model, prompt sets, task info, methods and learning rates from the shared arguments."""
    import torch

    from iclgd.analyses.compare import check_methods, learning_rates
    from iclgd.analyses.prompt_sets import load_prompt_sets
    from iclgd.hooks import load_model

    check_common(args)
    if args.threads is not None:
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


def with_control(model, args: argparse.Namespace) -> tuple[list, dict]:
    """`[("trained", model)]` plus `("untrained", control)` when `--control` asks for one, and
    the provenance fields that describe the control."""
    init = CONTROLS[args.control]
    if init is None:
        return [("trained", model)], {"control": "none"}
    from iclgd.analyses.control import untrained_control

    control = untrained_control(model, seed=args.seed, init=init)
    return [("trained", model), ("untrained", control)], {
        "control": args.control, "control_init": control.cfg.iclgd_control_init,
        "control_seed": args.seed}


def provenance_for(model, args: argparse.Namespace, **extra):
    """The provenance record of one run: the model's (`iclgd.hooks.model_provenance`: source,
    checkpoint, processing, quantised source file) plus seed, dtype and device."""
    from iclgd.hooks import model_provenance
    from iclgd.results import provenance

    record = {**model_provenance(model), "model": args.model}
    record["dtype"] = str(next(model.parameters()).dtype).removeprefix("torch.")
    return provenance(**record, seed=args.seed, device=args.device, **extra)


def run(args: argparse.Namespace) -> int:
    """Run the comparison (or one shard of it), write the results, print the summary."""
    check_common(args)  # before the heavy imports
    from pathlib import Path

    from tqdm import tqdm

    from iclgd.analyses.compare import compare_model
    from iclgd.analyses.shards import Shard, compare_grid, shard_record
    from iclgd.hooks.batching import parse_batch_size
    from iclgd.results import to_json, write_csv, write_json

    shard = Shard.parse(args.shard)
    batch = parse_batch_size(args.batch_size)
    model, sets, info, methods, lr = load_for_experiment(args)
    models, control = with_control(model, args)
    labels = [label for label, _ in models]
    grid = compare_grid(labels, sets, methods)
    cells = grid if shard is None else shard.take(grid)
    rows = []
    with tqdm(total=sum(1 for c in cells if c[2]), desc="compare", unit="run", leave=False,
              disable=None) as bar:
        for label, m in models:
            mine = {(n, meth) for lab, n, meth in cells if lab == label}
            if not mine:
                continue
            rows += compare_model(m, sets, methods, lr=lr, epochs=args.epochs, seed=args.seed,
                                  wv_layer=args.wv_layer, top_k=args.top_k, label=label,
                                  progress=lambda msg: (bar.set_postfix_str(msg), bar.update(1)),
                                  cells=None if shard is None else mine, batch_size=batch)
    settings = {"demos": sorted(sets), "methods": methods, "lr": lr, "epochs": args.epochs,
                "top_k": args.top_k, "wv_layer": args.wv_layer, "batch_size": args.batch_size,
                **control, **info}
    out = Path(args.out)
    prov = provenance_for(model, args, analysis="compare", **control)
    if "lr_search" in info:
        write_csv(out / "lr_search.csv", info["lr_search"]["rows"])
    if shard is not None:
        prov["shard"] = shard_record("compare", shard, fingerprint_settings(prov, settings), grid)
        write_csv(out / "compare.csv", rows)
        write_json(out / "compare.json", {"provenance": prov, "settings": settings, "rows": rows})
        print(f"shard {shard}: {len(cells)} of {len(grid)} cells into {out}/ (compare.csv, "
              "compare.json); combine the shard folders with `iclgd merge`")
        return 0
    summary = write_results(out, rows, settings, prov)
    if args.json:
        print(to_json({"settings": settings, "summary": summary}))
        return 0
    print_summary(summary, out)
    if "lr_search" in info:
        print("learning rates chosen on held-out demonstrations: "
              + ", ".join(f"{m} {v:g}" for m, v in lr.items()) + " (lr_search.csv)")
    return 0


def fingerprint_settings(prov: dict, settings: dict) -> dict:
    """What determines a comparison's numbers: model, checkpoint, seed, dtype and settings."""
    return {"model": prov["model"], "checkpoint": prov["checkpoint"], "seed": prov["seed"],
            "dtype": prov["dtype"], "settings": settings}


def write_results(out, rows, settings, prov, *, figures: bool = True) -> list:
    """compare.csv, compare_summary.csv, compare.json and the figures; returns the summary."""
    from pathlib import Path

    from iclgd.analyses.compare import summarize
    from iclgd.results import write_csv, write_json

    out = Path(out)
    summary = summarize(rows)
    write_csv(out / "compare.csv", rows)
    write_csv(out / "compare_summary.csv", summary)
    write_json(out / "compare.json", {"provenance": prov, "settings": settings,
                                      "summary": summary, "rows": rows})
    if figures:
        write_figures(out, rows, summary,
                      title=f"{Path(prov['model']).name} / {settings['task']}")
    return summary


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
        "compare_kendall.png": cp.plot_layer_metric(rows, "kendall_tau", n_demos=n_max,
                                                    baseline="kendall_tau_random"),
        "compare_topk_recall.png": cp.plot_layer_metric(rows, "topk_recall_examples",
                                                        n_demos=n_max,
                                                        baseline="topk_recall_examples_random"),
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
    cols = ("accuracy_zs", "accuracy_icl", "accuracy_icl_se", "accuracy_ft", "token_overlap", "token_overlap_floor",
            "overlap_cosine", "simaou_norm", "simaou_random_norm", "simaou_raw", "simam_before",
            "simam_after", "simam_delta", "kendall_tau", "kendall_tau_random", "rec2ftp",
            "dw_cosine")
    short = ("zs", "icl", "icl_se", "ft", "TO", "TO_fl", "OCS", "AOU", "AOU_r", "AOUraw", "AM_bef", "AM_aft",
             "AM_d", "tau", "tau_r", "rec2ftp", "dW_cos")
    print(f"{'model':<9} {'N':>3} {'method':<12}" + "".join(f" {s:>7}" for s in short))
    for r in summary:
        cells = []
        for c in cols:
            v = r.get(c)
            cells.append(f" {'':>7}" if v is None or v != v else f" {v:>7.3f}")
        print(f"{r['model']:<9} {r['n_demos']:>3} {r['method']:<12}" + "".join(cells))
    print(f"results in {out}/ (compare.csv, compare_summary.csv, compare.json, *.png)")

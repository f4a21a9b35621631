"""`iclgd order --model M --task T`: order sensitivity of ICL vs GD variants over epochs.

Writes `order.csv` (tidy: model, n_demos, n_perms, setting, method, epoch, order_sensitivity,
se), `order.json` (provenance, settings, rows) and `order.png` to `--out`; prints the table (or
JSON with `--json`). Each finished cell (ICL, then each method) is kept in `--out/cells/` as it
ends: the same command started again after a kill resumes from there, and more `--methods`
later reuse the cells already there.
"""

from __future__ import annotations

import argparse
from pathlib import Path


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the `order` subcommand."""
    from iclgd.commands.compare import add_common

    p = subparsers.add_parser(
        "order", help="order sensitivity of ICL vs finetuning (GD, SGD, Adam) over epochs",
        description="For P orderings of the same N demonstrations: per vocabulary entry the std "
                    "over orderings of the next-token probability, summed over the vocabulary, "
                    "averaged over queries; ICL reorders the prompt, FT finetunes on each order.")
    add_common(p, methods="gd,sgd,adam", demos="8", epochs=8)
    p.add_argument("--tune-epochs", type=int, default=1,
                   help="epochs of each --lr auto trial (default 1; the run's --epochs is "
                        "slower but matches the longest snapshot)")
    p.add_argument("--perms", type=int, default=10, help="orderings P (default 10)")
    p.add_argument("--perms-per-run", type=int, default=None,
                   help="orderings finetuned at once (default: as many as fit in the device's "
                        "free memory; each holds three copies of the trained weights, five "
                        "with Adam); fewer is slower, the numbers change by float rounding only")
    p.add_argument("--out", default="results/order", help="output folder (default results/order)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Run the order experiment, write the results, print the table."""
    from iclgd.commands.compare import check_common

    check_common(args)  # before the heavy imports

    import matplotlib.pyplot as plt
    from tqdm import tqdm

    from iclgd.analyses.compare_plots import plot_order
    from iclgd.analyses.order import epoch_grid, order_experiment
    from iclgd.commands.compare import load_for_experiment, parse_ints, provenance_for, with_control
    from iclgd.errors import IclgdError
    from iclgd.hooks.batching import parse_batch_size
    from iclgd.results import save_figure, to_json, write_csv, write_json

    counts = sorted(set(parse_ints(args.demos, "--demos")))
    if args.perms_per_run is not None and args.perms_per_run < 1:
        raise IclgdError(f"--perms-per-run must be >= 1, got {args.perms_per_run}")
    if len(counts) != 1:
        raise IclgdError(f"order takes one number of demonstrations (--demos 8), got {counts}")
    batch = parse_batch_size(args.batch_size)
    model, sets, info, methods, lr = load_for_experiment(args)
    (n, prompts), = sets.items()
    models, control = with_control(model, args)
    grid = epoch_grid(args.epochs)
    out = Path(args.out)
    cells = resume_folder(out / "cells", args)
    rows = []
    with tqdm(total=len(models) * len(methods) * len(grid), desc="order", unit="run",
              leave=False, disable=None) as bar:
        for label, m in models:
            rows += order_experiment(m, prompts, methods, n_perms=args.perms, epochs=args.epochs,
                                     lr=lr, seed=args.seed, wv_layer=args.wv_layer, label=label,
                                     progress=lambda msg: (bar.set_postfix_str(msg), bar.update(1)),
                                     batch_size=batch, orderings_per_run=args.perms_per_run,
                                     cells=cells)
    settings = {"demos": n, "perms": args.perms, "perms_per_run": args.perms_per_run or "auto",
                "methods": methods, "lr": lr,
                "epochs": args.epochs, "epoch_grid": grid, **control, **info}
    write_csv(out / "order.csv", rows)
    if "lr_search" in info:
        write_csv(out / "lr_search.csv", info["lr_search"]["rows"])
    write_json(out / "order.json", {"provenance": provenance_for(model, args, analysis="order", **control),
                                    "settings": settings, "rows": rows})
    fig = plot_order(rows, title=f"{Path(args.model).name} / {info['task']}, N = {n}, "
                                 f"{args.perms} orderings")
    save_figure(fig, out / "order.png", dpi=110)
    plt.close(fig)
    if args.json:
        print(to_json({"settings": settings, "rows": rows}))
        return 0
    print(f"{'model':<9} {'setting':<7} {'method':<8} {'epoch':>5} {'order_sens':>11} {'se':>9}")
    for r in rows:
        print(f"{r['model']:<9} {r['setting']:<7} {r['method']:<8} {r['epoch']:>5} "
              f"{r['order_sensitivity']:>11.3e} {r['se']:>9.2e}")
    print(f"results in {out}/ (order.csv, order.json, order.png)")
    return 0


# what the numbers of a cell depend on; the methods, batching and output are free to change
_NOT_RESUMED = {"func", "command", "methods", "perms_per_run", "batch_size", "threads", "json",
                "out"}


def resume_folder(cells: Path, args: argparse.Namespace) -> Path:
    """`cells`, where `order_experiment` keeps each finished cell so that a killed run resumes;
    created with the settings that the cells depend on, and refused (one line) when a folder
    there holds cells computed with other settings."""
    from iclgd.errors import IclgdError
    from iclgd.results import read_json, write_json

    settings = {k: v for k, v in sorted(vars(args).items()) if k not in _NOT_RESUMED}
    path = cells / "settings.json"
    if path.exists() and read_json(path) != settings:
        raise IclgdError(f"{cells} holds order cells computed with other settings: pass the same "
                         "settings to resume, or another --out")
    write_json(path, settings)
    return cells

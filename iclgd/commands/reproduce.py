"""`iclgd reproduce von-oswald --layers L [...]`: train an LSA and compare it with GD / GD++.

Reproduces von Oswald et al. (2023)'s trained-vs-constructed comparison of linear self-attention; prints a
summary (or JSON with `--json`); `--out DIR` writes reproduce.json, provenance.json, loss.csv and
PNGs (merged-matrix heatmaps trained vs constructed, loss curve).
"""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from iclgd.analyses.von_oswald import TrainResult


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the `reproduce` subcommand."""
    p = subparsers.add_parser(
        "reproduce", help="train a linear self-attention model and compare with GD"
    )
    p.add_argument("target", choices=["von-oswald"], help="which published experiment")
    p.add_argument("--layers", type=int, default=1)
    p.add_argument("--steps", type=int, default=None, help="default 5000 (1 layer), 7000 (more)")
    p.add_argument("--batch", type=int, default=2048)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu")
    p.add_argument(
        "--per-layer", action="store_true", help="separate weights per layer (default shared)"
    )
    p.add_argument("--eval-tasks", type=int, default=10_000)
    p.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch CPU threads (1 is fastest for this tiny model)",
    )
    p.add_argument("--json", action="store_true", help="print JSON")
    p.add_argument("--out", default=None, help="write results and figures here")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Train, tune the baselines, compare, report."""
    from iclgd.specs import check_output_folder

    if args.out:
        check_output_folder(args.out)  # before the heavy imports
    import torch

    from iclgd.analyses.von_oswald import reproduce
    from iclgd.errors import IclgdError
    from iclgd.results import to_json

    if args.layers < 1 or args.batch < 1 or args.eval_tasks < 1 or args.threads < 1:
        raise IclgdError("--layers, --batch, --eval-tasks and --threads must be >= 1")
    steps = args.steps if args.steps is not None else (5000 if args.layers == 1 else 7000)
    if steps < 1:
        raise IclgdError(f"--steps must be >= 1, got {steps}")
    torch.set_num_threads(args.threads)
    summary, result = reproduce(
        layers=args.layers, steps=steps, batch=args.batch, lr=args.lr, seed=args.seed,
        device=args.device, shared=not args.per_layer, eval_tasks=args.eval_tasks,
    )  # fmt: skip
    summary["threads"] = args.threads
    if args.out:
        _write_outputs(args, summary, result)
    if args.json:
        print(to_json(summary))
        return 0
    _print_summary(summary)
    return 0


def _write_outputs(args: argparse.Namespace, summary: dict[str, Any], result: TrainResult
                   ) -> None:
    """`--out`: reproduce.json, provenance.json, loss.csv and the two figures (merged matrices
    of layer 0 trained vs the GD construction, loss curve with the GD / GD++ levels)."""
    from pathlib import Path

    from iclgd.analyses.von_oswald import gd_merged
    from iclgd.analyses.von_oswald_plots import loss_curve, merged_heatmaps
    from iclgd.results import provenance, save_figure, write_csv, write_json

    out = Path(args.out)
    write_json(out / "reproduce.json", summary)
    write_json(out / "provenance.json", provenance(
        model=f"lsa-{args.layers}layer-{'per-layer' if args.per_layer else 'shared'}",
        checkpoint=None, seed=args.seed, dtype="float32 (train), float64 (eval)",
        device=args.device, weight_processing="raw"))  # fmt: skip
    write_csv(out / "loss.csv", [{"step": s, "half_mse": v} for s, v in result.history])
    d, n = summary["d"], summary["n"]
    qk_c, ov_c = gd_merged(d, n, summary["eta"])
    trained = {"W_K^T W_Q": result.model.merged_qk(0), "P W_V": result.model.merged_ov(0)}
    fig = merged_heatmaps(trained, {"W_K^T W_Q": qk_c, "P W_V": ov_c}, "layer 0: trained vs GD")
    save_figure(fig, out / "merged_heatmaps.png", dpi=120)
    refs = {
        "GD": summary["gd_loss"],
        **({"GD++": summary["gdpp_loss"]} if "gdpp_loss" in summary else {}),
    }
    save_figure(loss_curve(result.history, refs), out / "loss_curve.png", dpi=120)


def _print_summary(s: dict[str, Any]) -> None:
    """The human-readable summary: losses of the trained model and the baselines, the
    trained-vs-constructed comparisons and the interpolation check."""
    print(
        f"von Oswald reproduction: {s['layers']} layer(s), {'shared' if s['shared_weights'] else 'per-layer'} "
        f"weights, {s['steps']} steps, {s['train_wall_s']:.1f} s ({s['steps_per_s']:.1f} steps/s)"
    )
    print(
        f"half-MSE on {s['eval_tasks']} tasks: trained {s['tf_loss']:.4f}  GD(eta={s['eta']:.3f}) "
        f"{s['gd_loss']:.4f}"
        + (f"  GD++ {s['gdpp_loss']:.4f}" if "gdpp_loss" in s else "")
        + f"  zero {s['zero_loss']:.4f}"
    )
    for key in ("vs_gd", "vs_gdpp"):
        if key in s:
            m = s[key]
            print(
                f"{key}: model cos {m['model_cos']:.4f}  model diff {m['model_diff']:.4f}  "
                f"prediction diff {m['pred_diff']:.4f}"
            )
    if s["interpolation"]:
        i = s["interpolation"]
        print(
            f"interpolation (alpha 0.5): trained {i['loss_trained']:.4f}  construction "
            f"{i['loss_construction']:.4f}  interpolated {i['loss_interpolated']:.4f}"
        )

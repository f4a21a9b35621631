"""`iclgd train regression`: Garg et al. (2022) in-context linear regression, then its evaluation.

Trains a GPT-2 with linear read-in/read-out on the ICL objective (curriculum over dimensions and
points) into `--out/step{N}/` checkpoint folders, resuming from the latest one when the folder
already holds a run, then writes `--out/eval/`: normalised error (y_hat - w^T x)^2 / d vs the
number of in-context examples for the last checkpoint, least squares, averaging and 3-NN
(regression_eval.json / .csv / .png). `--eval-only` skips training.
"""

from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the `regression` trainer to `iclgd train`."""
    p = subparsers.add_parser(
        "regression",
        help="train a Garg et al. (2022) in-context linear-regression transformer",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--out", required=True, help="output folder (checkpoints, logs, eval/)")
    p.add_argument("--preset", choices=("cpu", "gpu"), default="cpu",
                   help="cpu: d=5, 11 points, 3x64 model, minutes on 2 cores; gpu: the paper's "
                        "d=20, 41 points, 12x256x8 heads, 500k steps (default: cpu)")
    p.add_argument("--dims", type=int, help="input dimension d")
    p.add_argument("--points", type=int, help="points per prompt at the end of the curriculum")
    p.add_argument("--layers", type=int, help="transformer layers")
    p.add_argument("--d-model", type=int, help="residual stream width")
    p.add_argument("--heads", type=int, help="attention heads")
    p.add_argument("--steps", type=int, help="total training steps")
    p.add_argument("--batch", type=int, help="prompts per step")
    p.add_argument("--lr", type=float, help="Adam learning rate")
    p.add_argument("--curriculum", action=argparse.BooleanOptionalAction, default=None,
                   help="grow dims and points during training (default: on)")
    p.add_argument("--curriculum-interval", type=int,
                   help="steps between curriculum increments (paper: 2000)")
    p.add_argument("--noise-std", type=float, help="label noise std during training (default 0)")
    p.add_argument("--checkpoints", type=int, help="number of log-spaced checkpoints (incl. 0)")
    p.add_argument("--seed", type=int, help="seed for initialisation and data (default 0)")
    p.add_argument("--device", help="cpu, cuda or auto")
    p.add_argument("--threads", type=int,
                   help="torch CPU threads (default: 1 for --preset cpu, whose tiny matrices gain "
                        "little from more and slow down badly on busy cores; else torch's choice)")
    p.add_argument("--eval-tasks", type=int, default=2000,
                   help="tasks for the final evaluation; 0 skips it (default 2000)")
    p.add_argument("--eval-seed", type=int, default=1234, help="seed of the evaluation tasks")
    p.add_argument("--eval-only", action="store_true",
                   help="only evaluate the latest checkpoint in --out")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Train (unless --eval-only), then evaluate the latest checkpoint into OUT/eval/."""
    from iclgd.specs import check_output_folder

    check_output_folder(args.out)  # before the heavy imports
    import sys
    from pathlib import Path

    import torch

    from iclgd.errors import IclgdError
    from iclgd.training.regression import (
        checkpoint_steps_in,
        preset_config,
        train_regression,
    )

    threads = args.threads or (1 if args.preset == "cpu" else None)
    if threads:
        torch.set_num_threads(threads)
    out = Path(args.out)
    if not args.eval_only:
        config = preset_config(
            args.preset, n_dims=args.dims, n_points=args.points, n_layers=args.layers,
            d_model=args.d_model, n_heads=args.heads, steps=args.steps, batch=args.batch,
            lr=args.lr, curriculum=args.curriculum, curriculum_interval=args.curriculum_interval,
            noise_std=args.noise_std, n_checkpoints=args.checkpoints, seed=args.seed,
            device=args.device,
        )
        result = train_regression(config, out, progress=not args.quiet)
        last = result.log[-1] if result.log else None
        msg = f"trained steps {result.start_step}..{result.end_step} in {result.wall_s:.1f} s"
        if last:
            msg += f"; last logged loss/d {float(last['loss_normalised']):.4f}"
        print(f"{msg}; checkpoints in {out}", file=sys.stderr)
    steps = checkpoint_steps_in(out)
    if not steps:
        raise IclgdError(f"{out} holds no checkpoint; train first with `iclgd train regression`")
    if args.eval_tasks > 0:
        paths = evaluate_checkpoint(out / f"step{steps[-1]}", out / "eval",
                                    n_tasks=args.eval_tasks, seed=args.eval_seed,
                                    device=args.device or "cpu")
        print(f"evaluation written to {paths['json'].parent}", file=sys.stderr)
    return 0


def evaluate_checkpoint(folder, eval_dir, *, n_tasks: int, seed: int, device: str = "cpu") -> dict:
    """Evaluate one regression checkpoint folder and write JSON, CSV and PNG into `eval_dir`."""
    from pathlib import Path

    import torch

    from iclgd import results
    from iclgd.hooks.loading import resolve_device
    from iclgd.probes.regression_eval import (
        evaluate_regression,
        plot_regression_eval,
        regression_eval_rows,
    )
    from iclgd.training.regression_model import load_regression_model, read_regression_metadata

    folder, eval_dir = Path(folder), Path(eval_dir)
    meta = read_regression_metadata(folder)
    dev = resolve_device(device)
    model = load_regression_model(folder, device=dev)
    d, n_max = int(meta["n_dims"]), int(meta["n_points"])
    result = evaluate_regression(model, d, n_max, n_tasks, seed)
    result["provenance"] = results.provenance(
        model="garg-regression", checkpoint=str(folder), seed=seed, dtype=str(torch.float32),
        device=str(dev), weight_processing="raw", step=meta.get("step"),
    )
    eval_dir.mkdir(parents=True, exist_ok=True)
    paths = {
        "json": results.write_json(eval_dir / "regression_eval.json", result),
        "csv": results.write_csv(eval_dir / "regression_eval.csv", regression_eval_rows(result)),
        "png": eval_dir / "regression_eval.png",
    }
    fig = plot_regression_eval(result, title=f"{folder.name}: d = {d}")
    results.save_figure(fig, paths["png"], dpi=120)
    import matplotlib.pyplot as plt

    plt.close(fig)
    return paths

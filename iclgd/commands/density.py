"""`iclgd density MODEL [--json] [--checkpoint LABEL]`: raw-weight density per layer/matrix."""

from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the `density` subcommand."""
    p = subparsers.add_parser("density", help="fraction of near-zero weights, Hoyer, stable rank")
    p.add_argument("model", help="HF folder, checkpoint-series folder, or cached hub name")
    p.add_argument("--checkpoint", default=None, help="checkpoint label or index (series/hub)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default=None,
                   help="model dtype: float32 (default), bfloat16, float16, float64 (density of the weights as loaded, computed in float64)")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.add_argument("--out", default=None, help="also write density.json/density.csv here")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Measure and print density of every attention/MLP matrix on raw weights."""
    from iclgd.specs import check_model_spec, check_output_folder

    check_model_spec(args.model)  # before the heavy imports: bad paths are answered at once
    if args.out:
        check_output_folder(args.out)
    from iclgd.analyses.density import density_report
    from iclgd.hooks import load_model
    from iclgd.results import provenance, to_json, write_csv, write_json

    model = load_model(args.model, device=args.device, dtype=args.dtype,
                       checkpoint=args.checkpoint)
    report = density_report(model, model_name=args.model)
    if args.out:
        from pathlib import Path

        out = Path(args.out)
        write_json(out / "density.json", report)
        write_csv(out / "density.csv", [
            {"layer": r["layer"], "name": r["name"], "shape": "x".join(map(str, r["shape"])),
             **{f"below_{k}": v for k, v in r["fraction_below"].items()},
             "hoyer": r["hoyer"], "stable_rank": r["stable_rank"],
             **{k: r[k] for k in ("grid_type", "grid_step_min", "grid_step_median") if k in r}}
            for r in report["matrices"]
        ])
        write_json(out / "provenance.json", provenance(
            model=args.model, checkpoint=report["checkpoint"], seed=None,
            dtype=str(next(model.parameters()).dtype).removeprefix("torch."), device=args.device,
            weight_processing="raw"))
    if args.json:
        print(to_json(report))
        return 0
    keys = report["thresholds"]
    print(f"model {report['model']}  checkpoint {report['checkpoint']}  weights: raw")
    print(f"{'layer':>5} {'matrix':<7} {'shape':<14}" + "".join(f" <{k:>7}" for k in keys)
          + f" {'hoyer':>7} {'srank':>7}")
    for r in report["matrices"]:
        shape = "x".join(map(str, r["shape"]))
        print(f"{r['layer']:>5} {r['name']:<7} {shape:<14}"
              + "".join(f" {r['fraction_below'][k]:>8.4f}" for k in keys)
              + f" {r['hoyer']:>7.4f} {r['stable_rank']:>7.2f}")
    s = report["summary"]["all"]
    print(f"{'all':>5} {'mean':<7} {'':<14}" + "".join(f" {s['fraction_below'][k]:>8.4f}" for k in keys)
          + f" {s['hoyer']:>7.4f} {s['stable_rank']:>7.2f}")
    limited = report["summary"].get("grid_limited_thresholds")
    if limited:
        print(f"weights dequantised from {report['quantisation']}: thresholds "
              f"{', '.join(limited)} lie below half of every block's quantisation step, so "
              "those columns describe the grid, not the model's weights")
    return 0

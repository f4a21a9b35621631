"""`iclgd inspect MODEL [--json]`: architecture, parameter count, hook names, checkpoints."""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the `inspect` subcommand."""
    p = subparsers.add_parser("inspect", help="architecture, parameter count and hook names")
    p.add_argument("model", help="HF folder, checkpoint-series folder, or cached hub name")
    p.add_argument("--checkpoint", default=None, help="checkpoint label or index (series/hub)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default=None,
                   help="model dtype: float32 (default), bfloat16, float16, float64")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Print the model's architecture summary."""
    from iclgd.specs import check_model_spec, is_checkpoint_series

    check_model_spec(args.model)  # before the heavy imports: bad paths are answered at once
    from iclgd.hooks import list_checkpoints, load_model, model_info, model_provenance

    model = load_model(args.model, device=args.device, dtype=args.dtype,
                       checkpoint=args.checkpoint)
    info = {"model": args.model, "checkpoint": model.cfg.iclgd_checkpoint, **model_info(model)}
    path = Path(args.model)
    if path.exists() and is_checkpoint_series(path):
        info["checkpoints"] = [label for label, _, _ in list_checkpoints(path)]
    weights = model_provenance(model).get("weights")
    if weights:  # a named model dequantised from a shipped file
        info.update({f"weights_{k}": v for k, v in weights.items()})
    if args.json:
        print(json.dumps(info, indent=2))
        return 0
    width = max(len(k) for k in info)
    for key, value in info.items():
        if key == "hook_names_layer0":
            print(f"{key:<{width}}  {len(value)} hook points:")
            for name in value:
                print(f"{'':<{width}}    {name}")
        elif isinstance(value, list):
            print(f"{key:<{width}}  {', '.join(map(str, value))}")
        else:
            print(f"{key:<{width}}  {value}")
    return 0

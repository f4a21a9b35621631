"""`iclgd audit NAME [...]`: audit a published ICL-as-GD construction against its algorithm.

Names: von-oswald-gd, von-oswald-gdpp, von-oswald-standard-tokens, akyurek-sgd, ahn-pgd, dual-form.
Reports error vs the reference algorithm, losses (convention named), weight density per matrix,
density at residual width 4096, and error/loss under relative Gaussian weight noise. `--out DIR`
writes audit.json, provenance.json, perturbation.csv and perturbation.png.
"""

from __future__ import annotations

import argparse
from typing import Any


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the `audit` subcommand."""
    p = subparsers.add_parser("audit", help="audit a hand-built ICL-as-GD construction")
    p.add_argument("name", help="von-oswald-gd, von-oswald-gdpp, von-oswald-standard-tokens, "
                   "akyurek-sgd, ahn-pgd or dual-form (iclgd.constructions.registry)")
    p.add_argument("--d", type=int, default=10, help="input dimension (default 10)")
    p.add_argument("--n", type=int, default=10, help="context points (default 10)")
    p.add_argument("--d-out", type=int, default=1)
    p.add_argument(
        "--eta", type=float, default=None, help="GD rate (default 0.6 d, near the best one-step rate)"
    )
    p.add_argument("--gamma", type=float, default=0.01, help="GD++ gamma (per layer, same value)")
    p.add_argument("--steps", type=int, default=1, help="GD steps / SGD steps")
    p.add_argument("--layers", type=int, default=2, help="layers of GD++ / Ahn")
    p.add_argument("--temperature", type=float, default=0.02, help="softmax copy temperature")
    p.add_argument(
        "--mul-scale", type=float, default=1e4, help="GeLU multiplication scale (Akyürek)"
    )
    p.add_argument("--tasks", type=int, default=1000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--dtype", choices=["float64", "float32"], default="float64")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.add_argument("--out", default=None, help="write audit.json, CSV and PNG here")
    p.set_defaults(func=run)


def build(args: argparse.Namespace):
    """The `Construction` named by `args.name` (`iclgd.constructions.registry`)."""
    import torch

    from iclgd.constructions.registry import build_construction
    from iclgd.errors import IclgdError

    if args.tasks < 1:
        raise IclgdError(f"--tasks must be >= 1, got {args.tasks}")
    return build_construction(
        args.name, d=args.d, n=args.n, d_out=args.d_out, eta=args.eta, gamma=args.gamma,
        steps=args.steps, layers=args.layers, temperature=args.temperature,
        mul_scale=args.mul_scale, seed=args.seed,
        dtype=torch.float64 if args.dtype == "float64" else torch.float32,
    )


def run(args: argparse.Namespace) -> int:
    """Build, audit, print / write."""
    from iclgd.specs import check_output_folder

    if args.out:
        check_output_folder(args.out)  # before the heavy imports
    from iclgd.probes.audit import audit_construction
    from iclgd.results import to_json

    construction = build(args)
    report = audit_construction(construction, tasks=args.tasks, seed=args.seed)
    report.update(extra_checks(args, construction))
    if args.out:
        write_outputs(args, report)
    if args.json:
        print(to_json(report))
    else:
        print_summary(report)
    return 0


def extra_checks(args: argparse.Namespace, construction: Any) -> dict[str, Any]:
    """Construction-specific entries: error vs the softmax temperature (standard tokens), vs the
    GeLU multiplication scale (Akyürek), and with softmax attention in place of linear (dual
    form)."""
    from iclgd import constructions as C
    from iclgd.probes.audit import approximation_sweep

    if args.name == "von-oswald-standard-tokens":
        eta = construction.params["eta"]
        return {"error_vs_temperature": approximation_sweep(
            lambda T: C.von_oswald_standard_tokens(args.d, n=args.n, eta=eta, d_out=args.d_out, temperature=T),
            (0.5, 0.2, 0.1, 0.05, 0.03, 0.02), seed=args.seed)}  # fmt: skip
    if args.name == "akyurek-sgd":
        p = construction.params
        return {"error_vs_mul_scale": approximation_sweep(
            lambda s: C.akyurek_sgd_step(args.d, n=args.n, alpha=p["alpha"], steps=p["steps"], mul_scale=s),
            (1.0, 10.0, 100.0, 1e3, 1e4, 1e5), seed=args.seed)}  # fmt: skip
    if args.name == "dual-form":
        return {"softmax_max_abs_error": _softmax_dual_form_error(args)}
    return {}


def _softmax_dual_form_error(args: argparse.Namespace) -> float:
    import torch

    from iclgd import constructions as C
    from iclgd.data.regression import sample_linear_tasks

    soft = C.dual_form_layer(args.d, n=args.n, d_out=args.d_out, seed=args.seed)
    for layer in range(soft.model.cfg.n_layers):
        soft.model.block(layer).attn.kind = "softmax"
    t = sample_linear_tasks(200, args.n, args.d, d_out=args.d_out,
                            generator=torch.Generator().manual_seed(args.seed))
    with torch.no_grad():
        e = (soft.predict(t.X, t.Y, t.x_query) - soft.reference(t.X, t.Y, t.x_query)).abs()
    return float(e.max())


def write_outputs(args: argparse.Namespace, report: dict[str, Any]) -> None:
    """`--out`: audit.json, provenance.json, perturbation.csv and perturbation.png."""
    from pathlib import Path

    from iclgd.probes.audit_plots import perturbation_figure
    from iclgd.results import provenance, save_figure, write_csv, write_json

    out = Path(args.out)
    write_json(out / "audit.json", report)
    write_json(out / "provenance.json", provenance(
        model=f"construction:{args.name}", checkpoint=None, seed=args.seed, dtype=args.dtype,
        device="cpu", weight_processing="raw"))  # fmt: skip
    write_csv(out / "perturbation.csv", report["perturbation"]["curve"])
    save_figure(perturbation_figure(report), out / "perturbation.png", dpi=120)


def print_summary(r: dict[str, Any]) -> None:
    """The report as text: error, losses, the density table, the perturbation curve."""
    print(f"{r['construction']}  ({'exact' if r['exact'] else 'approximate'})  params {r['params']}")
    print(f"reference: {r['reference']}")
    print(f"error on {r['tasks']} tasks ({r['dtype']}): max {r['max_abs_error']:.3e}  "
          f"mean {r['mean_abs_error']:.3e}")
    print(f"loss ({r['loss_convention']}): construction {r['loss_construction']:.6f}  "
          f"reference {r['loss_reference']:.6f}")
    _print_density(r)
    print("perturbation (relative Gaussian noise on every matrix):")
    for row in r["perturbation"]["curve"]:
        print(f"  eps {row['eps']:.0e}: max error {row['max_abs_error']:.3e}  loss {row['loss']:.6f}")
    for key in ("error_vs_temperature", "error_vs_mul_scale"):
        if key in r:
            print(f"{key}: " + ", ".join(f"{x['value']:g} -> {x['max_abs_error']:.1e}" for x in r[key]))
    if "softmax_max_abs_error" in r:
        print(f"same weights with softmax attention: max error {r['softmax_max_abs_error']:.3e}")


def _print_density(r: dict[str, Any]) -> None:
    keys = list(next(iter(r["density"].values()))["fraction_below"])
    print(f"{'matrix':<10} {'shape':<10} {'nonzero':>8}" + "".join(f" <{k:>7}" for k in keys)
          + f" {'nz@4096':>9}")
    width = r["density_at_width"]
    for name, row in r["density"].items():
        shape = "x".join(map(str, row["shape"]))
        nz = width.get("scaled", {}).get(name, width["embedded"].get(name))
        nz_text = f"{nz:>9.2e}" if nz is not None else f"{'-':>9}"
        print(f"{name:<10} {shape:<10} {row['nonzero']:>8}"
              + "".join(f" {row['fraction_below'][k]:>8.4f}" for k in keys) + f" {nz_text}")

"""`iclgd analyse SECTION --model M [--model M2 ...] [--out DIR] [--quick]`: one section of the
demo report on your own models (`iclgd.analyses.sections`).

SECTION is one of constructions, trained_vs_constructed, density, emergent_icl, order, outputs,
dual_form, weight_evolution. `--model` takes a Hugging Face folder, a checkpoint series, a GINC
series (prompts from its ginc.json), a cached hub name, a construction name or `lsa-1`/`lsa-3`
(the first two sections default to all constructions / both depths). Writes rows.csv,
result.json and the figures to `--out` (default results/SECTION); prints the headline numbers.
"""

from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the `analyse` subcommand."""
    p = subparsers.add_parser("analyse", help="one section of the demo report on your models")
    p.add_argument("section", help="constructions, trained_vs_constructed, density, "
                                   "emergent_icl, order, outputs, dual_form, weight_evolution")
    p.add_argument("--model", action="append", default=None,
                   help="a model (repeat for several); see the command's description")
    p.add_argument("--out", default=None, help="output folder (default results/SECTION)")
    p.add_argument("--quick", action="store_true", help="the section's reduced size")
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default=None, help="float32 (default), bfloat16, float16")
    p.add_argument("--json", action="store_true", help="print the headline as JSON")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Run the section, save it, print each model's status and headline."""
    import os
    from pathlib import Path

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from iclgd.analyses.sections import analyse, get_section
    from iclgd.results import to_json

    section = get_section(args.section)
    out = Path(args.out or f"results/{section.name}")
    result = analyse(section.name, args.model, quick=args.quick, out=out, device=args.device,
                     dtype=args.dtype)
    if args.json:
        print(to_json({"status": result.status, "headline": result.headline}))
    else:
        for label, status in result.status.items():
            print(f"{label}: {status}")
            for key, value in result.headline.get(label, {}).items():
                if isinstance(value, int | float) and not isinstance(value, bool):
                    print(f"  {key} = {value:.6g}")
        print(f"results in {out}/ (rows.csv, result.json, *.png)")
    return 1 if result.failed else 0

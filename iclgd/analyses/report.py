"""The demo's report: one Markdown page over the results the analyses wrote.

Reads only files (each analysis wrote its own tidy CSV/JSON), so it can be rebuilt at any time:
`sweep/rows.jsonl`, `compare/compare_summary.csv`, `order/order.csv`, `audit/audit.json`,
`density/density.json`. Missing parts are listed as missing, never invented.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

from iclgd.analyses.sweep import last_checkpoint_verdict
from iclgd.results import read_jsonl


def _table(rows: list[dict[str, Any]], columns: list[str], limit: int = 40) -> str:
    cols = [c for c in columns if any(c in r for r in rows)]
    if not rows or not cols:
        return "_(no rows)_\n"
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for r in rows[:limit]:
        lines.append("| " + " | ".join(_fmt(r.get(c)) for c in cols) + " |")
    if len(rows) > limit:
        lines.append(f"| … {len(rows) - limit} more rows | " + " | " * (len(cols) - 1))
    return "\n".join(lines) + "\n"


def _fmt(v: Any) -> str:
    if v is None or v == "":
        return "–"
    try:
        f = float(v)
    except (TypeError, ValueError):
        return str(v)
    if f.is_integer() and abs(f) < 1e6:
        return str(int(f))
    return f"{f:.4g}"


def _read_csv(path: Path) -> list[dict[str, Any]]:
    with path.open(newline="") as fh:
        return list(csv.DictReader(fh))


def _pngs(folder: Path, root: Path) -> str:
    return "".join(f"![{p.stem}]({p.relative_to(root)})\n\n" for p in sorted(folder.glob("*.png")))


def sweep_section(folder: Path, root: Path) -> str:
    """ICL across checkpoints against the Bayes ceiling, and weight drift."""
    rows = [r for r in read_jsonl(folder / "rows.jsonl") if not r.get("error")]
    if not rows:
        return "## Weight evolution (checkpoint sweep)\n\n_missing_\n"
    flat = []
    for r in rows:
        acc, bayes = r.get("icl_accuracy") or {}, r.get("bayes_accuracy") or {}
        lm = r.get("pretrained_bayes_accuracy") or {}
        ns = sorted(acc, key=int)
        lo, hi = (ns[0], ns[-1]) if ns else (None, None)
        flat.append({
            "checkpoint": r["checkpoint"], "step": r["step"],
            f"acc n={lo}": acc.get(lo), f"acc n={hi}": acc.get(hi),
            f"bayes n={lo}": bayes.get(lo), f"bayes n={hi}": bayes.get(hi),
            f"pretrained-LM Bayes n={lo}": lm.get(lo), f"pretrained-LM Bayes n={hi}": lm.get(hi),
            "icl_score": (r.get("icl_score") or {}).get("score")
            if isinstance(r.get("icl_score"), dict) else r.get("icl_score"),
            "drift_prev": r.get("weight_drift_prev"), "drift_final": r.get("weight_drift_final"),
        })
    last = flat[-1]
    keys = [k for k in last if k.startswith(("acc", "bayes"))]
    text = ["## Weight evolution (checkpoint sweep)\n",
            "ICL accuracy on in-distribution GINC prompts (k = 3) by number of examples n, the "
            "exact Bayes-optimal ceiling (ideal learner), the exact pretraining-view predictor "
            "(a perfectly fitted pretrained LM), and how far the raw attention/MLP weights move "
            "(‖θ_t − θ_prev‖/‖θ_prev‖ and ‖θ_t − θ_last‖/‖θ_last‖).\n",
            _table(flat, list(flat[0].keys()))]
    if len(keys) == 4:
        text.append(
            f"\nLast checkpoint: accuracy {_fmt(last[keys[0]])} → {_fmt(last[keys[1]])} "
            f"(Bayes ceiling {_fmt(last[keys[2]])} → {_fmt(last[keys[3]])}).\n")
    verdict = last_checkpoint_verdict(rows)
    if verdict:
        text.append(f"\n**{verdict}.**\n")
    text.append("\n" + _pngs(folder, root))
    return "\n".join(text)


def csv_section(title: str, blurb: str, path: Path, columns: list[str], root: Path) -> str:
    """A section from one tidy CSV plus the PNGs beside it."""
    if not path.exists():
        return f"## {title}\n\n_missing_\n"
    rows = _read_csv(path)
    return f"## {title}\n\n{blurb}\n\n{_table(rows, columns)}\n{_pngs(path.parent, root)}"


def audit_section(path: Path) -> str:
    """The audited construction: error vs its algorithm, sparsity, perturbation."""
    if not path.exists():
        return "## Constructions (audit)\n\n_missing_\n"
    rep = json.loads(path.read_text())
    lines = ["## Constructions (audit)\n",
             f"`{rep.get('construction')}` against `{rep.get('reference')}`: max |error| "
             f"{_fmt(rep.get('max_abs_error'))}, loss {_fmt(rep.get('loss_construction'))} vs "
             f"{_fmt(rep.get('loss_reference'))} ({rep.get('loss_convention', 'half MSE')}).\n"]
    width = rep.get("density_at_width") or {}
    for kind in ("embedded", "scaled"):
        if isinstance(width.get(kind), dict):
            lines.append(f"Non-zero fraction at residual width {width.get('width')} ({kind}): "
                         + ", ".join(f"{k} {_fmt(v)}" for k, v in width[kind].items()) + "\n")
    pert = rep.get("perturbation")
    if isinstance(pert, list) and pert and isinstance(pert[0], dict):
        lines.append("Dense Gaussian noise of relative size ε on every matrix:\n")
        lines.append(_table(pert, list(pert[0].keys())))
    return "\n".join(lines)


def density_section(path: Path) -> str:
    """Mean fraction of near-zero raw weights per matrix of the trained model."""
    if not path.exists():
        return "## Weight density\n\n_missing_\n"
    rep = json.loads(path.read_text())
    rows = [{"matrix": name, **{f"<{k}": v for k, v in s["fraction_below"].items()},
             "hoyer": s["hoyer"]} for name, s in rep["summary"]["by_matrix"].items()]
    return ("## Weight density (raw weights, last checkpoint)\n\n"
            "Fraction of entries with |w| < τ, averaged over layers; constructions need ≥ 99.99 % "
            "for W_K/W_Q at LLM width.\n\n" + _table(rows, list(rows[0].keys())))


def build_report(root: str | Path) -> Path:
    """Write `root/report.md` from the result folders under `root`; return its path."""
    from iclgd.results import atomic_write_text

    root = Path(root)
    parts = [
        "# iclgd demo report\n",
        "Embedded default: a GPT-NeoX causal LM trained from scratch on GINC (ICL emerges from "
        "next-token pretraining), then the four tests of the ICL-as-GD debate. Every number "
        "comes from the files beside this report; provenance is in each folder's JSON.\n",
        sweep_section(root / "sweep", root),
        csv_section("ICL vs finetuning (outputs and layer-wise similarity)",
                    "Per number of demonstrations and finetuning method, with the untrained-model "
                    "control. Similarities mean little without their controls: compare each with "
                    "its `control` row and random baseline.",
                    root / "compare" / "compare_summary.csv",
                    ["model", "n_demos", "method", "accuracy_zs", "accuracy_icl", "accuracy_ft",
                     "token_overlap", "token_overlap_floor", "overlap_cosine",
                     "overlap_cosine_floor", "simaou_norm", "simaou_random_norm", "simaou_raw",
                     "simaou_random_raw", "simam_after", "simam_before", "simam_delta", "rec2ftp",
                     "kendall_tau", "kendall_tau_random", "topk_recall_examples",
                     "topk_recall_examples_random", "dw_cosine", "dw_norm_ratio"], root),
        csv_section("Order sensitivity", "ICL reorders the prompt; each GD variant finetunes on "
                    "the demonstrations in that order. Full-batch GD is order-invariant.",
                    root / "order" / "order.csv",
                    ["model", "setting", "method", "epoch", "order_sensitivity", "se"], root),
        density_section(root / "density" / "density.json"),
        audit_section(root / "audit" / "audit.json"),
    ]
    return atomic_write_text(root / "report.md", "\n".join(parts))

"""The demo's report: `report.md`, a self-contained `report.html` and `summary.json`, written
from the section folders' `result.json` files alone (`iclgd.analyses.section_base`), so it
can be rebuilt at any time: `python -m iclgd.analyses.report DIR`.

Layout: the verdict table (`iclgd.analyses.verdict`), then one section each, leading with its
key numbers (from the headline, with standard errors) and one figure, linking the others and
the full CSV; a section whose parts failed or whose model is not available says so. The
per-section prose lives in `iclgd.analyses.report_sections`.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from iclgd.analyses.report_sections import HEADLINE, SECTION_TEXT, fmt
from iclgd.analyses.verdict import read_results, verdicts
from iclgd.results import atomic_write_text, write_json

ORDER = ("constructions", "trained_vs_constructed", "density", "emergent_icl", "order",
         "outputs", "dual_form", "weight_evolution")
TITLES = {
    "constructions": "Constructions audit", "trained_vs_constructed": "Trained against constructed",
    "density": "Density", "emergent_icl": "Emergent ICL", "order": "Order sensitivity",
    "outputs": "Outputs", "dual_form": "Dual form, layer by layer",
    "weight_evolution": "Weight evolution",
}
SECTION_CLAIMS = {
    "constructions": ("constructions", "akyurek", "dual_form"), "trained_vs_constructed":
    ("trained",), "density": ("density",), "emergent_icl": ("emergence",), "order": ("order",),
    "outputs": ("outputs",), "dual_form": ("dual_form",), "weight_evolution": ("evolution",),
}


def columns(table: list[dict[str, Any]], results: dict[str, Any]) -> list[str]:
    """Verdict-table columns: "toy" then the language models in the order the sections
    list them."""
    cols = ["toy"]
    for name in ORDER:
        for label, prov in (results.get(name) or {}).get("provenance", {}).items():
            if prov.get("kind") in ("ginc", "lm") and label not in cols:
                cols.append(label)
    for row in table:
        cols += [c for c in row["cells"] if c not in cols]
    return cols


def verdict_markdown(table: list[dict[str, Any]], cols: list[str]) -> str:
    """The verdict table as Markdown (cells: verdict, measurement; control)."""
    head = ["claim", "test"] + [("ICL objective (toy)" if c == "toy" else c) for c in cols]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in table:
        cells = []
        for c in cols:
            cell = row["cells"].get(c)
            if cell is None:
                cells.append("–")
            elif cell["verdict"] in ("not available", "failed"):
                cells.append(f"**{cell['verdict']}** (see its section)")
            else:
                cells.append(f"**{cell['verdict']}**: {cell['measurement']}; "
                             f"control: {cell['control']}")
        texts = [row["claim"], row["test"]] + cells
        lines.append("| " + " | ".join(t.replace("|", "\\|") for t in texts) + " |")
    return "\n".join(lines) + "\n"


def status_lines(rec: dict[str, Any]) -> list[str]:
    """One line per part that is not ok."""
    return [f"- **{label}: {status}**" for label, status in rec["status"].items() if status != "ok"]


def section_markdown(name: str, index: int, rec: dict[str, Any] | None,
                     table: list[dict[str, Any]]) -> str:
    """One numbered section: status, key numbers and lead figure, other figures, reading."""
    title = f"## {index}. {TITLES[name]}\n"
    if rec is None:
        return title + "\n**not run** (no result file).\n"
    lines = [title]
    failed = [s for s in rec["status"].values() if s.startswith("failed")]
    if failed:
        lines.append(f"**failed** ({len(failed)} of {len(rec['status'])} models); "
                     "the other models' results are below.\n")
    lines += status_lines(rec)
    text = SECTION_TEXT[name](rec)
    lines += ["", text["what"], "", "Key numbers:", ""]
    lines += [f"- {k}" for k in text["numbers"]] or ["- (no model measured)"]
    figs = rec.get("figures") or []
    lead = text.get("lead") if text.get("lead") in figs else (figs[0] if figs else None)
    if lead:
        lines += ["", f"![{lead}]({name}/{lead})"]
    others = [f for f in figs if f != lead]
    if others:
        lines += ["", "Other figures: " + ", ".join(f"[{f}]({name}/{f})" for f in others) + "."]
    reading = [_reading(row, c) for row in table if row["key"] in SECTION_CLAIMS[name]
               for c in row["cells"].items() if c[1]["verdict"] not in ("not available", "failed")]
    if reading:
        lines += ["", "What this says about ICL ≈ GD:", ""] + [f"- {r}" for r in reading]
    if text.get("note"):
        lines += ["", text["note"]]
    files = [f"[{f}]({name}/{f})" for f in ("rows.csv", "result.json")
             if f == "result.json" or rec.get("rows_file")]
    lines += ["", "Full results: " + ", ".join(files) + f"; CPU {fmt(sum(rec['cpu_s'].values()), '.0f')} s.", ""]
    return "\n".join(lines)


def _reading(row: dict[str, Any], item: tuple[str, dict[str, Any]]) -> str:
    col, cell = item
    where = "the ICL-objective models" if col == "toy" else f"`{col}`"
    verb = {"supports": "**supports**", "contradicts": "**contradicts**"}.get(
        cell["verdict"], f"is **{cell['verdict']}** about")
    return (f"On {where}, the evidence {verb} “{row['claim']}”: "
            f"{cell['measurement']} (control: {cell['control']}).")


def headline_number(name: str, rec: dict[str, Any]) -> dict[str, Any]:
    """Each model's headline number of a section: `{model: {name, value, se}}`."""
    key = HEADLINE[name]
    out = {}
    for label, h in rec["headline"].items():
        got = key(h)
        if got is not None:
            out[label] = {"name": got[0], "value": got[1], "se": got[2]}
    return out


def build_summary(root: Path, results: dict[str, Any], table: list[dict[str, Any]],
                  timing: dict[str, Any] | None) -> dict[str, Any]:
    """summary.json: per section its headline numbers, status, CPU seconds and source file."""
    sections = {}
    for name in ORDER:
        rec = results.get(name)
        if rec is None:
            sections[name] = {"status": "not run"}
            continue
        sections[name] = {"file": f"{name}/result.json", "status": rec["status"],
                          "cpu_s": rec["cpu_s"], "cpu_s_total": round(sum(rec["cpu_s"].values()), 2),
                          "headline": headline_number(name, rec)}
    verdict_cells = {row["key"]: {c: cell["verdict"] for c, cell in row["cells"].items()}
                     for row in table}
    return {"sections": sections, "verdicts": verdict_cells, "timing": timing or {}}


def build_report(root: str | Path, *, timing: dict[str, Any] | None = None,
                 title: str = "iclgd demo report") -> Path:
    """Write `report.md`, `report.html` and `summary.json` under `root`; return report.md."""
    from iclgd.analyses.report_html import markdown_to_html

    root = Path(root)
    results = read_results(root)
    table = verdicts(root)
    cols = columns(table, results)
    parts = [f"# {title}\n",
             "Every test of the ICL-as-GD debate on the models below: the constructions and "
             "linear-attention models trained on the ICL objective, a GINC model whose ICL "
             "emerges from next-token pretraining, and a real pretrained LM when installed. "
             "Every number is read from the result files beside this report (provenance in "
             "each `result.json`).\n",
             "## Verdicts\n",
             "Each cell: whether the evidence here **supports**, **contradicts** or is "
             "**inconclusive** about the claim, the measurement and its control, computed by "
             "the rules listed under “How the verdicts are computed” at the end.\n",
             verdict_markdown(table, cols)]
    for i, name in enumerate(ORDER, 1):
        parts.append(section_markdown(name, i, results.get(name), table))
    parts.append("## How the verdicts are computed\n")
    parts += [f"- **{row['claim']}** — {row['rule']}" for row in table]
    if timing:
        parts += ["", "## Timing\n", _timing_markdown(timing)]
    md = "\n".join(parts) + "\n"
    write_json(root / "summary.json", build_summary(root, results, table, timing))
    atomic_write_text(root / "report.html", markdown_to_html(md, root, title=title))
    return atomic_write_text(root / "report.md", md)


def _timing_markdown(timing: dict[str, Any]) -> str:
    lines = [f"Wall {fmt(timing.get('wall_s'), '.0f')} s; CPU {fmt(timing.get('cpu_s'), '.0f')} s "
             f"over {timing.get('jobs', 1)} worker(s).", ""]
    for name, cpu in (timing.get("sections") or {}).items():
        lines.append(f"- {name}: {fmt(cpu, '.0f')} s CPU")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    """`python -m iclgd.analyses.report DIR`: rebuild the report from DIR's result files."""
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python -m iclgd.analyses.report DIR", file=sys.stderr)
        return 2
    timing = None
    summary = Path(args[0]) / "summary.json"
    if summary.is_file():
        timing = json.loads(summary.read_text(encoding="utf-8")).get("timing")
    print(build_report(args[0], timing=timing))
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())

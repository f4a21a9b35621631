"""`iclgd demo --quick` end to end: every section, the verdict table, valid files, resume, and a
failing section shown as failed while the others are kept; `iclgd analyse` on one section."""

from __future__ import annotations

import json
import math
import re

import pytest

from iclgd.cli import main

SECTIONS = ("constructions", "trained_vs_constructed", "density", "emergent_icl", "order",
            "outputs", "dual_form", "weight_evolution")
PNG = b"\x89PNG\r\n\x1a\n"


def _finite_numbers(obj):
    if isinstance(obj, dict):
        for v in obj.values():
            yield from _finite_numbers(v)
    elif isinstance(obj, list):
        for v in obj:
            yield from _finite_numbers(v)
    elif isinstance(obj, int | float) and not isinstance(obj, bool):
        yield obj


@pytest.fixture(scope="module")
def quick_demo(tmp_path_factory, tiny_task_lm):
    out = tmp_path_factory.mktemp("demo") / "demo"
    code = main(["demo", "--quick", "--out", str(out), "--lm", str(tiny_task_lm),
                 "--lm-tasks", "capitals,antonyms"])
    return out, code, tiny_task_lm.name


def test_quick_demo_writes_every_section(quick_demo):
    import matplotlib.image as mpimg

    out, code, lm = quick_demo
    assert code == 0
    report = (out / "report.md").read_text()
    for i, title in enumerate(("Constructions audit", "Trained against constructed", "Density",
                               "Emergent ICL", "Order sensitivity", "Outputs",
                               "Dual form, layer by layer", "Weight evolution"), 1):
        assert f"## {i}. {title}" in report
    assert "failed" not in report and "not run" not in report
    assert "ICL gain n = 0 -> 8, ginc_in_k3" in report  # the sweep's verdict, emerged or not
    figures = sorted(out.glob("*/*.png"))
    assert len(figures) >= 10
    for fig in figures:
        assert fig.read_bytes()[:8] == PNG
        assert mpimg.imread(fig).ndim == 3
    for name in SECTIONS:
        rec = json.loads((out / name / "result.json").read_text())
        assert all(s == "ok" for s in rec["status"].values()), (name, rec["status"])
        assert (out / name / "rows.csv").read_text().count("\n") > 1
        assert all(math.isfinite(x) for x in _finite_numbers(rec["headline"]))
    html = (out / "report.html").read_text()
    assert "<script" not in html.lower()
    srcs = re.findall(r'src="([^"]*)"', html)
    assert len(srcs) == len(figures) and all(s.startswith("data:image/png;base64,") for s in srcs)


def test_quick_demo_verdicts_and_summary(quick_demo):
    out, _, lm = quick_demo
    summary = json.loads((out / "summary.json").read_text())
    assert set(summary["sections"]) == set(SECTIONS)
    for name, sec in summary["sections"].items():
        assert sec["file"] == f"{name}/result.json" and (out / sec["file"]).is_file()
        assert sec["cpu_s_total"] >= 0
    heads = summary["sections"]
    assert 0 <= heads["constructions"]["headline"]["von-oswald-gd"]["value"] < 1e-10
    assert -1 <= heads["trained_vs_constructed"]["headline"]["lsa-1"]["value"] <= 1
    for label in ("ginc", lm):
        assert 0 <= heads["density"]["headline"][label]["value"] <= 1
        assert -1 <= heads["emergent_icl"]["headline"][label]["value"] <= 1
        assert 0 <= heads["outputs"]["headline"][label]["value"] <= 1
        assert -1 <= heads["dual_form"]["headline"][label]["value"] <= 1
    assert heads["order"]["headline"]["ginc"]["value"] >= 0
    words = {"supports", "contradicts", "inconclusive", "not available"}
    cells = [v for row in summary["verdicts"].values() for v in row.values()]
    assert len(cells) >= 12 and set(cells) <= words
    assert summary["verdicts"]["density"]["ginc"] == "contradicts"
    assert lm not in summary["verdicts"]["evolution"]  # one checkpoint: no series to sweep
    report = (out / "report.md").read_text()
    table = report.split("## Verdicts", 1)[1].split("## 1.", 1)[0]
    assert table.count("\n|") >= 10 and f"| {lm} |" in table
    assert summary["timing"]["wall_s"] > 0 and summary["timing"]["cpu_s"] > 0


def test_quick_demo_resumes_and_shows_a_failed_section(quick_demo, monkeypatch, capsys):
    from iclgd.analyses import sections_ft

    out, _, lm = quick_demo
    before = (out / "order" / "parts" / "ginc.json").read_text()
    capsys.readouterr()
    args = ["demo", "--quick", "--out", str(out), "--lm", str(tiny_task_lm_path(out)),
            "--lm-tasks", "capitals,antonyms"]
    assert main(args) == 0
    assert "resuming" in capsys.readouterr().err
    assert (out / "order" / "parts" / "ginc.json").read_text() == before

    def broken(ref, settings, ctx):
        raise RuntimeError("order broke")

    for f in (out / "order" / "parts").glob("*.json"):
        f.unlink()
    monkeypatch.setattr(sections_ft.ORDER, "measure", broken)
    assert main(args) == 1
    report = (out / "report.md").read_text()
    order = report.split("## 5. Order sensitivity", 1)[1].split("## 6.", 1)[0]
    assert "**failed**" in order and "order broke" in order
    outputs = json.loads((out / "outputs" / "result.json").read_text())
    assert set(outputs["status"].values()) == {"ok"}


def tiny_task_lm_path(out):
    """The LM folder the first run used (from its provenance)."""
    rec = json.loads((out / "density" / "result.json").read_text())
    return next(p["model"] for p in rec["provenance"].values() if p.get("kind") == "lm")


def test_analyse_one_section(tmp_path, capsys):
    out = tmp_path / "c"
    assert main(["analyse", "constructions", "--quick", "--out", str(out),
                 "--model", "von-oswald-gd"]) == 0
    assert "von-oswald-gd: ok" in capsys.readouterr().out
    assert (out / "constructions_noise.png").read_bytes()[:8] == PNG
    assert main(["analyse", "order", "--quick", "--out", str(tmp_path / "o"),
                 "--model", str(tmp_path / "missing")]) == 0
    assert "not available" in capsys.readouterr().out
    assert main(["analyse", "nope"]) == 2


def test_docs_figures_copy_the_lead_figures(quick_demo, tmp_path):
    from iclgd.analyses.docs_figures import main as docs_main

    out, _, _ = quick_demo
    assert docs_main([str(out), str(tmp_path)]) == 0
    pngs = sorted(p.name for p in (tmp_path / "demo").glob("*.png"))
    assert pngs == sorted(f"{s}.png" for s in SECTIONS)
    assert "| claim |" in (tmp_path / "demo" / "verdicts.md").read_text()

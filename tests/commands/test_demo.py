"""`iclgd demo --quick` runs every step end to end, writes the report, and resumes."""

from __future__ import annotations

from iclgd.cli import main


def test_demo_quick_end_to_end_and_resume(tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["demo", "--quick", "--out", str(out)]) == 0  # --device auto
    report = (out / "report.md").read_text()
    for section in ("Weight evolution", "ICL vs finetuning", "Order sensitivity",
                    "Weight density", "Constructions (audit)"):
        assert section in report
    assert "_missing_" not in report
    assert "ICL gain n = 0 -> 8, ginc_in_k3" in report  # the sweep's verdict, emerged or not
    for f in ("sweep/rows.jsonl", "compare/compare.json", "order/order.json",
              "density/density.json", "audit/audit.json"):
        assert (out / f).exists(), f
    capsys.readouterr()
    rows_before = (out / "sweep" / "rows.jsonl").read_text()
    assert main(["demo", "--quick", "--out", str(out)]) == 0  # --device auto
    assert "done already" in capsys.readouterr().err
    assert (out / "sweep" / "rows.jsonl").read_text() == rows_before

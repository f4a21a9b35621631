"""Verdict rules on hand-made result files: each rule's three outcomes at its thresholds."""

from __future__ import annotations

import pytest

from iclgd.analyses.verdict import (
    read_results,
    rule_density,
    rule_dual_form,
    rule_evolution,
    rule_order,
    rule_outputs,
    rule_trained,
    verdicts,
)
from iclgd.results import write_json


def rec(headline, kind="ginc", status=None):
    return {"headline": headline, "status": status or dict.fromkeys(headline, "ok"),
            "provenance": {k: {"kind": kind} for k in (status or headline)}, "extra": {},
            "cpu_s": {}}


def order_rec(icl, icl_se, sgd, sgd_se):
    return {"order": rec({"m": {"icl": icl, "icl_se": icl_se, "sgd": sgd, "sgd_se": sgd_se,
                                "ratio_sgd": icl / sgd, "ratio_sgd_se": 0.1, "gd": 1e-7}})}


@pytest.mark.parametrize(("icl", "se", "sgd", "sgd_se", "want"), [
    (0.33, 0.01, 0.08, 0.005, "contradicts"),   # r_lo = 0.31 / 0.09 = 3.4 > 2
    (0.10, 0.005, 0.09, 0.005, "supports"),     # r in [0.09/0.10, 0.11/0.08] within [1/2, 2]
    (0.33, 0.06, 0.088, 0.027, "inconclusive"),  # r_lo = 0.21 / 0.142 = 1.48
])
def test_order_rule(icl, se, sgd, sgd_se, want):
    assert rule_order(order_rec(icl, se, sgd, sgd_se))["m"].verdict == want


def dual(t, u, se=0.01, r=0.0):
    h = {"methods": ["kv"], "n_demos": 8}
    for copy, v in (("trained", t), ("untrained", u)):
        h[f"simaou_raw_kv_{copy}"], h[f"simaou_raw_kv_{copy}_se"] = v, se
        h[f"simaou_random_raw_kv_{copy}"], h[f"simaou_random_raw_kv_{copy}_se"] = r, se
    return {"dual_form": rec({"m": h})}


def test_dual_form_rule_reads_the_untrained_control():
    assert rule_dual_form(dual(0.20, 0.10))["m"].verdict == "supports"
    assert rule_dual_form(dual(0.05, 0.20))["m"].verdict == "contradicts"  # Deutch et al.
    assert rule_dual_form(dual(0.10, 0.11))["m"].verdict == "inconclusive"
    assert rule_dual_form(dual(0.20, 0.10, r=0.19))["m"].verdict == "inconclusive"


def test_outputs_rule_against_the_reordering_floor():
    def out(to, s, fl, sf):
        return {"outputs": rec({"m": {"best_method": "gd", "n_demos": 8, "token_overlap_gd": to,
                                      "token_overlap_gd_se": s, "token_overlap_floor": fl,
                                      "token_overlap_floor_se": sf}})}
    assert rule_outputs(out(0.75, 0.03, 1.0, 0.0))["m"].verdict == "contradicts"
    assert rule_outputs(out(0.97, 0.02, 1.0, 0.01))["m"].verdict == "supports"
    assert rule_outputs(out(0.80, 0.15, 1.0, 0.0))["m"].verdict == "inconclusive"


def test_density_rule_needs_the_constructions_zero_fraction():
    cons = rec({"von-oswald-gd": {"zero_fraction_4096_qk": 0.99988}}, kind="construction")
    res = {"constructions": cons, "density": rec({
        "g": {"kind": "ginc", "fraction_below": {"1e-03": 0.003},
              "fraction_below_untrained": {"1e-03": 0.04}, "verdict_threshold": "1e-03"},
        "sparse": {"kind": "lm", "fraction_below": {"1e-03": 0.9999},
                   "verdict_threshold": "1e-03"}})}
    cells = rule_density(res)
    assert cells["g"].verdict == "contradicts" and "0.99988" in cells["g"].control
    assert cells["sparse"].verdict == "supports"


def test_evolution_rule():
    def evo(late, final, drift, se=0.02):
        return {"weight_evolution": rec({"g": {
            "late_gain": late, "late_gain_se": se, "final_gain": final, "final_gain_se": se,
            "late_drift": drift, "late_step": 1940, "final_step": 4500,
            "icl_emerged": final > 2 * se}})}
    assert rule_evolution(evo(0.14, 0.15, 0.29))["g"].verdict == "contradicts"
    assert rule_evolution(evo(0.05, 0.15, 0.29))["g"].verdict == "supports"
    assert rule_evolution(evo(0.14, 0.15, 0.01))["g"].verdict == "inconclusive"
    assert rule_evolution(evo(0.0, 0.01, 0.5))["g"].verdict == "inconclusive"


def test_trained_rule_uses_both_depths():
    h1 = {"cos_gd": 0.9993, "cos_gd_se": 1e-4, "tf_loss": 0.21, "gd_loss": 0.21}
    h3 = {"cos_gd": 0.96, "cos_gd_se": 1e-3, "cos_gdpp": 0.995, "cos_gdpp_se": 1e-3,
          "tf_loss": 0.08, "gd_loss": 0.13, "gdpp_loss": 0.079}
    res = {"trained_vs_constructed": rec({"lsa-1": h1, "lsa-3": h3}, kind="lsa")}
    assert rule_trained(res)["toy"].verdict == "supports"
    res["trained_vs_constructed"]["headline"]["lsa-1"]["cos_gd"] = 0.5
    assert rule_trained(res)["toy"].verdict == "contradicts"


def test_verdicts_read_files_and_mark_missing_models(tmp_path):
    write_json(tmp_path / "order" / "result.json",
               rec({"m": order_rec(0.33, 0.01, 0.08, 0.005)["order"]["headline"]["m"],
                    "lm": {}}, status={"m": "ok", "lm": "not available: no weights"}))
    assert set(read_results(tmp_path)) == {"order"}
    row = next(r for r in verdicts(tmp_path) if r["key"] == "order")
    assert row["cells"]["m"]["verdict"] == "contradicts"
    assert row["cells"]["m"]["source"] == "order/result.json"
    assert row["cells"]["lm"]["verdict"] == "not available"
    assert "Shen et al. (2024)" in row["rule"]


def test_markdown_table_escapes_pipes_in_cells():
    from iclgd.analyses.report import verdict_markdown

    table = [{"claim": "density", "test": "fraction of |w| < τ",
              "cells": {"m": {"verdict": "contradicts", "measurement": "fraction |w| < 1e-03: 0.1",
                              "control": "c"}}}]
    line = verdict_markdown(table, ["m"]).splitlines()[2]
    assert line.count("|") - line.count("\\|") == 4  # 3 columns: 4 unescaped separators
    assert "fraction \\|w\\| < 1e-03" in line

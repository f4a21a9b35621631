"""The demo's sections as library functions: real numbers against hand computations."""

from __future__ import annotations

import json
import math

import pytest
import torch

from iclgd.analyses import sections as S
from iclgd.analyses.section_base import ModelRef, Part, Section, measure_part, run_section
from iclgd.analyses.sections_ft import ratio_se
from iclgd.analyses.sections_lm import verdict_threshold
from iclgd.probes.density import block_grid, fractions_below


def test_constructions_section_matches_algorithm_and_width_4096_counts(tmp_path):
    res = S.constructions(["von-oswald-gd", "akyurek-sgd"], quick=True, out=tmp_path)
    assert res.status == {"von-oswald-gd": "ok", "akyurek-sgd": "ok"}
    gd = res.headline["von-oswald-gd"]
    assert gd["max_abs_error"] < 1e-12 and gd["exact"]
    # rebuilt at width 4096 (d = d_out = 2048): W_K = W_Q = [[I_d, 0], [0, 0]] -> 2048 nonzeros
    assert gd["zero_fraction_4096_qk"] == pytest.approx(1 - 2048 / 4096**2, abs=1e-12)
    assert res.headline["akyurek-sgd"]["max_abs_error"] < 1e-4
    curve = res.extra["von-oswald-gd"]["curve"]
    assert [c["eps"] for c in curve] == sorted(c["eps"] for c in curve)
    assert curve[-1]["max_abs_error"] > curve[0]["max_abs_error"]
    saved = json.loads((tmp_path / "result.json").read_text())
    assert saved["headline"]["von-oswald-gd"]["max_abs_error"] == gd["max_abs_error"]
    assert {"constructions_noise.png", "constructions_density.png"} <= set(saved["figures"])


def test_section_resumes_saved_parts_and_reloads(tmp_path, monkeypatch):
    calls = []
    real = S.CONSTRUCTIONS.measure

    def counting(ref, settings, ctx):
        calls.append(ref.label)
        return real(ref, settings, ctx)

    section = Section("constructions", "t", S.CONSTRUCTIONS.settings_type, counting,
                      S.CONSTRUCTIONS.plot)
    refs = [ModelRef("von-oswald-gd", "von-oswald-gd", "construction")]
    settings = section.settings_type.quick()
    first = run_section(section, refs, settings, out=tmp_path)
    again = run_section(section, refs, settings, out=tmp_path)
    assert calls == ["von-oswald-gd"]
    assert again.headline == first.headline
    loaded = S.load_section(tmp_path)
    assert loaded.headline == first.headline and set(loaded.plot()) == set(first.plot())


def test_missing_model_is_not_available_and_a_bug_is_failed(tmp_path):
    missing = measure_part(S.get_section("order"), ModelRef("x", str(tmp_path / "nope"), "lm"),
                           S.get_section("order").settings_type.quick())
    assert missing.status.startswith("not available: ")

    def broken(ref, settings, ctx):
        raise RuntimeError("boom")

    bad = Section("b", "b", S.CONSTRUCTIONS.settings_type, broken, lambda r: {})
    part = measure_part(bad, ModelRef("m", "m", "construction"), bad.settings_type())
    assert part.status == "failed: RuntimeError: boom"


def test_block_grid_recognises_q4_1_blocks():
    # Q4_1 as llama.cpp quantises: per block of 32, m = min, d = (max - min) / 15 stored in fp16,
    # q = round((w - m) / d) in 0..15; dequantised w = d q + m
    gen = torch.Generator().manual_seed(0)
    w0 = torch.randn(64, 4, 32, generator=gen, dtype=torch.float64) * 0.05
    m = w0.amin(-1, keepdim=True).half().double()
    d = ((w0.amax(-1, keepdim=True) - m) / 15).half().double()
    q = ((w0 - m) / d).round().clamp(0, 15)
    g = block_grid((d * q + m).reshape(64, 128))
    assert g["mean_residual"] < 1e-9
    assert g["median_step"] == pytest.approx(float(d.median()), rel=1e-3)
    off = block_grid(torch.randn(64, 128, generator=gen))
    assert 0.2 < off["mean_residual"] < 0.3


def test_verdict_threshold_moves_above_half_the_grid_step():
    th = (1e-2, 1e-3, 1e-4)
    assert verdict_threshold(th, {"on_grid": False}) == 1e-3
    assert verdict_threshold(th, {"on_grid": True, "median_step": 0.016}) == 1e-2
    assert verdict_threshold(th, {"on_grid": True, "median_step": 1e-4}) == 1e-3


def test_ratio_se_is_the_delta_method():
    r, se = ratio_se(0.3, 0.03, 0.1, 0.02)
    assert r == pytest.approx(3.0)
    assert se == pytest.approx(3.0 * math.sqrt(0.1**2 + 0.2**2))


def test_density_of_an_lm_and_its_untrained_copy(tiny_task_lm):
    from iclgd.analyses.sections_lm import _lm_matrices
    from iclgd.hooks import load_model

    res = S.density([str(tiny_task_lm)], quick=True)
    h = res.headline[tiny_task_lm.name]
    model = load_model(str(tiny_task_lm), device="cpu")
    fr = [fractions_below(w) for w in _lm_matrices(model).values()]
    assert h["fraction_below"]["1e-02"] == pytest.approx(sum(f["1e-02"] for f in fr) / len(fr))
    # the untrained copy is N(0, 0.02^2): P(|w| < 0.01) = erf(0.5 / sqrt 2) = 0.3829
    assert h["fraction_below_untrained"]["1e-02"] == pytest.approx(0.3829, abs=0.02)
    assert h["grid"]["on_grid"] is False


def test_emergent_and_outputs_on_a_text_lm(tiny_task_lm):
    res = S.emergent_icl([str(tiny_task_lm)], S.get_section("emergent_icl").settings_type(
        lm_n=(0, 2), lm_tasks=("capitals", "no-such-task"), lm_queries=4))
    h = res.headline[tiny_task_lm.name]
    assert h["tasks"] == ["capitals"] and "no-such-task" in h["unavailable_tasks"]
    rows = {r["n"]: r for r in res.rows}
    assert h["gain"] == pytest.approx(rows[2]["accuracy"] - rows[0]["accuracy"])
    assert all(r["queries"] == 4 for r in res.rows)
    out = S.outputs([str(tiny_task_lm)], S.get_section("outputs").settings_type(
        lm_demos=(1, 2), lm_queries=3, methods=("gd",), lm_tasks=("capitals",)))
    oh = out.headline[tiny_task_lm.name]
    assert 0.0 <= oh["token_overlap_gd"] <= 1.0 and oh["token_overlap_floor"] <= 1.0 + 1e-12
    assert {r["n_demos"] for r in out.rows} == {1, 2}


def test_unknown_section_and_bad_settings_raise():
    from iclgd.errors import IclgdError

    with pytest.raises(IclgdError, match="unknown section"):
        S.get_section("nope")
    with pytest.raises(IclgdError, match="takes"):
        S.analyse("order", "x", settings=S.get_section("density").settings_type())


def test_part_round_trips_through_json(tmp_path):
    from iclgd.analyses.section_base import load_part, save_part

    part = Part("a", "spec", rows=[{"x": 1.0}], headline={"v": 2.0},
                provenance={"settings": {"s": 1}})
    save_part(tmp_path, part)
    assert load_part(tmp_path, "a", {"s": 1}) == part
    assert load_part(tmp_path, "a", {"s": 2}) is None


def test_learning_rates_default_given_and_tuned(tiny_task_lm):
    from iclgd.analyses.compare import DEFAULT_LR
    from iclgd.analyses.lr_search import default_grid
    from iclgd.analyses.sections_ft import OrderSettings, learning_rates_for
    from iclgd.hooks import load_model

    ref = ModelRef("lm", str(tiny_task_lm), "lm")
    model = load_model(str(tiny_task_lm), device="cpu")
    base = OrderSettings(lm_tasks=("capitals",), tune_queries=4)
    rates, _ = learning_rates_for(model, ref, OrderSettings(lr="default"), ["gd", "adam"], 2)
    assert rates == {"gd": DEFAULT_LR["gd"], "adam": DEFAULT_LR["adam"]}
    rates, _ = learning_rates_for(model, ref, OrderSettings(lr=(("gd", 0.5),)), ["gd"], 2)
    assert rates == {"gd": 0.5}
    rates, info = learning_rates_for(model, ref, base, ["gd", "adam"], 2)
    assert rates["gd"] in default_grid("gd") and rates["adam"] in default_grid("adam")
    assert sum(r["chosen"] for r in info["lr_search"]) == 2


def test_demo_tunes_each_model_once_and_passes_the_rates(tiny_task_lm, tmp_path):
    from iclgd.analyses.demo_plan import DemoConfig, plan, tune_model

    cfg = DemoConfig(out=tmp_path, lm=str(tiny_task_lm), lm_tasks=("capitals",))
    keys = {t.key: t for t in plan(cfg)}
    assert "tune/ginc" in keys and f"tune/{tiny_task_lm.name}" in keys
    assert f"tune/{tiny_task_lm.name}" in keys[f"order/{tiny_task_lm.name}"].deps
    assert "tune/ginc" not in keys["density/ginc"].deps
    ref = keys[f"tune/{tiny_task_lm.name}"].ref
    got = tune_model(ref, cfg)
    assert got["status"] == "ok" and set(got["rates"]) == {"gd", "sgd", "adam", "kv"}
    order = cfg.settings("order", ref.label)
    assert dict(order.lr) == got["rates"]
    assert cfg.settings("density", ref.label) == cfg.settings("density")
    assert (tmp_path / "lr" / f"{ref.label}.csv").is_file()


def test_critical_path_starts_long_chains_first():
    from iclgd.analyses.demo_plan import Task, critical_path

    tasks = [Task("train", "train", estimate=100), Task("probe", "probe", estimate=5),
             Task("lm/a", "part", ("probe",), 60), Task("lm/b", "part", ("probe",), 50),
             Task("toy", "part", (), 30), Task("ginc", "part", ("train",), 10)]
    rank = critical_path(tasks)
    assert rank == {"train": 110, "probe": 65, "lm/a": 60, "lm/b": 50, "toy": 30, "ginc": 10}


@pytest.mark.slow
def test_block_grid_agrees_with_the_recorded_q4_1_steps(smollm2_folder):
    import statistics

    from iclgd.analyses.sections_lm import quantisation_grid
    from iclgd.hooks import load_model
    from iclgd.hooks.named_models import quantisation_grid as recorded

    grid = quantisation_grid(load_model("smollm2-135m", device="cpu"))
    steps = [v["d_median"] for v in recorded(smollm2_folder).values() if v["type"] == "Q4_1"]
    assert grid["on_grid"] and grid["mean_residual"] < 0.01
    assert grid["median_step"] == pytest.approx(statistics.median(steps), rel=0.02)


def test_one_real_lm_task_at_a_time():
    from iclgd.analyses.demo_plan import Scheduler, Task

    lm, ginc = ModelRef("lm", "x", "lm"), ModelRef("ginc", "g", "ginc")
    running = {object(): (Task("order/lm", "part", ref=lm), 0.0)}
    assert Scheduler._lm_busy(Task("outputs/lm", "part", ref=lm), running)
    assert not Scheduler._lm_busy(Task("outputs/ginc", "part", ref=ginc), running)
    assert not Scheduler._lm_busy(Task("outputs/lm", "part", ref=lm), {})

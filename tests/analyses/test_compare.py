"""`iclgd compare`: metrics on captured runs, the untrained control, end to end on tiny models."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from iclgd.analyses.compare import (
    compare_model,
    layer_metrics,
    learning_rates,
    output_metrics,
    setting_metrics,
    summarize,
)
from iclgd.analyses.control import reinitialized_names, untrained_control
from iclgd.analyses.prompt_sets import ginc_prompt_sets, text_prompt_sets
from iclgd.analyses.runs import run_finetuned, run_icl, run_zero_shot
from iclgd.cli import main
from iclgd.data.tasks import Example, Task, Template
from iclgd.errors import IclgdError
from iclgd.hooks import hf_state_dict, load_model

TEMPLATE = Template(input_prefix="w1 ", output_prefix=" w2", separator=" w3 ")


def toy_task() -> Task:
    ex = [Example(f"w{i}", f"w{i + 20}") for i in range(4, 20)]
    return Task("toy", ex[:10], ex[10:], TEMPLATE)


@pytest.fixture(scope="module")
def neox(tiny_models):
    return load_model(tiny_models["neox"], device="cpu")


@pytest.fixture(scope="module")
def sets(neox):
    return text_prompt_sets(toy_task(), neox.tokenizer, [1, 3], n_queries=4, n_ctx=64)


def test_icl_against_itself_scores_one(neox, sets):
    ps = sets[3]
    zs, icl = run_zero_shot(neox, ps), run_icl(neox, ps)
    floor = setting_metrics(zs, icl, icl)
    assert floor["token_overlap_floor"] == 1.0 and floor["overlap_cosine_floor"] == pytest.approx(1.0)
    icl_as_ft = icl.__class__(**{**icl.__dict__, "setting": "ft"})
    out = output_metrics(zs, icl, icl_as_ft)
    assert out["token_overlap"] == 1.0 and out["overlap_cosine"] == pytest.approx(1.0, abs=1e-12)
    per_layer = layer_metrics(zs, icl, icl_as_ft)
    assert torch.allclose(per_layer["simaou_norm"], torch.ones(2, dtype=torch.float64))
    assert torch.allclose(per_layer["simam_after"], torch.ones(2, dtype=torch.float64))
    # ZS vs ZS "before" is exactly 1; ZS vs ICL is not
    assert torch.allclose(setting_metrics(zs, zs, zs)["simam_before"], torch.ones(2, dtype=torch.float64))
    assert float(floor["simam_before"].min()) < 1 - 1e-6


def test_reordered_icl_floor_and_finetuned_metrics_by_hand(neox, sets):
    from iclgd.probes.finetune import finetune

    ps = sets[3]
    zs, icl = run_zero_shot(neox, ps), run_icl(neox, ps)
    ft = run_finetuned(neox, ps, finetune(neox, ps.demos, method="gd", lr=0.5), kendall=True)
    out = output_metrics(zs, icl, ft, top_k=5)
    p, q = icl.probs, ft.probs
    overlap = []
    for b in range(len(ps)):
        a, c = set(p[b].topk(5).indices.tolist()), set(q[b].topk(5).indices.tolist())
        overlap.append(len(a & c) / 5)
    assert out["token_overlap"] == pytest.approx(sum(overlap) / len(overlap))
    lm = layer_metrics(zs, icl, ft)
    u = lambda x: x.double() / x.double().norm(dim=-1, keepdim=True)  # noqa: E731
    d1 = u(icl.attn_out[:, 1]) - u(zs.attn_out[:, 1])
    d2 = u(ft.attn_out[:, 1]) - u(zs.attn_out[:, 1])
    want = torch.nn.functional.cosine_similarity(d1, d2, dim=-1).mean()
    assert float(lm["simaou_norm"][1]) == pytest.approx(float(want), abs=1e-10)
    # Kendall: ICL head-mean attention vs x'_t . x_q of the finetuned model, by hand for one query
    from iclgd.probes.metrics import kendall_tau

    by_hand = torch.stack([kendall_tau(icl.demo_attention[b, 1].double().mean(0),
                                       ft.demo_inputs[b, 1].double() @ ft.attn_in[b, 1].double())
                           for b in range(len(ps))]).mean()
    assert float(lm["kendall_tau_dual_form"][1]) == pytest.approx(float(by_hand), abs=1e-12)
    # layer 0 of a rotary model: a token's input is the same wherever it sits -> exact ties,
    # which count as neither concordant nor discordant
    x0 = ft.demo_inputs[0, 0]
    first_w1 = (ps.demos.tokens[ps.demos.valid] == 1).nonzero()[:, 0]
    assert torch.equal(x0[first_w1[0]], x0[first_w1[1]])


def test_untrained_control_keeps_embeddings_norms_unembedding(tiny_models):
    for arch in ("neox", "gpt2"):
        model = load_model(tiny_models[arch], device="cpu")
        before = {k: v.clone() for k, v in hf_state_dict(model).items()}
        control = untrained_control(model, seed=3)
        after = hf_state_dict(control)
        names = set(reinitialized_names(model))
        assert names, arch
        for key, value in before.items():
            if key in names:
                assert not torch.equal(value, after[key]), key
            else:
                assert torch.equal(value, after[key]), key
        kept = [k for k in before if k not in names]
        assert any("emb" in k or "wte" in k for k in kept), arch
        assert any("norm" in k or "ln_" in k for k in kept), arch
        assert any(k.startswith(("lm_head", "embed_out")) for k in kept) or arch == "gpt2"
        assert all("norm" not in k and ".ln_" not in k for k in names)
        assert all(torch.equal(before[k], v) for k, v in hf_state_dict(model).items())
        weights = [after[k] for k in names if after[k].ndim == 2]
        biases = [after[k] for k in names if after[k].ndim == 1]
        assert all((b == 0).all() for b in biases)
        assert float(torch.cat([w.flatten() for w in weights]).std()) == pytest.approx(0.02, rel=0.05)
        tok = torch.tensor([[1, 5, 9, 2]])
        with torch.no_grad():
            assert (control(tok) - model(tok)).abs().max() > 1e-3


def test_learning_rates_and_methods():
    assert learning_rates(None, ["gd", "adam"]) == {"gd": 1e-2, "adam": 1e-3}
    assert learning_rates(0.1, ["gd", "adam"]) == {"gd": 0.1, "adam": 0.1}
    assert learning_rates({"adam": 5e-4}, ["gd", "adam"]) == {"gd": 1e-2, "adam": 5e-4}
    with pytest.raises(IclgdError, match="not run"):
        learning_rates({"kv": 1.0}, ["gd"])


def test_compare_model_rows_and_summary(neox, sets):
    rows = compare_model(neox, sets, ["gd", "wv-layer"], lr={"gd": 0.1, "wv-layer": 0.1})
    metrics = {r["metric"] for r in rows}
    for m in ("accuracy_zs", "accuracy_icl", "accuracy_ft", "token_overlap",
              "token_overlap_floor", "simaou_norm", "simaou_raw", "simaou_random_norm",
              "simam_before", "simam_after", "simam_delta", "kendall_tau", "rec2ftp",
              "dw_cosine", "dw_norm_ratio", "dw_left_overlap", "kendall_tau_random",
              "kendall_tau_examples", "topk_recall_tokens", "topk_recall_examples_random",
              "kendall_tau_dual_form", "n_f2t", "simaou_norm_f2t", "simam_after_f2t"):
        assert m in metrics, m
    # each accuracy comes with its binomial standard error over the queries
    for r in (r for r in rows if r["metric"] in ("accuracy_icl", "accuracy_ft")):
        se = next(s for s in rows if s["metric"] == r["metric"] + "_se"
                  and (s["n_demos"], s["method"]) == (r["n_demos"], r["method"]))
        n_q = len(sets[r["n_demos"]].icl)
        assert se["value"] == pytest.approx((r["value"] * (1 - r["value"]) / n_q) ** 0.5, abs=1e-12)
    # N = 1 cannot be reordered: the noise floor is exactly 1
    floor1 = [r for r in rows if r["metric"] == "token_overlap_floor" and r["n_demos"] == 1]
    assert floor1[0]["value"] == 1.0
    # wv-layer trains only the middle layer's W_V: ΔW_FT = 0 elsewhere -> NaN rows
    dw = {r["layer"]: r["value"] for r in rows if r["method"] == "wv-layer"
          and r["metric"] == "dw_cosine" and r["n_demos"] == 3}
    assert dw[0] != dw[0] and dw[1] == dw[1]
    summary = summarize(rows)
    assert {(s["n_demos"], s["method"]) for s in summary} == {(1, "gd"), (3, "gd"), (1, "wv-layer"),
                                                            (3, "wv-layer")}
    s = next(s for s in summary if s["n_demos"] == 3 and s["method"] == "gd")
    per_layer = [r["value"] for r in rows if r["n_demos"] == 3 and r["method"] == "gd"
                 and r["metric"] == "simaou_norm"]
    assert s["simaou_norm"] == pytest.approx(sum(per_layer) / 2)


def test_ginc_prompt_sets_are_nested_and_aligned():
    from iclgd.data.ginc_hmm import GincConfig, build_world

    world = build_world(GincConfig())
    got = ginc_prompt_sets(world, [1, 2, 4], k=3, n_queries=5, seed=1)
    assert torch.equal(got[1].zs.tokens, got[4].zs.tokens)
    assert got[4].icl.tokens.shape == (5, 4 * 4 + 2)
    assert got[2].demos.tokens.shape == (5, 2, 4)
    # the N = 2 prompt is the N = 4 prompt without its last two examples
    assert torch.equal(got[2].icl.tokens[:, :8], got[4].icl.tokens[:, :8])
    assert torch.equal(got[2].icl.tokens[:, -2:], got[4].icl.tokens[:, -2:])
    assert got[1].query_len.tolist() == [2] * 5
    with pytest.raises(IclgdError, match="context"):
        ginc_prompt_sets(world, [64], n_queries=2, n_ctx=100)


def _write_task(path: Path) -> Path:
    rows = [{"input": f"w{i}", "output": f"w{i + 20}"} for i in range(4, 24)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_compare_cli_end_to_end(tiny_models, tmp_path, capsys):
    task = _write_task(tmp_path / "pairs.jsonl")
    out = tmp_path / "out"
    rc = main(["compare", "--model", str(tiny_models["neox"]), "--task", str(task), "--demos",
               "1,2", "--methods", "gd,kv", "--queries", "3", "--control", "untrained",
               "--out", str(out), "--json"])
    assert rc == 0
    printed = json.loads(capsys.readouterr().out)
    assert {r["model"] for r in printed["summary"]} == {"trained", "untrained"}
    for name in ("compare.csv", "compare_summary.csv", "compare.json", "compare_accuracy.png",
                 "compare_simaou.png", "compare_simam.png", "compare_delta_w.png"):
        assert (out / name).stat().st_size > 0, name
    saved = json.loads((out / "compare.json").read_text())
    assert saved["provenance"]["weight_processing"] == "raw"
    assert saved["provenance"]["control"] == "untrained"
    assert saved["provenance"]["control_init"].startswith("attention and MLP weights ~ N(0, 0.02^2)")
    assert saved["settings"]["n_queries"] == 3 and saved["settings"]["methods"] == ["gd", "kv"]
    header = (out / "compare.csv").read_text().splitlines()[0]
    assert header == "model,n_demos,method,metric,layer,value"


def test_compare_cli_errors(tiny_models, tmp_path, capsys):
    task = _write_task(tmp_path / "pairs.jsonl")
    base = ["compare", "--model", str(tiny_models["neox"]), "--task", str(task), "--queries", "2",
            "--out", str(tmp_path / "o")]
    cases = [
        (["--methods", "newton"], "unknown finetuning method"),
        (["--demos", "50", "--methods", "gd"], "demonstrations"),
        (["--demos", "1", "--methods", "sgd", "--lr", "1e30"], "not finite"),
        (["--demos", "1,x"], "comma-separated"),
    ]
    for extra, message in cases:
        assert main(base + extra) == 2
        err = capsys.readouterr().err.strip()
        assert message in err and len(err.splitlines()) == 1, err
    assert not (tmp_path / "o").exists()  # nothing written, no NaN rows


def test_compare_cli_on_a_ginc_series(tmp_path, capsys):
    from iclgd.data.ginc_hmm import GincConfig, save_ginc_json
    from iclgd.data.tokenizer import save_ginc_tokenizer
    from iclgd.training.ginc import GincTrainConfig, build_model

    cfg = GincTrainConfig(layers=1, d_model=32, heads=2, window=64)
    for step in (0, 10):
        folder = tmp_path / "series" / f"step{step}"
        build_model(cfg).save_pretrained(folder)
        save_ginc_tokenizer(cfg.ginc.vocab_size, folder)
        save_ginc_json(folder, GincConfig())
    out = tmp_path / "g"
    rc = main(["compare", "--model", str(tmp_path / "series"), "--task", "ginc", "--demos", "1,2",
               "--methods", "sgd", "--queries", "3", "--out", str(out)])
    assert rc == 0
    text = capsys.readouterr().out
    assert "sgd" in text
    saved = json.loads((out / "compare.json").read_text())
    assert saved["provenance"]["checkpoint"] == "step10"
    assert saved["settings"]["task"] == "ginc" and saved["settings"]["per_query_demonstrations"]


def test_batched_delta_w_matches_the_per_call_functions(neox, sets):
    from iclgd.analyses.compare_dw import DeltaWComparison
    from iclgd.probes.delta_w import compare_delta_w, finetuned_delta_w, implied_delta_w
    from iclgd.probes.finetune import finetune

    ps = sets[3]
    delta = finetune(neox, ps.demos, method="kv", lr=0.3)
    dw = DeltaWComparison(neox, ps)
    for row in (0, 3):
        actual = dw.actual(delta, row)
        end = int(ps.zs.answer_pos[row]) + 1
        qpos = torch.arange(end - int(ps.query_len[row]), end)
        for layer in (0, 1):
            want_icl = implied_delta_w(neox, ps.icl, layer, row=row).materialize()
            want_ft = finetuned_delta_w(neox, delta, ps.zs.tokens[row, :end], layer,
                                        positions=qpos).materialize()
            got_icl = dw.implied(row, layer).materialize()
            got_ft = actual[layer].materialize()
            assert torch.allclose(got_icl, want_icl, rtol=1e-5, atol=1e-6 * float(want_icl.abs().max()))
            assert torch.allclose(got_ft, want_ft, rtol=1e-5, atol=1e-6 * float(want_ft.abs().max()))
    rows = {(r["metric"], r["layer"]): r["value"] for r in dw.rows([delta])}
    per_query = [float(compare_delta_w(dw.implied(r, 1), dw.actual(delta, r)[1])["cosine"].mean())
                 for r in range(len(ps))]
    assert rows[("dw_cosine", 1)] == pytest.approx(sum(per_query) / len(per_query), abs=1e-12)


def test_delta_w_from_the_runs_equals_its_own_capture(neox, sets):
    from iclgd.analyses.compare_dw import DeltaWComparison
    from iclgd.probes.finetune import finetune

    ps = sets[3]
    zs = run_zero_shot(neox, ps, token_inputs=True, batch_size=3)  # two batches, padded
    icl = run_icl(neox, ps, token_inputs=True, batch_size=3)
    assert zs.query_inputs.shape[:3] == (len(ps), 2, int(ps.query_len.max()))
    assert torch.equal(zs.attn_in, run_zero_shot(neox, ps, batch_size=3).attn_in)
    own, reused = DeltaWComparison(neox, ps), DeltaWComparison(neox, ps, zs=zs, icl=icl)
    for row in range(len(ps)):
        for layer in (0, 1):
            a, b = own.implied(row, layer).materialize(), reused.implied(row, layer).materialize()
            assert torch.allclose(a, b, rtol=1e-5, atol=1e-6 * float(a.abs().max()))
            assert torch.allclose(own.query_x[row][layer], reused.query_x[row][layer],
                                  rtol=1e-5, atol=1e-6)
    delta = finetune(neox, ps.demos, method="kv", lr=0.3)
    for x, y in zip(own.rows([delta]), reused.rows([delta]), strict=True):
        assert x["metric"] == y["metric"] and x["layer"] == y["layer"]
        assert x["value"] == pytest.approx(y["value"], rel=1e-4, abs=1e-6)

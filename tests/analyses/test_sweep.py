"""Checkpoint sweep end to end on tiny GINC-world GPT-NeoX series: rows, drift, resume, errors."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from iclgd.analyses.sweep import ROWS, SweepSettings, load_rows, run_sweep
from iclgd.errors import IclgdError
from iclgd.hooks import load_model, read_hf_weights
from iclgd.probes.drift import layer_matrices, weight_drift

FAST = SweepSettings(icl_sets=("in:3",), n_values=(0, 1, 4), n_prompts=12, n_score_seqs=3,
                     induction_seqs=2, induction_seq_len=8)
FAST_ARGS = ["--icl-sets", "in:3", "--n-values", "0,1,4", "--n-prompts", "12", "--no-plots",
             "--device", "cpu", "--score-seqs", "3", "--induction-seqs", "2",
             "--induction-seq-len", "8"]


def make_series(root: Path, steps: list[int], hidden: int = 32) -> Path:
    """Tiny GPT-NeoX checkpoints over the GINC vocabulary (50), each with ginc.json."""
    from transformers import GPTNeoXConfig, GPTNeoXForCausalLM

    from iclgd.data.ginc_hmm import GincConfig, save_ginc_json

    torch.manual_seed(0)
    cfg = GPTNeoXConfig(num_hidden_layers=2, num_attention_heads=4, hidden_size=hidden,
                        intermediate_size=2 * hidden, vocab_size=50, max_position_embeddings=64)
    model = GPTNeoXForCausalLM(cfg)
    for step in steps:
        with torch.no_grad():
            for p in model.parameters():
                p.add_(0.05 * torch.randn_like(p))
        model.save_pretrained(root / f"step{step}")
        save_ginc_json(root / f"step{step}", GincConfig())
    return root


@pytest.fixture(scope="module")
def series(tmp_path_factory) -> Path:
    return make_series(tmp_path_factory.mktemp("ginc_series"), [0, 5, 50])


@pytest.fixture(scope="module")
def swept(series, tmp_path_factory):
    out = tmp_path_factory.mktemp("sweep_out")
    return run_sweep(series, out, FAST, device="cpu", progress=False)


def _theta(folder: Path, model):
    return layer_matrices(model, params=read_hf_weights(folder))


def test_rows_and_drift(series, swept):
    rows = swept.rows
    assert [r["checkpoint"] for r in rows] == ["step0", "step5", "step50"]
    assert [r["step"] for r in rows] == [0, 5, 50]
    model = load_model(series / "step0", device="cpu")
    th = [_theta(series / f"step{s}", model) for s in (0, 5, 50)]
    assert rows[0]["weight_drift_prev"] is None
    assert rows[1]["weight_drift_prev"] == pytest.approx(weight_drift(th[1], th[0]), rel=1e-12)
    assert rows[2]["weight_drift_prev"] == pytest.approx(weight_drift(th[2], th[1]), rel=1e-12)
    assert rows[0]["weight_drift_final"] == pytest.approx(weight_drift(th[0], th[2]), rel=1e-12)
    assert rows[2]["weight_drift_final"] == 0.0
    r = rows[1]
    assert set(r["icl_accuracy"]) == {"0", "1", "4"} and r["icl_task"] == "ginc_in_k3"
    assert all(0.0 <= v <= 1.0 for v in r["icl_accuracy"].values())
    se = r["icl_accuracy_se"]["1"]
    p = r["icl_accuracy"]["1"]
    assert se == pytest.approx(math.sqrt(p * (1 - p) / 12), abs=1e-12)
    assert rows[0]["bayes_accuracy"] == rows[2]["bayes_accuracy"]  # same prompts every checkpoint
    se0, se4 = r["icl_accuracy_se"]["0"], r["icl_accuracy_se"]["4"]
    assert r["icl_gain"] == pytest.approx(r["icl_accuracy"]["4"] - r["icl_accuracy"]["0"], abs=1e-12)
    assert r["icl_gain_se"] == pytest.approx(math.hypot(se0, se4), abs=1e-12)
    assert r["icl_gain_n"] == [0, 4] and r["icl_emerged"] == (r["icl_gain_ci95_low"] > 0)
    assert r["icl_accuracy_by_task"]["ginc_in_k3"]["gain"]["gain"] == r["icl_gain"]
    from iclgd.analyses.sweep import last_checkpoint_verdict

    verdict = last_checkpoint_verdict(rows)
    assert verdict.startswith("step50: ICL gain n = 0 -> 4, ginc_in_k3:")
    assert ("ICL emerged" in verdict) == rows[2]["icl_emerged"]
    from iclgd.data.ginc import GincConfig, build_world, pretrained_lm_accuracy, sample_prompts

    world = build_world(GincConfig())
    for n in (0, 4):
        gp = sample_prompts(world, n, 3, 12, concepts="in", seed=FAST.seed)
        acc, se = pretrained_lm_accuracy(world, gp, "in")
        assert r["pretrained_bayes_accuracy"][str(n)] == acc
        assert r["pretrained_bayes_accuracy_se"][str(n)] == se
    assert r["icl_score_positions"] == {"early": 6, "late": 62, "n_ctx": 64}
    assert len(r["induction_top_prefix"]) == 3 and {"layer", "head", "copying"} <= set(r["induction_top_prefix"][0])
    assert set(r["density_fraction_below"]) == {"1e-02", "1e-03", "1e-04", "1e-05", "1e-06"}
    assert 0.0 <= r["density_fraction_below"]["1e-02"] <= 1.0
    csv_head = (swept.out / "rows.csv").read_text().splitlines()[0].split(",")
    assert "icl_accuracy.4" in csv_head and "weight_drift_final" in csv_head
    prov = json.loads((swept.out / "provenance.json").read_text())
    assert prov["source"] == str(series) and prov["weight_processing"] == "raw"
    for name in ("metrics_vs_step.png", "icl_stability.png", "icl_accuracy_vs_n_ginc_in_k3.png"):
        assert (swept.out / name).stat().st_size > 1000


def test_resume_recomputes_only_missing(series, swept, tmp_path):
    out = tmp_path / "resume"
    out.mkdir()
    lines = (swept.out / ROWS).read_text().splitlines()
    (out / ROWS).write_text(lines[0] + "\n" + lines[2] + "\n")  # step5 missing
    (out / "provenance.json").write_text((swept.out / "provenance.json").read_text())
    res = run_sweep(series, out, FAST, device="cpu", progress=False, plots=False)
    assert [r["checkpoint"] for r in res.rows] == ["step0", "step5", "step50"]
    got, want = res.rows[1], swept.rows[1]
    for key in ("icl_accuracy", "icl_score", "weight_drift_prev", "weight_drift_final",
                "density_fraction_below", "induction_table"):
        assert got[key] == want[key], key  # previous checkpoint's weights reloaded from disk
    before = (out / ROWS).read_text()
    run_sweep(series, out, FAST, device="cpu", progress=False, plots=False)
    assert (out / ROWS).read_text() == before  # nothing left to do


def test_load_rows_repairs_stray_temp_and_partial_line(tmp_path):
    (tmp_path / ROWS).write_text('{"checkpoint": "step0", "step": 0}\n'
                                 '{"checkpoint": "step0", "step": 0}\n'
                                 '{"checkpoint": "step5", "st')
    stray = tmp_path / ".rows.jsonl.abc123.tmp"
    stray.write_text("half a file")
    warnings = []
    rows = load_rows(tmp_path, warn=warnings.append)
    assert rows == [{"checkpoint": "step0", "step": 0}]
    assert not stray.exists() and len(warnings) == 1
    assert (tmp_path / ROWS).read_text() == '{"checkpoint": "step0", "step": 0}\n'


def test_failed_checkpoint_recorded_and_skipped(tmp_path, capsys):
    src = make_series(tmp_path / "src", [0, 1, 2])
    (src / "step1" / "model.safetensors").write_bytes(b"not a safetensors file")
    out = tmp_path / "out"
    res = run_sweep(src, out, SweepSettings(tasks=("drift", "density")), device="cpu",
                    progress=False, plots=False)
    assert "step1" in capsys.readouterr().err
    by = {r["checkpoint"]: r for r in res.rows}
    assert "error" in by["step1"] and "error" not in by["step2"]
    assert by["step2"]["weight_drift_prev"] is None  # the previous checkpoint is unreadable
    run_sweep(src, out, SweepSettings(tasks=("drift", "density")), device="cpu", progress=False,
              plots=False, retry_errors=True)
    labels = [r["checkpoint"] for r in load_rows(out)]
    assert sorted(labels) == ["step0", "step1", "step2"]  # still one row each


def test_error_paths(tmp_path, series):
    with pytest.raises(IclgdError, match="no such folder"):
        run_sweep(tmp_path / "nope" / "x", tmp_path / "o", FAST)
    (tmp_path / "empty").mkdir()
    with pytest.raises(IclgdError, match="no checkpoints"):
        run_sweep(tmp_path / "empty", tmp_path / "o", FAST)
    with pytest.raises(IclgdError, match="--checkpoints"):
        run_sweep("someorg/somemodel", tmp_path / "o", FAST)
    mixed = make_series(tmp_path / "mixed", [0])
    make_series(tmp_path / "other", [1], hidden=16)
    (tmp_path / "other" / "step1").rename(mixed / "step1")
    with pytest.raises(IclgdError, match="incompatible architectures"):
        run_sweep(mixed, tmp_path / "o", FAST)
    with pytest.raises(IclgdError, match="unknown checkpoint"):
        run_sweep(series, tmp_path / "o", SweepSettings(checkpoints=("step7",)))
    with pytest.raises(IclgdError, match="unknown task"):
        run_sweep(series, tmp_path / "o", SweepSettings(tasks=("icl", "magic")))
    plain = make_series(tmp_path / "plain", [0])
    (plain / "step0" / "ginc.json").unlink()
    with pytest.raises(IclgdError, match="needs a GINC series"):
        run_sweep(plain, tmp_path / "o", SweepSettings(tasks=("icl",)))


def test_checkpoints_picked_by_label_or_index_then_thinned(series):
    from iclgd.analyses.sweep import resolve_source

    def labels(*args):
        return [(r.label, r.step) for r in resolve_source(series, *args)]

    assert labels() == [("step0", 0), ("step5", 5), ("step50", 50)]
    assert labels(("-1", "step0", "0")) == [("step0", 0), ("step50", 50)]
    assert labels(None, 2) == [("step0", 0), ("step50", 50)]
    assert labels(("step5", "step50"), 5) == [("step5", 5), ("step50", 50)]
    with pytest.raises(IclgdError, match="every must be >= 1, got 0"):
        labels(None, 0)
    with pytest.raises(IclgdError, match="not of the form step"):
        resolve_source("org/model", ("main",))
    with pytest.raises(IclgdError, match="unknown source './a/b': no such folder"):
        resolve_source("./a/b", ("step1",))


def test_cli_one_line_errors(tmp_path, series, capsys):
    from iclgd.cli import main

    assert main(["sweep", str(tmp_path / "missing" / "x"), "--out", str(tmp_path / "o")]) == 2
    assert main(["sweep", str(series), "--out", str(tmp_path / "o"), "--every", "0"]) == 2
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        "iclgd sweep: error: --every must be >= 1, got 0")
    out = tmp_path / "o2"
    assert main(["sweep", str(series), "--out", str(out), "--checkpoints", "step0,step50",
                 "--tasks", "drift,density", "--json", *FAST_ARGS]) == 0
    assert [r["checkpoint"] for r in load_rows(out)] == ["step0", "step50"]
    # resuming with different settings is refused
    assert main(["sweep", str(series), "--out", str(out), "--tasks", "drift", *FAST_ARGS]) == 2


def _count_rows(path: Path) -> int:
    try:
        return len(path.read_text().splitlines())
    except FileNotFoundError:
        return 0


@pytest.mark.slow
def test_sigkill_mid_sweep_then_resume(tmp_path):
    """A sweep killed with SIGKILL and rerun ends with exactly the rows of a clean run."""
    src = make_series(tmp_path / "src", [0, 1, 2, 3, 4, 5])
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "iclgd.cli", "sweep", str(src), "--out", str(out), *FAST_ARGS]
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    killed_at = []
    for wait_rows in (1, 3):
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.time() + 300
        while _count_rows(out / ROWS) < wait_rows and proc.poll() is None and time.time() < deadline:
            time.sleep(0.02)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        killed_at.append(_count_rows(out / ROWS))
    assert killed_at[0] < 6 and killed_at[1] < 6  # really interrupted mid-sweep
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    rows = [json.loads(line) for line in (out / ROWS).read_text().splitlines()]
    assert sorted(r["checkpoint"] for r in rows) == [f"step{i}" for i in range(6)]
    clean = run_sweep(src, tmp_path / "clean", FAST, device="cpu", progress=False, plots=False)
    by = {r["checkpoint"]: r for r in rows}
    for want in clean.rows:
        got = by[want["checkpoint"]]
        assert {k: v for k, v in got.items() if k != "seconds"} == \
            {k: v for k, v in want.items() if k != "seconds"}

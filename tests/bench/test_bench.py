"""`iclgd bench`: the rows, their ratios and the results file, on tiny sizes; the memory
method against tensors of known size; the work recorder against a known vmapped run."""

from __future__ import annotations

import json
import math

import pytest

from iclgd.bench import Row
from iclgd.bench.measure import peak_memory, record_lm_calls
from iclgd.bench.report import END, START, write_results
from iclgd.cli import main


def test_peak_memory_matches_known_allocations() -> None:
    got = peak_memory("iclgd.bench.measure:calibration_setup", {"mib": 16}, 2, "cpu")
    assert got["one"].median / 2**20 == pytest.approx(16, rel=0.01)
    assert got["three"].median / 2**20 == pytest.approx(48, rel=0.01)


def test_recorder_sees_vmapped_finetuning_steps() -> None:
    from iclgd.bench.finetune_bench import make_tasks
    from iclgd.bench.models import hf_model
    from iclgd.hooks import load_model
    from iclgd.probes.finetune import finetune_batched

    model = load_model(hf_model("gpt2-small", tiny=True))
    demos = make_tasks(3, 2, 8, 1000)
    with record_lm_calls() as calls:
        finetune_batched(model, demos, method="sgd", lr=1e-2)
    assert [(c.shape, c.grad, c.vmapped) for c in calls] == [((1, 8), True, 3)] * 2


def test_updates_recorded_and_replayed_on_the_trained_tensors_only() -> None:
    import torch

    from iclgd.bench.measure import plain_replay, record_updates
    from iclgd.bench.models import hf_model
    from iclgd.data.tasks import demos_from_token_examples
    from iclgd.hooks import hf_module, load_model
    from iclgd.probes.finetune import finetune

    model = load_model(hf_model("gpt2-small", tiny=True))
    demos = demos_from_token_examples(torch.randint(0, 100, (2, 8),
                                                    generator=torch.Generator().manual_seed(0)))
    with record_lm_calls() as calls, record_updates() as updates:
        delta = finetune(model, demos, method="kv", lr=1e-2)
    assert len(updates) == len(calls) == 2  # kv: batch 1, one update per step
    assert {u.optimizer for u in updates} == {"sgd"} and updates[0].lr == 1e-2
    assert set(updates[0].trained) == set(delta.deltas)
    hf = hf_module(model)
    before = {n: p.detach().clone() for n, p in hf.named_parameters()}
    plain_replay(hf, calls, 100, updates=updates)()
    changed = {n for n, p in hf.named_parameters() if not torch.equal(p, before[n])}
    assert changed and changed <= set(delta.deltas)
    assert not any(u.layer_causal for u in updates)
    # layer-causal finetuning is replayed with its per-layer read-out loss
    with record_lm_calls() as calls, record_updates() as updates:
        delta = finetune(model, demos, method="layer-causal", lr=1e-2)
    assert updates and all(u.layer_causal for u in updates)
    before = {n: p.detach().clone() for n, p in hf.named_parameters()}
    plain_replay(hf, calls, 100, updates=updates)()
    changed = {n for n, p in hf.named_parameters() if not torch.equal(p, before[n])}
    assert changed and changed <= set(delta.deltas)


def test_row_targets() -> None:
    assert Row("b", "x", 1.0, 1.0, 1.02, "s", "<= 1.03").passed is True
    assert Row("b", "x", 1.0, 1.0, 4.0, "s", ">= 5").passed is False
    assert Row("b", "x", 1.0, 1.0, 0.995, "s", "~ 0.01").passed is True
    assert Row("b", "x", 1.0, 1.0, float("nan"), "s", "<= 1").passed is None


def test_results_section_is_replaced_and_the_rest_kept(tmp_path) -> None:
    path = tmp_path / "RESULTS.md"
    path.write_text("# Benchmarks\n\n## GINC training\n\nkept\n", encoding="utf-8")
    info = {"date_utc": "d", "cpu": "c", "cores": 2, "device": "cpu", "torch": "t",
            "transformers": "tf", "python": "p", "torch_threads": 1, "load_average": [1.0]}
    write_results(path, [Row("b", "first", 1.0, 2.0, 0.5, "s", "<= 1")], info, "iclgd bench")
    write_results(path, [Row("b", "second", 1.0, 2.0, 0.5, "s", "<= 1")], info, "iclgd bench")
    text = path.read_text(encoding="utf-8")
    assert text.count(START) == 1 and text.count(END) == 1
    assert "second" in text and "first" not in text and "## GINC training\n\nkept" in text


@pytest.mark.slow
def test_bench_quick_json_on_tiny_sizes(tmp_path, capsys) -> None:
    out = tmp_path / "RESULTS.md"
    assert main(["bench", "--quick", "--tiny", "--json", "--results", str(out)]) == 0
    got = json.loads(capsys.readouterr().out)
    benches = {r["bench"] for r in got["rows"]}
    assert benches == {"calibration", "capture", "sweep", "finetune", "delta_w", "lsa", "probe"}
    timed = [r for r in got["rows"] if r["unit"] != "MiB" or r["bench"] == "calibration"]
    assert all(math.isfinite(r["ratio"]) and r["ratio"] > 0 for r in timed)
    assert got["machine"]["cores"] >= 1 and "torch" in got["machine"]
    assert "iclgd bench --quick --tiny" in out.read_text(encoding="utf-8")


def test_bench_rejects_unknown_benchmark(capsys) -> None:
    assert main(["bench", "--only", "nope", "--results", "none"]) == 2
    assert "unknown benchmark 'nope'" in capsys.readouterr().err

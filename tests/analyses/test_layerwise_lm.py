"""Logit lens of ICL vs layer-causal GD, layer by layer, on tiny language models."""

from __future__ import annotations

import json

import pytest
import torch

from iclgd.analyses.layerwise_lm import lens_logits, lens_rows, logit_lens_probe
from iclgd.cli import main
from iclgd.data.tasks import Example, Task, Template
from iclgd.hooks import load_model

TEMPLATE = Template(input_prefix="w1 ", output_prefix=" w2", separator=" w3 ")


def toy_task() -> Task:
    ex = [Example(f"w{i}", f"w{i + 20}") for i in range(4, 20)]
    return Task("toy", ex[:10], ex[10:], TEMPLATE)


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_last_layer_lens_is_the_model_output(tiny_models, arch):
    model = load_model(tiny_models[arch], device="cpu")
    tokens = torch.tensor([[1, 5, 9, 2, 7], [3, 4, 6, 8, 2]])
    pos = torch.tensor([4, 2])
    lens = lens_logits(model, tokens, pos)
    assert lens.shape == (2, 2, 64)
    with torch.no_grad():
        full = model(tokens)
    assert torch.allclose(lens[:, -1], full[torch.arange(2), pos], atol=1e-5)
    assert not torch.allclose(lens[:, 0], lens[:, -1], atol=1e-3)


def test_lens_rows_by_hand():
    g = torch.Generator().manual_seed(0)
    icl = torch.randn(4, 2, 6, generator=g)
    answers = icl[:, 1].argmax(-1)
    rows = lens_rows("trained", 3, {"icl": icl, "gd": icl.clone()}, answers, top_k=3)
    get = {(r["setting"], r["metric"], r["layer"]): r["value"] for r in rows}
    assert get[("icl", "accuracy", 2)] == 1.0
    assert get[("gd", "token_overlap", 1)] == 1.0
    assert get[("gd", "overlap_cosine", 2)] == pytest.approx(1.0)
    acc1 = float((icl[:, 0].argmax(-1) == answers).double().mean())
    assert get[("icl", "accuracy", 1)] == pytest.approx(acc1)


def test_logit_lens_probe_end_to_end_with_control(tiny_models, tmp_path):
    task = tmp_path / "toy.jsonl"
    t = toy_task()
    task.write_text("".join(json.dumps({"input": e.input, "output": e.output}) + "\n"
                            for e in t.demonstrations + t.queries))
    res = logit_lens_probe(tiny_models["neox"], str(task), [1, 2], n_queries=3, lr=0.1)
    models = {r["model"] for r in res.rows}
    settings = {r["setting"] for r in res.rows}
    assert models == {"trained", "untrained"}
    assert settings == {"icl", "zs", "icl-reordered", "layer-causal", "gd"}
    assert {r["layer"] for r in res.rows} == {1, 2}
    floor1 = [r["value"] for r in res.rows if r["setting"] == "icl-reordered" and r["model"] == "trained"
              and r["n_demos"] == 1 and r["metric"] == "token_overlap"]
    assert floor1 == [1.0, 1.0]  # one demonstration cannot be reordered
    paths = res.save(tmp_path / "out")
    assert paths["csv"].is_file() and (tmp_path / "out" / "layers_lm.png").is_file()
    code = main(["layers", "--model", str(tiny_models["neox"]), "--task", str(task),
                 "--demos", "1", "--queries", "2", "--control", "none", "--json",
                 "--out", str(tmp_path / "cli")])
    assert code == 0 and (tmp_path / "cli" / "layers_lm.json").is_file()

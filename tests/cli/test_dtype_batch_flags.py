"""`--dtype` on every command that loads a model, `--batch-size auto|N`, one-line errors."""

from __future__ import annotations

import json

import pytest

from iclgd.cli import main


@pytest.mark.parametrize("command", ["inspect", "density"])
def test_dtype_flag_loads_in_that_dtype(command, tiny_models, capsys, monkeypatch):
    import iclgd.hooks as hooks

    seen = []
    real = hooks.load_model

    def spy(*args, **kwargs):
        model = real(*args, **kwargs)
        seen.append(next(model.parameters()).dtype)
        return model

    monkeypatch.setattr(hooks, "load_model", spy)
    assert main([command, str(tiny_models["gpt2"]), "--dtype", "bf16", "--json"]) == 0
    json.loads(capsys.readouterr().out)
    import torch

    assert seen == [torch.bfloat16]
    assert main([command, str(tiny_models["gpt2"]), "--dtype", "float8"]) == 2
    err = capsys.readouterr().err.strip()
    assert "unknown dtype 'float8'" in err and len(err.splitlines()) == 1


def test_batch_size_flags(tiny_models, tmp_path, capsys):
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text("".join(json.dumps({"input": f"w{i}", "output": f"w{i + 20}"}) + "\n"
                             for i in range(4, 24)))
    base = ["compare", "--model", str(tiny_models["neox"]), "--task", str(pairs), "--demos", "1",
            "--methods", "kv", "--queries", "3", "--json"]
    assert main([*base, "--batch-size", "auto", "--out", str(tmp_path / "a")]) == 0
    auto = json.loads(capsys.readouterr().out)["summary"]
    assert main([*base, "--batch-size", "1", "--out", str(tmp_path / "b")]) == 0
    one = json.loads(capsys.readouterr().out)["summary"]
    for key in ("accuracy_icl", "simaou_norm", "token_overlap", "kendall_tau"):
        assert auto[0][key] == pytest.approx(one[0][key], abs=1e-5), key
    assert main([*base, "--batch-size", "0", "--out", str(tmp_path / "c")]) == 2
    assert "integer >= 1 or 'auto'" in capsys.readouterr().err
    assert main(["sweep", str(tiny_models["neox"]), "--out", str(tmp_path / "s"),
                 "--batch-size", "x"]) == 2
    assert "integer >= 1 or 'auto'" in capsys.readouterr().err

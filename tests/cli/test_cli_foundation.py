"""`iclgd inspect` / `iclgd density` on the tiny architectures, and every CLI error path."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from iclgd.cli import main


@pytest.mark.parametrize("arch", ["gpt2", "neox", "llama"])
def test_inspect_json(tiny_models, arch, capsys):
    assert main(["inspect", str(tiny_models[arch]), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["n_layers"] == 2 and info["d_model"] == 32 and info["d_vocab"] == 64
    assert info["n_key_value_heads"] == (2 if arch == "llama" else 4)
    assert "blocks.0.attn.hook_attn_scores" in info["hook_names_layer0"]


def test_inspect_series_lists_checkpoints(tiny_series, capsys):
    assert main(["inspect", str(tiny_series), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["checkpoints"] == ["step0", "step2", "step10", "step100"]


@pytest.mark.parametrize("arch", ["gpt2", "neox", "llama"])
def test_density_json(tiny_models, arch, capsys, tmp_path):
    assert main(["density", str(tiny_models[arch]), "--json", "--out", str(tmp_path)]) == 0
    rep = json.loads(capsys.readouterr().out)
    assert rep["processing"] == "raw"
    assert rep["thresholds"] == ["1e-02", "1e-03", "1e-04", "1e-05", "1e-06"]
    names = {m["name"] for m in rep["matrices"]}
    assert names >= {"W_Q", "W_K", "W_V", "W_O", "W_in", "W_out"}
    assert ("W_gate" in names) == (arch == "llama")
    assert len(rep["matrices"]) == 2 * len(names)
    m = rep["matrices"][0]
    assert set(m) == {"layer", "name", "shape", "fraction_below", "hoyer", "stable_rank"}
    assert 0 <= m["fraction_below"]["1e-02"] <= 1 and 0 <= m["hoyer"] <= 1
    assert (tmp_path / "density.csv").exists() and (tmp_path / "provenance.json").exists()


def test_density_checkpoint_label(tiny_series, capsys):
    assert main(["density", str(tiny_series), "--checkpoint", "step2", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["checkpoint"] == "step2"


def test_error_paths_one_line_exit_2(tmp_path, tiny_models, tiny_series, capsys):
    (tmp_path / "noconfig").mkdir()
    cases = [
        (["inspect", str(tmp_path / "missing")], "no such folder"),
        (["inspect", str(tmp_path / "noconfig")], "no config.json"),
        (["density", str(tiny_series), "--checkpoint", "step3"], "available are step0, step2"),
        (["inspect", str(tiny_models["gpt2"]), "--checkpoint", "step1"], "not a checkpoint series"),
        (["density", "nobody/no-such-model"], "not in the local Hugging Face cache"),
    ]
    for args, needle in cases:
        assert main(args) == 2, args
        err = capsys.readouterr().err
        lines = err.strip().splitlines()
        assert len(lines) == 1 and needle in lines[0], (args, err)


def test_console_error_has_no_traceback(tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run([sys.executable, "-m", "iclgd.cli", "density", str(tmp_path / "nope")],
                          capture_output=True, text=True, env=env)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        f"iclgd density: error: unknown model '{tmp_path / 'nope'}': no such folder"]


_PROBE = ("import sys\n"
          "from iclgd.cli import main\n"
          "rc = main(sys.argv[1:])\n"
          "print(rc, 'torch' in sys.modules, 'transformer_lens' in sys.modules)")


def test_bad_paths_are_answered_before_torch_is_imported(tmp_path):
    (tmp_path / "file.txt").write_text("x")
    (tmp_path / "empty").mkdir()
    cases = [
        (["inspect", "/no/such/folder"], "unknown model '/no/such/folder': no such folder"),
        (["density", str(tmp_path / "file.txt")], "is a file"),
        (["inspect", str(tmp_path / "empty")], "has no config.json"),
        (["compare", "--model", "./missing", "--task", "capitals"], "no such folder"),
        (["compare", "--model", str(tmp_path / "empty"), "--task", "capitals"], "no config.json"),
        (["order", "--model", "org/name", "--task", str(tmp_path / "no.jsonl")], "no such file"),
        (["compare", "--model", "org/name", "--task", "capitals", "--demos", "1,x"],
         "comma-separated"),
        (["compare", "--model", "org/name", "--task", "capitals", "--out",
          str(tmp_path / "file.txt")], "is a file"),
        (["sweep", "/no/such/series", "--out", str(tmp_path / "o")], "no such folder"),
        (["train", "ginc", "--out", str(tmp_path / "file.txt")], "is a file"),
    ]
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    for argv, needle in cases:
        proc = subprocess.run([sys.executable, "-c", _PROBE, *argv], capture_output=True,
                              text=True, env=env)
        assert proc.stdout.split() == ["2", "False", "False"], (argv, proc.stdout, proc.stderr)
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1 and needle in lines[0], (argv, proc.stderr)


def test_bad_path_costs_well_under_a_second():
    import resource

    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    proc = subprocess.run([sys.executable, "-m", "iclgd.cli", "inspect", "/no/such/folder"],
                          capture_output=True, text=True)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    assert proc.returncode == 2 and "no such folder" in proc.stderr
    assert cpu < 0.5, f"{cpu:.2f} s CPU"  # torch alone takes seconds to import


def test_a_bug_shows_its_traceback_and_exits_1(monkeypatch, capsys):
    from iclgd.commands import inspect as inspect_command

    def broken(args):
        raise KeyError("bug inside iclgd")

    monkeypatch.setattr(inspect_command, "run", broken)
    assert main(["inspect", "whatever"]) == 1
    err = capsys.readouterr().err
    assert "Traceback" in err and "KeyError: 'bug inside iclgd'" in err
    assert err.strip().splitlines()[-1].startswith("iclgd inspect: internal error")

"""`iclgd order`: order sensitivity of ICL vs GD/SGD/Adam over finetuning epochs."""

from __future__ import annotations

import json
from math import factorial

import pytest
import torch

from iclgd.analyses import order as order_mod
from iclgd.analyses.order import (
    epoch_grid,
    ft_distributions,
    ft_distributions_by_epoch,
    icl_distributions,
    order_experiment,
    orderings,
    orderings_that_fit,
)
from iclgd.analyses.prompt_sets import text_prompt_sets
from iclgd.analyses.runs import run_icl
from iclgd.cli import main
from iclgd.data.tasks import Example, Task, Template
from iclgd.errors import IclgdError
from iclgd.hooks import load_model
from iclgd.probes.finetune import task_bytes
from iclgd.probes.metrics import order_sensitivity


@pytest.fixture(scope="module")
def neox(tiny_models):
    return load_model(tiny_models["neox"], device="cpu")


@pytest.fixture(scope="module")
def prompts(neox):
    ex = [Example(f"w{i}", f"w{i + 20}") for i in range(4, 20)]
    task = Task("toy", ex[:10], ex[10:], Template(input_prefix="w1 ", output_prefix=" w2",
                                                  separator=" w3 "))
    return text_prompt_sets(task, neox.tokenizer, [4], n_queries=3, n_ctx=64)[4]


def test_orderings_and_epoch_grid():
    orders = orderings(4, 6, seed=1)
    assert orders[0] == [0, 1, 2, 3] and len(orders) == 6
    assert len({tuple(o) for o in orders}) == 6
    assert all(sorted(o) == [0, 1, 2, 3] for o in orders)
    assert len(orderings(3, 10)) == 10 and factorial(3) < 10  # repeats allowed when 3! < P
    with pytest.raises(IclgdError, match="at least 2 orderings"):
        orderings(4, 1)
    with pytest.raises(IclgdError, match="2 demonstrations"):
        orderings(1, 5)
    assert epoch_grid(3) == [1, 2, 3]
    grid = epoch_grid(175)
    assert grid[0] == 1 and grid[-1] == 175 and len(grid) <= 9 and grid == sorted(set(grid))


def test_full_batch_gd_is_order_invariant_sgd_and_icl_are_not(neox, prompts):
    orders = orderings(4, 4, seed=0)
    icl = icl_distributions(neox, prompts, orders)
    assert icl.shape == (4, 3, 64)
    assert torch.allclose(icl[0], run_icl(neox, prompts).probs)
    s_icl = float(order_sensitivity(icl).mean())
    gd = ft_distributions(neox, prompts, orders, "gd", lr=0.3, epochs=2)
    sgd = ft_distributions(neox, prompts, orders, "sgd", lr=0.3, epochs=2)
    s_gd, s_sgd = float(order_sensitivity(gd).mean()), float(order_sensitivity(sgd).mean())
    assert s_gd < 1e-5  # float rounding only
    assert s_sgd > 1e-3 and s_icl > 1e-3
    # finetuning moved the model: GD's identical distributions are not the base model's
    base = ft_distributions(neox, prompts, orders[:2], "gd", lr=1e-12, epochs=1)
    assert (gd[0] - base[0]).abs().max() > 1e-3


def test_order_experiment_rows(neox, prompts):
    rows = order_experiment(neox, prompts, ["gd", "adam"], n_perms=3, epochs=2,
                            lr={"gd": 0.3, "adam": 1e-2})
    assert rows[0]["setting"] == "icl" and rows[0]["epoch"] == 0
    ft = [(r["method"], r["epoch"]) for r in rows[1:]]
    assert ft == [("gd", 1), ("gd", 2), ("adam", 1), ("adam", 2)]
    by = {(r["method"], r["epoch"]): r["order_sensitivity"] for r in rows}
    assert by[("gd", 2)] < 1e-5 < by[("adam", 2)]
    assert all(r["n_demos"] == 4 and r["n_perms"] == 3 for r in rows)


def test_orderings_in_groups_equal_one_run(neox, prompts):
    """Finetuning the orderings a few at a time gives the all-at-once distributions."""
    orders = orderings(4, 5, seed=2)
    kw = {"lr": 1e-2, "epochs": [1, 2]}
    whole = ft_distributions_by_epoch(neox, prompts, orders, "adam", **kw)
    split = ft_distributions_by_epoch(neox, prompts, orders, "adam", orderings_per_run=2, **kw)
    assert sorted(split) == [1, 2]
    for e in (1, 2):
        assert split[e].shape == whole[e].shape == (5, 3, 64)
        torch.testing.assert_close(split[e], whole[e], atol=1e-6, rtol=0)


def test_orderings_that_fit_memory(neox, prompts, monkeypatch):
    need = task_bytes(neox, "adam")
    monkeypatch.setattr(order_mod, "available_memory", lambda device: int(3.5 * need / 0.8))
    assert orderings_that_fit(neox, prompts, "adam", 10) == 3  # floor(0.8 × free / need)
    assert orderings_that_fit(neox, prompts, "adam", 2) == 2  # never more than asked
    monkeypatch.setattr(order_mod, "available_memory", lambda device: 1)
    assert orderings_that_fit(neox, prompts, "adam", 10) == 1  # at least one
    monkeypatch.setattr(order_mod, "available_memory", lambda device: None)
    assert orderings_that_fit(neox, prompts, "adam", 10) == 10  # unknown: all at once
    logged: list[str] = []
    monkeypatch.setattr(order_mod, "available_memory", lambda device: int(2 * need / 0.8))
    rows = order_experiment(neox, prompts, ["adam"], n_perms=3, epochs=1, lr={"adam": 1e-2},
                            log=logged.append)
    assert logged == ["iclgd: order: adam finetunes 2 of the 3 orderings at a time "
                      "(what fits in free memory)"]
    assert rows[1]["order_sensitivity"] > 1e-5


def test_order_cli_end_to_end(tiny_models, tmp_path, capsys):
    task = tmp_path / "pairs.jsonl"
    task.write_text("".join(json.dumps({"input": f"w{i}", "output": f"w{i + 20}"}) + "\n"
                            for i in range(4, 24)))
    out = tmp_path / "order"
    rc = main(["order", "--model", str(tiny_models["neox"]), "--task", str(task), "--demos", "4",
               "--perms", "3", "--methods", "gd,sgd", "--epochs", "2", "--queries", "2",
               "--lr", "0.2", "--out", str(out)])
    assert rc == 0
    text = capsys.readouterr().out
    assert "icl" in text and "sgd" in text
    for name in ("order.csv", "order.json", "order.png"):
        assert (out / name).stat().st_size > 0, name
    saved = json.loads((out / "order.json").read_text())
    assert saved["settings"]["epoch_grid"] == [1, 2]
    assert saved["settings"]["perms_per_run"] == "auto"
    assert saved["provenance"]["model"] == str(tiny_models["neox"])
    gd = [r for r in saved["rows"] if r["method"] == "gd"]
    assert all(r["order_sensitivity"] < 1e-5 for r in gd)
    assert main(["order", "--model", str(tiny_models["neox"]), "--task", str(task), "--demos",
                 "2,4", "--out", str(tmp_path / "x")]) == 2
    assert "one number of demonstrations" in capsys.readouterr().err
    assert main(["order", "--model", str(tiny_models["neox"]), "--task", str(task), "--demos",
                 "4", "--perms-per-run", "0", "--out", str(tmp_path / "y")]) == 2
    assert "--perms-per-run must be >= 1" in capsys.readouterr().err


def test_order_experiment_resumes_from_finished_cells(neox, prompts, tmp_path, monkeypatch):
    kw = {"n_perms": 3, "epochs": 1, "lr": {"gd": 0.3, "adam": 1e-2}, "cells": tmp_path}
    calls: list[str] = []
    real = order_mod.ft_distributions_by_epoch

    def counted(*args, **kwargs):
        calls.append(args[3])
        if args[3] == "adam" and len(calls) == 2:
            raise KeyboardInterrupt  # killed during the second method
        return real(*args, **kwargs)

    monkeypatch.setattr(order_mod, "ft_distributions_by_epoch", counted)
    with pytest.raises(KeyboardInterrupt):
        order_experiment(neox, prompts, ["gd", "adam"], **kw)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["trained-gd.json", "trained-icl.json"]
    rows = order_experiment(neox, prompts, ["gd", "adam"], **kw)
    assert calls == ["gd", "adam", "adam"]  # gd and ICL were read back, not computed again
    monkeypatch.setattr(order_mod, "ft_distributions_by_epoch", real)
    fresh = order_experiment(neox, prompts, ["gd", "adam"], **{**kw, "cells": None})
    assert rows == fresh
    # another learning rate is another cell: computed again
    again = order_experiment(neox, prompts, ["gd"], **{**kw, "lr": {"gd": 0.1}})
    assert again[1]["order_sensitivity"] != rows[1]["order_sensitivity"]


def test_order_cli_refuses_cells_of_other_settings(tiny_models, tmp_path, capsys):
    task = tmp_path / "pairs.jsonl"
    task.write_text("".join(json.dumps({"input": f"w{i}", "output": f"w{i + 20}"}) + "\n"
                            for i in range(4, 24)))
    args = ["order", "--model", str(tiny_models["neox"]), "--task", str(task), "--demos", "4",
            "--perms", "3", "--methods", "gd", "--epochs", "1", "--queries", "2", "--lr", "0.2",
            "--out", str(tmp_path / "o")]
    assert main(args) == 0
    first = json.loads((tmp_path / "o" / "order.json").read_text())["rows"]
    assert (tmp_path / "o" / "cells" / "trained-gd.json").exists()
    assert main([*args, "--methods", "gd,sgd"]) == 0  # more methods: the gd cell is reused
    rows = json.loads((tmp_path / "o" / "order.json").read_text())["rows"]
    assert rows[:2] == first and rows[2]["method"] == "sgd"
    capsys.readouterr()
    assert main([*args, "--perms", "4"]) == 2
    err = capsys.readouterr().err
    assert "holds order cells computed with other settings" in err and err.count("\n") == 1

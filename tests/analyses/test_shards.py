"""Sharded sweeps and comparisons: deterministic shares, merges equal to the unsharded run."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from test_sweep import FAST_ARGS, make_series

from iclgd.analyses.shards import Shard, compare_grid, fingerprint, sweep_grid
from iclgd.cli import main
from iclgd.errors import IclgdError

SWEEP_ARGS = [a for a in FAST_ARGS if a != "--no-plots"]  # the unsharded run draws its plots


def test_shard_parse_and_round_robin_share():
    assert Shard.parse("1/3") == Shard(1, 3) and str(Shard(1, 3)) == "1/3"
    grid = sweep_grid(f"step{s}" for s in range(7))
    shares = [Shard(i, 3).take(grid) for i in range(3)]
    assert shares[0] == [("step0",), ("step3",), ("step6",)] and shares[2] == [("step2",), ("step5",)]
    assert sorted(c for s in shares for c in s) == sorted(grid)  # a partition
    for bad in ("3/3", "1", "a/b", "-1/2", "0/0"):
        with pytest.raises(IclgdError, match="shard"):
            Shard.parse(bad)
    cells = compare_grid(["trained"], [4, 1], ["gd", "kv"])
    assert cells[:3] == [("trained", 1, ""), ("trained", 1, "gd"), ("trained", 1, "kv")]
    a = fingerprint("sweep", {"x": 1, "y": [1, 2]}, grid)
    assert a == fingerprint("sweep", {"y": [1, 2], "x": 1}, grid)  # key order irrelevant
    assert a != fingerprint("sweep", {"x": 2, "y": [1, 2]}, grid)
    assert a != fingerprint("sweep", {"x": 1, "y": [1, 2]}, grid[:-1])


@pytest.fixture(scope="module")
def series(tmp_path_factory) -> Path:
    return make_series(tmp_path_factory.mktemp("shard_series"), [0, 3, 7, 20])


@pytest.fixture(scope="module")
def sweeps(series, tmp_path_factory):
    root = tmp_path_factory.mktemp("sweeps")
    assert main(["sweep", str(series), "--out", str(root / "full"), *SWEEP_ARGS]) == 0
    for i in range(3):
        assert main(["sweep", str(series), "--out", str(root / f"s{i}"), "--shard", f"{i}/3",
                     *SWEEP_ARGS]) == 0
    return root


def _rows(folder: Path) -> list[dict]:
    rows = [json.loads(x) for x in (folder / "rows.jsonl").read_text().splitlines()]
    return [{k: v for k, v in r.items() if k != "seconds"} for r in rows]


def _csv(folder: Path, name: str, drop: str | None = None) -> list[list[str]]:
    import csv

    with open(folder / name, newline="") as fh:
        table = list(csv.reader(fh))
    if drop is None:
        return table
    i = table[0].index(drop)
    return [r[:i] + r[i + 1:] for r in table]


def test_three_sweep_shards_merge_to_the_unsharded_sweep(sweeps, capsys):
    shard_rows = [_rows(sweeps / f"s{i}") for i in range(3)]
    assert [[r["checkpoint"] for r in rows] for rows in shard_rows] == \
        [["step0", "step20"], ["step3"], ["step7"]]
    assert not list((sweeps / "s0").glob("*.png"))  # shards leave plots to the merge
    out = sweeps / "merged"
    assert main(["merge", str(sweeps / "s2"), str(sweeps / "s0"), str(sweeps / "s1"),
                 "--out", str(out)]) == 0
    assert "merged 3 sweep shard(s)" in capsys.readouterr().out
    assert _rows(out) == _rows(sweeps / "full")  # every number, drift included
    assert _csv(out, "rows.csv", "seconds") == _csv(sweeps / "full", "rows.csv", "seconds")
    full_pngs = sorted(p.name for p in (sweeps / "full").glob("*.png"))
    assert full_pngs and sorted(p.name for p in out.glob("*.png")) == full_pngs
    prov = json.loads((out / "provenance.json").read_text())
    assert [m["shard"] for m in prov["merged_from"]] == ["0/3", "1/3", "2/3"]
    assert "shard" not in prov and prov["settings"] == json.loads(
        (sweeps / "full" / "provenance.json").read_text())["settings"]


def test_merge_refuses_missing_duplicated_and_different_settings(sweeps, series, capsys,
                                                                tmp_path):
    def refused(folders: list[Path], message: str) -> None:
        assert main(["merge", *map(str, folders), "--out", str(tmp_path / "m")]) == 2
        err = capsys.readouterr().err.strip()
        assert message in err and len(err.splitlines()) == 1, err

    s = [sweeps / f"s{i}" for i in range(3)]
    refused(s[:2], "cell (step7) is missing (1 of 4 cells): run or finish shard 2/3")
    refused([*s, s[1]], "is given twice")
    copy = tmp_path / "copy_of_s1"
    copy.mkdir()
    for f in ("rows.jsonl", "provenance.json"):
        (copy / f).write_text((s[1] / f).read_text())
    refused([*s, copy], "cell (step3) is in both")
    other = tmp_path / "other_seed"
    assert main(["sweep", str(series), "--out", str(other), "--shard", "1/3", "--seed", "1",
                 *SWEEP_ARGS]) == 0
    capsys.readouterr()
    refused([s[0], other, s[2]], "was computed with different settings")
    refused([s[0], sweeps / "full"], "is not a shard folder")
    # a shard folder resumes as the same shard only
    before = (s[0] / "rows.jsonl").read_text()
    assert main(["sweep", str(series), "--out", str(s[0]), "--shard", "0/3", *SWEEP_ARGS]) == 0
    assert (s[0] / "rows.jsonl").read_text() == before  # nothing left to do
    assert main(["sweep", str(series), "--out", str(s[0]), "--shard", "1/3", *SWEEP_ARGS]) == 2
    assert "different shard (shard 0/3 vs shard 1/3)" in capsys.readouterr().err


def test_more_shards_than_checkpoints_merge(series, tmp_path, capsys):
    args = [*SWEEP_ARGS, "--tasks", "density,drift", "--no-plots"]
    folders = [tmp_path / f"s{i}" for i in range(5)]
    for i, folder in enumerate(folders):
        assert main(["sweep", str(series), "--out", str(folder), "--shard", f"{i}/5", *args]) == 0
    assert (folders[4] / "rows.jsonl").read_text() == ""  # 4 checkpoints, 5 workers
    assert main(["merge", *map(str, folders), "--out", str(tmp_path / "m"), "--no-plots"]) == 0
    assert [r["checkpoint"] for r in _rows(tmp_path / "m")] == ["step0", "step3", "step7", "step20"]


def _pairs(path: Path) -> Path:
    rows = [{"input": f"w{i}", "output": f"w{i + 20}"} for i in range(4, 24)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_three_compare_shards_merge_to_the_unsharded_comparison(tiny_models, tmp_path, capsys):
    base = ["compare", "--model", str(tiny_models["neox"]), "--task",
            str(_pairs(tmp_path / "pairs.jsonl")), "--demos", "1,2", "--methods", "gd,kv",
            "--queries", "3", "--control", "untrained"]
    assert main([*base, "--out", str(tmp_path / "full")]) == 0
    for i in range(3):
        assert main([*base, "--out", str(tmp_path / f"s{i}"), "--shard", f"{i}/3"]) == 0
    capsys.readouterr()
    shard_cells = [{(r["model"], r["n_demos"], r["method"]) for r in json.loads(
        (tmp_path / f"s{i}" / "compare.json").read_text())["rows"]} for i in range(3)]
    assert [len(c) for c in shard_cells] == [4, 4, 4]  # 12 cells: 2 models x 2 N x (""+2)
    assert not (tmp_path / "s0" / "compare_summary.csv").exists()
    out = tmp_path / "merged"
    assert main(["merge", *(str(tmp_path / f"s{i}") for i in (1, 2, 0)), "--out", str(out)]) == 0
    assert "merged 3 compare shard(s)" in capsys.readouterr().out
    full = tmp_path / "full"
    for name in ("compare.csv", "compare_summary.csv"):
        assert (out / name).read_text() == (full / name).read_text(), name
    a, b = (json.loads((d / "compare.json").read_text()) for d in (out, full))
    assert a["rows"] == b["rows"] and a["summary"] == b["summary"]
    assert a["settings"] == b["settings"]
    assert sorted(p.name for p in out.glob("*.png")) == sorted(p.name for p in full.glob("*.png"))
    assert main([*base, "--out", str(tmp_path / "lr"), "--shard", "2/3", "--lr", "0.5"]) == 0
    capsys.readouterr()
    assert main(["merge", str(tmp_path / "s0"), str(tmp_path / "s1"), str(tmp_path / "lr"),
                 "--out", str(tmp_path / "m2")]) == 2
    assert "settings differ in settings" in capsys.readouterr().err

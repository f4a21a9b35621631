"""Tasks built from registry packages' data: sizes, known items, disjoint seeded splits."""

from __future__ import annotations

import pytest

from iclgd.data import registry_tasks as rt
from iclgd.data.task_loaders import list_tasks, load_task
from iclgd.errors import IclgdError


@pytest.mark.parametrize("name", list(rt.REGISTRY_TASKS))
def test_size_split_and_determinism(name):
    task = load_task(name, seed=3)
    assert len(task.demonstrations) + len(task.queries) >= 200
    demo_inputs = {e.input for e in task.demonstrations}
    assert demo_inputs.isdisjoint(e.input for e in task.queries)
    again = load_task(name, seed=3)
    assert again.queries == task.queries and again.demonstrations == task.demonstrations
    assert load_task(name, seed=4).queries != task.queries


def _pairs(name):
    return {e.input: e.output for e in rt.registry_examples(name)[0]}


def test_known_items():
    assert _pairs("country-capital")["France"] == "Paris"
    assert _pairs("country-demonym")["France"] == "French"
    assert _pairs("country-iso3")["France"] == "FRA"
    past = _pairs("past-tense")
    assert (past["go"], past["bring"], past["swim"]) == ("went", "brought", "swam")
    assert "walk" not in past and "stop" not in past and "try" not in past  # regular verbs


def test_sentiment_is_balanced_polar_english():
    pairs = _pairs("sentiment")
    labels = list(pairs.values())
    assert labels.count("positive") == labels.count("negative") >= 100
    assert pairs["admirable"] == "positive" and pairs["abhorrent"] == "negative"
    assert "lol" not in pairs  # chat slang is dropped


def test_missing_package_names_install_command(monkeypatch):
    src = rt.REGISTRY_TASKS["past-tense"]
    broken = rt.TaskSource(src.name, "no-such-dist-xyz", src.module, src.description, src.build)
    monkeypatch.setitem(rt.REGISTRY_TASKS, "past-tense", broken)
    with pytest.raises(IclgdError, match=r"pip install no-such-dist-xyz"):
        load_task("past-tense")


def test_list_tasks_covers_registry_and_builtin():
    rows = {r["name"]: r for r in list_tasks()}
    assert rows["country-capital"]["size"] == len(rt.registry_examples("country-capital")[0])
    assert rows["antonyms"]["kind"] == "built-in" and rows["antonyms"]["size"] == 50
    assert "countryinfo" in rows["country-capital"]["source"]

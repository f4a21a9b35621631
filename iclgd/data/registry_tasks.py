"""Task data that well-kept registry packages ship: real items nobody on the project typed in.

Each source builds its `Example`s from a package's own data files, in a fixed (sorted) order, so
`iclgd.data.task_loaders.load_task(name, seed=...)` gives the same split on every machine:

| task | package | items |
|---|---|---|
| `sentiment` | vaderSentiment (Hutto & Gilbert, 2014) | English words (in lemminflect's lexicon) rated ≥ 2.5 or ≤ −2.5 on VADER's −4…4 human scale, balanced → "positive" / "negative" |
| `country-capital` | countryinfo | country name → capital |
| `country-demonym` | countryinfo | country name → demonym ("France" → "French") |
| `country-iso3` | pycountry (ISO 3166-1) | country name → alpha-3 code ("France" → "FRA") |
| `past-tense` | lemminflect | irregular English verbs, lemma → simple past ("go" → "went") |

`sentiment` is a binary classification with verbalised labels, as in the sentiment sets Shen et
al. (2024) and Dai et al. (2023) use; the others are the open-vocabulary mappings of Hendel et al.
(2023)'s task-vector suite. A missing package raises `IclgdError` naming the install command.
"""

from __future__ import annotations

import gzip
import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from importlib import metadata, resources
from typing import Any

from iclgd.data.tasks import Example
from iclgd.errors import IclgdError

SENTIMENT_THRESHOLD = 2.5  # |mean VADER rating| at or above which a word counts as polar


@dataclass(frozen=True)
class TaskSource:
    """A task built from a registry package's data."""

    name: str
    distribution: str  # PyPI distribution whose data the task reads
    module: str  # the importable package holding the data files
    description: str
    build: Callable[[], list[Example]]


def _data_file(module: str, *parts: str) -> Any:
    return resources.files(module).joinpath(*parts)


def _sentiment() -> list[Example]:
    from lemminflect import getAllLemmas

    text = _data_file("vaderSentiment", "vader_lexicon.txt").read_text(encoding="utf-8")
    pos, neg = [], []
    for line in text.splitlines():
        fields = line.split("\t")
        if len(fields) < 2 or not re.fullmatch(r"[a-z]{3,}", fields[0]):
            continue  # emoticons, abbreviations with digits or symbols
        if not getAllLemmas(fields[0]):
            continue  # chat slang ("lol", "ffs"): not in lemminflect's English lexicon
        rating = float(fields[1])
        if rating >= SENTIMENT_THRESHOLD:
            pos.append((-rating, fields[0]))
        elif rating <= -SENTIMENT_THRESHOLD:
            neg.append((rating, fields[0]))
    n = min(len(pos), len(neg))  # balanced: the strongest-rated words of the larger class kept
    chosen = [Example(w, "positive") for _, w in sorted(pos)[:n]]
    chosen += [Example(w, "negative") for _, w in sorted(neg)[:n]]
    return sorted(chosen, key=lambda e: e.input)


def _countries() -> list[dict[str, Any]]:
    folder = _data_file("countryinfo", "data")
    rows = [json.loads(f.read_text(encoding="utf-8")) for f in folder.iterdir()
            if f.name.endswith(".json")]
    return sorted((r for r in rows if r.get("name")), key=lambda r: r["name"])


def _country_field(field: str) -> Callable[[], list[Example]]:
    def build() -> list[Example]:
        return [Example(r["name"], r[field].strip()) for r in _countries()
                if isinstance(r.get(field), str) and r[field].strip()]

    return build


def _country_iso3() -> list[Example]:
    import pycountry

    return sorted((Example(c.name, c.alpha_3) for c in pycountry.countries),
                  key=lambda e: e.input)


def _past_tense() -> list[Example]:
    from lemminflect import getInflection

    path = _data_file("lemminflect", "resources", "infl_lu.csv.gz")
    out = []
    with gzip.open(str(path), "rt", encoding="utf-8") as fh:
        for line in fh:
            lemma, pos, *_ = line.strip().split(",")
            if pos != "verb" or not re.fullmatch(r"[a-z]{2,12}", lemma):
                continue
            past = getInflection(lemma, "VBD")
            if past and re.fullmatch(r"[a-z]+", past[0]) and not _regular_past(lemma, past[0]):
                out.append(Example(lemma, past[0]))
    return sorted(set(out), key=lambda e: e.input)


def _regular_past(lemma: str, past: str) -> bool:
    """True for the -ed/-d/-ied forms (and consonant doubling) a rule would produce."""
    return past.endswith("ed") and (past[:-2] == lemma or past[:-1] == lemma
                                    or past[:-3] == lemma[:-1] or past[:-3] == lemma)


REGISTRY_TASKS: dict[str, TaskSource] = {
    s.name: s for s in (
        TaskSource("sentiment", "vaderSentiment", "vaderSentiment",
                   "VADER lexicon words rated |mean| >= 2.5 → positive / negative (balanced)",
                   _sentiment),
        TaskSource("country-capital", "countryinfo", "countryinfo", "country → capital",
                   _country_field("capital")),
        TaskSource("country-demonym", "countryinfo", "countryinfo", "country → demonym",
                   _country_field("demonym")),
        TaskSource("country-iso3", "pycountry", "pycountry",
                   "country → ISO 3166-1 alpha-3 code", _country_iso3),
        TaskSource("past-tense", "lemminflect", "lemminflect",
                   "irregular English verb → simple past", _past_tense),
    )
}


def registry_examples(name: str) -> tuple[list[Example], dict[str, str]]:
    """The examples of registry task `name` and their source (package, version, description)."""
    src = REGISTRY_TASKS[name]
    try:
        version = metadata.version(src.distribution)
        built = src.build()
    except (metadata.PackageNotFoundError, ModuleNotFoundError):
        raise IclgdError(
            f"task {name!r} reads its data from the package {src.distribution!r}, which is not "
            f"installed: run `pip install {src.distribution}` (or `make setup`)"
        ) from None
    examples = list(dict.fromkeys(built))  # exact duplicates (one country in two files) once
    if len({e.input for e in examples}) != len(examples):
        raise AssertionError(f"task {name!r}: an input maps to two different answers")
    source = {"package": src.distribution, "version": version, "description": src.description}
    return examples, source

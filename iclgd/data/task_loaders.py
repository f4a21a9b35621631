"""Loading tasks: registry data, built-in lists, local JSONL/CSV/TSV files, sampling.

`load_task(name_or_path)` reads a task built from a registry package's data (`sentiment`,
`country-capital`, `country-demonym`, `country-iso3`, `past-tense`: see
`iclgd.data.registry_tasks`), a small built-in list (`capitals`, `antonyms`, `number_words`,
stored in `iclgd/data/builtin/`), or a local file with `input`/`output` columns, or text/label
columns mapped to words by a verbaliser (your own AGNews / SST-2 copy). `list_tasks()` lists the
named ones with their sizes and sources. See `iclgd.data.tasks` for the task, template and
tokenisation conventions.
"""

from __future__ import annotations

import csv
import json
import random
from collections.abc import Mapping
from importlib import resources
from pathlib import Path
from typing import Any

from iclgd.data.registry_tasks import REGISTRY_TASKS, registry_examples
from iclgd.data.tasks import Example, Task, Template
from iclgd.errors import IclgdError

BUILTIN_TASKS = ("capitals", "antonyms", "number_words")
_INPUT_COLUMNS = ("input", "text", "sentence", "question")
_OUTPUT_COLUMNS = ("output", "label", "answer")


def sample_demonstrations(task: Task, n: int, seed: int = 0) -> list[Example]:
    """`n` demonstrations drawn without replacement from `task.demonstrations` (seeded)."""
    if n < 1:
        raise IclgdError(f"need at least one demonstration, got n={n}")
    if n > len(task.demonstrations):
        raise IclgdError(
            f"task {task.name!r} has {len(task.demonstrations)} demonstrations, {n} were "
            "requested: ask for fewer"
        )
    return random.Random(seed).sample(list(task.demonstrations), n)


def load_task(
    name_or_path: str | Path,
    *,
    template: Template | None = None,
    n_queries: int | None = None,
    seed: int | None = 0,
    input_column: str | None = None,
    output_column: str | None = None,
    verbalizer: Mapping[Any, str] | None = None,
) -> Task:
    """Load a named task (registry or built-in) or a local `.jsonl`/`.csv` file.

    Rows are `{"input", "output"}`, or a text column (`text`, `sentence`, `question`) and a label
    column (`label`, `answer`) — override with `input_column` / `output_column`. `verbalizer`
    maps labels to answer words (keys compared as strings, e.g. `{0: "negative", 1:
    "positive"}`). The rows are shuffled with `seed` (None keeps file order); the last
    `n_queries` (default half, rounded down, at least 1) are the queries, the rest the
    demonstration pool, so demonstrations and queries never overlap.
    """
    name = str(name_or_path)
    if name in REGISTRY_TASKS:
        examples, _source = registry_examples(name)
        where = f"task {name!r}"
    else:
        path, name = _resolve(name_or_path)
        examples = _file_examples(path, input_column, output_column, verbalizer)
        where = str(path)
    return _split(name, examples, where, template, n_queries, seed)


def _split(name: str, examples: list[Example], where: str, template: Template | None,
           n_queries: int | None, seed: int | None) -> Task:
    examples = list(examples)
    if seed is not None:
        random.Random(seed).shuffle(examples)
    nq = max(1, len(examples) // 2) if n_queries is None else n_queries
    if not 1 <= nq < len(examples):
        raise IclgdError(
            f"{where} has {len(examples)} rows: n_queries must be between 1 and {len(examples) - 1}"
        )
    return Task(name, examples[:-nq], examples[-nq:], template or Template())


def _file_examples(path: Path, input_column: str | None, output_column: str | None,
                   verbalizer: Mapping[Any, str] | None) -> list[Example]:
    rows = _read_rows(path)
    if not rows:
        raise IclgdError(f"{path} holds no rows")
    in_col = input_column or _pick(rows[0], _INPUT_COLUMNS, path, "input")
    out_col = output_column or _pick(rows[0], _OUTPUT_COLUMNS, path, "output")
    verb = None if verbalizer is None else {str(k): str(v) for k, v in verbalizer.items()}
    examples = []
    for i, row in enumerate(rows):
        if in_col not in row or out_col not in row:
            raise IclgdError(f"{path} row {i + 1} lacks column {in_col!r} or {out_col!r}")
        label = str(row[out_col])
        if verb is not None:
            if label not in verb:
                raise IclgdError(f"{path} row {i + 1}: label {label!r} is not in the verbaliser")
            label = verb[label]
        examples.append(Example(str(row[in_col]), label))
    return examples


def list_tasks() -> list[dict[str, Any]]:
    """Every named task: `name`, `size` (items), `kind` (registry / built-in) and `source`."""
    rows = []
    for name in REGISTRY_TASKS:
        try:
            examples, src = registry_examples(name)
            rows.append({"name": name, "size": len(examples), "kind": "registry",
                         "source": f"{src['package']} {src['version']}: {src['description']}"})
        except IclgdError as err:
            rows.append({"name": name, "size": None, "kind": "registry", "source": str(err)})
    for name in BUILTIN_TASKS:
        path, _ = _resolve(name)
        rows.append({"name": name, "size": len(_read_rows(path)), "kind": "built-in",
                     "source": f"hand-made list shipped with iclgd ({path.name})"})
    return rows


def _resolve(name_or_path: str | Path) -> tuple[Path, str]:
    if str(name_or_path) in BUILTIN_TASKS:
        ref = resources.files("iclgd.data") / "builtin" / f"{name_or_path}.jsonl"
        return Path(str(ref)), str(name_or_path)
    path = Path(name_or_path).expanduser()
    if not path.exists():
        raise IclgdError(
            f"no task {str(name_or_path)!r}: use a named task "
            f"({', '.join([*REGISTRY_TASKS, *BUILTIN_TASKS])}; `iclgd tasks` lists them) "
            "or a path to a .jsonl/.csv file"
        )
    return path, path.stem


def _read_rows(path: Path) -> list[dict[str, Any]]:
    suffix = path.suffix.lower()
    text = path.read_text(encoding="utf-8")
    if suffix in (".jsonl", ".json"):
        out = []
        for i, line in enumerate(text.splitlines()):
            if line.strip():
                try:
                    out.append(json.loads(line))
                except json.JSONDecodeError as err:
                    raise IclgdError(f"{path} line {i + 1} is not JSON: {err.msg}") from err
        return out
    if suffix in (".csv", ".tsv"):
        return list(csv.DictReader(text.splitlines(), delimiter="\t" if suffix == ".tsv" else ","))
    raise IclgdError(f"{path}: task files must be .jsonl, .csv or .tsv")


def _pick(row: Mapping[str, Any], names: tuple[str, ...], path: Path, what: str) -> str:
    for n in names:
        if n in row:
            return n
    raise IclgdError(
        f"{path} has no {what} column (tried {', '.join(names)}; found {', '.join(row)}): "
        f"pass {what}_column="
    )


# ----------------------------------------------------------------------------- tokenizer glue

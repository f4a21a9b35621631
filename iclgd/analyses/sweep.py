"""Resumable checkpoint sweep: ICL, induction heads, density and weight drift over training.

Shen et al. 2024's weight-evolution argument and Olsson et al. 2022's induction-head phase change:
for every checkpoint of a series, in step order, one row with

- `icl_accuracy` / `icl_accuracy_se` (n as a string → value) on the default prompt set (GINC,
  in-distribution concepts, k = 3) and `bayes_accuracy` / `bayes_accuracy_se`, the exact
  Bayes-ideal ceiling on the same prompts, with `pretrained_bayes_accuracy` (/ `_se`), the
  exact pretraining-view predictor (a perfectly fitted pretrained LM); every prompt set under
  `icl_accuracy_by_task` (each with its `gain`);
- `icl_gain` (fewest → most examples of the default set, `icl_gain_n`), `icl_gain_se`,
  `icl_gain_ci95_low` / `_high` and `icl_emerged` (lower 95 % bound above 0; `iclgd.probes.icl.icl_gain`);
- `icl_score` (+ `icl_score_positions`), Olsson's late-minus-early loss;
- induction heads: best heads by prefix matching (with their copying scores) and by copying,
  plus the full `[n_layers, n_heads]` score tables;
- `density_fraction_below` (mean over the attention/MLP matrices of `fraction_below`, raw
  weights) and `density_hoyer`;
- `weight_drift_prev` (relative to the previous checkpoint *of the selected series*; null for the
  first) and `weight_drift_final` (relative to its last checkpoint); see `iclgd.probes.drift`.

Files in the output folder (`iclgd.analyses.sweep_rows`): `rows.jsonl` (one JSON line per
checkpoint, appended atomically), `provenance.json`, and at the end `rows.csv` (flattened) and
the plots.
The checkpoints are selected and loaded by `iclgd.analyses.sweep_source`, after one architecture
check of the whole series (`iclgd.hooks.checkpoints.check_one_architecture`).

Resuming: a rerun with the same output folder skips checkpoints already in `rows.jsonl`. Rows
are appended by atomic rewrite, so a run killed at any moment leaves the old file or the old
file plus one full row; stray temporary files are removed and an unparseable or duplicated line
is dropped (and recomputed) on start. **Failure rows** (a checkpoint that failed to load or to
evaluate: `{"checkpoint", "step", "error"}`) **count as done**, so reruns are idempotent;
`retry_errors=True` drops them and tries those checkpoints again. A rerun must use the same
settings (source, tasks, prompts, seed, dtype, selection): otherwise it raises `IclgdError`.

Sharding (`shard="i/N"`, `iclgd sweep --shard i/N`): the worker sweeps only its share of the
checkpoints (`iclgd.analyses.shards`) into its own folder; drift still compares with the
previous and the last checkpoint of the whole selection (read from disk when another worker
owns them). `iclgd merge` (`iclgd.analyses.sweep_merge`) combines the folders into exactly the
unsharded rows.
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from iclgd.analyses.shards import Shard, shard_record, sweep_grid
from iclgd.analyses.sweep_rows import ROWS, load_rows, rewrite_rows, write_sweep_tables
from iclgd.analyses.sweep_source import CheckpointLoader, CheckpointRef, Theta, resolve_source
from iclgd.analyses.sweep_tasks import SweepTasks
from iclgd.errors import IclgdError, first_line
from iclgd.hooks.checkpoints import check_one_architecture
from iclgd.hooks.loading import resolve_device
from iclgd.probes.density import DEFAULT_THRESHOLDS, fractions_below, hoyer, threshold_key
from iclgd.probes.drift import layer_matrices, weight_drift
from iclgd.probes.icl import gain_verdict
from iclgd.results import append_jsonl_atomic, atomic_write_text, provenance, write_json


@dataclass(frozen=True)
class SweepSettings:
    """What a sweep measures. Everything here must match when a sweep is resumed.

    `icl_sets`: GINC prompt sets `"in:3"` / `"out:5"` (concepts : example length k); the first
    is the default reported as `icl_accuracy`. `n_values`: demonstration counts (those whose
    prompt exceeds the model's context are dropped). `checkpoints`: the checkpoints to keep, by
    label or index (`iclgd.specs.select_checkpoint`; None: all); `every`: keep every k-th
    selected checkpoint (the last always). `tasks`: None = every task the source supports.
    `batch_size`: prompts per forward pass, or `"auto"` (halved on GPU out-of-memory,
    `iclgd.hooks.batching`). `dtype`: the models' dtype (bfloat16 runs the forward passes in
    bf16; every metric accumulates in float32/float64).
    """

    tasks: tuple[str, ...] | None = None
    icl_sets: tuple[str, ...] = ("in:3", "out:5")
    n_values: tuple[int, ...] = (0, 1, 2, 4, 8, 16, 32, 64)
    n_prompts: int = 500
    n_score_seqs: int = 32
    induction_seq_len: int | None = None
    induction_seqs: int = 16
    top_heads: int = 3
    every: int = 1
    checkpoints: tuple[str, ...] | None = None
    seed: int = 0
    dtype: str | None = None
    text: str | None = None
    batch_size: int | str = 64
    thresholds: tuple[float, ...] = DEFAULT_THRESHOLDS


@dataclass
class SweepResult:
    """Rows in step order, the output folder, and the files written."""

    rows: list[dict[str, Any]]
    out: Path
    files: list[Path] = field(default_factory=list)


@dataclass
class SweepPlan:
    """One run: the selected checkpoints, their tasks, the provenance record a resumed run must
    match, this worker's labels (None: all, unsharded) and the device."""

    refs: list[CheckpointRef]
    tasks: SweepTasks
    record: dict[str, Any]
    mine: set[str] | None
    device: str

    def wanted(self, label: str) -> bool:
        """True when this worker sweeps checkpoint `label`."""
        return self.mine is None or label in self.mine


def run_sweep(
    source: str | Path,
    out: str | Path,
    settings: SweepSettings | None = None,
    *,
    device: str = "auto",
    retry_errors: bool = False,
    plots: bool = True,
    progress: bool = True,
    cache_dir: str | Path | None = None,
    shard: Shard | str | None = None,
) -> SweepResult:
    """Sweep every selected checkpoint of `source` into `out` (module docstring); resumable.

    `shard` (`"i/N"` or a `Shard`): only this worker's share of the checkpoints
    (`iclgd.analyses.shards`); the folder then holds those rows, `rows.csv` and a shard record in
    its provenance, no plots (merge the shard folders with `iclgd merge`)."""
    settings = settings or SweepSettings()
    out = Path(out)
    plan = plan_sweep(source, settings, device, cache_dir, shard)
    rows = open_folder(out, plan, settings, retry_errors)
    done = {r["checkpoint"] for r in rows}
    todo = [i for i, r in enumerate(plan.refs) if r.label not in done and plan.wanted(r.label)]
    sweep_checkpoints(out, plan, settings, todo, progress)
    order = {r.label: r.step for r in plan.refs}
    rows = sorted([r for r in load_rows(out) if r["checkpoint"] in order
                   and plan.wanted(r["checkpoint"])], key=lambda r: order[r["checkpoint"]])
    tables = write_sweep_tables(out, rows, plots=plots and plan.mine is None)
    return SweepResult(rows, out, [out / ROWS, out / "provenance.json", *tables])


def plan_sweep(source: str | Path, settings: SweepSettings, device: str,
               cache_dir: str | Path | None, shard: Shard | str | None) -> SweepPlan:
    """Checkpoints, tasks and provenance record of a run, checked before anything is written."""
    refs = resolve_source(source, settings.checkpoints, settings.every, cache_dir)
    check_one_architecture((r.label, r.path) for r in refs if r.path is not None)
    dev = str(resolve_device(device))
    tasks = SweepTasks.for_source(source, refs, settings)
    record: dict[str, Any] = {
        "source": str(source),
        "settings": _settings_json(settings),
        "tasks": list(tasks.names),
    }
    shard, mine = Shard.parse(shard), None
    if shard is not None:
        grid = sweep_grid(r.label for r in refs)
        record["shard"] = shard_record("sweep", shard, record, grid)
        mine = {c[0] for c in shard.take(grid)}
    return SweepPlan(refs, tasks, record, mine, dev)


def open_folder(out: Path, plan: SweepPlan, settings: SweepSettings,
                retry_errors: bool) -> list[dict[str, Any]]:
    """Create or resume the output folder: refuse other settings, drop failure rows when
    retrying, write the provenance; the rows already there."""
    out.mkdir(parents=True, exist_ok=True)
    _check_resumable(out, plan.record)
    rows = load_rows(out)
    if retry_errors and any("error" in r for r in rows):
        rows = [r for r in rows if "error" not in r]
        rewrite_rows(out / ROWS, rows)
    prov = provenance(
        model=plan.record["source"],
        checkpoint=[r.label for r in plan.refs],
        seed=settings.seed,
        dtype=settings.dtype or "float32",
        device=plan.device,
        **plan.record,
        notes=plan.tasks.notes,
    )
    write_json(out / "provenance.json", prov)
    if plan.mine is not None and not (out / ROWS).exists():
        atomic_write_text(out / ROWS, "")  # a shard with no checkpoints still merges
    return rows


def sweep_checkpoints(out: Path, plan: SweepPlan, settings: SweepSettings, todo: list[int],
                      progress: bool) -> None:
    """Measure the checkpoints `todo` (indices into `plan.refs`), one row each in `out`."""
    from tqdm import tqdm

    loader = CheckpointLoader(plan.device, settings.dtype)
    drift = Drift(loader, plan.refs)
    bar = tqdm(todo, desc="sweep", unit="ckpt", file=sys.stderr, disable=not progress)
    for i in bar:
        ref = plan.refs[i]
        bar.set_postfix_str(ref.label)
        start = time.perf_counter()
        try:
            model = loader.load(ref)
        except Exception as err:  # noqa: BLE001 - any load failure becomes a failure row
            _fail(out, ref, f"failed to load: {first_line(err, 300)}")
            continue
        try:
            row: dict[str, Any] = {"checkpoint": ref.label, "step": ref.step}
            row.update(plan.tasks.evaluate(model))
            row.update(_weight_fields(i, model, plan.tasks.names, drift, settings.thresholds))
            row["seconds"] = time.perf_counter() - start
        except Exception as err:  # noqa: BLE001 - an evaluation failure becomes a failure row
            _fail(out, ref, f"failed to evaluate: {first_line(err, 300)}")
            continue
        append_jsonl_atomic(out / ROWS, row)


def _weight_fields(i: int, model: Any, tasks: tuple[str, ...], drift: Drift,
                   thresholds: tuple[float, ...]) -> dict[str, Any]:
    """Drift and density of checkpoint `i`, from raw matrices (`iclgd.probes.drift`)."""
    if "drift" in tasks:
        theta = drift.loader.current_theta(drift.refs[i])
        fields = drift.measure(i, theta)
        fields.update(_density(theta, thresholds) if "density" in tasks else {})
        drift.prev = (drift.refs[i].label, theta)
        return fields
    if "density" in tasks:
        return _density(layer_matrices(model), thresholds)
    return {}


@dataclass
class Drift:
    """Weight drift over the selected series: against the previous checkpoint (kept from the
    last one measured, else re-read) and the last one (read once)."""

    loader: CheckpointLoader
    refs: list[CheckpointRef]
    prev: tuple[str, Theta] | None = None
    final: Theta | None = None
    final_failed: bool = False

    def measure(self, i: int, theta: Theta) -> dict[str, float | None]:
        """`weight_drift_prev` and `weight_drift_final` of checkpoint `i` with matrices `theta`."""
        if self.final is None and not self.final_failed:
            try:
                self.final = theta if i == len(self.refs) - 1 else self.loader.theta(self.refs[-1])
            except Exception as err:  # noqa: BLE001
                self.final_failed = True
                _warn(f"last checkpoint {self.refs[-1].label} unreadable ({first_line(err, 300)}): "
                      "weight_drift_final is null")
        final = None if self.final is None else weight_drift(theta, self.final)
        return {"weight_drift_prev": self._drift_prev(i, theta), "weight_drift_final": final}

    def _drift_prev(self, i: int, theta: Theta) -> float | None:
        if i == 0:
            return None
        before = self.refs[i - 1]
        if self.prev is not None and self.prev[0] == before.label:
            return weight_drift(theta, self.prev[1])
        try:  # resumed, or the previous checkpoint failed in this run: reload it from disk
            return weight_drift(theta, self.loader.theta(before))
        except Exception as err:  # noqa: BLE001
            _warn(f"previous checkpoint {before.label} unreadable ({first_line(err, 300)}): "
                  "weight_drift_prev is null")
            return None


def last_checkpoint_verdict(rows: list[dict[str, Any]]) -> str | None:
    """The ICL verdict (`iclgd.probes.icl.gain_verdict`) of the last checkpoint with a gain."""
    good = [r for r in rows if "error" not in r and "icl_emerged" in r]
    if not good:
        return None
    r = max(good, key=lambda r: r["step"])
    lo, hi = r["icl_gain_n"]
    gain = {"n_from": lo, "n_to": hi, "gain": r["icl_gain"], "gain_se": r["icl_gain_se"],
            "gain_ci95_low": r["icl_gain_ci95_low"],
            "gain_ci95_high": r["icl_gain_ci95_high"],
            "icl_emerged": r["icl_emerged"]}
    return f"{r['checkpoint']}: " + gain_verdict(gain, r.get("icl_task", ""))


def _density(theta: Theta, thresholds: tuple[float, ...]) -> dict[str, Any]:
    fr = [fractions_below(w, thresholds) for w in theta.values()]
    keys = [threshold_key(t) for t in thresholds]
    return {
        "density_fraction_below": {k: sum(f[k] for f in fr) / len(fr) for k in keys},
        "density_hoyer": sum(hoyer(w) for w in theta.values()) / len(theta),
    }


def _warn(message: str) -> None:
    print(f"iclgd sweep: {message}", file=sys.stderr)


def _fail(out: Path, ref: CheckpointRef, message: str) -> None:
    _warn(f"checkpoint {ref.label} {message}")
    append_jsonl_atomic(out / ROWS, {"checkpoint": ref.label, "step": ref.step, "error": message})


def _settings_json(settings: SweepSettings) -> dict[str, Any]:
    data = asdict(settings)
    return json.loads(json.dumps(data, default=list))


def _check_resumable(out: Path, record: dict[str, Any]) -> None:
    path = out / "provenance.json"
    if not path.exists() or not (out / ROWS).exists():
        return
    try:
        old = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return
    for key in ("source", "settings", "tasks", "shard"):
        if (key in old or key in record) and old.get(key) != record.get(key):
            raise IclgdError(
                f"{out} holds a sweep with a different {key} ({_short(old.get(key))} vs "
                f"{_short(record.get(key))}): pass the same settings to resume, or a new --out"
            )


def _short(value: Any) -> str:
    if value is None:
        return "none"
    if isinstance(value, dict) and "fingerprint" in value:  # a shard record
        return f"shard {value['index']}/{value['count']}"
    if isinstance(value, dict):
        return ", ".join(f"{k}={v}" for k, v in value.items())[:120]
    return str(value)[:120]

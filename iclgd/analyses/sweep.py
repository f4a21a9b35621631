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

Files in the output folder: `rows.jsonl` (one JSON line per checkpoint, appended atomically),
`provenance.json`, and at the end `rows.csv` (flattened) and the plots.

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
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from iclgd.analyses.shards import Shard, shard_record, sweep_grid
from iclgd.analyses.sweep_tasks import SweepTasks
from iclgd.errors import IclgdError, first_line
from iclgd.probes.density import DEFAULT_THRESHOLDS, fractions_below, hoyer, threshold_key
from iclgd.probes.drift import layer_matrices, weight_drift
from iclgd.probes.icl import gain_verdict
from iclgd.results import append_jsonl_atomic, atomic_write_text, provenance, write_csv, write_json

ROWS = "rows.jsonl"


@dataclass(frozen=True)
class SweepSettings:
    """What a sweep measures. Everything here must match when a sweep is resumed.

    `icl_sets`: GINC prompt sets `"in:3"` / `"out:5"` (concepts : example length k); the first
    is the default reported as `icl_accuracy`. `n_values`: demonstration counts (those whose
    prompt exceeds the model's context are dropped). `checkpoints`: labels to keep (None: all);
    `every`: keep every k-th selected checkpoint (the last always). `tasks`: None = every task
    the source supports. `batch_size`: prompts per forward pass, or `"auto"` (halved on GPU
    out-of-memory, `iclgd.hooks.batching`). `dtype`: the models' dtype (bfloat16 runs the
    forward passes in bf16; every metric accumulates in float32/float64).
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


@dataclass(frozen=True)
class CheckpointRef:
    """One checkpoint: a local folder (`path`) or a hub revision (`hub` name + `label`)."""

    label: str
    step: int
    path: Path | None = None
    hub: str | None = None


@dataclass
class SweepResult:
    """Rows in step order, the output folder, and the files written."""

    rows: list[dict[str, Any]]
    out: Path
    files: list[Path] = field(default_factory=list)


# ----------------------------------------------------------------------------- source


def resolve_source(
    source: str | Path,
    checkpoints: tuple[str, ...] | None = None,
    every: int = 1,
    cache_dir: str | Path | None = None,
) -> list[CheckpointRef]:
    """The selected checkpoints of a local series folder or of a cached hub model, by step.

    A hub name needs explicit `checkpoints` labels (`step1000`, ...); each is resolved to its
    snapshot folder in the local HF cache when present (so one model skeleton is reused), else
    loaded later through `load_model(name, checkpoint=label)`.
    """
    from iclgd.hooks import list_checkpoints
    from iclgd.hooks.loading import CHECKPOINT_RE

    if every < 1:
        raise IclgdError(f"--every must be >= 1, got {every}")
    path = Path(source).expanduser()
    if path.exists():
        found = list_checkpoints(path)
        refs = [CheckpointRef(label, step, p) for label, step, p in found]
        if checkpoints:
            by_label = {r.label: r for r in refs}
            missing = [c for c in checkpoints if c not in by_label]
            if missing:
                raise IclgdError(
                    f"unknown checkpoint {missing[0]!r} in {path}: available are "
                    f"{', '.join(by_label)}"
                )
            refs = sorted((by_label[c] for c in dict.fromkeys(checkpoints)), key=lambda r: r.step)
    else:
        name = str(source)
        if name.startswith((".", "/", "~")) or name.count("/") > 1:
            raise IclgdError(f"unknown source {name!r}: no such folder")
        if not checkpoints:
            raise IclgdError(
                f"{name!r} is not a local folder: for a hub model pass --checkpoints "
                "step1000,step2000,... (revisions in the local Hugging Face cache)"
            )
        refs = []
        for label in dict.fromkeys(checkpoints):
            m = CHECKPOINT_RE.match(label)
            if not m:
                raise IclgdError(f"checkpoint label {label!r} is not of the form step{{N}}")
            refs.append(
                CheckpointRef(
                    label, int(m.group(1)), _cached_snapshot(name, label, cache_dir), name
                )
            )
        refs.sort(key=lambda r: r.step)
    if every > 1:
        refs = [r for i, r in enumerate(refs) if i % every == 0 or i == len(refs) - 1]
    return refs


def _cached_snapshot(name: str, revision: str, cache_dir: str | Path | None) -> Path | None:
    try:
        from huggingface_hub import snapshot_download

        folder = Path(
            snapshot_download(
                name,
                revision=revision,
                local_files_only=True,
                cache_dir=None if cache_dir is None else str(cache_dir),
            )
        )
    except Exception:  # not cached (or no huggingface_hub): loaded by name later
        return None
    return folder if (folder / "config.json").exists() else None


def _config_signature(folder: Path) -> dict[str, Any] | None:
    from iclgd.hooks import arch_signature

    try:
        return arch_signature(folder)
    except (OSError, ValueError):
        return None  # unreadable: reported when the checkpoint is loaded


def check_architectures(refs: list[CheckpointRef]) -> None:
    """Raise `IclgdError` when the local checkpoints' configs describe different models."""
    first: tuple[str, dict[str, Any]] | None = None
    for ref in refs:
        sig = None if ref.path is None else _config_signature(ref.path)
        if sig is None:
            continue
        if first is None:
            first = (ref.label, sig)
        elif sig != first[1]:
            diff = sorted(k for k in set(sig) | set(first[1]) if sig.get(k) != first[1].get(k))
            raise IclgdError(
                f"incompatible architectures: {ref.label} differs from {first[0]} in "
                f"{', '.join(diff[:4])}; sweep one architecture per series"
            )


class CheckpointLoader:
    """Loads checkpoints into one reused bridge (local folders) or fresh bridges (hub names)."""

    def __init__(self, device: str, dtype: str | None) -> None:
        self.device, self.dtype = device, dtype
        self.model: Any = None
        self.reference: dict[str, Any] | None = None

    def load(self, ref: CheckpointRef) -> Any:
        from iclgd.hooks import load_model, load_weights_into

        if ref.path is None:  # hub revision not in a local snapshot: a new bridge each time
            model = load_model(ref.hub, device=self.device, dtype=self.dtype, checkpoint=ref.label)
            self.model = model
            return model
        if self.model is None or self.reference is None:
            self.model = load_model(ref.path, device=self.device, dtype=self.dtype)
            self.reference = _config_signature(ref.path)
        else:
            load_weights_into(self.model, ref.path, self.reference)
        self.model.cfg.iclgd_checkpoint = ref.label
        return self.model

    def current_theta(self, ref: CheckpointRef) -> dict[str, torch.Tensor]:
        """Raw matrices of the checkpoint just loaded: copied from the live model when its dtype
        holds the stored values exactly (float32/float64), else re-read from disk."""
        live = next(self.model.original_model.parameters()).dtype
        if ref.path is not None and live not in (torch.float32, torch.float64):
            return self.theta(ref)
        return {k: v.detach().clone() for k, v in layer_matrices(self.model).items()}

    def theta(self, ref: CheckpointRef) -> dict[str, torch.Tensor]:
        """Raw attention/MLP matrices of `ref`, read from disk (or a fresh hub load)."""
        from iclgd.hooks import read_hf_weights

        if ref.path is not None and self.model is not None:
            return layer_matrices(self.model, params=read_hf_weights(ref.path))
        from iclgd.hooks import load_model

        other = load_model(
            ref.path or ref.hub,
            device="cpu",
            dtype=self.dtype,
            checkpoint=None if ref.path is not None else ref.label,
        )
        return {k: v.cpu() for k, v in layer_matrices(other).items()}


# ----------------------------------------------------------------------------- rows on disk


def load_rows(out: str | Path, warn: Callable[[str], None] | None = None) -> list[dict[str, Any]]:
    """Rows already in `out/rows.jsonl`, repairing the folder first.

    Removes stray temporary files left by a killed atomic write; drops unparseable lines (e.g. a
    partial trailing line written by another tool), rows without a checkpoint label and
    duplicated labels (first kept), rewriting the file atomically when anything was dropped.
    """
    out = Path(out)
    warn = warn or (lambda msg: print(msg, file=sys.stderr))
    if not out.is_dir():
        return []
    for stray in out.glob(".*.tmp"):
        stray.unlink(missing_ok=True)
    path = out / ROWS
    if not path.exists():
        return []
    rows, seen, dropped = [], set(), 0
    for line in path.read_text(encoding="utf-8").splitlines():
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            dropped += 1
            continue
        if not isinstance(row, dict) or "checkpoint" not in row or row["checkpoint"] in seen:
            dropped += 1
            continue
        seen.add(row["checkpoint"])
        rows.append(row)
    if dropped:
        warn(
            f"iclgd sweep: dropped {dropped} unreadable or duplicated line(s) from {path}; "
            "those checkpoints are recomputed"
        )
        rewrite_rows(path, rows)
    return rows


def rewrite_rows(path: Path, rows: list[dict[str, Any]]) -> None:
    """Replace a rows file with `rows` (one JSON line each), atomically."""
    from iclgd.results import to_json

    atomic_write_text(path, "".join(to_json(r, indent=None) + "\n" for r in rows))


def flatten_row(row: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested mappings → dotted columns (`icl_accuracy.4`); lists stay (JSON in the CSV)."""
    flat: dict[str, Any] = {}
    for key, value in row.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(flatten_row(value, name + "."))
        else:
            flat[name] = value
    return flat


# ----------------------------------------------------------------------------- the sweep


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
    from tqdm import tqdm

    from iclgd.hooks import resolve_device

    settings = settings or SweepSettings()
    out = Path(out)
    refs = resolve_source(source, settings.checkpoints, settings.every, cache_dir)
    check_architectures(refs)
    dev = str(resolve_device(device))
    tasks = SweepTasks.for_source(source, refs, settings)
    record: dict[str, Any] = {
        "source": str(source),
        "settings": _settings_json(settings),
        "tasks": list(tasks.names),
    }
    shard = Shard.parse(shard)
    grid = sweep_grid(r.label for r in refs)
    if shard is not None:
        record["shard"] = shard_record("sweep", shard, record, grid)
        mine = {c[0] for c in shard.take(grid)}
        plots = False
    out.mkdir(parents=True, exist_ok=True)
    _check_resumable(out, record)
    rows = load_rows(out)
    if retry_errors and any("error" in r for r in rows):
        rows = [r for r in rows if "error" not in r]
        rewrite_rows(out / ROWS, rows)
    prov = provenance(
        model=str(source),
        checkpoint=[r.label for r in refs],
        seed=settings.seed,
        dtype=settings.dtype or "float32",
        device=dev,
        **record,
        notes=tasks.notes,
    )
    write_json(out / "provenance.json", prov)
    if shard is not None and not (out / ROWS).exists():
        atomic_write_text(out / ROWS, "")  # a shard with no checkpoints still merges
    done = {r["checkpoint"] for r in rows}
    todo = [i for i, r in enumerate(refs)
            if r.label not in done and (shard is None or r.label in mine)]
    loader = CheckpointLoader(dev, settings.dtype)
    theta_final: dict[str, torch.Tensor] | None = None
    final_failed = False
    prev: tuple[str, dict[str, torch.Tensor]] | None = None
    bar = tqdm(todo, desc="sweep", unit="ckpt", file=sys.stderr, disable=not progress)
    for i in bar:
        ref = refs[i]
        bar.set_postfix_str(ref.label)
        start = time.perf_counter()
        try:
            model = loader.load(ref)
        except Exception as err:  # noqa: BLE001 - any load failure becomes a failure row
            _fail(out, ref, f"failed to load: {first_line(err, 300)}")
            continue
        try:
            row: dict[str, Any] = {"checkpoint": ref.label, "step": ref.step}
            row.update(tasks.evaluate(model))
            if "drift" in tasks.names:
                theta = loader.current_theta(ref)
                if theta_final is None and not final_failed:
                    try:
                        theta_final = theta if i == len(refs) - 1 else loader.theta(refs[-1])
                    except Exception as err:  # noqa: BLE001
                        final_failed = True
                        print(
                            f"iclgd sweep: last checkpoint {refs[-1].label} unreadable "
                            f"({first_line(err, 300)}): weight_drift_final is null",
                            file=sys.stderr,
                        )
                row["weight_drift_prev"] = _drift_prev(loader, refs, i, prev, theta)
                row["weight_drift_final"] = (
                    None if theta_final is None else weight_drift(theta, theta_final)
                )
                row.update(_density(theta, settings.thresholds) if "density" in tasks.names else {})
                prev = (ref.label, theta)
            elif "density" in tasks.names:
                row.update(_density(layer_matrices(model), settings.thresholds))
            row["seconds"] = time.perf_counter() - start
        except Exception as err:  # noqa: BLE001 - an evaluation failure becomes a failure row
            _fail(out, ref, f"failed to evaluate: {first_line(err, 300)}")
            continue
        append_jsonl_atomic(out / ROWS, row)
    rows = load_rows(out)
    order = {r.label: r.step for r in refs}
    rows = sorted(
        [r for r in rows
         if r["checkpoint"] in order and (shard is None or r["checkpoint"] in mine)],
        key=lambda r: order[r["checkpoint"]],
    )
    files = [out / ROWS, out / "provenance.json", *write_sweep_tables(out, rows, plots=plots)]
    return SweepResult(rows, out, files)


def write_sweep_tables(out: str | Path, rows: list[dict[str, Any]], *, plots: bool) -> list[Path]:
    """`rows.csv` (flattened, without the per-head tables) and, with `plots`, the figures."""
    out = Path(out)
    files = [write_csv(out / "rows.csv", [flatten_row(_csv_row(r)) for r in rows])]
    if plots:
        from iclgd.analyses.sweep_plots import save_sweep_plots

        files += save_sweep_plots(rows, out)
    return files


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


def _drift_prev(
    loader: CheckpointLoader,
    refs: list[CheckpointRef],
    i: int,
    prev: tuple[str, dict[str, torch.Tensor]] | None,
    theta: dict[str, torch.Tensor],
) -> float | None:
    if i == 0:
        return None
    before = refs[i - 1]
    if prev is not None and prev[0] == before.label:
        return weight_drift(theta, prev[1])
    try:  # resumed, or the previous checkpoint failed in this run: reload it from disk
        return weight_drift(theta, loader.theta(before))
    except Exception as err:  # noqa: BLE001
        print(
            f"iclgd sweep: previous checkpoint {before.label} unreadable ({first_line(err, 300)}): "
            "weight_drift_prev is null",
            file=sys.stderr,
        )
        return None


def _density(theta: dict[str, torch.Tensor], thresholds: tuple[float, ...]) -> dict[str, Any]:
    fr = [fractions_below(w, thresholds) for w in theta.values()]
    keys = [threshold_key(t) for t in thresholds]
    return {
        "density_fraction_below": {k: sum(f[k] for f in fr) / len(fr) for k in keys},
        "density_hoyer": sum(hoyer(w) for w in theta.values()) / len(theta),
    }


def _fail(out: Path, ref: CheckpointRef, message: str) -> None:
    print(f"iclgd sweep: checkpoint {ref.label} {message}", file=sys.stderr)
    append_jsonl_atomic(out / ROWS, {"checkpoint": ref.label, "step": ref.step, "error": message})


def _csv_row(row: dict[str, Any]) -> dict[str, Any]:
    """Drop the per-head tables (kept in rows.jsonl) from the flattened CSV."""
    return {k: v for k, v in row.items() if not k.startswith("induction_table")}


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

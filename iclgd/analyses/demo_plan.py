"""The demo as a graph of small tasks run on a few worker processes, resumable and honest
about failures.

Tasks: train the GINC model (`iclgd train ginc`), check once whether the real LM loads (a
model that is not installed marks all its parts "not available" without trying again), one
task per (section, model) part (`iclgd.analyses.section_base.measure_part`), and one per
section that merges its parts and draws its figures. A task starts when the tasks it needs are
done (GINC parts wait for training, the density of the trained linear-attention model waits
for its training part); the longest ready task starts first, so GINC training overlaps the
sections that do not need it. Finished parts are saved at once (`parts/<label>.json`); a rerun
skips every part saved with the same settings and a GINC training already finished.

Progress: one line per finished task on stderr with the estimated time left (per-task CPU
estimates, rescaled by how the finished tasks compared with theirs, divided by the workers).
"""

from __future__ import annotations

import contextlib
import json
import os
import resource
import sys
import time
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from iclgd.analyses.section_base import (
    ModelRef,
    NotAvailable,
    Part,
    load_lm,
    load_part,
    measure_part,
    merge_parts,
    save_part,
    settings_dict,
)
from iclgd.analyses.sections import SECTIONS, get_section, settings_for
from iclgd.constructions.registry import NAMES
from iclgd.errors import first_line

FT_SECTIONS = ("order", "outputs", "dual_form")
# CPU seconds per task at full size on the reference 2-core machine (quick: QUICK_SCALE x)
ESTIMATE = {"train": 270, "probe": 10, "tune": 8, "constructions": 2, "trained_vs_constructed/lsa-1": 25,
            "trained_vs_constructed/lsa-3": 35, "density": 2, "emergent_icl": 10, "order": 25,
            "outputs": 15, "dual_form": 20, "weight_evolution": 30, "finish": 3}
LM_FACTOR = 4.0  # a real LM's part relative to the GINC model's
QUICK_SCALE = 0.1


@dataclass
class Task:
    """One unit of work: `kind` train / probe / part / finish, what it needs, its estimate."""

    key: str
    kind: str
    deps: tuple[str, ...] = ()
    estimate: float = 1.0
    section: str | None = None
    ref: ModelRef | None = None
    payload: dict[str, Any] = field(default_factory=dict)


@dataclass
class DemoConfig:
    """What the demo runs: output folder, size, device, seed, the real LM (None: skipped), its
    tasks, workers; `run_command` runs an `iclgd` command line in the worker and returns its
    exit status (`iclgd.commands.main`, which `iclgd demo` passes): the GINC training task
    runs `iclgd train ginc` through it."""

    out: Path
    quick: bool = False
    device: str = "cpu"
    seed: int = 0
    lm: str | None = "smollm2-135m"
    lm_tasks: tuple[str, ...] | None = None
    jobs: int = 2
    dtype: str | None = None
    run_command: Callable[[Sequence[str]], int] | None = None

    def settings(self, section: str, label: str | None = None) -> Any:
        """The section's settings (quick or full, the demo's LM tasks and seed); for a
        finetuning section and a model whose learning rates were tuned, those rates."""
        s = settings_for(get_section(section), quick=self.quick)
        if self.lm_tasks is not None and hasattr(s, "lm_tasks"):
            s = replace(s, lm_tasks=tuple(self.lm_tasks))
        s = replace(s, seed=self.seed) if hasattr(s, "seed") else s
        tuned = self.out / "lr" / f"{label}.json"
        if label is not None and getattr(s, "lr", None) == "auto" and tuned.is_file():
            rates = json.loads(tuned.read_text(encoding="utf-8"))["rates"]
            s = replace(s, lr=tuple(sorted((m, float(r)) for m, r in rates.items())))
        return s

    def tuned_methods(self, kind: str) -> list[str]:
        """Every finetuning method the demo's sections run on a model of `kind`."""
        methods: list[str] = []
        for section in FT_SECTIONS:
            s = settings_for(get_section(section), quick=self.quick)
            extra = s.lm_methods if kind == "lm" and hasattr(s, "lm_methods") else s.methods
            methods += [m for m in extra if m not in methods]
        return methods


def train_argv(cfg: DemoConfig) -> list[str]:
    """`iclgd train ginc` arguments of the demo's GINC model (tiny with `quick`)."""
    argv = ["train", "ginc", "--out", str(cfg.out / "ginc"), "--seed", str(cfg.seed),
            "--device", cfg.device, "--eval-prompts", "0", "--quiet"]
    if cfg.quick:
        argv += ["--steps", "20", "--checkpoints", "3", "--layers", "1", "--d-model", "32"]
    return argv


def models_for(section: str, cfg: DemoConfig) -> list[ModelRef]:
    """The models the demo measures in `section`."""
    ginc = ModelRef("ginc", str(cfg.out / "ginc"), "ginc")
    lm = [ModelRef(lm_label(cfg.lm), cfg.lm, "lm")] if cfg.lm else []
    if section == "constructions":
        return [ModelRef(n, n, "construction") for n in NAMES]
    if section == "trained_vs_constructed":
        return [ModelRef(f"lsa-{k}", f"lsa-{k}", "lsa") for k in (1, 3)]
    if section == "density":
        lsa = [ModelRef(f"lsa-{k}", str(cfg.out / "trained_vs_constructed" / "parts" /
                                         f"lsa-{k}.json"), "lsa") for k in (1, 3)]
        return [ModelRef(n, n, "construction") for n in NAMES] + lsa + [ginc] + lm
    if section == "weight_evolution":  # a real LM ships one checkpoint: nothing to sweep
        return [ginc]
    return [ginc] + lm


def lm_label(spec: str) -> str:
    """The report's column name of an LM: a local folder's name, else the spec."""
    path = Path(spec).expanduser()
    return path.name if path.exists() else spec.replace("/", "_")


def plan(cfg: DemoConfig) -> list[Task]:
    """Every task of the demo with its dependencies and CPU estimate."""
    scale = QUICK_SCALE if cfg.quick else 1.0
    tasks = [Task("train", "train", estimate=ESTIMATE["train"] * scale,
                  payload={"argv": train_argv(cfg)})]
    if cfg.lm:
        tasks.append(Task("probe", "probe", estimate=ESTIMATE["probe"],
                          ref=ModelRef("lm", cfg.lm, "lm")))
    tuning = getattr(cfg.settings("order"), "lr", None) == "auto"
    if tuning:
        for ref in models_for("order", cfg):
            first = ("train",) if ref.kind == "ginc" else ("probe",)
            est = ESTIMATE["tune"] * (LM_FACTOR if ref.kind == "lm" else 1.0)
            tasks.append(Task(f"tune/{ref.label}", "tune", first, est * scale, ref=ref))
    for name in SECTIONS:
        keys = []
        for ref in models_for(name, cfg):
            deps: tuple[str, ...] = ()
            est = ESTIMATE.get(f"{name}/{ref.label}") or ESTIMATE.get(name, 10)
            if ref.kind == "ginc":
                deps = ("train",)
            elif ref.kind == "lm":
                deps, est = ("probe",), est * LM_FACTOR
            elif ref.kind == "lsa" and name == "density":
                deps = (f"trained_vs_constructed/{ref.label}",)
            if tuning and name in FT_SECTIONS and ref.kind in ("ginc", "lm"):
                deps += (f"tune/{ref.label}",)
            key = f"{name}/{ref.label}"
            keys.append(key)
            tasks.append(Task(key, "part", deps, est * scale, name, ref))
        tasks.append(Task(f"finish/{name}", "finish", tuple(keys), ESTIMATE["finish"], name))
    return tasks


# ----------------------------------------------------------------------------- workers
def _init_worker() -> None:
    import torch

    from iclgd.runtime import keep_freed_memory

    torch.set_num_threads(1)
    keep_freed_memory()  # forked workers inherit it; spawned ones need it set again


def run_task(task: Task, cfg: DemoConfig) -> Any:
    """Execute one task (in a worker process); returns what the scheduler records."""
    start = time.process_time()
    if task.kind == "train":
        if cfg.run_command is None:
            raise TypeError("DemoConfig.run_command is needed to train the GINC model")
        log = cfg.out / "ginc_train.log"
        log.parent.mkdir(parents=True, exist_ok=True)
        with log.open("w", encoding="utf-8") as fh, contextlib.redirect_stdout(fh), \
                contextlib.redirect_stderr(fh):
            code = cfg.run_command(task.payload["argv"])
        return {"code": code, "cpu_s": time.process_time() - start}
    if task.kind == "probe":
        try:
            load_lm(task.ref, cfg.device, cfg.dtype)
            return {"reason": None, "cpu_s": time.process_time() - start}
        except NotAvailable as err:
            return {"reason": first_line(err, 200), "cpu_s": time.process_time() - start}
    if task.kind == "tune":
        return tune_model(task.ref, cfg) | {"cpu_s": time.process_time() - start}
    if task.kind == "part":
        section = get_section(task.section)
        return measure_part(section, task.ref, cfg.settings(task.section, task.ref.label),
                            cfg.device, cfg.out / task.section, cfg.dtype)
    section = get_section(task.section)
    folder = cfg.out / task.section
    settings = cfg.settings(task.section)
    parts = [_part_or_status(folder, ref, settings_dict(cfg.settings(task.section, ref.label)))
             for ref in models_for(task.section, cfg)]
    merge_parts(section, settings, parts).save(folder)
    return {"cpu_s": time.process_time() - start}


def tune_model(ref: ModelRef, cfg: DemoConfig) -> dict[str, Any]:
    """Choose the learning rate of every finetuning method the sections run on `ref`, once,
    on held-out demonstrations (`sections_ft.learning_rates_for`); saved to `lr/<label>.json`
    and `lr/<label>.csv`. A model that does not load leaves its parts to say so."""
    from iclgd.analyses.sections_ft import learning_rates_for
    from iclgd.results import write_csv, write_json

    settings = cfg.settings("order")
    try:
        model = load_lm(ref, cfg.device, cfg.dtype)
    except NotAvailable as err:
        return {"status": f"not available: {first_line(err, 200)}"}
    n = settings.ginc_demos if ref.kind == "ginc" else settings.lm_demos
    rates, info = learning_rates_for(model, ref, settings, cfg.tuned_methods(ref.kind), n)
    write_json(cfg.out / "lr" / f"{ref.label}.json", {"rates": rates, "n_demos": n,
                                                       "tune_queries": settings.tune_queries})
    write_csv(cfg.out / "lr" / f"{ref.label}.csv", info["lr_search"])
    return {"status": "ok", "rates": rates}


def _part_or_status(folder: Path, ref: ModelRef, wanted: dict[str, Any]) -> Part:
    saved = load_part(folder, ref.label, wanted)
    if saved is not None:
        return saved
    path = folder / "parts" / f"{ref.label}.status.json"
    data = json.loads(path.read_text(encoding="utf-8"))
    return Part(**data)


# ----------------------------------------------------------------------------- scheduler
def critical_path(tasks: list[Task]) -> dict[str, float]:
    """Per task its estimate plus the longest chain of estimates of the tasks waiting on it:
    the ready task with the longest remaining chain starts first (so the real LM's load and
    tuning start beside the GINC training, not after the short toy parts)."""
    after: dict[str, list[str]] = {t.key: [] for t in tasks}
    for t in tasks:
        for d in t.deps:
            after[d].append(t.key)
    est = {t.key: t.estimate for t in tasks}
    rank: dict[str, float] = {}

    def visit(key: str) -> float:
        if key not in rank:
            rank[key] = est[key] + max((visit(k) for k in after[key]), default=0.0)
        return rank[key]

    for t in tasks:
        visit(t.key)
    return rank


def _say(msg: str) -> None:
    print(f"[demo] {msg}", file=sys.stderr, flush=True)


def _minutes(seconds: float) -> str:
    return f"{seconds / 60:.1f} min" if seconds >= 90 else f"{seconds:.0f} s"


class Scheduler:
    """Runs the plan on `cfg.jobs` worker processes (see the module docstring)."""

    def __init__(self, cfg: DemoConfig, say: Callable[[str], None] = _say) -> None:
        self.cfg, self.say = cfg, say
        self.tasks = {t.key: t for t in plan(cfg)}
        self.rank = critical_path(list(self.tasks.values()))
        self.done: dict[str, str] = {}  # key -> "ok" / "failed: ..." / "not available: ..."
        self.cpu: dict[str, float] = {}
        self.lm_reason: str | None = None

    def _skip_done(self) -> None:
        marker = self.cfg.out / "ginc" / ".iclgd-demo-trained.json"
        if marker.is_file() and json.loads(marker.read_text()) == self.tasks["train"].payload:
            self.done["train"] = "ok"
        for t in self.tasks.values():
            if t.kind == "tune" and (self.cfg.out / "lr" / f"{t.ref.label}.json").is_file():
                self.done[t.key] = "ok"
            if t.kind == "part":
                wanted = settings_dict(self.cfg.settings(t.section, t.ref.label))
                if load_part(self.cfg.out / t.section, t.ref.label, wanted) is not None:
                    self.done[t.key] = "ok"
        if self.done:
            self.say(f"resuming: {len(self.done)} of {len(self.tasks)} tasks already done")

    def _ready(self) -> list[Task]:
        ready = [t for k, t in self.tasks.items() if k not in self.done
                 and all(d in self.done for d in t.deps)]
        return sorted(ready, key=lambda t: -self.rank[t.key])

    def _resolve_blocked(self, task: Task) -> bool:
        """Settle a part whose dependency failed or whose LM is missing, without running it."""
        bad = [d for d in task.deps if self.done.get(d) != "ok"]
        if task.kind not in ("part", "tune") or not bad:
            return False
        if "probe" in bad and self.lm_reason:
            status = f"not available: {self.lm_reason}"
        elif self.done[bad[0]].startswith("not available"):
            status = self.done[bad[0]]
        else:
            status = f"failed: needs {bad[0]}, which {self.done[bad[0]]}"
        if task.kind == "tune":
            self.done[task.key] = status
            return True
        self._record_part(Part(task.ref.label, task.ref.spec, status,
                               provenance={"kind": task.ref.kind}), task)
        return True

    def _record_part(self, part: Part, task: Task) -> None:
        folder = self.cfg.out / task.section
        if part.ok:
            save_part(folder, part)
            (folder / "parts" / f"{part.label}.status.json").unlink(missing_ok=True)
        else:
            from iclgd.results import write_json

            write_json(folder / "parts" / f"{part.label}.status.json", {
                "label": part.label, "spec": part.spec, "status": part.status,
                "cpu_s": part.cpu_s, "provenance": part.provenance})
        self.done[task.key] = part.status
        self.cpu[task.key] = part.cpu_s

    def _record(self, task: Task, result: Any) -> None:
        if task.kind == "part":
            self._record_part(result, task)
            return
        self.cpu[task.key] = result.get("cpu_s", 0.0)
        if task.kind == "train":
            ok = result["code"] == 0
            self.done[task.key] = "ok" if ok else f"failed (exit {result['code']})"
            if ok:
                from iclgd.results import write_json

                write_json(self.cfg.out / "ginc" / ".iclgd-demo-trained.json", task.payload)
        elif task.kind == "probe":
            self.lm_reason = result["reason"]
            self.done[task.key] = "ok" if result["reason"] is None else "not available"
        elif task.kind == "tune":
            self.done[task.key] = result["status"]
        else:
            self.done[task.key] = "ok"

    @staticmethod
    def _lm_busy(task: Task, running: dict[Future, tuple[Task, float]]) -> bool:
        """One real-LM task at a time: each holds the model, a finetuned copy and optimiser
        state (several GB for SmolLM2), and the LM's tasks form one chain anyway."""
        def is_lm(t: Task) -> bool:
            return t.ref is not None and t.ref.kind == "lm" and t.kind != "finish"

        return is_lm(task) and any(is_lm(t) for t, _ in running.values())

    def _eta(self, running: dict[Future, tuple[Task, float]]) -> float:
        est = sum(self.tasks[k].estimate for k in self.cpu if k in self.tasks)
        ratio = min(max(sum(self.cpu.values()) / est, 0.3), 3.0) if est > 1 else 1.0
        left = sum(t.estimate for k, t in self.tasks.items() if k not in self.done)
        left -= sum(min(time.perf_counter() - t0, t.estimate) for t, t0 in running.values())
        return max(left, 0.0) * ratio / max(1, self.cfg.jobs)

    def run(self) -> dict[str, Any]:
        """Run every task not yet done; return `{status, cpu_s, wall_s}`."""
        import multiprocessing as mp

        t0, c0 = time.perf_counter(), time.process_time()
        self._skip_done()
        running: dict[Future, tuple[Task, float]] = {}
        # forked workers start with the parent's imports; CUDA cannot be used after a fork
        fork = "fork" in mp.get_all_start_methods() and not self.cfg.device.startswith("cuda")
        ctx = mp.get_context("fork" if fork else "spawn")
        with ProcessPoolExecutor(max_workers=self.cfg.jobs, mp_context=ctx,
                                 initializer=_init_worker) as pool:
            while len(self.done) < len(self.tasks):
                for task in self._ready():
                    if any(task is t for t, _ in running.values()):
                        continue
                    if self._resolve_blocked(task):
                        self._report(task, running)
                        continue
                    if len(running) < self.cfg.jobs and not self._lm_busy(task, running):
                        fut = pool.submit(run_task, task, self.cfg)
                        running[fut] = (task, time.perf_counter())
                if not running:
                    if not self._ready():
                        raise RuntimeError(f"demo plan stuck: {sorted(set(self.tasks) - set(self.done))}")
                    continue
                finished, _ = wait(running, return_when=FIRST_COMPLETED)
                for fut in finished:
                    task, _ = running.pop(fut)
                    try:
                        self._record(task, fut.result())
                    except Exception as err:  # noqa: BLE001 - a dead worker fails its task only
                        self.done[task.key] = f"failed: {type(err).__name__}: {first_line(err, 200)}"
                        if task.kind == "part":
                            self._record_part(Part(task.ref.label, task.ref.spec,
                                                   self.done[task.key],
                                                   provenance={"kind": task.ref.kind}), task)
                    self._report(task, running)
        children = resource.getrusage(resource.RUSAGE_CHILDREN)
        return {"status": dict(self.done), "cpu_s": {k: round(v, 2) for k, v in self.cpu.items()},
                "wall_s": round(time.perf_counter() - t0, 1),
                "process_cpu_s": round(time.process_time() - c0 + children.ru_utime
                                       + children.ru_stime, 1)}

    def _report(self, task: Task, running: dict[Future, tuple[Task, float]]) -> None:
        n = len(self.done)
        cpu = self.cpu.get(task.key)
        self.say(f"{n:>2}/{len(self.tasks)} {task.key}: {self.done[task.key][:90]}"
                 + (f" ({cpu:.0f} s CPU)" if cpu is not None else "")
                 + (f"; about {_minutes(self._eta(running))} left" if n < len(self.tasks)
                    else ""))


def preload() -> None:
    """Import the heavy libraries once in the parent, so forked workers start warm."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    import torch  # noqa: F401
    import transformer_lens  # noqa: F401
    import transformers  # noqa: F401

    import iclgd.analyses.compare  # noqa: F401
    import iclgd.analyses.sweep  # noqa: F401
    import iclgd.hooks  # noqa: F401

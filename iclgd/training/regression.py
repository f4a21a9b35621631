"""Train Garg et al. (2022) in-context linear-regression models, with checkpoints and resume.

Objective (Garg, Tsipras, Liang, Valiant, NeurIPS 2022): prompts of `n_points` points
x ~ N(0, I_d) (coordinates beyond the curriculum's `n_dims` zeroed), y = w^T x (+ noise), w ~
N(0, I_d) fresh per prompt; the loss is the **MSE over every point's prediction** (point k
predicted from points 0..k-1), not divided by d. Adam, constant learning rate, fresh batch each
step. The training log also reports the loss divided by the active `n_dims` (Garg's normalised
error; the zero predictor scores 1).

Output folder:
- `step{N}/`: checkpoint after N updates (see `iclgd.training.regression_model` for the files;
  `regression_model.json` also records the step and the curriculum state), plus
  `trainer_state.pt` (optimizer, data-generator state) used to resume; written atomically by
  `iclgd.training.checkpointing.save_checkpoint`;
- `run_config.json`: the `RegressionTrainConfig` the folder was started with;
- `train_log.csv`: step (updates done), n_dims, n_points, loss (MSE), loss_normalised (MSE / n_dims), lr,
  elapsed_s; each row is the mean over the steps since the previous row.

Checkpoints are written at log-spaced steps including 0 and the last step. Running again with
the same folder resumes from its latest checkpoint (bit-identical to an uninterrupted run on the
same device); architecture/data settings must match the folder's `run_config.json`.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import torch

from iclgd.data.curriculum import Curriculum, CurriculumState, sample_prompts
from iclgd.errors import IclgdError
from iclgd.hooks.loading import resolve_device
from iclgd.results import read_json, write_json
from iclgd.training.checkpointing import (
    TRAINER_STATE,
    checkpoint_steps,
    latest_checkpoint,
    list_step_folders,
    load_trainer_state,
    read_train_log,
    remove_stale_temporaries,
    save_checkpoint,
    write_train_log,
)
from iclgd.training.regression_model import (
    META_FILE,
    GargRegressionModel,
    load_regression_model,
)

# Fields that may differ when a run is resumed (they do not change what a step computes).
RESUMABLE_FIELDS = ("steps", "n_checkpoints", "device", "log_every")


@dataclass(frozen=True)
class RegressionTrainConfig:
    """Settings of one training run (defaults: the CPU preset, a few minutes on 2 cores)."""

    n_dims: int = 5
    n_points: int = 11
    n_layers: int = 3
    d_model: int = 64
    n_heads: int = 2
    steps: int = 6000
    batch: int = 64
    lr: float = 1e-3
    curriculum: bool = True
    curriculum_interval: int = 250
    noise_std: float = 0.0
    n_checkpoints: int = 10
    seed: int = 0
    device: str = "cpu"
    log_every: int = 50

    def __post_init__(self) -> None:
        for name in ("n_dims", "n_points", "n_layers", "d_model", "n_heads", "batch",
                     "curriculum_interval", "log_every"):
            if int(getattr(self, name)) < 1:
                raise IclgdError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.steps < 0:
            raise IclgdError(f"steps must be >= 0, got {self.steps}")
        if self.n_checkpoints < 2:
            raise IclgdError(f"n_checkpoints must be >= 2 (step 0 and the last), got {self.n_checkpoints}")
        if not (self.lr > 0 and math.isfinite(self.lr)):
            raise IclgdError(f"lr must be a positive number, got {self.lr}")
        if not (self.noise_std >= 0 and math.isfinite(self.noise_std)):
            raise IclgdError(f"noise_std must be >= 0, got {self.noise_std}")

    def make_curriculum(self) -> Curriculum:
        """Garg's schedule scaled to (n_dims, n_points) (`Curriculum.scaled`), or fixed."""
        if not self.curriculum:
            return Curriculum.fixed(self.n_dims, self.n_points)
        return Curriculum.scaled(self.n_dims, self.n_points, self.curriculum_interval)


PRESETS: dict[str, dict[str, Any]] = {
    # A few minutes on a 2-core CPU: d = 5, up to 11 points, 3 layers of width 64.
    "cpu": {},
    # Garg et al.'s setting: d = 20, 41 points, GPT-2 12 layers x 256 wide x 8 heads, Adam 1e-4,
    # batch 64, 500k steps, curriculum dims 5 -> 20 and points 11 -> 41 every 2000 steps.
    "gpu": {
        "n_dims": 20, "n_points": 41, "n_layers": 12, "d_model": 256, "n_heads": 8,
        "steps": 500_000, "batch": 64, "lr": 1e-4, "curriculum_interval": 2000,
        "n_checkpoints": 20, "log_every": 500, "device": "cuda",
    },
}


def preset_config(name: str, **overrides: Any) -> RegressionTrainConfig:
    """The named preset ("cpu" or "gpu") with `overrides` (None values ignored)."""
    if name not in PRESETS:
        raise IclgdError(f"unknown preset {name!r}; choose one of {sorted(PRESETS)}")
    values = {**PRESETS[name], **{k: v for k, v in overrides.items() if v is not None}}
    return RegressionTrainConfig(**values)


def checkpoint_steps_in(folder: str | Path) -> list[int]:
    """Steps of the complete, resumable `step{N}` checkpoints in `folder`, ascending."""
    return [step for step, path in list_step_folders(folder) if (path / TRAINER_STATE).is_file()]


def _save_checkpoint(out: Path, step: int, model: GargRegressionModel,
                     optimizer: torch.optim.Optimizer, generator: torch.Generator,
                     config: RegressionTrainConfig) -> Path:
    """Write `out/step{step}/` atomically with the model, its metadata and the resume state."""
    curriculum = config.make_curriculum()
    meta = {
        **model.metadata(),
        "step": step,
        "curriculum": curriculum.to_dict(),
        "curriculum_state": asdict(curriculum.at(step)),
        "loss": "MSE over all points (not divided by d)",
        "seed": config.seed,
    }
    state = {"step": step, "optimizer": optimizer.state_dict(), "generator": generator.get_state()}
    return save_checkpoint(out, step, model, json_files={META_FILE: meta}, trainer_state=state)


def _check_resume(out: Path, config: RegressionTrainConfig) -> None:
    path = out / "run_config.json"
    if not path.exists():
        write_json(path, asdict(config))
        return
    saved = read_json(path)
    diffs = [
        f"{f.name}={saved.get(f.name)!r} (now {getattr(config, f.name)!r})"
        for f in fields(config)
        if f.name not in RESUMABLE_FIELDS and saved.get(f.name) != getattr(config, f.name)
    ]
    if diffs:
        raise IclgdError(
            f"{out} was trained with different settings: {', '.join(diffs)}; use a new --out "
            "folder or the same settings to resume"
        )
    write_json(path, {**saved, **{k: getattr(config, k) for k in RESUMABLE_FIELDS}})


@dataclass
class TrainResult:
    """What `train_regression` did: folder, first and last step, checkpoints written, log rows."""

    out: Path
    start_step: int
    end_step: int
    checkpoints: list[int]
    log: list[dict[str, Any]]
    wall_s: float


def train_regression(
    config: RegressionTrainConfig, out: str | Path, *, progress: bool = True
) -> TrainResult:
    """Train (or resume) a `GargRegressionModel` on the ICL objective; see the module docstring.

    Returns a `TrainResult`. Writes checkpoints, `run_config.json` and `train_log.csv` to `out`.
    """
    from tqdm import tqdm

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    _check_resume(out, config)
    device = resolve_device(config.device)
    curriculum = config.make_curriculum()
    remove_stale_temporaries(out)
    latest = latest_checkpoint(out)
    start = latest[0] if latest else 0
    if start > config.steps:
        raise IclgdError(
            f"{out} already has a checkpoint at step {start} > --steps {config.steps}; "
            "raise --steps or use a new --out folder"
        )
    model, optimizer, generator = _start(config, latest, device)
    ckpt_steps = [s for s in checkpoint_steps(config.steps, config.n_checkpoints) if s > start or
                  (s == 0 and not latest)]
    log = read_train_log(out, up_to_step=start)
    elapsed0 = float(log[-1]["elapsed_s"]) if log else 0.0
    written: list[int] = []
    t0 = time.perf_counter()
    if ckpt_steps and ckpt_steps[0] == 0:
        _save_checkpoint(out, 0, model, optimizer, generator, config)
        written.append(0)
    window: list[float] = []
    bar = tqdm(range(start, config.steps), disable=not progress, desc="train regression",
               initial=start, total=config.steps)
    for step in bar:
        cur = curriculum.at(step)
        window.append(_train_step(model, optimizer, config, cur, generator, device))
        if (step + 1) % config.log_every == 0 or step + 1 == config.steps:
            mse = sum(window) / len(window)
            log.append(_log_row(step + 1, cur, mse, config.lr,
                                round(elapsed0 + time.perf_counter() - t0, 3)))
            window = []
            bar.set_postfix(loss_norm=f"{mse / cur.n_dims:.4f}", d=cur.n_dims, n=cur.n_points)
            write_train_log(out, log)
        if step + 1 in ckpt_steps:
            _save_checkpoint(out, step + 1, model, optimizer, generator, config)
            written.append(step + 1)
    bar.close()
    write_train_log(out, log)
    return TrainResult(out=out, start_step=start, end_step=config.steps, checkpoints=written,
                       log=log, wall_s=time.perf_counter() - t0)


def _start(
    config: RegressionTrainConfig, latest: tuple[int, Path] | None, device: torch.device,
) -> tuple[GargRegressionModel, torch.optim.Optimizer, torch.Generator]:
    """The model in training mode, its Adam optimiser and the prompt generator: resumed from the
    `latest` checkpoint, or fresh (model seeded by `config.seed`, prompts by `config.seed + 1`)."""
    generator = torch.Generator().manual_seed(config.seed + 1)
    if latest:
        model = load_regression_model(latest[1], device=device, attn_implementation="sdpa")
        state = load_trainer_state(latest[1])
        optimizer = torch.optim.Adam(model.parameters(), lr=config.lr)
        optimizer.load_state_dict(state["optimizer"])
        generator.set_state(state["generator"])
    else:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(config.seed)
            model = GargRegressionModel(
                config.n_dims, config.n_points, d_model=config.d_model,
                n_layers=config.n_layers, n_heads=config.n_heads,
            )
        model = model.to(device)
        optimizer = torch.optim.Adam(model.parameters(), lr=config.lr)
    model.train()
    return model, optimizer, generator


def _train_step(
    model: GargRegressionModel, optimizer: torch.optim.Optimizer, config: RegressionTrainConfig,
    cur: CurriculumState, generator: torch.Generator, device: torch.device,
) -> float:
    """One Adam step on a fresh batch of `cur`'s prompts; returns its mean squared error."""
    batch = sample_prompts(config.batch, cur.n_points, config.n_dims, n_dims=cur.n_dims,
                           noise_std=config.noise_std, generator=generator)
    preds = model(batch.xs.to(device), batch.ys.to(device))
    loss = (preds - batch.ys.to(device)).square().mean()
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return float(loss.detach())


def _log_row(
    step: int, cur: CurriculumState, mse: float, lr: float, elapsed_s: float
) -> dict[str, Any]:
    """One `train_log.csv` row: the mean loss since the last row, also per input dimension."""
    return {
        "step": step, "n_dims": cur.n_dims, "n_points": cur.n_points, "loss": mse,
        "loss_normalised": mse / cur.n_dims, "lr": lr, "elapsed_s": elapsed_s,
    }


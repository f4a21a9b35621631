"""Train a GPT-NeoX (Pythia architecture) from scratch on GINC pretraining documents.

Causal LM on random windows of the GINC corpus (Xie et al. 2022: 1000 documents x 10,240
tokens from the in-distribution concepts, joined by delimiters), loss = mean next-token cross
entropy over every window position. The default optimiser is Muon (Jordan et al. 2024) on the
attention and MLP matrices with AdamW on embeddings, unembedding, biases and norms, both on one
schedule (linear warmup, cosine decay): at equal steps it reaches a lower loss than AdamW alone and,
unlike AdamW in the 5-minute CPU budget, a clear in-context gain (bench/RESULTS.md, "GINC
training"); `optimizer="adamw"` trains with AdamW alone. The default (batch 16 x 256, 1300 steps,
5.3 M tokens) gained +15.5, +16.0 and +10.9 points from n = 0 to n = 32 (k = 3, 1500 prompts per n,
SE 1.8) for training seeds 0, 1, 2 on one machine; on another CPU the trajectory differs like
another seed would (see Reproducibility). Checkpoints are
HF folders `OUT/step{N}/` at roughly log-spaced points including step 0, each with the
tokenizer and `ginc.json` (generator config + training config), so `load_ginc_world(folder)`
regenerates the same concepts and prompts. Re-running with the same OUT resumes from the newest
checkpoint (optimizer, schedule position, data RNG and torch RNG restored).

Training runs the attention through PyTorch SDPA (`train_attention`, 17 % less CPU than eager
on the default model, same result to float tolerance); checkpoints are saved with eager attention
so the analyses can read attention patterns.

Reproducibility: a fixed thread count (`threads`, default 1) and, with `deterministic=True`,
`torch.use_deterministic_algorithms` for the duration of training; a rerun on the same machine
writes the same weights. Across machines the CPU's instruction set still changes the float
kernels (ATen dispatches AVX2 or AVX-512 code, `ATEN_CPU_CAPABILITY`), so trajectories and the
final in-context gain differ like different seeds do; the summary records the capability used.

Two stopping rules: a fixed `steps` count (schedule progress = step / steps) or a wall-clock
`time_budget` in seconds (progress = training seconds / budget, checkpoints at log-spaced
fractions of the budget; the step count is whatever fits and is recorded in train_log.csv).
"""

from __future__ import annotations

import math
import sys
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from iclgd.data.ginc_hmm import GincConfig, build_world, pretraining_stream
from iclgd.data.tokenizer import build_ginc_tokenizer, model_vocab_size
from iclgd.errors import IclgdError
from iclgd.hooks.loading import resolve_device
from iclgd.training import checkpointing as ckpt


@dataclass(frozen=True)
class GincTrainConfig:
    """Model, optimiser and run settings of `train_ginc` (all JSON-serialisable)."""

    layers: int = 2
    d_model: int = 64
    heads: int = 2
    d_mlp: int | None = None  # default 4 * d_model
    rotary_pct: float = 0.25  # Pythia
    window: int = 256  # training window (>= longest evaluated prompt)
    batch: int = 16
    lr: float = 3e-3
    min_lr_ratio: float = 0.1
    warmup_frac: float = 0.03
    weight_decay: float = 0.0
    beta1: float = 0.9
    beta2: float = 0.95
    grad_clip: float = 1.0
    optimizer: str = "muon"  # Muon on attention/MLP matrices + AdamW on the rest; or "adamw"
    muon_lr: float = 0.02
    steps: int | None = 1300  # fixed step count (about 120 CPU-seconds with 1 thread, SDPA)
    time_budget: float | None = None  # or: wall-clock seconds of training (with steps=None)
    checkpoints: int = 12
    seed: int = 0
    device: str = "cpu"
    threads: int | None = 1  # 2 threads were 9x slower per token on the shared 2-core machine
    corpus_docs: int = 1000
    doc_length: int = 10240
    log_every: int = 25
    train_attention: str = "sdpa"  # attention kernel while training; checkpoints are saved eager
    deterministic: bool = True  # torch.use_deterministic_algorithms while training
    ginc: GincConfig = field(default_factory=GincConfig)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> GincTrainConfig:
        data = dict(data)
        data["ginc"] = GincConfig.from_dict(data.get("ginc", {}))
        data.setdefault("optimizer", "adamw")  # runs saved before the field existed used AdamW
        return cls(**data)


PRESETS: dict[str, dict[str, Any]] = {
    # fits 5 minutes on a 2-core CPU (see bench/RESULTS.md, "GINC training")
    "cpu": {},
    # toward Xie et al.'s 4-layer GPT-2 setting, for a GPU
    "gpu": {
        "layers": 4, "d_model": 256, "heads": 8, "window": 1024, "batch": 32, "lr": 1e-3,
        "steps": 20000, "device": "cuda", "threads": None,
    },
}


def preset_config(name: str, **overrides: Any) -> GincTrainConfig:
    """`GincTrainConfig` of a preset ("cpu" or "gpu") with `overrides` (None values ignored)."""
    if name not in PRESETS:
        raise IclgdError(f"unknown preset {name!r}; choose one of {sorted(PRESETS)}")
    cfg = replace(GincTrainConfig(), **PRESETS[name])
    given = {k: v for k, v in overrides.items() if v is not None}
    if "steps" in given and "time_budget" not in given:
        given["time_budget"] = None
    if "time_budget" in given and "steps" not in given:
        given["steps"] = None
    return replace(cfg, **given)


def build_model(cfg: GincTrainConfig):
    """A freshly initialised `GPTNeoXForCausalLM` (eager attention), seeded by `cfg.seed`."""
    import torch
    from transformers import GPTNeoXConfig, GPTNeoXForCausalLM

    if cfg.d_model % cfg.heads:
        raise IclgdError(f"d_model={cfg.d_model} is not divisible by heads={cfg.heads}")
    vocab = cfg.ginc.vocab_size
    hf_cfg = GPTNeoXConfig(
        vocab_size=model_vocab_size(vocab), hidden_size=cfg.d_model,
        num_hidden_layers=cfg.layers, num_attention_heads=cfg.heads,
        intermediate_size=cfg.d_mlp or 4 * cfg.d_model, max_position_embeddings=cfg.window,
        rotary_pct=cfg.rotary_pct, use_parallel_residual=True, hidden_act="gelu",
        attention_dropout=0.0, hidden_dropout=0.0, tie_word_embeddings=False,
        bos_token_id=vocab, eos_token_id=vocab, pad_token_id=vocab,
    )
    hf_cfg._attn_implementation = "eager"
    torch.manual_seed(cfg.seed)
    return GPTNeoXForCausalLM(hf_cfg)


class _Optimizers:
    """Several torch optimizers stepped as one (param_groups concatenated, state_dict a list)."""

    def __init__(self, *optimizers: Any) -> None:
        self.optimizers = optimizers

    @property
    def param_groups(self) -> list[dict[str, Any]]:
        # read through: load_state_dict replaces each optimizer's group dicts
        return [g for o in self.optimizers for g in o.param_groups]

    def zero_grad(self, set_to_none: bool = True) -> None:
        for o in self.optimizers:
            o.zero_grad(set_to_none=set_to_none)

    def step(self) -> None:
        for o in self.optimizers:
            o.step()

    def state_dict(self) -> dict[str, Any]:
        return {"optimizers": [o.state_dict() for o in self.optimizers]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        states = state["optimizers"] if "optimizers" in state else [state]
        for o, s in zip(self.optimizers, states, strict=True):
            o.load_state_dict(s)


def build_optimizer(model: Any, cfg: GincTrainConfig) -> Any:
    """The optimiser of `cfg.optimizer`; every param group carries `lr_scale` (its lr / `cfg.lr`).

    - "adamw": AdamW on every parameter (weight decay `cfg.weight_decay` on the matrices other
      than the input and output embeddings).
    - "muon": torch's Muon (Jordan et al. 2024: momentum 0.95, Nesterov, 5 Newton-Schulz steps,
      lr `cfg.muon_lr`) on the attention and MLP weight matrices (the fused query_key_value
      matrix is orthogonalised as one), AdamW at `cfg.lr` on the input embedding, the
      unembedding, biases and norms.
    """
    import torch

    embeddings = {id(model.get_input_embeddings().weight), id(model.get_output_embeddings().weight)}
    params = list(model.parameters())
    matrices = [p for p in params if p.ndim >= 2 and id(p) not in embeddings]
    rest = [p for p in params if not (p.ndim >= 2 and id(p) not in embeddings)]
    adam_kw = {"lr": cfg.lr, "betas": (cfg.beta1, cfg.beta2), "eps": 1e-8}
    if cfg.optimizer == "adamw":
        return _Optimizers(torch.optim.AdamW(
            [{"params": matrices, "weight_decay": cfg.weight_decay, "lr_scale": 1.0},
             {"params": rest, "weight_decay": 0.0, "lr_scale": 1.0}], **adam_kw))
    if cfg.optimizer == "muon":
        muon = torch.optim.Muon(
            [{"params": matrices, "lr_scale": cfg.muon_lr / cfg.lr}], lr=cfg.muon_lr,
            weight_decay=cfg.weight_decay, momentum=0.95, nesterov=True)
        adam = torch.optim.AdamW([{"params": rest, "weight_decay": 0.0, "lr_scale": 1.0}], **adam_kw)
        return _Optimizers(muon, adam)
    raise IclgdError(f"optimizer must be 'adamw' or 'muon', got {cfg.optimizer!r}")


def _lr_at(cfg: GincTrainConfig, progress: float) -> float:
    """Linear warmup over `warmup_frac`, then cosine decay to `min_lr_ratio * lr`."""
    p = min(max(progress, 0.0), 1.0)
    if p < cfg.warmup_frac:
        return cfg.lr * max(p / cfg.warmup_frac, 1e-3)
    q = (p - cfg.warmup_frac) / max(1.0 - cfg.warmup_frac, 1e-9)
    return cfg.lr * (cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * q)))


def _json_files(cfg: GincTrainConfig, step: int) -> dict[str, Any]:
    return {"ginc.json": {"ginc": cfg.ginc.to_dict(), "train": cfg.to_dict(), "step": step}}


def determinism_record() -> dict[str, Any]:
    """The settings that decide whether a CPU run is bit-reproducible: torch threads,
    deterministic-algorithms flag, the ATen CPU kernel set (AVX2 / AVX-512 / ...) and versions."""
    import platform

    import torch

    return {"threads": torch.get_num_threads(),
            "deterministic_algorithms": torch.are_deterministic_algorithms_enabled(),
            "cpu_capability": torch.backends.cpu.get_cpu_capability(),
            "machine": platform.machine(), "processor": platform.processor() or None,
            "torch": torch.__version__}


def train_ginc(out: str | Path, cfg: GincTrainConfig | None = None, *, progress: bool = True,
               stop_after_steps: int | None = None) -> dict[str, Any]:
    """Train (or resume) into `out`; returns a summary dict (steps, wall seconds of training,
    process-CPU seconds of this call's training loop, final loss, last checkpoint, and
    `determinism`: `determinism_record()` during training).
    `stop_after_steps` ends the call early after that many new steps without a final checkpoint
    (simulates a killed run; used by tests). The thread count stays set afterwards; the
    deterministic-algorithms flag is restored."""
    import torch

    cfg = cfg or GincTrainConfig()
    if cfg.steps is None and cfg.time_budget is None:
        raise IclgdError("give either steps or time_budget")
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    was_deterministic = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(cfg.deterministic)
    try:
        record = determinism_record()
        summary = _train(Path(out), cfg, progress, stop_after_steps)
    finally:
        torch.use_deterministic_algorithms(was_deterministic)
    return {**summary, "determinism": record}


def _train(out: Path, cfg: GincTrainConfig, progress: bool,
           stop_after_steps: int | None) -> dict[str, Any]:
    out.mkdir(parents=True, exist_ok=True)
    ckpt.remove_stale_temporaries(out)
    device = resolve_device(cfg.device)
    corpus = _Corpus.build(cfg, device)
    run = _Run.start(out, cfg, device)
    outcome = _loop(run, _Schedule.of(cfg), corpus, progress, stop_after_steps)
    if outcome is None:
        return {"steps": run.step, "stopped_early": True, "train_seconds": run.train_seconds}
    last_loss, cpu_seconds, last = outcome
    return {"steps": run.step, "train_seconds": round(run.train_seconds, 2),
            "train_cpu_seconds": round(cpu_seconds, 2), "data_seconds": round(corpus.seconds, 2),
            "final_loss": last_loss, "last_checkpoint": str(last), "stopped_early": False}


def _loop(run: _Run, schedule: _Schedule, corpus: _Corpus, progress: bool,
          stop_after_steps: int | None) -> tuple[float, float, Path] | None:
    """Train until the schedule ends, saving at its marks: `(last logged loss, CPU seconds,
    last checkpoint)`, or None when stopped after `stop_after_steps` new steps."""
    cfg = run.cfg
    passed = schedule.marks_passed(run.step, run.train_seconds)
    new_steps, last_loss, last = 0, float("nan"), ckpt.latest_checkpoint(run.out)
    bar = _progress_bar(progress, cfg)
    t0 = time.perf_counter() - run.train_seconds
    cpu0 = time.process_time()
    while schedule.progress(run.step, run.train_seconds) < 1.0:
        lr = _lr_at(cfg, schedule.progress(run.step, run.train_seconds))
        loss = run.train_step(corpus.windows(run.data_rng, cfg.batch), lr)
        new_steps += 1
        run.train_seconds = time.perf_counter() - t0
        if run.step % cfg.log_every == 0 or schedule.progress(run.step, run.train_seconds) >= 1.0:
            last_loss = run.log(loss, lr)
            bar.update(run.step, last_loss, run.train_seconds)
        if stop_after_steps is not None and new_steps >= stop_after_steps:
            bar.close()
            return None
        now = schedule.marks_passed(run.step, run.train_seconds)
        if now > passed:
            passed = now
            if not run.log_rows or run.log_rows[-1]["step"] != run.step:
                last_loss = run.log(loss, lr)
            last = (run.step, run.save())
    bar.close()
    if last is None or last[0] != run.step:
        last = (run.step, run.save())
    return last_loss, time.process_time() - cpu0, last[1]


@dataclass(frozen=True)
class _Corpus:
    """The pretraining token stream on the training device, and random windows of it."""

    stream: Any
    window: int
    seconds: float  # to generate it

    @classmethod
    def build(cls, cfg: GincTrainConfig, device: Any) -> _Corpus:
        import torch

        t0 = time.perf_counter()
        world = build_world(cfg.ginc)
        stream = torch.from_numpy(
            pretraining_stream(world, cfg.corpus_docs, cfg.doc_length, seed=cfg.seed)
        ).to(device)
        seconds = time.perf_counter() - t0
        if stream.numel() <= cfg.window + 1:
            raise IclgdError(
                f"corpus of {stream.numel()} tokens is shorter than window {cfg.window}")
        return cls(stream, cfg.window, seconds)

    def windows(self, rng: np.random.Generator, batch: int) -> Any:
        """`batch` windows of `window + 1` tokens at uniform random offsets."""
        import torch

        device = self.stream.device
        span = self.stream.numel() - self.window - 1
        starts = torch.from_numpy(rng.integers(0, span, size=batch)).to(device)
        return self.stream[starts[:, None] + torch.arange(self.window + 1, device=device)]


@dataclass(frozen=True)
class _Schedule:
    """Where a run stands (progress in [0, 1]: steps done / `steps`, or training seconds /
    `time_budget`) and its checkpoint marks (log-spaced steps, or fractions of the budget)."""

    cfg: GincTrainConfig
    marks: list[float]

    @classmethod
    def of(cls, cfg: GincTrainConfig) -> _Schedule:
        if cfg.steps is not None:
            return cls(cfg, [float(s) for s in ckpt.checkpoint_steps(cfg.steps, cfg.checkpoints)])
        return cls(cfg, ckpt.checkpoint_fractions(cfg.checkpoints))

    def progress(self, step: int, seconds: float) -> float:
        cfg = self.cfg
        return step / cfg.steps if cfg.steps is not None else seconds / cfg.time_budget

    def marks_passed(self, step: int, seconds: float) -> int:
        """How many checkpoint marks the run has reached."""
        scale = self.cfg.steps if self.cfg.steps is not None else 1.0
        p = self.progress(step, seconds)
        return sum(1 for m in self.marks if m / scale <= p + 1e-12)


@dataclass
class _Run:
    """One training run's state: the model, optimiser, data RNG and counters a checkpoint saves
    and a resume restores, and the training log."""

    out: Path
    cfg: GincTrainConfig
    model: Any
    opt: Any
    tokenizer: Any
    data_rng: np.random.Generator
    step: int = 0
    train_seconds: float = 0.0
    log_rows: list[dict[str, Any]] = field(default_factory=list)

    @classmethod
    def start(cls, out: Path, cfg: GincTrainConfig, device: Any) -> _Run:
        """A new run (its step-0 checkpoint saved) or the newest checkpoint's run, resumed."""
        resumed = ckpt.latest_checkpoint(out)
        if resumed is None:
            state, model = None, build_model(cfg)
        else:
            state = ckpt.load_trainer_state(resumed[1])
            model = _resumed_model(out, cfg, state, resumed[1])
        model = model.to(device)
        run = cls(out, cfg, model, build_optimizer(model, cfg),
                  build_ginc_tokenizer(cfg.ginc.vocab_size), np.random.default_rng([cfg.seed, 3]))
        if resumed is not None and state is not None:
            run.restore(resumed[0], state)
        model.train()
        if cfg.train_attention not in ("eager", "sdpa"):
            raise IclgdError(
                f"train_attention must be 'eager' or 'sdpa', got {cfg.train_attention!r}")
        model.config._attn_implementation = cfg.train_attention
        if resumed is None:
            run.save()
        return run

    def restore(self, step: int, state: dict[str, Any]) -> None:
        """Continue from the trainer state saved at `step`: optimiser, data and torch RNGs,
        training seconds and the log up to that step."""
        import torch

        self.step = step
        self.opt.load_state_dict(state["optimizer"])
        self.data_rng.bit_generator.state = state["data_rng"]
        torch.set_rng_state(state["torch_rng"])
        self.train_seconds = float(state["train_seconds"])
        self.log_rows = ckpt.read_train_log(self.out, up_to_step=step)

    def train_step(self, batch: Any, lr: float) -> Any:
        """One optimiser step at learning rate `lr` on `batch` (next-token cross entropy)."""
        import torch
        import torch.nn.functional as F

        for group in self.opt.param_groups:
            group["lr"] = lr * group["lr_scale"]
        logits = self.model(input_ids=batch[:, :-1]).logits
        loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), batch[:, 1:].reshape(-1))
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        if self.cfg.grad_clip:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.grad_clip)
        self.opt.step()
        self.step += 1
        return loss

    def log(self, loss: Any, lr: float) -> float:
        """Append this step's row to the training log; the loss as a float."""
        value = float(loss.detach())
        tokens = self.step * self.cfg.batch * self.cfg.window
        self.log_rows.append({"step": self.step, "tokens": tokens, "loss": round(value, 5),
                              "lr": lr, "train_seconds": round(self.train_seconds, 2)})
        return value

    def trainer_state(self) -> dict[str, Any]:
        import torch

        return {"config": self.cfg.to_dict(), "optimizer": self.opt.state_dict(), "step": self.step,
                "data_rng": self.data_rng.bit_generator.state, "torch_rng": torch.get_rng_state(),
                "train_seconds": self.train_seconds}

    def save(self) -> Path:
        """Checkpoint `out/step{step}/` (eager attention: analyses read attention patterns) and
        the training log."""
        self.model.config._attn_implementation = "eager"
        path = ckpt.save_checkpoint(self.out, self.step, self.model, tokenizer=self.tokenizer,
                                    json_files=_json_files(self.cfg, self.step),
                                    trainer_state=self.trainer_state())
        ckpt.write_train_log(self.out, self.log_rows)
        self.model.config._attn_implementation = self.cfg.train_attention
        return path


def _resumed_model(out: Path, cfg: GincTrainConfig, state: dict[str, Any], folder: Path) -> Any:
    """The model of checkpoint `folder`, refused when its run had another configuration."""
    import torch
    from transformers import AutoModelForCausalLM

    saved = GincTrainConfig.from_dict(state["config"])
    if replace(saved, device=cfg.device, threads=cfg.threads) != cfg:
        raise IclgdError(f"{out} holds a run with a different configuration; use a new --out")
    return AutoModelForCausalLM.from_pretrained(str(folder), attn_implementation="eager",
                                                dtype=torch.float32)


class _progress_bar:
    """tqdm on stderr over schedule progress (0..1000 permille)."""

    def __init__(self, enabled: bool, cfg: GincTrainConfig) -> None:
        self.cfg = cfg
        self.bar = None
        if enabled:
            from tqdm import tqdm

            self.bar = tqdm(total=1000, desc="train ginc", file=sys.stderr, unit="‰")

    def update(self, step: int, loss: float, seconds: float) -> None:
        if self.bar is None:
            return
        p = step / self.cfg.steps if self.cfg.steps is not None else seconds / self.cfg.time_budget
        self.bar.n = min(int(1000 * p), 1000)
        self.bar.set_postfix(step=step, loss=f"{loss:.3f}", refresh=False)
        self.bar.refresh()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()

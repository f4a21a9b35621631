"""`iclgd bench`: every benchmark in one process, one table of same-run ratios.

Each benchmark module exposes `run(quick, device, tiny) -> list[Row]`; each row sets a
measurement of iclgd's code ("ours") against the physical limit of its task ("baseline": the
same work done by plain PyTorch / Hugging Face calls), measured side by side in the same run
(`iclgd.bench.measure`: interleaved rounds, CPU time on CPU, peak memory in fresh processes).

- `calibration`: the peak-memory method on tensors of known size;
- `capture`: `iclgd.hooks.capture` of the hooks `compare` reads vs a plain HF forward (time,
  peak memory), GPT-2-small-sized and SmolLM2-sized random models;
- `sweep`: `run_sweep` per checkpoint vs loading the weights (safetensors → `load_state_dict`)
  plus plain HF forwards over exactly the token batches the sweep ran;
- `finetune`: `finetune_batched` vs a loop of plain `torch.optim.SGD` steps, 32 tasks on the
  GINC model, and Dai's `kv` method at SmolLM2 size;
- `delta_w`: factored (`FactoredDelta`) vs materialised ΔW comparison (time, memory);
- `lsa`: von Oswald LSA training steps vs a plain PyTorch loop of the same step;
- `probe`: `icl_accuracy` tokens/s vs plain HF forwards over the same batches;
- `compare`: `iclgd compare` on SmolLM2-135M vs a plain HF replay of its forward passes and
  finetuning steps, and its peak resident memory (full run only; needs the converted model).

`tiny=True` shrinks every model and size (for tests: the rows, not the numbers, are checked).
`run_command` (an in-process `iclgd` command runner, `iclgd.commands.main`, which `iclgd bench`
passes) is what the `compare` benchmark runs `iclgd compare` with.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

BENCHMARKS = ("calibration", "capture", "sweep", "finetune", "delta_w", "lsa", "probe", "compare")


@dataclass(frozen=True)
class Row:
    """One measured ratio. `ratio` = ours / baseline unless `unit` says otherwise; `target`
    like `"<= 1.03"` or `">= 5"`; `spread` = (lowest, highest) ratio over the rounds."""

    bench: str
    name: str
    ours: float
    baseline: float
    ratio: float
    unit: str
    target: str | None = None
    spread: tuple[float, float] | None = None
    note: str = ""

    @property
    def passed(self) -> bool | None:
        """Whether the ratio meets the target (None without a target or a finite ratio)."""
        if self.target is None or not math.isfinite(self.ratio):
            return None
        op, value = self.target.split()
        if op == "~":
            return abs(self.ratio - 1) <= float(value)
        return self.ratio <= float(value) if op == "<=" else self.ratio >= float(value)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["spread"] = list(self.spread) if self.spread else None
        d["passed"] = self.passed
        return d


def run_benchmarks(names: tuple[str, ...] = BENCHMARKS, *, quick: bool = False,
                   device: str = "cpu", tiny: bool = False, log: Any = None,
                   run_command: Callable[[Sequence[str]], int] | None = None) -> list[Row]:
    """Run the named benchmarks in order; every row they return."""
    import importlib

    rows: list[Row] = []
    for name in names:
        if log is not None:
            log(f"bench {name} ...")
        module = importlib.import_module(f"iclgd.bench.{name}_bench")
        extra = {"run_command": run_command} if name == "compare" else {}
        rows.extend(module.run(quick=quick, device=device, tiny=tiny, **extra))
    return rows

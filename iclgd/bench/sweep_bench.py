"""Checkpoint sweep per checkpoint vs loading its weights plus plain forwards over its tokens.

A series of checkpoints shaped like the default GINC model (random weights, a GINC world in
each folder) is swept with `run_sweep` (default settings: every task; `quick` uses 100
prompts per n). Every forward call of the model during the sweep is recorded
(`iclgd.bench.measure.record_lm_calls`), so the baseline replays exactly the token batches the
sweep evaluated. Per checkpoint:
- ours: the process CPU time from the start of one checkpoint's load to the next (steady
  state: every checkpoint after the first, which also samples the prompts and computes the
  exact Bayes ceilings);
- baseline: `safetensors.torch.load_file` + `load_state_dict` into a plain HF model, then the
  same forward calls as plain `hf(tokens)` under no_grad.
The ratio is what the sweep costs beyond the forwards it needs: hooks, metrics (density,
drift, Bayes columns), checkpoint checks and bookkeeping.
"""

from __future__ import annotations

import statistics
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from unittest import mock

from iclgd.bench import Row
from iclgd.bench.measure import Samples, plain_replay, ratio_stats, record_lm_calls

TARGET = "<= 1.3"


def make_series(root: Path, n: int) -> list[Path]:
    """`n` checkpoint folders `step0, step100, ...` of a GINC-shaped GPT-NeoX, with ginc.json."""
    import torch

    from iclgd.bench.models import hf_model
    from iclgd.data.ginc_hmm import GincConfig, save_ginc_json

    model = hf_model("ginc")
    folders = []
    for i in range(n):
        with torch.no_grad():
            for p in model.parameters():
                p.add_(0.01 * torch.randn_like(p))
        folder = root / f"step{100 * i}"
        model.save_pretrained(folder)
        save_ginc_json(folder, GincConfig())
        folders.append(folder)
    return folders


@contextmanager
def checkpoint_stamps() -> Any:
    """CPU-time stamps taken as each checkpoint starts loading inside `run_sweep`."""
    from iclgd.analyses.sweep import CheckpointLoader

    stamps: list[float] = []
    original = CheckpointLoader.load

    def load(self: Any, ref: Any) -> Any:
        stamps.append(time.process_time())
        return original(self, ref)

    with mock.patch.object(CheckpointLoader, "load", load):
        yield stamps


def settings(quick: bool, tiny: bool) -> Any:
    from iclgd.analyses.sweep import SweepSettings

    if tiny:
        return SweepSettings(n_values=(0, 1, 2), n_prompts=16, n_score_seqs=4, induction_seqs=4)
    return SweepSettings(n_prompts=100) if quick else SweepSettings()


def run(quick: bool, device: str, tiny: bool = False) -> list[Row]:
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM
    from transformers.utils import logging as hf_logging

    from iclgd.analyses.sweep import run_sweep

    hf_logging.disable_progress_bar()
    n_ckpt = 3 if quick or tiny else 4
    st = settings(quick, tiny)
    with tempfile.TemporaryDirectory() as tmp:
        folders = make_series(Path(tmp) / "series", n_ckpt)
        with record_lm_calls() as calls, checkpoint_stamps() as stamps:
            res = run_sweep(Path(tmp) / "series", Path(tmp) / "out", st, device=device,
                            progress=False, plots=False)
            stamps.append(time.process_time())
        errors = [r["error"] for r in res.rows if "error" in r]
        if errors:
            raise RuntimeError(f"the benchmark sweep failed: {errors[0]}")
        ours = [b - a for a, b in zip(stamps, stamps[1:], strict=False)]
        per_ckpt = len(calls) // n_ckpt
        if per_ckpt * n_ckpt != len(calls):
            raise RuntimeError(f"{len(calls)} forward calls over {n_ckpt} checkpoints: uneven")
        hf = AutoModelForCausalLM.from_pretrained(folders[0], attn_implementation="eager")
        hf = hf.to(device).eval()
        replay = plain_replay(hf, calls[per_ckpt:2 * per_ckpt], int(hf.config.vocab_size))
        base = []
        for folder in folders:
            t0 = time.process_time()
            hf.load_state_dict(load_file(folder / "model.safetensors", device=str(device)),
                               strict=False)
            replay()
            base.append(time.process_time() - t0)
    r, lo, hi = ratio_stats(Samples(tuple(ours[1:])), Samples(tuple(base[1:])))
    tokens = sum(c.shape[0] * c.shape[1] for c in calls[:per_ckpt])
    return [Row("sweep", f"sweep per checkpoint ({st.n_prompts} prompts/n, {per_ckpt} "
                f"forwards, {tokens} tokens)", statistics.median(ours[1:]),
                statistics.median(base[1:]), r, "s", TARGET, (lo, hi),
                f"first checkpoint (prompts + Bayes ceilings) {ours[0]:.1f} s")]

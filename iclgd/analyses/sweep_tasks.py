"""What the checkpoint sweep evaluates on each model: GINC ICL accuracy (with the exact Bayes
ceiling), the ICL score, induction heads. Data are built once per run, on the first model.

GINC prompt sets come from `iclgd.data.ginc_prompts.sample_prompts` on the world stored in the
series' `ginc.json`; the Bayes ceiling of a set is `iclgd.data.ginc_bayes.ideal_accuracy` with a
uniform prior over that set's own concept pool (in-distribution prompts: the pretraining
concepts; held-out prompts: the held-out concepts), i.e. the best accuracy any predictor can
reach on that prompt distribution. Each set also carries the pretraining-view reference,
`pretrained_lm_accuracy` (the prompt read as one document under the pretraining concepts,
transitions smoothed by 0.1): what a perfectly fitted pretrained LM reaches. ICL-score sequences
are GINC pretraining documents (in-distribution concepts) of length `n_ctx`, or windows of a user
text file (`text`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from iclgd.errors import IclgdError
from iclgd.hooks.batching import AUTO, AutoBatch
from iclgd.probes.icl import IclPrompts, icl_accuracy, icl_gain, icl_score
from iclgd.probes.induction import induction_scores

SWEEP_TASKS = ("icl", "icl_score", "induction", "density", "drift")  # in row order


@dataclass(frozen=True)
class IclSet:
    """A GINC prompt set: concepts `"in"`/`"out"`, example length `k`."""

    concepts: str
    k: int

    @property
    def name(self) -> str:
        return f"ginc_{self.concepts}_k{self.k}"

    @classmethod
    def parse(cls, text: str) -> IclSet:
        parts = text.split(":")
        if (
            len(parts) != 2
            or parts[0] not in ("in", "out")
            or not parts[1].isdigit()
            or int(parts[1]) < 2
        ):
            raise IclgdError(
                f"bad ICL prompt set {text!r}: use CONCEPTS:K with CONCEPTS in/out and "
                "K >= 2, e.g. in:3 or out:5"
            )
        return cls(parts[0], int(parts[1]))


def find_ginc_folder(source: str | Path, refs: list[Any]) -> Path | None:
    """The folder holding `ginc.json`: the series folder itself or one of its checkpoints."""
    from iclgd.data.ginc_hmm import GINC_JSON

    path = Path(source).expanduser()
    candidates = ([path] if path.is_dir() else []) + [r.path for r in refs if r.path is not None]
    for folder in candidates:
        if (folder / GINC_JSON).is_file():
            return folder
    return None


class SweepTasks:
    """The tasks of one sweep run and their (lazily built) data."""

    def __init__(self, names: tuple[str, ...], settings: Any, ginc_folder: Path | None) -> None:
        self.names = names
        self.settings = settings
        self.ginc_folder = ginc_folder
        self.notes: dict[str, str] = {}
        self._ready = False
        self._sets: list[tuple[IclSet, dict[int, IclPrompts], dict[int, tuple[float, float]]]] = []
        self._score_tokens: torch.Tensor | None = None
        self._auto = AutoBatch() if str(settings.batch_size).lower() == AUTO else None

    @classmethod
    def for_source(cls, source: str | Path, refs: list[Any], settings: Any) -> SweepTasks:
        """Tasks requested (`settings.tasks`, None = all available) checked against the source."""
        requested = settings.tasks
        unknown = [t for t in requested or () if t not in SWEEP_TASKS]
        if unknown:
            raise IclgdError(f"unknown task {unknown[0]!r}: choose from {', '.join(SWEEP_TASKS)}")
        if requested is not None and not requested:
            raise IclgdError(f"no tasks given: choose from {', '.join(SWEEP_TASKS)}")
        for s in settings.icl_sets:
            IclSet.parse(s)
        if not settings.icl_sets:
            raise IclgdError("no ICL prompt sets given: pass e.g. --icl-sets in:3")
        ginc = find_ginc_folder(source, refs)
        if settings.text is not None and not Path(settings.text).is_file():
            raise IclgdError(f"text file {settings.text} not found")
        available = {
            "icl": ginc is not None,
            "icl_score": ginc is not None or settings.text is not None,
        }
        if requested is None:
            names = tuple(t for t in SWEEP_TASKS if available.get(t, True))
        else:
            for t in requested:
                if not available.get(t, True):
                    what = (
                        "a GINC series (ginc.json)"
                        if t == "icl"
                        else "a GINC series or --text FILE"
                    )
                    raise IclgdError(f"task {t!r} needs {what}; {source} has none")
            names = tuple(t for t in SWEEP_TASKS if t in requested)
        tasks = cls(names, settings, ginc)
        for t in SWEEP_TASKS:
            if t not in names and requested is None:
                tasks.notes[t] = (
                    "skipped: the source has no GINC world (ginc.json) and no --text was given"
                )
        return tasks

    # ------------------------------------------------------------------ data, built once

    def _prepare(self, model: Any) -> None:
        if self._ready:
            return
        n_ctx = int(model.cfg.n_ctx)
        world = None
        if self.ginc_folder is not None:
            from iclgd.data.ginc_hmm import load_ginc_world

            world = load_ginc_world(self.ginc_folder)
        if "icl" in self.names:
            self._build_sets(world, n_ctx)
        if "icl_score" in self.names:
            self._score_tokens = self._score_sequences(model, world, n_ctx)
        self._ready = True

    def _build_sets(self, world: Any, n_ctx: int) -> None:
        from iclgd.data.ginc_bayes import ideal_accuracy, pretrained_lm_accuracy
        from iclgd.data.ginc_prompts import prompt_length, sample_prompts

        st = self.settings
        for text in st.icl_sets:
            spec = IclSet.parse(text)
            if spec.concepts == "out" and world.config.n_concepts_out == 0:
                self.notes[spec.name] = "skipped: the GINC world has no held-out concepts"
                continue
            ns = [n for n in st.n_values if prompt_length(n, spec.k) <= n_ctx]
            dropped = [n for n in st.n_values if n not in ns]
            if dropped:
                self.notes[spec.name] = f"n={dropped} dropped: prompts longer than n_ctx={n_ctx}"
            if not ns:
                continue
            prompts, bayes, pretrained = {}, {}, {}
            for n in ns:
                gp = sample_prompts(
                    world, n, spec.k, st.n_prompts, concepts=spec.concepts, seed=st.seed
                )
                prompts[n] = IclPrompts.last_token(
                    n, torch.as_tensor(gp.tokens), torch.as_tensor(gp.labels)
                )
                bayes[n] = ideal_accuracy(world, gp, spec.concepts)
                pretrained[n] = pretrained_lm_accuracy(world, gp, "in")
            self._sets.append((spec, prompts, bayes, pretrained))
        if not self._sets:
            raise IclgdError("no ICL prompt fits the model's context: pass smaller --n-values or k")

    def _score_sequences(self, model: Any, world: Any, n_ctx: int) -> torch.Tensor:
        st = self.settings
        if st.text is not None:
            text = Path(st.text).read_text(encoding="utf-8")
            ids = model.tokenizer(text)["input_ids"]
            n = min(st.n_score_seqs, len(ids) // n_ctx)
            if n < 1:
                raise IclgdError(
                    f"text file {st.text} has {len(ids)} tokens: the ICL score needs at "
                    f"least one window of n_ctx={n_ctx} tokens"
                )
            return torch.as_tensor(ids[: n * n_ctx], dtype=torch.long).reshape(n, n_ctx)
        from iclgd.data.ginc_hmm import sample_documents

        rng = np.random.default_rng([world.config.seed, st.seed, 23])
        docs, _ = sample_documents(world, st.n_score_seqs, n_ctx, rng)
        return torch.as_tensor(docs, dtype=torch.long)

    # ------------------------------------------------------------------ per checkpoint

    def evaluate(self, model: Any) -> dict[str, Any]:
        """The row fields of every task except density and drift (computed from raw weights)."""
        self._prepare(model)
        row: dict[str, Any] = {}
        if "icl" in self.names:
            row.update(self._icl_fields(model))
        if "icl_score" in self.names:
            row.update(self._score_fields(model))
        if "induction" in self.names:
            row.update(self._induction_fields(model))
        return row

    def _icl_fields(self, model: Any) -> dict[str, Any]:
        """Accuracy, Bayes references and gain of every prompt set; the first set's at the top."""
        by_task = {}
        for spec, prompts, bayes, pretrained in self._sets:
            acc = icl_accuracy(model, prompts, batch_size=self._auto or self.settings.batch_size)
            by_task[spec.name] = {
                "concepts": spec.concepts,
                "k": spec.k,
                "accuracy": {str(n): acc.accuracy[n] for n in acc.n_values},
                "se": {str(n): acc.se[n] for n in acc.n_values},
                "bayes_accuracy": {str(n): bayes[n][0] for n in acc.n_values},
                "bayes_accuracy_se": {str(n): bayes[n][1] for n in acc.n_values},
                "pretrained_bayes_accuracy": {str(n): pretrained[n][0] for n in acc.n_values},
                "pretrained_bayes_accuracy_se": {
                    str(n): pretrained[n][1] for n in acc.n_values
                },
            }
            if len(acc.n_values) > 1:
                by_task[spec.name]["gain"] = icl_gain(acc.accuracy, acc.se).to_dict()
        first = by_task[self._sets[0][0].name]
        row = {
            "icl_task": self._sets[0][0].name,
            "icl_accuracy": first["accuracy"],
            "icl_accuracy_se": first["se"],
            "bayes_accuracy": first["bayes_accuracy"],
            "bayes_accuracy_se": first["bayes_accuracy_se"],
            "pretrained_bayes_accuracy": first["pretrained_bayes_accuracy"],
            "pretrained_bayes_accuracy_se": first["pretrained_bayes_accuracy_se"],
            "icl_accuracy_by_task": by_task,
        }
        if "gain" in first:
            g = first["gain"]
            row.update({"icl_gain": g["gain"], "icl_gain_se": g["gain_se"],
                        "icl_gain_ci95_low": g["gain_ci95_low"],
                        "icl_gain_ci95_high": g["gain_ci95_high"],
                        "icl_gain_n": [g["n_from"], g["n_to"]],
                        "icl_emerged": g["icl_emerged"]})
        return row

    def _score_fields(self, model: Any) -> dict[str, Any]:
        """Olsson et al. 2022's ICL score: late-minus-early loss on the score sequences."""
        sc = icl_score(model, self._score_tokens,
                       batch_size=self._auto or max(1, self.settings.batch_size // 2))
        return {
            "icl_score": sc.score,
            "icl_score_se": sc.se,
            "icl_score_positions": {"early": sc.early, "late": sc.late, "n_ctx": sc.n_ctx},
            "icl_score_loss": {"early": sc.loss_early, "late": sc.loss_late},
        }

    def _induction_fields(self, model: Any) -> dict[str, Any]:
        """The best induction heads by prefix matching (with their copying) and by copying, and
        the full per-head tables (Olsson et al. 2022)."""
        st = self.settings
        ind = induction_scores(
            model, seq_len=st.induction_seq_len, n_seqs=st.induction_seqs, seed=st.seed,
            **({"batch_size": self._auto} if self._auto else {}),
        )
        top = ind.top("prefix_matching", st.top_heads)
        for head in top:
            head["copying"] = float(ind.copying[head["layer"], head["head"]])
            head["copying_top1"] = float(ind.copying_top1[head["layer"], head["head"]])
        return {
            "induction_prefix_max": top[0]["score"],
            "induction_copying_max": float(ind.copying.max()),
            "induction_top_prefix": top,
            "induction_top_copying": ind.top("copying", st.top_heads),
            "induction_seq_len": ind.seq_len,
            "induction_table": {
                "prefix_matching": ind.prefix_matching.tolist(),
                "copying": ind.copying.tolist(),
                "copying_top1": ind.copying_top1.tolist(),
            },
        }

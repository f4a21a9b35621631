"""ICL vs finetuning, layer by layer, with the controls that keep the numbers honest.

For every number of demonstrations N and finetuning method, the settings ZS (query alone), ICL
(demonstrations + query) and FT (finetuned on the demonstrations, then run zero-shot) are
captured at the answer position (`iclgd.analyses.runs`) and compared with
`iclgd.probes.metrics`. Reductions follow Dai et al.: per layer, averaged over queries first
(heads before queries for attention metrics); the summaries average the per-layer values over
layers.

Metrics (tidy rows `{model, n_demos, method, metric, layer, value}`; `method` is empty for
metrics that involve no finetuning, `layer` empty for whole-model metrics):

- `accuracy_zs`, `accuracy_icl`, `accuracy_ft` — top-1 over the full vocabulary = gold first
  answer token (Shen), each with its binomial standard error over queries (`..._se`,
  `sqrt(p (1 − p) / n_queries)`);
- `token_overlap` / `overlap_cosine` (K = `top_k`, default 10) ICL vs FT, and
  `token_overlap_floor` / `overlap_cosine_floor` — ICL vs ICL with the demonstrations in another
  (seeded random) order: the noise floor (trivially 1 for N = 1);
- `rec2ftp` — `#(ZS wrong, FT right, ICL right) / #(ZS wrong, FT right)` (Dai; empty when no
  query has ZS wrong and FT right);
- per layer: `simaou_norm` (unit-normalised before subtracting: what Dai's and Deutch et al.'s
  code compute) and `simaou_raw` (raw differences), with `simaou_random_norm` /
  `simaou_random_raw` (FT update replaced by U[0,1)^d, Dai's random baseline); `simam_after` (ICL
  vs FT) and `simam_before` (ZS vs ICL, Dai's baseline) on pre-softmax scores over the query
  tokens, `simam_delta` (Deutch: cos(a_ICL − a_ZS, a_FT − a_ZS));
- per layer, Dai's training-token attention in their exact recipe
  (`iclgd.analyses.compare_dai`): `kendall_tau` (τ-b, token level), `topk_recall_tokens` (K =
  100), `kendall_tau_examples`, `topk_recall_examples` (K = 5), each with `..._random`;
- per layer `kendall_tau_dual_form`, iclgd's variant of the same question: τ-b between ICL's
  attention probabilities to the demonstration tokens (softmax from the answer position, mean
  over heads, every token) and the linear-attention score `x'_t · x_q` that Dai's dual form
  gives training token `t` (FT's update of a linear layer acting on the query, `ΔW x_q = Σ_t e_t
  (x'_t · x_q)`), with `x'_t` = the attention block's normalised input at training token `t`
  (each demonstration run as its own sequence) and `x_q` the same at the query's answer
  position, both under the finetuned weights;
- Dai's f2t mode (`iclgd.analyses.compare_dai`): the SimAOU and SimAM rows again, over the
  queries with ZS wrong and FT and ICL right only (`..._f2t`), and their count `n_f2t`;
- per layer `dw_*` — the weight-space comparison of the implied `ΔW_ICL` with the actual
  `ΔW_FT` (`iclgd.analyses.compare_dw`).

Every similarity is meant to be read next to its random baseline and next to the same number on
the untrained control (`iclgd.analyses.control`), written with `model = "untrained"`.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from iclgd.analyses.compare_dai import dai_metrics
from iclgd.analyses.runs import (
    DEFAULT_BATCH,
    PromptSet,
    RunCapture,
    run_finetuned,
    run_icl,
    run_zero_shot,
)
from iclgd.errors import IclgdError
from iclgd.hooks.batching import BatchSize
from iclgd.probes import metrics
from iclgd.probes.finetune_methods import METHODS as METHOD_SPECS
from iclgd.probes.icl import binomial_se

if TYPE_CHECKING:
    from iclgd.analyses.compare_dw import DeltaWComparison

DEFAULT_LR = {m: spec.lr for m, spec in METHOD_SPECS.items()}  # untuned, per method


def check_methods(methods: Sequence[str]) -> list[str]:
    """The methods, validated against `iclgd.probes.finetune_methods.METHODS`."""
    out = [m.strip() for m in methods if m.strip()]
    if not out:
        raise IclgdError(f"no finetuning method given: use some of {', '.join(METHOD_SPECS)}")
    for m in out:
        if m not in METHOD_SPECS:
            raise IclgdError(f"unknown finetuning method {m!r}: use one of {', '.join(METHOD_SPECS)}")
    return out


def learning_rates(lr: float | dict[str, float] | None, methods: Sequence[str]) -> dict[str, float]:
    """Per-method learning rates: one number for all, a `{method: lr}` dict (others default),
    or None (`DEFAULT_LR`)."""
    if lr is None or isinstance(lr, dict):
        given = lr or {}
        unknown = set(given) - set(methods)
        if unknown:
            raise IclgdError(f"learning rate given for methods not run: {sorted(unknown)}")
        return {m: float(given.get(m, DEFAULT_LR.get(m, 1e-2))) for m in methods}
    return dict.fromkeys(methods, float(lr))


# ----------------------------------------------------------------------------- metrics
def _mean(x: Tensor, dim: int = 0) -> Tensor:
    return x.double().mean(dim)


def _accuracy(name: str, correct: Tensor) -> dict[str, float]:
    """`{name: mean, name_se: binomial SE}` of one run's 0/1 outcomes over queries."""
    p = float(_mean(correct))
    return {name: p, f"{name}_se": binomial_se(p, correct.numel())}


def output_metrics(
    zs: RunCapture, icl: RunCapture, ft: RunCapture, *, top_k: int = 10
) -> dict[str, float]:
    """Whole-model metrics of one FT run: FT accuracy (and its SE), ICL-vs-FT token overlap
    and overlap cosine (mean over queries), Rec2FTP."""
    k = min(top_k, icl.logits.shape[-1])
    return {
        **_accuracy("accuracy_ft", ft.correct),
        "token_overlap": float(_mean(metrics.token_overlap(icl.probs, ft.probs, k))),
        "overlap_cosine": float(_mean(metrics.overlap_cosine(icl.probs, ft.probs, k))),
        "rec2ftp": float(metrics.rec2ftp(zs.correct, ft.correct, icl.correct)),
    }


def setting_metrics(
    zs: RunCapture,
    icl: RunCapture,
    icl_reordered: RunCapture,
    *,
    top_k: int = 10,
    generator: torch.Generator | None = None,
) -> dict[str, Any]:
    """Metrics that involve no finetuning: ZS/ICL accuracy (and their SEs), the
    ICL-vs-reordered-ICL noise floor of token overlap / overlap cosine, SimAM "before" (ZS vs
    ICL) and the SimAOU random baselines per layer (tensors `[n_layers]`)."""
    k = min(top_k, icl.logits.shape[-1])
    return {
        **_accuracy("accuracy_zs", zs.correct),
        **_accuracy("accuracy_icl", icl.correct),
        "token_overlap_floor": float(
            _mean(metrics.token_overlap(icl.probs, icl_reordered.probs, k))
        ),
        "overlap_cosine_floor": float(
            _mean(metrics.overlap_cosine(icl.probs, icl_reordered.probs, k))
        ),
        "simam_before": _mean(metrics.simam(zs.query_scores, icl.query_scores).mean(-1)),
        "simaou_random_norm": _mean(
            metrics.random_baseline_simaou(icl.attn_out, zs.attn_out, generator, normalize=True)
        ),
        "simaou_random_raw": _mean(
            metrics.random_baseline_simaou(icl.attn_out, zs.attn_out, generator, normalize=False)
        ),
    }


def layer_metrics(zs: RunCapture, icl: RunCapture, ft: RunCapture) -> dict[str, Tensor]:
    """Per-layer ICL-vs-FT similarities `[n_layers]`, averaged over heads then queries:
    SimAOU (normalised and raw), SimAM after, SimAM_Δ, and the dual-form Kendall τ variant
    (needs `icl.demo_attention` and FT's `attn_in` / `demo_inputs`; NaN otherwise)."""
    out = {
        "simaou_norm": _mean(
            metrics.simaou(icl.attn_out, zs.attn_out, ft.attn_out, normalize=True)
        ),
        "simaou_raw": _mean(
            metrics.simaou(icl.attn_out, zs.attn_out, ft.attn_out, normalize=False)
        ),
        "simam_after": _mean(metrics.simam(icl.query_scores, ft.query_scores).mean(-1)),
        "simam_delta": _mean(
            metrics.simam_delta(icl.query_scores, zs.query_scores, ft.query_scores).mean(-1)
        ),
    }
    out["kendall_tau_dual_form"] = kendall_per_layer(icl, ft)
    return out


def kendall_per_layer(icl: RunCapture, ft: RunCapture) -> Tensor:
    """iclgd's dual-form Kendall τ-b per layer between ICL's head-averaged attention to the
    demonstration tokens and FT's dual-form attention `x'_t · x_q` to its training tokens (module
    docstring), averaged over queries. Values within 1e-9 (relative to the row's largest) count
    as ties. `[n_layers]`; NaN when either side is missing or lengths differ."""
    n_layers = icl.attn_out.shape[1]
    if icl.demo_attention is None or ft.attn_in is None or ft.demo_inputs is None:
        return torch.full((n_layers,), float("nan"), dtype=torch.float64)
    a_icl = icl.demo_attention.double().mean(2)  # [batch, n_layers, n_tok]
    # layer by layer: the training-token inputs are shared by the queries (an expanded view),
    # so widening them all at once would hold one float64 copy per query and layer
    a_ft = torch.stack([torch.einsum("btd,bd->bt", ft.demo_inputs[:, layer].double(),
                                     ft.attn_in[:, layer].double())
                        for layer in range(ft.demo_inputs.shape[1])], 1)
    if a_icl.shape != a_ft.shape:
        return torch.full((n_layers,), float("nan"), dtype=torch.float64)
    return _mean(metrics.kendall_tau(_ties(a_icl), _ties(a_ft)))


def _ties(x: Tensor, digits: float = 1e9) -> Tensor:
    """Round to 1e-9 of each row's largest magnitude, so values equal up to float rounding (e.g.
    the same token's identical layer-0 inputs at two positions of a rotary model) tie exactly."""
    scale = x.abs().amax(-1, keepdim=True).clamp_min(1e-300)
    return torch.round(x / scale * digits)


# ----------------------------------------------------------------------------- finetuning
def finetune_prompts(
    model: Any,
    prompts: PromptSet,
    method: str,
    *,
    lr: float,
    epochs: int,
    seed: int,
    layer: int | None = None,
) -> list[Any]:
    """Finetune `model` on the demonstrations of `prompts`: one `WeightDelta` shared by every
    query (returned as a one-element list) or, for per-query demonstrations, one per query
    (`finetune_batched`, vmapped over queries). `layer` is used by `wv-layer` only."""
    from iclgd.probes.finetune import finetune, finetune_batched

    layer_arg = layer if method == "wv-layer" else None
    if prompts.per_query_demos:
        return finetune_batched(
            model, prompts.demos, method=method, lr=lr, epochs=epochs, layer=layer_arg, seed=seed
        )
    return [
        finetune(
            model, prompts.demos, method=method, lr=lr, epochs=epochs, layer=layer_arg, seed=seed
        )
    ]


def check_finite(run: RunCapture, what: str) -> None:
    """Raise `IclgdError` when a finetuned model's captured activations hold NaN/inf (the
    update diverged although every loss was finite)."""
    for name in ("logits", "attn_out", "query_scores"):
        if not torch.isfinite(getattr(run, name)).all():
            raise IclgdError(f"{what}: the finetuned model's {name} are not finite (the update "
                             "diverged): lower the learning rate")


def random_order(n: int, generator: torch.Generator) -> list[int]:
    """A random permutation of 0..n−1 other than the identity (when n > 1)."""
    if n < 2:
        return list(range(n))
    while True:
        order = torch.randperm(n, generator=generator).tolist()
        if order != list(range(n)):
            return order


def cell_generator(seed: int, n_demos: int, method: str = "") -> torch.Generator:
    """The generator of one cell's random draws, seeded by `(seed, N)` (N's reordering and
    random baselines) or `(seed, N, method)` (that method's training-attention baselines)."""
    import zlib

    import numpy as np

    key = [seed, n_demos] + ([zlib.crc32(method.encode())] if method else [])
    state = np.random.SeedSequence(key).generate_state(2, dtype=np.uint32)
    return torch.Generator().manual_seed(int(state[0]) << 32 | int(state[1]))


def compare_model(
    model: Any,
    prompt_sets: dict[int, PromptSet],
    methods: Sequence[str],
    *,
    lr: dict[str, float],
    epochs: int = 1,
    seed: int = 0,
    wv_layer: int | None = None,
    top_k: int = 10,
    label: str = "trained",
    delta_w: bool = True,
    progress: Callable[[str], None] | None = None,
    cells: Collection[tuple[int, str]] | None = None,
    batch_size: BatchSize = DEFAULT_BATCH,
    on_runs: Callable[[int, str, dict[str, RunCapture | None]], None] | None = None,
) -> list[dict[str, Any]]:
    """Run ZS, ICL (twice: two demonstration orders) and FT per method for every N in
    `prompt_sets`, and return tidy rows `{model: label, n_demos, method, metric, layer, value}`
    (see the module docstring). `wv_layer` defaults to the middle layer (`n_layers // 2`).
    `progress(msg)` is called after each finetuning run.

    `cells`: only these `(n_demos, method)` cells (method "" = the metrics without finetuning;
    None = all), e.g. one shard's share (`iclgd.analyses.shards`). Each cell's numbers do not
    depend on the other cells run: the reordering and random baselines of N draw from a
    generator seeded by `(seed, N)`. `batch_size`: prompts per forward pass, or "auto".

    `on_runs(n, method, runs)` gets each finetuning run's captures `{"zs", "icl",
    "icl_reordered", "ft"}` (`icl_reordered` None when the cell without finetuning is not run),
    for per-query statistics such as standard errors without capturing again."""
    n_layers = int(model.cfg.n_layers)
    wv_layer = n_layers // 2 if wv_layer is None else wv_layer
    cmp = _Comparison(model, label, lr=lr, epochs=epochs, seed=seed, wv_layer=wv_layer,
                      top_k=top_k, batch_size=batch_size)
    zs = None
    for n, prompts in sorted(prompt_sets.items()):
        wanted = [m for m in ("", *methods) if cells is None or (n, m) in cells]
        if not wanted:
            continue
        if zs is None:  # the ZS prompts are the same for every N
            zs = run_zero_shot(model, prompts, token_inputs=delta_w, batch_size=batch_size)
        icl = run_icl(model, prompts, token_inputs=delta_w, batch_size=batch_size)
        icl_re = cmp.setting(n, prompts, zs, icl) if "" in wanted else None
        dw = None
        if delta_w and any(wanted):
            from iclgd.analyses.compare_dw import DeltaWComparison

            dw = DeltaWComparison(model, prompts, zs=zs, icl=icl)  # once per N, every method
            icl = replace(icl, demo_token_inputs=None)  # now held as ΔW_ICL's factors
        for method in (m for m in wanted if m):
            # a full-model ΔW must not stay alive while the next trains: `cmp.method` holds the
            # ΔW and the FT run only in its own frame, released when it returns
            cmp.method(n, prompts, method, zs, icl, icl_re, dw, on_runs)
            if progress is not None:
                progress(f"{label} N={n} {method}")
    return cmp.rows


@dataclass
class _Comparison:
    """`compare_model`'s settings for one model (`label`) and the tidy rows it adds to."""

    model: Any
    label: str
    lr: dict[str, float]
    epochs: int
    seed: int
    wv_layer: int
    top_k: int
    batch_size: BatchSize
    rows: list[dict[str, Any]] = field(default_factory=list)

    def add(self, n: int, method: str, metric: str, value: Any, layer: int | None = None) -> None:
        self.rows.append(
            {
                "model": self.label,
                "n_demos": n,
                "method": method,
                "metric": metric,
                "layer": "" if layer is None else layer,
                "value": float(value),
            }
        )

    def add_layers(self, n: int, method: str, metric: str, values: Tensor) -> None:
        for layer, v in enumerate(values.tolist()):
            self.add(n, method, metric, v, layer)

    def setting(self, n: int, prompts: PromptSet, zs: RunCapture, icl: RunCapture) -> RunCapture:
        """The metrics of N without finetuning (method ""); returns the reordered ICL run."""
        gen = cell_generator(self.seed, n)
        icl_re = run_icl(self.model, prompts.reordered(random_order(n, gen)),
                         batch_size=self.batch_size)
        for metric, value in setting_metrics(
            zs, icl, icl_re, top_k=self.top_k, generator=gen
        ).items():
            if isinstance(value, Tensor):
                self.add_layers(n, "", metric, value)
            else:
                self.add(n, "", metric, value)
        return icl_re

    def method(
        self, n: int, prompts: PromptSet, method: str, zs: RunCapture, icl: RunCapture,
        icl_re: RunCapture | None, dw: DeltaWComparison | None,
        on_runs: Callable[[int, str, dict[str, RunCapture | None]], None] | None,
    ) -> None:
        """Finetune N's prompts with `method`, run FT and add its metrics (and ΔW rows)."""
        lr = self.lr[method]
        deltas = finetune_prompts(self.model, prompts, method, lr=lr, epochs=self.epochs,
                                  seed=self.seed, layer=self.wv_layer)
        shared = deltas[0] if len(deltas) == 1 and not prompts.per_query_demos else deltas
        ft = run_finetuned(self.model, prompts, shared, kendall=True, batch_size=self.batch_size)
        check_finite(ft, f"{method} finetuning (lr={lr}, N={n})")
        for metric, value in output_metrics(zs, icl, ft, top_k=self.top_k).items():
            self.add(n, method, metric, value)
        for metric, values in layer_metrics(zs, icl, ft).items():
            self.add_layers(n, method, metric, values)
        for metric, value in dai_metrics(zs, icl, ft, prompts,
                                         generator=cell_generator(self.seed, n, method)).items():
            (self.add_layers if isinstance(value, Tensor) else self.add)(n, method, metric, value)
        if dw is not None:
            for r in dw.rows(deltas):
                self.add(n, method, r["metric"], r["value"], r["layer"])
        if on_runs is not None:
            on_runs(n, method, {"zs": zs, "icl": icl, "icl_reordered": icl_re, "ft": ft})


def summarize(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per (model, n_demos, method) with every metric; per-layer metrics averaged over
    layers (Dai: over examples, then layers). Metrics without a method are copied into every
    method's row."""
    groups: dict[tuple[str, int, str], dict[str, list[float]]] = {}
    for r in rows:
        groups.setdefault((r["model"], r["n_demos"], r["method"]), {}).setdefault(
            r["metric"], []
        ).append(r["value"])
    out = []
    for (label, n, method), vals in groups.items():
        if not method:
            continue
        row: dict[str, Any] = {"model": label, "n_demos": n, "method": method}
        merged = {**groups.get((label, n, ""), {}), **vals}
        for metric, values in merged.items():
            finite = [v for v in values if v == v]
            row[metric] = sum(finite) / len(finite) if finite else float("nan")
        out.append(row)
    return sorted(
        out, key=lambda r: (r["model"] != "trained", r["model"], r["n_demos"], r["method"])
    )

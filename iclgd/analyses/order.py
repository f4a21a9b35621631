"""Order sensitivity of ICL vs GD variants over finetuning epochs (Shen, Mishra &
Khashabi 2024).

Reconstruction (fixed in `iclgd.probes.metrics.order_sensitivity`; the paper's text was
unavailable): for each
query and each of P orderings of the same N demonstrations take the next-token distribution at
the answer position; per vocabulary entry the population std (ddof = 0) over the orderings,
summed over the vocabulary; averaged over queries.

- ICL: the prompt's demonstrations are reordered (one value, drawn as a horizontal line);
- FT: the model is finetuned on the demonstrations in each order (`finetune_batched`, one vmapped
  run over all orderings — and over queries when each query has its own demonstrations, as in
  GINC), then run zero-shot on the query; evaluated after each epoch count of `epoch_grid`,
  snapshotted from one run of the largest count (a run of e epochs is exactly the first e
  epochs of the longer run: constant learning rate, fixed batch order, so Adam's state and
  SGD's path are those of a run of that length).

Full-batch GD (`gd`, `wv-layer`) averages the gradient over all demonstrations each step, so its
sensitivity is float rounding only (~1e-6); `sgd` and `adam` (batch 1, prompt order) are order
dependent.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from iclgd.analyses.runs import DEFAULT_BATCH, PromptSet, run_finetuned, run_icl
from iclgd.data.tasks import TokenizedDemos
from iclgd.errors import IclgdError
from iclgd.hooks.batching import BatchSize, available_memory, model_device
from iclgd.probes.finetune import WeightDelta, finetune_batched_epochs, task_bytes
from iclgd.probes.metrics import order_sensitivity
from iclgd.results import read_json, write_json


def orderings(n_demos: int, n_perms: int, *, seed: int = 0) -> list[list[int]]:
    """`n_perms` orderings of `n_demos` demonstrations: the identity first, then seeded random
    permutations, all distinct while `n_demos!` allows."""
    if n_perms < 2:
        raise IclgdError(f"order sensitivity needs at least 2 orderings, got {n_perms}")
    if n_demos < 2:
        raise IclgdError("order sensitivity needs at least 2 demonstrations to reorder")
    import math

    distinct = math.factorial(n_demos) >= n_perms
    gen = torch.Generator().manual_seed(seed)
    out = [list(range(n_demos))]
    while len(out) < n_perms:
        perm = torch.randperm(n_demos, generator=gen).tolist()
        if not distinct or perm not in out:
            out.append(perm)
    return out


def epoch_grid(epochs: int, max_points: int = 8) -> list[int]:
    """Epoch counts to evaluate: every epoch up to `max_points`, else a roughly geometric grid
    from 1 to `epochs` (always including both ends)."""
    if epochs < 1:
        raise IclgdError(f"epochs must be >= 1, got {epochs}")
    if epochs <= max_points:
        return list(range(1, epochs + 1))
    pts = torch.logspace(0, torch.log10(torch.tensor(float(epochs))), max_points).round().long()
    return sorted(set(pts.tolist()) | {1, epochs})


def icl_distributions(
    model: Any, prompts: PromptSet, orders: Sequence[Sequence[int]], *,
    batch_size: BatchSize = DEFAULT_BATCH,
) -> Tensor:
    """Next-token distributions of the ICL prompts under each ordering `[P, batch, d_vocab]`."""
    return torch.stack([run_icl(model, prompts.reordered(o), batch_size=batch_size).probs
                        for o in orders])


def _stack_orderings(prompts: PromptSet, orders: Sequence[Sequence[int]]) -> TokenizedDemos:
    """Demonstrations for every (ordering, task): `[P, n_demos, seq]` (shared demonstrations)
    or `[P · batch, n_demos, seq]` (per-query demonstrations, ordering-major)."""
    parts = [prompts.demos.reordered(o) for o in orders]
    if prompts.per_query_demos:
        return TokenizedDemos(
            torch.cat([p.tokens for p in parts]),
            torch.cat([p.valid for p in parts]),
            torch.cat([p.label_mask for p in parts]),
        )
    return TokenizedDemos(
        torch.stack([p.tokens for p in parts]),
        torch.stack([p.valid for p in parts]),
        torch.stack([p.label_mask for p in parts]),
    )


def ft_distributions(
    model: Any,
    prompts: PromptSet,
    orders: Sequence[Sequence[int]],
    method: str,
    *,
    lr: float,
    epochs: int,
    seed: int = 0,
    layer: int | None = None,
) -> Tensor:
    """Next-token distributions `[P, batch, d_vocab]` of the model finetuned (`method`, `epochs`)
    on the demonstrations in each ordering, run zero-shot on the queries. All orderings (and
    queries, for per-query demonstrations) are trained in one `finetune_batched` call."""
    return ft_distributions_by_epoch(model, prompts, orders, method, lr=lr, epochs=[epochs],
                                     seed=seed, layer=layer)[epochs]


def ft_distributions_by_epoch(
    model: Any,
    prompts: PromptSet,
    orders: Sequence[Sequence[int]],
    method: str,
    *,
    lr: float,
    epochs: Sequence[int],
    seed: int = 0,
    layer: int | None = None,
    batch_size: BatchSize = DEFAULT_BATCH,
    orderings_per_run: int | None = None,
) -> dict[int, Tensor]:
    """`ft_distributions` after each epoch count in `epochs`, `{e: [P, batch, d_vocab]}`, from
    finetuning runs of `max(epochs)` epochs (`finetune_batched_epochs`: each snapshot equals
    a separate run of that length; only one snapshot's deltas are held at a time), each over
    `orderings_per_run` orderings at once (default: all of them; `orderings_that_fit` sizes it
    to memory). The orderings' runs are independent, so the grouping changes float rounding
    only."""
    per_run = len(orders) if orderings_per_run is None else max(1, orderings_per_run)
    parts: dict[int, list[Tensor]] = {}
    for lo in range(0, len(orders), per_run):
        _finetune_orderings(model, prompts, orders[lo : lo + per_run], parts, method=method,
                            lr=lr, epochs=epochs, seed=seed, layer=layer, batch_size=batch_size)
    return {e: torch.cat(d) for e, d in parts.items()}


def _finetune_orderings(
    model: Any, prompts: PromptSet, orders: Sequence[Sequence[int]],
    parts: dict[int, list[Tensor]], *, method: str, lr: float, epochs: Sequence[int], seed: int,
    layer: int | None, batch_size: BatchSize,
) -> None:
    """One `finetune_batched_epochs` run over `orders`; appends each epoch's `[len(orders),
    batch, d_vocab]` distributions to `parts[e]`."""
    n = len(prompts)

    def evaluate(e: int, deltas: list[WeightDelta]) -> None:
        dists = []
        for p in range(len(orders)):
            d = deltas[p * n : (p + 1) * n] if prompts.per_query_demos else deltas[p]
            dists.append(run_finetuned(model, prompts, d, batch_size=batch_size).probs)
        parts.setdefault(e, []).append(torch.stack(dists))

    finetune_batched_epochs(
        model,
        _stack_orderings(prompts, orders),
        method=method,
        lr=lr,
        epochs=epochs,
        on_epoch=evaluate,
        seed=seed,
        layer=layer if method == "wv-layer" else None,
    )


def orderings_that_fit(
    model: Any, prompts: PromptSet, method: str, n_perms: int, *, layer: int | None = None,
    share: float = 0.8,
) -> int:
    """How many orderings one finetuning run trains at once: all `n_perms`, unless their trained
    copies (`task_bytes` per task; one task per ordering, or one per query and ordering with
    per-query demonstrations) would take more than `share` of the memory the model's device
    has free (`available_memory`); at least 1."""
    free = available_memory(model_device(model))
    if free is None:
        return n_perms
    tasks = len(prompts) if prompts.per_query_demos else 1
    need = task_bytes(model, method, layer if method == "wv-layer" else None) * tasks
    return max(1, min(n_perms, int(share * free) // need))


def _stderr(msg: str) -> None:
    print(msg, file=sys.stderr)


def _summary(dists: Tensor) -> tuple[float, float]:
    per_query = order_sensitivity(dists)  # [batch]
    n = per_query.numel()
    se = float(per_query.std(correction=1) / n**0.5) if n > 1 else float("nan")
    return float(per_query.mean()), se


def order_experiment(
    model: Any,
    prompts: PromptSet,
    methods: Sequence[str],
    *,
    n_perms: int = 10,
    epochs: int = 8,
    lr: dict[str, float],
    seed: int = 0,
    wv_layer: int | None = None,
    label: str = "trained",
    progress: Callable[[str], None] | None = None,
    batch_size: BatchSize = DEFAULT_BATCH,
    orderings_per_run: int | None = None,
    log: Callable[[str], None] | None = None,
    cells: Path | None = None,
) -> list[dict[str, Any]]:
    """Order sensitivity of ICL and of each method after each epoch count of
    `epoch_grid(epochs)`. Returns tidy rows `{model, n_demos, n_perms, setting, method, epoch,
    order_sensitivity, se}` (`se` = standard error over queries; `setting` "icl" has method
    "" and epoch 0). `batch_size`: prompts per forward pass, or "auto". `orderings_per_run`:
    orderings finetuned at once (default: per method, as many as fit in memory,
    `orderings_that_fit`; `log` reports a split, default one line on stderr). `cells`: a folder
    where each finished cell (ICL, then each method) is written atomically as it ends, and read
    back instead of computed when a killed run is started again; the caller keeps it to one
    setting (`iclgd order` refuses a folder written with other settings)."""
    orders = orderings(prompts.icl.n_demos, n_perms, seed=seed)
    wv_layer = int(model.cfg.n_layers) // 2 if wv_layer is None else wv_layer
    base = {"model": label, "n_demos": prompts.icl.n_demos, "n_perms": n_perms}

    def icl_rows() -> list[dict[str, Any]]:
        mean, se = _summary(icl_distributions(model, prompts, orders, batch_size=batch_size))
        return [{**base, "setting": "icl", "method": "", "epoch": 0, "order_sensitivity": mean,
                 "se": se}]

    rows = _cell(cells, f"{label}-icl", None, icl_rows)
    grid = epoch_grid(epochs)
    for method in methods:
        def ft_rows(method: str = method) -> list[dict[str, Any]]:
            per_run = orderings_per_run or orderings_that_fit(model, prompts, method, n_perms,
                                                              layer=wv_layer)
            if per_run < n_perms:
                (log or _stderr)(f"iclgd: order: {method} finetunes {per_run} of the {n_perms} "
                                 "orderings at a time (what fits in free memory)")
            by_epoch = ft_distributions_by_epoch(
                model, prompts, orders, method, lr=lr[method], epochs=grid, seed=seed,
                layer=wv_layer, batch_size=batch_size, orderings_per_run=per_run,
            )
            return [{**base, "setting": "ft", "method": method, "epoch": e,
                     "order_sensitivity": m, "se": s}
                    for e in grid for m, s in [_summary(by_epoch[e])]]

        rows += _cell(cells, f"{label}-{method}", lr[method], ft_rows)
        if progress is not None:
            for e in grid:
                progress(f"{label} {method} epoch {e}")
    return rows


def _cell(
    cells: Path | None, name: str, lr: float | None, compute: Callable[[], list[dict[str, Any]]]
) -> list[dict[str, Any]]:
    """The rows of one cell of `order_experiment`: read from `cells/name.json` when an earlier
    run finished it (at the same learning rate), else computed and written there atomically."""
    if cells is None:
        return compute()
    path = Path(cells) / f"{name}.json"
    if path.exists():
        saved = read_json(path)
        if saved.get("lr") == lr:
            return [{k: float("nan") if v is None else v for k, v in r.items()}
                    for r in saved["rows"]]
    rows = compute()
    write_json(path, {"lr": lr, "rows": rows})
    return rows

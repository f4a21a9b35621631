"""Layer by layer on a language model: the logit lens under ICL against finetuning (Deutch et al.).

Deutch et al. (2024) ask whether ICL matches GD layer by layer and propose layer-causal GD (each
layer's input detached, every layer read out through the final norm and unembedding, the loss
summed over layers) as the fairer GD baseline. `logit_lens_probe` reads every layer the same
way, at the answer position: `unembed(final_norm(h_l))` with `h_l` the output of decoder layer l
(the Hugging Face modules layer-causal GD trains through, `iclgd.probes.finetune_methods`), in
the settings

- `icl`: demonstrations + query; `zs`: the query alone;
- `layer-causal`, `gd`: the query alone on the model finetuned on the demonstrations
  (`iclgd.analyses.compare.finetune_prompts`: one update per query for GINC);
- `icl-reordered`: ICL with the demonstrations in another order (the noise floor).

Rows `{model, n_demos, setting, metric, layer, value}` (layer 1..L = after decoder layer l):
`accuracy` (lens top-1 = the gold first answer token) per setting, and `token_overlap` /
`overlap_cosine` (Shen et al.'s top-K metrics, K = `top_k`) of ICL's lens distribution against
each other setting's. With `control` the same on the untrained control (`model = "untrained"`,
`iclgd.analyses.control`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from iclgd.analyses.compare import finetune_prompts, random_order
from iclgd.analyses.layerwise_results import LensResult
from iclgd.analyses.runs import DEFAULT_BATCH, PromptSet
from iclgd.data.tasks import TokenizedTask
from iclgd.hooks import finetuned, hf_module
from iclgd.hooks.layouts import final_norm
from iclgd.probes import metrics
from iclgd.probes.finetune_methods import decoder_layers

FT_METHODS = ("layer-causal", "gd")
READOUT = "unembed(final_norm(h_l)) at the answer position, h_l = decoder layer l's output"


@torch.no_grad()
def lens_logits(model: Any, tokens: Tensor, positions: Tensor) -> Tensor:
    """Logit-lens logits `[batch, n_layers, d_vocab]` at one position per row (module docstring)."""
    hf = hf_module(model)
    norm, unembed = final_norm(hf), hf.get_output_embeddings()
    rows = torch.arange(tokens.shape[0])
    got: list[Tensor] = []

    def hook(_mod, _args, output):
        h = output[0] if isinstance(output, tuple) else output
        got.append(h[rows, positions.to(h.device)])

    handles = [layer.register_forward_hook(hook) for layer in decoder_layers(hf)]
    try:
        device = next(hf.parameters()).device
        hf(tokens.to(device), use_cache=False)
    finally:
        for h in handles:
            h.remove()
    return unembed(norm(torch.stack(got, 1))).float().cpu()


def lens_run(model: Any, task: TokenizedTask, *, batch_size: int = DEFAULT_BATCH) -> Tensor:
    """`lens_logits` of every prompt of `task` at its answer position, in batches."""
    parts = []
    for lo in range(0, len(task), batch_size):
        rows = torch.arange(lo, min(lo + batch_size, len(task)))
        width = int(task.lengths[rows].max())
        parts.append(lens_logits(model, task.tokens[rows, :width], task.answer_pos[rows]))
    return torch.cat(parts)


def finetuned_lens(model: Any, prompts: PromptSet, deltas: Sequence[Any]) -> Tensor:
    """Lens logits of the ZS prompts on the finetuned model (one delta shared, or one per
    query), each run inside `iclgd.hooks.finetuned` (the model's weights restored exactly)."""
    if not prompts.per_query_demos:
        with finetuned(model, deltas[0]) as ft:
            return lens_run(ft, prompts.zs)
    parts = []
    for row, d in enumerate(deltas):
        with finetuned(model, d) as ft:
            parts.append(lens_run(ft, prompts.subset([row]).zs))
    return torch.cat(parts)


def lens_rows(label: str, n: int, lens: dict[str, Tensor], answer_ids: Tensor,
              top_k: int) -> list[dict[str, Any]]:
    """Tidy rows of one model and N from `{setting: lens logits [batch, L, vocab]}`."""
    rows = []
    icl = torch.softmax(lens["icl"].double(), -1)
    k = min(top_k, icl.shape[-1])
    for setting, logits in lens.items():
        acc = (logits.argmax(-1) == answer_ids[:, None]).double().mean(0)
        if setting != "icl-reordered":
            rows += _layer_rows(label, n, setting, "accuracy", acc)
        if setting == "icl":
            continue
        p = torch.softmax(logits.double(), -1)
        for metric, fn in (("token_overlap", metrics.token_overlap),
                           ("overlap_cosine", metrics.overlap_cosine)):
            per_layer = torch.stack([fn(icl[:, layer], p[:, layer], k).double().mean()
                                     for layer in range(p.shape[1])])
            rows += _layer_rows(label, n, setting, metric, per_layer)
    return rows


def _layer_rows(label: str, n: int, setting: str, metric: str, values: Tensor) -> list[dict]:
    return [{"model": label, "n_demos": n, "setting": setting, "metric": metric,
             "layer": layer + 1, "value": float(v)} for layer, v in enumerate(values.tolist())]


def lens_model(model: Any, prompt_sets: dict[int, PromptSet], *, label: str, lr: float,
               epochs: int, seed: int, top_k: int,
               methods: Sequence[str] = FT_METHODS) -> list[dict[str, Any]]:
    """Rows of one model over every N (module docstring)."""
    gen = torch.Generator().manual_seed(seed)
    rows: list[dict[str, Any]] = []
    zs = None
    for n, prompts in sorted(prompt_sets.items()):
        zs = lens_run(model, prompts.zs) if zs is None else zs
        lens = {"icl": lens_run(model, prompts.icl), "zs": zs,
                "icl-reordered": lens_run(model, prompts.reordered(random_order(n, gen)).icl)}
        for method in methods:
            deltas = finetune_prompts(model, prompts, method, lr=lr, epochs=epochs, seed=seed)
            lens[method] = finetuned_lens(model, prompts, deltas)
        rows += lens_rows(label, n, lens, prompts.icl.answer_ids, top_k)
    return rows


def logit_lens_probe(
    model: Any,
    task: str,
    n_demos: Sequence[int],
    *,
    lr: float = 1e-2,
    epochs: int = 1,
    n_queries: int | None = None,
    seed: int = 0,
    k: int = 3,
    control: bool = True,
    top_k: int = 10,
    methods: Sequence[str] = FT_METHODS,
    device: str = "cpu",
) -> LensResult:
    """The logit-lens comparison on `model` (anything `load_model` reads, or a loaded bridge) for
    `task` ("ginc", a built-in task or a file) at every N of `n_demos`; see the module docstring.
    """
    from iclgd.analyses.control import untrained_control
    from iclgd.analyses.prompt_sets import load_prompt_sets
    from iclgd.hooks import load_model
    from iclgd.results import provenance

    spec = model
    if not hasattr(model, "cfg"):
        model = load_model(model, device=device)
    sets, info = load_prompt_sets(model, task, n_demos, n_queries=n_queries, seed=seed, k=k)
    models = [("trained", model)]
    if control:
        models.append(("untrained", untrained_control(model, seed=seed)))
    rows = []
    for label, m in models:
        rows += lens_model(m, sets, label=label, lr=lr, epochs=epochs, seed=seed, top_k=top_k,
                           methods=methods)
    name = str(getattr(model.cfg, "iclgd_source", spec))
    settings = {"model": name, "readout": READOUT, "methods": list(methods), "lr": lr,
                "epochs": epochs, "top_k": top_k, "demos": sorted(sets), "control": control,
                "n_layers": int(model.cfg.n_layers), **info}
    prov = provenance(model=name, checkpoint=getattr(model.cfg, "iclgd_checkpoint", None),
                      seed=seed, dtype=str(next(model.parameters()).dtype).removeprefix("torch."),
                      device=device, weight_processing="raw", analysis="layers (logit lens)")
    return LensResult(rows=rows, settings=settings, provenance=prov)


def print_lens(result: LensResult) -> None:
    """A table: per model, N and layer, accuracy per setting and ICL's overlap with each FT."""
    rows = result.rows
    key = lambda r: (r["model"], r["n_demos"], r["layer"])  # noqa: E731
    table: dict[tuple, dict[str, float]] = {}
    for r in rows:
        table.setdefault(key(r), {})[f"{r['metric']}:{r['setting']}"] = r["value"]
    cols = [("acc icl", "accuracy:icl"), ("acc zs", "accuracy:zs"),
            ("acc lc", "accuracy:layer-causal"), ("acc gd", "accuracy:gd"),
            ("TO lc", "token_overlap:layer-causal"), ("TO gd", "token_overlap:gd"),
            ("TO zs", "token_overlap:zs"), ("TO floor", "token_overlap:icl-reordered"),
            ("OCS lc", "overlap_cosine:layer-causal"), ("OCS gd", "overlap_cosine:gd")]
    print(f"{result.settings['model']} — {READOUT}")
    print(f"{'model':<9} {'N':>3} {'layer':>5}" + "".join(f" {c:>8}" for c, _ in cols))
    for (label, n, layer), vals in sorted(table.items()):
        print(f"{label:<9} {n:>3} {layer:>5}" + "".join(
            f" {vals.get(c, float('nan')):>8.3f}" for _, c in cols))

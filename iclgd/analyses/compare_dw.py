"""Per-layer weight-space comparison for `iclgd compare`: implied ΔW_ICL vs actual ΔW_FT.

The matrices are those of `iclgd.probes.delta_w` (Dai's dual form; read its module docstring):
per query and layer, `ΔW_ICL = V^T K` over the demonstration tokens of that query's ICL prompt
(`implied_delta_w`), and `ΔW_FT = V'^T K' − V^T K` over the query's own tokens in the ZS prompt
with the base model's attention inputs (`finetuned_delta_w`, `inputs="base"`), compared by
`compare_delta_w` (cosine of the flattened matrices, `||ΔW_ICL||_F / ||ΔW_FT||_F`, top-`rank`
singular-subspace overlaps).

`DeltaWComparison` builds the same `FactoredDelta`s for many queries and methods at once: the
attention inputs of every layer come from one batched capture of all ICL prompts and one of all
ZS prompts, or straight from the ZS and ICL runs of `iclgd compare` (instead of one forward
per query and layer), ΔW_ICL is computed once per query and
reused for every method, and a delta's finetuned weights are read once per layer. It agrees with
the per-call functions to float rounding (tested).

Values are averaged over key/value heads, then over queries (norm ratios: their geometric mean,
since a ratio's arithmetic mean is dominated by the large ones). Rows: `dw_cosine`,
`dw_norm_ratio`, `dw_left_overlap`, `dw_right_overlap` per layer; NaN for layers whose keys and
values the method does not change (e.g. all but one layer under `wv-layer`), where ΔW_FT = 0.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import replace
from typing import Any

import torch
from torch import Tensor

from iclgd.analyses.runs import PromptSet, RunCapture
from iclgd.hooks.capture import capture
from iclgd.hooks.edit import delta_tensors
from iclgd.hooks.names import act_names
from iclgd.hooks.types import AttentionWeights
from iclgd.hooks.weights import attention_weights, hf_state_dict
from iclgd.probes.delta_w import FactoredDelta, compare_delta_w, keys_values

DW_RANK = 4


def _layer_inputs(model: Any, tokens: Tensor, lengths: Tensor, n_layers: int) -> list[Tensor]:
    """`blocks.{l}.ln1.hook_out` (the attention block's normalised input, `attn.hook_in`) of
    every prompt, `[batch, pos, d_model]` per layer."""
    names = act_names("ln1", n_layers)
    got = capture(model, tokens[:, : int(lengths.max())], names)
    return [got[n] for n in names]


def _query_inputs(model: Any, prompts: PromptSet, zs: RunCapture | None) -> list[list[Tensor]]:
    """`[row][layer] → [n_query_tokens, d_model]` (float64): from `zs.query_inputs` when
    captured (`run_zero_shot(..., token_inputs=True)`), else by one batched capture."""
    n_layers = int(model.cfg.n_layers)
    if zs is not None and zs.query_inputs is not None:
        return [[zs.query_inputs[row, layer, : int(prompts.query_len[row])].double()
                 for layer in range(n_layers)] for row in range(len(prompts))]
    x = _layer_inputs(model, prompts.zs.tokens, prompts.zs.lengths, n_layers)
    out = []
    for row in range(len(prompts)):
        end = int(prompts.zs.answer_pos[row]) + 1
        qpos = slice(end - int(prompts.query_len[row]), end)
        out.append([x[layer][row, qpos].double() for layer in range(n_layers)])
    return out


def _demo_inputs(model: Any, prompts: PromptSet, icl: RunCapture | None) -> list[Tensor]:
    """`[row] → [n_layers, n_demo_tokens, d_model]` (the run's dtype; widened per layer where
    used) of the ICL prompts' demonstration tokens: from `icl.demo_token_inputs` when captured,
    else by one batched capture."""
    n_layers = int(model.cfg.n_layers)
    captured = icl is not None and icl.demo_token_inputs is not None
    x = None if captured else _layer_inputs(model, prompts.icl.tokens, prompts.icl.lengths,
                                            n_layers)
    out = []
    for row in range(len(prompts)):
        spans = prompts.icl.demo_spans[row].tolist()
        dpos = torch.cat([torch.arange(s, e) for s, e in spans])
        if captured:  # captured from the first demonstration token on
            out.append(icl.demo_token_inputs[row, :, dpos - spans[0][0]])  # type: ignore[union-attr]
        else:
            out.append(torch.stack([x[layer][row, dpos] for layer in range(n_layers)]))  # type: ignore[index]
    return out


def _kv_in_float64(w: AttentionWeights) -> AttentionWeights:
    """`w` with its key/value weights and biases in float64 (what `keys_values` computes in)."""
    def wide(t: Tensor | None) -> Tensor | None:
        return None if t is None else t.double()
    return replace(w, W_K=w.W_K.double(), W_V=w.W_V.double(), b_K=wide(w.b_K), b_V=wide(w.b_V))


def _kv_changed(before: Any, after: Any) -> bool:
    for name in ("W_K", "W_V", "b_K", "b_V"):
        a, b = getattr(before, name), getattr(after, name)
        if (a is None) != (b is None) or (a is not None and not torch.equal(a, b)):
            return True
    return False


class DeltaWComparison:
    """ΔW_ICL vs ΔW_FT for the queries of one `PromptSet` (module docstring).

    Build once per prompt set (the attention inputs and ΔW_ICL of every query and layer), then
    call `rows(deltas)` once per finetuning method. The inputs come from the ZS and ICL runs
    when they were captured with `token_inputs=True` (no extra forward pass), else from one
    batched capture of each prompt set.
    """

    def __init__(self, model: Any, prompts: PromptSet, *, rank: int = DW_RANK,
                 zs: RunCapture | None = None, icl: RunCapture | None = None) -> None:
        self.model, self.prompts, self.rank = model, prompts, rank
        self.n_layers = int(model.cfg.n_layers)
        self.base_state = hf_state_dict(model)
        self.base = [attention_weights(model, layer, params=self.base_state)
                     for layer in range(self.n_layers)]
        self.query_x = _query_inputs(model, prompts, zs)  # [row][layer] -> [n_query_tok, d]
        demo_x = _demo_inputs(model, prompts, icl)  # [row] -> [n_layers, n_demo_tok, d]
        groups: dict[tuple[int, int], list[int]] = {}  # queries whose factors share shapes
        for row in range(len(prompts)):
            shape = (int(prompts.query_len[row]), int(demo_x[row].shape[1]))
            groups.setdefault(shape, []).append(row)
        self.groups = list(groups.values())
        self._slot = {r: (g, i) for g, rows in enumerate(self.groups) for i, r in enumerate(rows)}
        # ΔW_ICL per layer and group, stacked on a leading query axis, held once: kept, so its
        # norms and subspaces (memoised by `FactoredDelta`) are computed once for every method
        self._implied: list[list[FactoredDelta]] = []  # [layer][group]
        for layer in range(self.n_layers):  # layer by layer: its K/V weights widened once
            w = _kv_in_float64(self.base[layer])
            stacks = []
            for rows in self.groups:
                k, v = keys_values(w, torch.stack([demo_x[r][layer] for r in rows]).double())
                stacks.append(FactoredDelta(v.transpose(-1, -2).contiguous(),
                                            k.transpose(-1, -2).contiguous(), layer))
            self._implied.append(stacks)
        self._base_kv: dict[tuple[int, tuple[int, ...]], tuple[Tensor, Tensor]] = {}
        self._stacks: dict[tuple[int, tuple[int, ...]], FactoredDelta] = {}

    def implied(self, row: int, layer: int) -> FactoredDelta:
        """ΔW_ICL of query `row` at `layer` (views of the stacked factors)."""
        group, i = self._slot[row]
        f = self._implied[layer][group]
        return FactoredDelta(f.left[i], f.right[i], layer)

    def _after(self, delta: Any) -> list[Any]:
        state = _Updated(self.base_state, delta_tensors(delta))
        return [attention_weights(self.model, layer, params=state) for layer in range(self.n_layers)]

    def _factors(self, layer: int, rows: list[int], after: Any) -> FactoredDelta:
        """ΔW_FT of `layer` for the queries `rows` (equal query lengths), stacked on a leading
        query axis: `[V'; −V]^T [K'; K]` over each query's own tokens."""
        x = torch.stack([self.query_x[r][layer] for r in rows])  # [rows, pos, d_model]
        key = (layer, tuple(rows))
        if key not in self._base_kv:  # the base keys/values serve every method
            self._base_kv[key] = keys_values(self.base[layer], x)
        k, v = self._base_kv[key]
        k2, v2 = keys_values(after, x)
        return FactoredDelta(torch.cat([v2, -v], -2).transpose(-1, -2),
                             torch.cat([k2, k], -2).transpose(-1, -2), layer)

    def _implied_stack(self, layer: int, rows: list[int]) -> FactoredDelta:
        """ΔW_ICL of `layer` for `rows` (queries of one group), stacked: the group's own stack,
        or for a subset of it (per-query deltas leaving some queries' K/V unchanged) a kept
        selection of it."""
        group = self._slot[rows[0]][0]
        f = self._implied[layer][group]
        if rows == self.groups[group]:
            return f
        key = (layer, tuple(rows))
        if key not in self._stacks:
            idx = torch.tensor([self._slot[r][1] for r in rows])
            self._stacks[key] = FactoredDelta(f.left[idx], f.right[idx], layer)
        return self._stacks[key]

    def actual(self, delta: Any, row: int, after: list[Any] | None = None) -> list[FactoredDelta | None]:
        """ΔW_FT per layer for query `row` (None where the delta leaves K and V unchanged)."""
        after = after or self._after(delta)
        out: list[FactoredDelta | None] = []
        for layer in range(self.n_layers):
            if not _kv_changed(self.base[layer], after[layer]):
                out.append(None)
                continue
            f = self._factors(layer, [row], after[layer])
            out.append(FactoredDelta(f.left[0], f.right[0], layer))
        return out

    def rows(self, deltas: Sequence[Any]) -> list[dict[str, Any]]:
        """Rows `{metric, layer, value}`; `deltas` = one delta shared by every query or one per
        query. Queries of equal length are compared in one batched call per layer
        (`compare_delta_w` over a leading query axis; the same values as one call each)."""
        acc: dict[str, list[list[float]]] = {
            k: [[] for _ in range(self.n_layers)]
            for k in ("cosine", "norm_ratio", "left_overlap", "right_overlap")}
        afters = [self._after(d) for d in deltas]
        for layer in range(self.n_layers):
            for rows in self.groups:
                if len(afters) == 1:
                    rows = rows if _kv_changed(self.base[layer], afters[0][layer]) else []
                    actual = self._factors(layer, rows, afters[0][layer]) if rows else None
                else:
                    rows = [r for r in rows if _kv_changed(self.base[layer], afters[r][layer])]
                    parts = [self._factors(layer, [r], afters[r][layer]) for r in rows]
                    actual = FactoredDelta(torch.cat([f.left for f in parts]),
                                           torch.cat([f.right for f in parts]), layer) \
                        if parts else None
                if actual is None:
                    continue
                implied = self._implied_stack(layer, rows)
                for key, values in compare_delta_w(implied, actual, rank=self.rank).items():
                    for v in values.double():  # one query: [heads]
                        if key == "norm_ratio":
                            v = v[torch.isfinite(v) & (v > 0)].log()
                        acc[key][layer].append(float(v.mean()) if v.numel() else float("nan"))
        return _layer_means(acc)


class _Updated(Mapping[str, Tensor]):
    """`base + delta` by name, each sum formed only when read (the attention views read a few
    tensors per layer, not the MLP and embedding matrices a full-model delta also holds)."""

    def __init__(self, base: Mapping[str, Tensor], delta: Mapping[str, Tensor]) -> None:
        self.base, self.delta = base, delta
        self.sums: dict[str, Tensor] = {}

    def __getitem__(self, name: str) -> Tensor:
        w, d = self.base[name], self.delta.get(name)
        if d is None:
            return w
        if name not in self.sums:
            self.sums[name] = w + d.to(w.dtype)
        return self.sums[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self.base)

    def __len__(self) -> int:
        return len(self.base)


def _layer_means(acc: dict[str, list[list[float]]]) -> list[dict[str, Any]]:
    """Mean over queries per layer (norm ratios: geometric, from their logs); NaN ignored."""
    out = []
    for key, per_layer in acc.items():
        for layer, values in enumerate(per_layer):
            finite = [x for x in values if x == x]
            value = sum(finite) / len(finite) if finite else float("nan")
            if key == "norm_ratio" and value == value:
                value = math.exp(value)
            out.append({"metric": f"dw_{key}", "layer": layer, "value": value})
    return out

"""Per-layer weight-space comparison for `iclgd compare`: implied ΔW_ICL vs actual ΔW_FT.

The matrices are those of `iclgd.probes.delta_w` (Dai's dual form; read its module docstring):
per query and layer, `ΔW_ICL = V^T K` over the demonstration tokens of that query's ICL prompt
(`implied_delta_w`), and `ΔW_FT = V'^T K' − V^T K` over the query's own tokens in the ZS prompt
with the base model's attention inputs (`finetuned_delta_w`, `inputs="base"`), compared by
`compare_delta_w` (cosine of the flattened matrices, `||ΔW_ICL||_F / ||ΔW_FT||_F`, top-`rank`
singular-subspace overlaps).

`DeltaWComparison` builds the same `FactoredDelta`s for many queries and methods at once: the
attention inputs of every layer come from one batched capture of all ICL prompts and one of all
ZS prompts (instead of one forward per query and layer), ΔW_ICL is computed once per query and
reused for every method, and a delta's finetuned weights are read once per layer. It agrees with
the per-call functions to float rounding (tested).

Values are averaged over key/value heads, then over queries (norm ratios: their geometric mean,
since a ratio's arithmetic mean is dominated by the large ones). Rows: `dw_cosine`,
`dw_norm_ratio`, `dw_left_overlap`, `dw_right_overlap` per layer; NaN for layers whose keys and
values the method does not change (e.g. all but one layer under `wv-layer`), where ΔW_FT = 0.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor

from iclgd.analyses.runs import PromptSet
from iclgd.hooks.capture import capture
from iclgd.hooks.edit import delta_tensors
from iclgd.hooks.names import act_names
from iclgd.hooks.weights import attention_weights, hf_state_dict
from iclgd.probes.delta_w import FactoredDelta, compare_delta_w, keys_values

DW_RANK = 4


def _layer_inputs(model: Any, tokens: Tensor, lengths: Tensor, n_layers: int) -> list[Tensor]:
    """`blocks.{l}.attn.hook_in` of every prompt, `[batch, pos, d_model]` per layer (float64)."""
    names = act_names("attn.hook_in", n_layers)
    got = capture(model, tokens[:, : int(lengths.max())], names)
    return [got[n].double() for n in names]


def _kv_changed(before: Any, after: Any) -> bool:
    for name in ("W_K", "W_V", "b_K", "b_V"):
        a, b = getattr(before, name), getattr(after, name)
        if (a is None) != (b is None) or (a is not None and not torch.equal(a, b)):
            return True
    return False


class DeltaWComparison:
    """ΔW_ICL vs ΔW_FT for the queries of one `PromptSet` (module docstring).

    Build once per prompt set (captures the attention inputs and ΔW_ICL of every query and
    layer), then call `rows(deltas)` once per finetuning method.
    """

    def __init__(self, model: Any, prompts: PromptSet, *, rank: int = DW_RANK) -> None:
        self.model, self.prompts, self.rank = model, prompts, rank
        self.n_layers = int(model.cfg.n_layers)
        self.base_state = hf_state_dict(model)
        self.base = [attention_weights(model, layer) for layer in range(self.n_layers)]
        x_icl = _layer_inputs(model, prompts.icl.tokens, prompts.icl.lengths, self.n_layers)
        x_zs = _layer_inputs(model, prompts.zs.tokens, prompts.zs.lengths, self.n_layers)
        self.query_x: list[list[Tensor]] = []  # [row][layer] -> [n_query_tokens, d_model]
        self.implied: list[list[FactoredDelta]] = []
        for row in range(len(prompts)):
            end = int(prompts.zs.answer_pos[row]) + 1
            qpos = slice(end - int(prompts.query_len[row]), end)
            spans = prompts.icl.demo_spans[row].tolist()
            dpos = torch.cat([torch.arange(s, e) for s, e in spans])
            self.query_x.append([x_zs[layer][row, qpos] for layer in range(self.n_layers)])
            implied = []
            for layer in range(self.n_layers):
                k, v = keys_values(self.base[layer], x_icl[layer][row, dpos])
                implied.append(FactoredDelta(v.transpose(-1, -2), k.transpose(-1, -2), layer))
            self.implied.append(implied)

    def _after(self, delta: Any) -> list[Any]:
        tensors = delta_tensors(delta)
        state: Mapping[str, Tensor] = {
            **self.base_state,
            **{n: self.base_state[n] + d.to(self.base_state[n].dtype) for n, d in tensors.items()},
        }
        return [attention_weights(self.model, layer, params=state) for layer in range(self.n_layers)]

    def actual(self, delta: Any, row: int, after: list[Any] | None = None) -> list[FactoredDelta | None]:
        """ΔW_FT per layer for query `row` (None where the delta leaves K and V unchanged)."""
        after = after or self._after(delta)
        out: list[FactoredDelta | None] = []
        for layer in range(self.n_layers):
            if not _kv_changed(self.base[layer], after[layer]):
                out.append(None)
                continue
            x = self.query_x[row][layer]
            k, v = keys_values(self.base[layer], x)
            k2, v2 = keys_values(after[layer], x)
            out.append(FactoredDelta(torch.cat([v2, -v], 1).transpose(-1, -2),
                                     torch.cat([k2, k], 1).transpose(-1, -2), layer))
        return out

    def rows(self, deltas: Sequence[Any]) -> list[dict[str, Any]]:
        """Rows `{metric, layer, value}`; `deltas` = one delta shared by every query or one per
        query."""
        acc: dict[str, list[list[float]]] = {
            k: [[] for _ in range(self.n_layers)]
            for k in ("cosine", "norm_ratio", "left_overlap", "right_overlap")}
        shared_after = self._after(deltas[0]) if len(deltas) == 1 else None
        for row in range(len(self.prompts)):
            delta = deltas[0] if len(deltas) == 1 else deltas[row]
            for layer, actual in enumerate(self.actual(delta, row, shared_after)):
                if actual is None:
                    continue
                got = compare_delta_w(self.implied[row][layer], actual, rank=self.rank)
                for key, values in got.items():
                    v = values.double()
                    if key == "norm_ratio":
                        v = v[torch.isfinite(v) & (v > 0)].log()
                    acc[key][layer].append(float(v.mean()) if v.numel() else float("nan"))
        out = []
        for key, per_layer in acc.items():
            for layer, values in enumerate(per_layer):
                finite = [x for x in values if x == x]
                value = sum(finite) / len(finite) if finite else float("nan")
                if key == "norm_ratio" and value == value:
                    value = math.exp(value)
                out.append({"metric": f"dw_{key}", "layer": layer, "value": value})
        return out

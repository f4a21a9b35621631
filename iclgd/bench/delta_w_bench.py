"""Factored vs materialised ΔW: `compare_delta_w` on `FactoredDelta`s vs the same metrics on
dense matrices.

Per query and layer `iclgd compare` compares Dai's implied `ΔW_ICL = V^T K` (rank = number of
demonstration tokens) with the finetuning `ΔW_FT` (rank = 2 × query tokens), per key/value
head. `ours` = `compare_delta_w` on the factors (Gram products, QR of the factors, SVD of a
small core: Dai et al., 2023's dual form kept factored); `baseline` = materialise each
`d_head × d_head` matrix, then the flattened cosine, Frobenius norms and a full SVD per head.
Shapes: SmolLM2-135M's attention (3 key/value heads, d_head 64, 30 layers) and GPT-2 small's
(12 heads, d_head 64, 12 layers), 8 queries, 64 demonstration and 8 query tokens.
Memory is the size of what a comparison holds per query and layer (the two ΔW, factored or
dense; float64 bytes, exact): the transient peak of these small products is below the
allocator's page granularity and says nothing. The factors are the smaller form only while
the rank (2 × 64 + 2 × 16 columns here) stays below `d_head`.
"""

from __future__ import annotations

from typing import Any

from iclgd.bench import Row
from iclgd.bench.measure import interleaved, ratio_stats

SHAPES = {"smollm2": (3, 64, 30), "gpt2-small": (12, 64, 12)}  # kv heads, d_head, layers


def dense_compare(a: Any, b: Any, rank: int) -> dict[str, Any]:
    """The `compare_delta_w` metrics on materialised matrices `[heads, d_head, d_head]`."""
    import torch

    na, nb = a.flatten(1).norm(dim=1), b.flatten(1).norm(dim=1)
    cos = (a.flatten(1) * b.flatten(1)).sum(1) / (na * nb).clamp_min(1e-300)
    ua, _, vha = torch.linalg.svd(a)
    ub, _, vhb = torch.linalg.svd(b)
    left = (ua[..., :rank].transpose(-1, -2) @ ub[..., :rank]).pow(2).sum((-1, -2)) / rank
    right = (vha[..., :rank, :] @ vhb[..., :rank, :].transpose(-1, -2)).pow(2).sum((-1, -2)) / rank
    return {"cosine": cos, "norm_ratio": na / nb, "left_overlap": left, "right_overlap": right}


def variants(kind: str, tiny: bool) -> dict[str, Any]:
    """`{"factored", "materialised"}` → callables comparing every query and layer once, and
    `"pairs"`: the (implied, actual) `FactoredDelta`s they compare."""
    import torch

    from iclgd.probes.delta_w import FactoredDelta, compare_delta_w

    heads, d_head, layers = (2, 16, 2) if tiny else SHAPES[kind]
    queries, n_demo, n_query = (2, 8, 2) if tiny else (8, 64, 8)
    g = torch.Generator().manual_seed(0)

    def rand(*shape: int) -> Any:
        return torch.randn(*shape, generator=g, dtype=torch.float64)

    pairs = [(FactoredDelta(rand(heads, d_head, n_demo), rand(heads, d_head, n_demo), 0),
              FactoredDelta(rand(heads, d_head, 2 * n_query), rand(heads, d_head, 2 * n_query), 0))
             for _ in range(queries * layers)]

    def factored() -> Any:  # fresh objects: FactoredDelta memoises its norms and subspaces
        return [compare_delta_w(FactoredDelta(a.left, a.right, 0),
                                FactoredDelta(b.left, b.right, 0), rank=4) for a, b in pairs]

    def materialised() -> Any:
        return [dense_compare(a.materialize(), b.materialize(), 4) for a, b in pairs]

    return {"factored": factored, "materialised": materialised, "pairs": pairs}


def run(quick: bool, device: str, tiny: bool = False) -> list[Row]:
    rounds = 3 if quick or tiny else 5
    rows = []
    for kind in SHAPES:
        fns = variants(kind, tiny)
        got_f, got_m = fns["factored"]()[0], fns["materialised"]()[0]
        for key in ("cosine", "norm_ratio", "left_overlap", "right_overlap"):
            if not bool((got_f[key] - got_m[key]).abs().max() < 1e-8):
                raise RuntimeError(f"factored and dense ΔW disagree on {key}")
        times = interleaved({k: fns[k] for k in ("factored", "materialised")}, rounds, "cpu")
        what = f"ΔW comparison, {kind}-shaped attention{' (tiny)' if tiny else ''}"
        r, lo, hi = ratio_stats(times["factored"], times["materialised"])
        rows.append(Row("delta_w", f"{what}, time", times["factored"].median,
                        times["materialised"].median, r, "s", "<= 1", (lo, hi)))
        pair = fns["pairs"][0]
        factored_bytes = sum(t.numel() * 8 for d in pair for t in (d.left, d.right))
        dense_bytes = sum(d.materialize().numel() * 8 for d in pair)
        rows.append(Row("delta_w", f"{what}, memory held per query and layer",
                        factored_bytes / 2**10, dense_bytes / 2**10, factored_bytes / dense_bytes,
                        "KiB", "<= 1", None, "exact tensor sizes, float64"))
    return rows

"""Dai et al.'s training-example attention: hand values, and the recipe re-done in numpy/scipy."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from iclgd.errors import IclgdError
from iclgd.probes.training_attention import (
    example_attention,
    ft_training_attention,
    icl_training_attention,
    random_kendall,
    random_topk_recall,
    topk_recall,
    training_attention_metrics,
)


def test_icl_side_sums_heads_before_the_softmax():
    scores = torch.tensor([[1.0, 0.0, 2.0], [0.0, 1.0, -1.0]])  # 2 heads, 3 tokens -> (1, 1, 1)
    assert icl_training_attention(scores).tolist() == pytest.approx([1 / 3] * 3, abs=1e-15)
    scores = torch.tensor([[0.0, math.log(2.0)], [0.0, math.log(3.0)]], dtype=torch.float64)  # sums (0, log 6)
    assert icl_training_attention(scores).tolist() == pytest.approx([1 / 7, 6 / 7], abs=1e-15)
    with pytest.raises(IclgdError, match="finite"):
        icl_training_attention(torch.tensor([[0.0, -float("inf")]]))


def test_ft_side_is_a_softmax_of_query_dot_products():
    q = torch.tensor([1.0, 2.0], dtype=torch.float64)
    qt = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.0, 0.0]])  # dots 1, 2, 0
    z = math.exp(0.5) + math.exp(1.0) + 1.0
    got = ft_training_attention(q, qt, scale=0.5)
    assert got.tolist() == pytest.approx([math.exp(0.5) / z, math.exp(1.0) / z, 1 / z], abs=1e-15)
    with pytest.raises(IclgdError, match="q_train"):
        ft_training_attention(q, torch.ones(3, 4))


def test_example_level_sums_each_example():
    attn = torch.tensor([[0.1, 0.2, 0.3, 0.4], [0.4, 0.3, 0.2, 0.1]], dtype=torch.float64)
    got = example_attention(attn, [1, 3])
    assert got.flatten().tolist() == pytest.approx([0.1, 0.9, 0.4, 0.6], abs=1e-15)
    per_row = example_attention(attn, torch.tensor([[2, 2], [3, 1]]))
    assert per_row.flatten().tolist() == pytest.approx([0.3, 0.7, 0.9, 0.1], abs=1e-15)
    with pytest.raises(IclgdError, match="add up"):
        example_attention(attn, [2, 3])


def test_topk_recall_hand_values():
    icl = torch.tensor([0.4, 0.3, 0.2, 0.1])
    ft = torch.tensor([0.1, 0.35, 0.3, 0.25])
    assert topk_recall(icl, ft, 2).item() == 0.5  # {0, 1} vs {1, 2}
    assert topk_recall(icl, ft, 3).item() == pytest.approx(2 / 3)  # {0,1,2} vs {1,2,3}
    # ties go to the lower index: Top_2([1,1,1,0]) = {0, 1}
    assert topk_recall(torch.tensor([1.0, 1.0, 1.0, 0.0]), torch.tensor([0.0, 1.0, 2.0, 3.0]), 2).item() == 0.0
    assert topk_recall(torch.tensor([1.0, 1.0, 1.0, 0.0]), torch.tensor([3.0, 2.0, 1.0, 0.0]), 2).item() == 1.0
    assert topk_recall(icl, ft, 100).item() == 1.0  # K clipped to n
    with pytest.raises(IclgdError, match="positive"):
        topk_recall(icl, ft, 0)


def test_random_baselines_are_the_stated_draws():
    ft = torch.tensor([[0.1, 0.5, 0.2, 0.9, 0.0]]).repeat(20000, 1)
    got = random_topk_recall(ft, 2, torch.Generator().manual_seed(4))
    draws = torch.randint(0, 5, (20000, 2), generator=torch.Generator().manual_seed(4))
    want = ((draws == 1) | (draws == 3)).double().mean(-1)  # Top_2(ft) = {3, 1}
    assert torch.equal(got, want)
    assert float(got.mean()) == pytest.approx(2 / 5, abs=0.01)  # expected K / n
    assert random_topk_recall(ft[:3], 9).tolist() == [1.0, 1.0, 1.0]  # K >= n: every draw hits
    scipy_stats = pytest.importorskip("scipy.stats")
    icl = torch.rand(3, 7, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    u = torch.rand(3, 7, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    want = [scipy_stats.kendalltau(a.numpy(), b.numpy())[0] for a, b in zip(icl, u, strict=True)]
    assert random_kendall(icl, torch.Generator().manual_seed(2)).tolist() == pytest.approx(want, abs=1e-15)


def _dai_numpy(icl_scores, q_query, q_train, lengths, scale, k_tok, k_ex, sort_kind=None):
    """The recipe of Dai's analysis, written out with numpy and scipy for one row. Dai's
    `np.argsort(-x)` (default kind) breaks ties in an implementation-dependent order, so tied
    rows are checked against the stable sort iclgd documents."""
    from scipy.stats import kendalltau

    def softmax(v):
        e = np.exp(v - v.max())
        return e / e.sum()

    icl = softmax(icl_scores.sum(0))
    ft = softmax(scale * (q_train @ q_query))
    edges = np.cumsum([0, *lengths])
    icl_ex = np.array([icl[a:b].sum() for a, b in zip(edges[:-1], edges[1:], strict=True)])
    ft_ex = np.array([ft[a:b].sum() for a, b in zip(edges[:-1], edges[1:], strict=True)])

    def recall(a, b, k):
        top_a, top_b = np.argsort(-a, kind=sort_kind)[:k], np.argsort(-b, kind=sort_kind)[:k]
        return sum(i in top_b.tolist() for i in top_a.tolist()) / k

    return {"kendall_tau": kendalltau(icl, ft)[0], "topk_recall_tokens": recall(icl, ft, k_tok),
            "kendall_tau_examples": kendalltau(icl_ex, ft_ex)[0],
            "topk_recall_examples": recall(icl_ex, ft_ex, k_ex)}


@pytest.mark.parametrize("tied", [False, True])
def test_matches_the_recipe_in_numpy_and_scipy(tied):
    pytest.importorskip("scipy")
    g = torch.Generator().manual_seed(7 + tied)
    rows, heads, n, d, lengths = 6, 3, 14, 8, [3, 4, 2, 5]
    if tied:  # small integers: many equal score sums and equal dot products
        icl_scores = torch.randint(-1, 2, (rows, heads, n), generator=g).double()
        q_query = torch.randint(0, 2, (rows, d), generator=g).double()
        q_train = torch.randint(0, 2, (rows, n, d), generator=g).double()
    else:
        icl_scores = torch.randn(rows, heads, n, generator=g, dtype=torch.float64)
        q_query = torch.randn(rows, d, generator=g, dtype=torch.float64)
        q_train = torch.randn(rows, n, d, generator=g, dtype=torch.float64)
    got = training_attention_metrics(icl_scores, q_query, q_train, lengths, scale=1 / 4,
                                     k_tokens=5, k_examples=2,
                                     generator=torch.Generator().manual_seed(0))
    ties = 0
    for r in range(rows):
        want = _dai_numpy(icl_scores[r].numpy(), q_query[r].numpy(), q_train[r].numpy(), lengths,
                          1 / 4, 5, 2, sort_kind="stable" if tied else None)
        ties += len(set(icl_scores[r].sum(0).tolist())) < n
        for name, value in want.items():
            assert float(got[name][r]) == pytest.approx(value, abs=1e-12), (name, r)
    assert ties == (rows if tied else 0)
    for name in ("kendall_tau_random", "topk_recall_tokens_random", "kendall_tau_examples_random",
                 "topk_recall_examples_random"):
        assert got[name].shape == (rows,) and torch.isfinite(got[name]).all()


def test_mismatched_token_counts_raise():
    with pytest.raises(IclgdError, match="same tokens"):
        training_attention_metrics(torch.zeros(2, 5), torch.zeros(3), torch.zeros(4, 3), [2, 2])

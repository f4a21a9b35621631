"""Dai's training-token attention and f2t mode inside `iclgd compare`, checked by hand."""

from __future__ import annotations

import pytest
import torch

from iclgd.analyses.compare_dai import (
    F2T_METRICS,
    f2t_metrics,
    token_alignment,
    training_attention_layers,
)
from iclgd.analyses.prompt_sets import text_prompt_sets
from iclgd.analyses.runs import RunCapture, run_finetuned, run_icl
from iclgd.data.tasks import Example, Task, Template
from iclgd.hooks import capture, finetuned, load_model
from iclgd.hooks.edit import copy_model
from iclgd.probes import metrics


def toy_task(bos: bool) -> Task:
    ex = [Example(f"w{i}", f"w{i + 20}") for i in range(4, 20)]
    template = Template(input_prefix="w1 ", output_prefix=" w2", separator=" w3 ", bos=bos)
    return Task("toy", ex[:10], ex[10:], template)


@pytest.fixture(scope="module")
def neox(tiny_models):
    return load_model(tiny_models["neox"], device="cpu")


def _by_hand(model, ft_model, ps, row, layer):
    """Dai's ICL and FT attention for one query and layer, from fresh captures."""
    end = int(ps.icl.answer_pos[row]) + 1
    s = capture(model, ps.icl.tokens[row : row + 1, :end],
                f"blocks.{layer}.attn.hook_attn_scores", positions=-1)
    scores = s[f"blocks.{layer}.attn.hook_attn_scores"][0]  # [heads, end]
    zend = int(ps.zs.answer_pos[row]) + 1
    q = capture(ft_model, ps.zs.tokens[row : row + 1, :zend], f"blocks.{layer}.attn.hook_q",
                positions=-1)[f"blocks.{layer}.attn.hook_q"][0]  # [heads, d_head]
    keep, q_train, lengths = [], [], []
    for i in range(ps.demos.n_demos):
        a, e = (int(x) for x in ps.icl.demo_spans[row, i])
        keep += range(a + 1, e)  # each demonstration's first token left out
        seq = ps.demos.tokens[i][ps.demos.valid[i]]
        qt = capture(ft_model, seq[None], f"blocks.{layer}.attn.hook_q")[f"blocks.{layer}.attn.hook_q"][0]
        skip = len(seq) - (e - a) + 1  # BOS (if any) and the first token
        q_train.append(qt[skip:].flatten(-2))
        lengths.append(e - a - 1)
    icl = torch.softmax(scores[:, keep].double().sum(0), -1)
    ft = torch.softmax(torch.cat(q_train).double() @ q.flatten().double() / q.shape[-1], -1)
    bounds = torch.tensor([0, *lengths]).cumsum(0).tolist()
    icl_ex = torch.stack([icl[a:b].sum() for a, b in zip(bounds[:-1], bounds[1:], strict=True)])
    ft_ex = torch.stack([ft[a:b].sum() for a, b in zip(bounds[:-1], bounds[1:], strict=True)])
    return icl, ft, icl_ex, ft_ex


@pytest.mark.parametrize("bos", [False, True])
def test_training_attention_matches_fresh_captures(neox, bos):
    from scipy.stats import kendalltau

    from iclgd.probes.finetune import finetune

    ps = text_prompt_sets(toy_task(bos), neox.tokenizer, [3], n_queries=3, n_ctx=64)[3]
    icl_idx, ft_idx, lengths = token_alignment(ps)
    assert lengths.tolist() == [[4, 4, 4]] * 3  # "w1 wX w2 wY w3": 5 tokens, the first left out
    assert int(ft_idx[0, 0]) == (2 if bos else 1)
    delta = finetune(neox, ps.demos, method="kv", lr=0.5)
    icl_run = run_icl(neox, ps)
    ft_run = run_finetuned(neox, ps, delta, kendall=True)
    got = training_attention_layers(icl_run, ft_run, ps, generator=torch.Generator().manual_seed(0))
    copy = copy_model(neox)  # ICL scores from the original, FT queries from the finetuned copy
    for layer in (0, 1):
        taus, taus_ex = [], []
        for row in range(len(ps)):
            with finetuned(copy, delta) as ft_model:
                icl, ft, icl_ex, ft_ex = _by_hand(neox, ft_model, ps, row, layer)
            taus.append(kendalltau(icl.numpy(), ft.numpy())[0])
            taus_ex.append(kendalltau(icl_ex.numpy(), ft_ex.numpy())[0])
        assert float(got["kendall_tau"][layer]) == pytest.approx(sum(taus) / 3, abs=1e-6)
        assert float(got["kendall_tau_examples"][layer]) == pytest.approx(sum(taus_ex) / 3, abs=1e-6)
    # 12 tokens < K = 100 and 3 examples < K = 5: K is clipped, recall and baseline are 1
    for name in ("topk_recall_tokens", "topk_recall_tokens_random", "topk_recall_examples",
                 "topk_recall_examples_random"):
        assert got[name].tolist() == [1.0, 1.0], name
    assert got["kendall_tau_random"].abs().max() < 1


def _run(attn_out, scores, correct):
    logits = torch.where(torch.as_tensor(correct)[:, None], torch.tensor([[5.0, 0.0]]),
                         torch.tensor([[0.0, 5.0]]))
    n = len(correct)
    return RunCapture("x", attn_out, scores, torch.full((n,), scores.shape[-1]), logits,
                      torch.zeros(n, dtype=torch.long))


def test_f2t_averages_only_zs_wrong_ft_and_icl_right():
    g = torch.Generator().manual_seed(0)
    h = [torch.randn(5, 2, 6, generator=g) for _ in range(3)]
    a = [torch.randn(5, 2, 3, 4, generator=g) for _ in range(3)]
    zs = _run(h[0], a[0], [False, False, True, False, False])
    icl = _run(h[1], a[1], [True, True, True, False, True])
    ft = _run(h[2], a[2], [True, False, True, True, True])
    got = f2t_metrics(zs, icl, ft, generator=torch.Generator().manual_seed(1))
    keep = [0, 4]
    assert got["n_f2t"] == 2.0
    want = metrics.simaou(h[1][keep], h[0][keep], h[2][keep]).mean(0)
    assert torch.allclose(got["simaou_norm_f2t"], want, atol=1e-12)
    want = metrics.simam(a[1][keep], a[2][keep]).mean(-1).mean(0)
    assert torch.allclose(got["simam_after_f2t"], want, atol=1e-12)
    want = metrics.random_baseline_simaou(h[1][keep], h[0][keep], torch.Generator().manual_seed(1))
    assert torch.allclose(got["simaou_random_norm_f2t"], want.mean(0), atol=1e-12)
    none = f2t_metrics(zs, zs, zs, generator=torch.Generator())
    assert none["n_f2t"] == 0.0
    assert all(torch.isnan(none[m]).all() for m in F2T_METRICS)

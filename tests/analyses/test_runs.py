"""ZS / ICL / FT runs: answer-position capture, query alignment, finetuned runs."""

from __future__ import annotations

import pytest
import torch
from torch.func import functional_call

from iclgd.analyses.prompt_sets import text_prompt_sets
from iclgd.analyses.runs import (
    demo_attention_inputs,
    reorder_demonstrations,
    run_finetuned,
    run_icl,
    run_zero_shot,
)
from iclgd.data.tasks import Example, Task, Template
from iclgd.errors import IclgdError
from iclgd.hooks import capture, hf_module, hf_state_dict, load_model

TEMPLATE = Template(input_prefix="w1 ", output_prefix=" w2", separator=" w3 ")


def toy_task() -> Task:
    """Inputs w4..w19 → outputs w24..w39 (two-word queries for some, so lengths differ)."""
    ex = [Example(f"w{i}" if i % 3 else f"w{i} w{i + 1}", f"w{i + 20}") for i in range(4, 20)]
    return Task("toy", ex[:10], ex[10:], TEMPLATE)


@pytest.fixture(scope="module")
def neox(tiny_models):
    return load_model(tiny_models["neox"], device="cpu")


@pytest.fixture(scope="module")
def prompt_sets(neox):
    return text_prompt_sets(toy_task(), neox.tokenizer, [1, 4], n_queries=5, n_ctx=64)


def test_query_scores_are_the_query_tokens_of_the_answer_row(neox, prompt_sets):
    ps = prompt_sets[4]
    assert ps.query_len.tolist() == [3, 4, 3, 3, 4]  # "w1 x w2", x = one or two words
    for task, run in ((ps.zs, run_zero_shot(neox, ps)), (ps.icl, run_icl(neox, ps))):
        for row in range(len(ps)):
            full = capture(neox, task.tokens[row:row + 1, : int(task.lengths[row])],
                           ["blocks.1.attn.hook_attn_scores"])["blocks.1.attn.hook_attn_scores"][0]
            a, n = int(task.answer_pos[row]), int(ps.query_len[row])
            want = full[:, a, a - n + 1:a + 1]  # [heads, n]
            assert torch.allclose(run.query_scores[row, 1, :, :n], want, atol=1e-6)
            assert (run.query_scores[row, 1, :, n:] == 0).all()  # zero padding


def test_icl_demo_attention_is_the_pattern_over_demonstration_tokens(neox, prompt_sets):
    ps = prompt_sets[4]
    icl = run_icl(neox, ps)
    start, end = int(ps.icl.demo_spans[0, 0, 0]), int(ps.icl.demo_spans[0, -1, 1])
    assert icl.demo_attention.shape == (5, 2, 4, end - start)
    full = capture(neox, ps.icl.tokens[:1, : int(ps.icl.lengths[0])],
                   ["blocks.0.attn.hook_pattern"])["blocks.0.attn.hook_pattern"][0]
    a = int(ps.icl.answer_pos[0])
    assert torch.allclose(icl.demo_attention[0, 0], full[:, a, start:end], atol=1e-7)
    assert float(icl.demo_attention.sum(-1).max()) < 1.0  # the query tokens get the rest


def test_zero_delta_finetuned_run_equals_zero_shot_exactly(neox, prompt_sets):
    ps = prompt_sets[4]
    zs = run_zero_shot(neox, ps)
    zero = {k: torch.zeros_like(v) for k, v in hf_state_dict(neox).items()}
    ft = run_finetuned(neox, ps, zero)
    for field in ("attn_out", "query_scores", "logits"):
        assert torch.equal(getattr(zs, field), getattr(ft, field)), field
    per_query = run_finetuned(neox, ps, [zero] * len(ps))  # one row at a time
    zs1 = run_zero_shot(neox, ps, batch_size=1)
    for field in ("attn_out", "query_scores", "logits"):
        assert torch.equal(getattr(zs1, field), getattr(per_query, field)), field


def test_finetuned_run_matches_functional_call_and_leaves_model_alone(neox, prompt_sets):
    from iclgd.probes.finetune import finetune

    ps = prompt_sets[4]
    before = {k: v.clone() for k, v in hf_state_dict(neox).items()}
    zs_before = run_zero_shot(neox, ps)
    delta = finetune(neox, ps.demos, method="kv", lr=0.5)  # changes the fused q/k/v tensor
    ft = run_finetuned(neox, ps, delta)
    hf = hf_module(neox)
    rows = torch.arange(len(ps))
    with torch.no_grad():
        ref = functional_call(hf, delta.params_after(neox), (ps.zs.tokens,)).logits
    assert torch.allclose(ft.logits, ref[rows, ps.zs.answer_pos], atol=1e-5)
    assert (ft.logits - zs_before.logits).abs().max() > 1e-3
    after = hf_state_dict(neox)
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert torch.equal(run_zero_shot(neox, ps).logits, zs_before.logits)


def test_finetuned_runs_do_not_leak_between_deltas(neox, prompt_sets):
    ps = prompt_sets[1]
    name = "gpt_neox.layers.0.mlp.dense_h_to_4h.weight"
    bumped = {name: torch.full_like(hf_state_dict(neox)[name], 0.3)}
    a = run_finetuned(neox, ps, bumped).logits
    b = run_finetuned(neox, ps, {}).logits
    assert (a - b).abs().max() > 1e-3
    assert torch.equal(b, run_zero_shot(neox, ps).logits)


def test_reordering_blocks_equals_retokenising_the_reordered_prompt(neox, prompt_sets):
    task = toy_task()
    ps = prompt_sets[4]
    order = [2, 0, 3, 1]
    demos = task.demonstrations  # text_prompt_sets drew 4 of them with seed 0
    from iclgd.data.task_loaders import sample_demonstrations

    drawn = sample_demonstrations(task, 4, 0)
    retok = task.tokenized_prompts(neox.tokenizer, demonstrations=[drawn[i] for i in order],
                                   queries=task.queries[:5])
    moved = reorder_demonstrations(ps.icl, order)
    assert torch.equal(moved.tokens, retok.tokens)
    assert torch.equal(moved.demo_spans, retok.demo_spans)
    assert torch.equal(moved.label_spans, retok.label_spans)
    assert len(demos) == 10
    same = reorder_demonstrations(ps.icl, [0, 1, 2, 3])
    assert torch.equal(same.tokens, ps.icl.tokens)
    with pytest.raises(IclgdError, match="permutation"):
        reorder_demonstrations(ps.icl, [0, 0, 1, 2])


def test_demo_attention_inputs_concatenate_real_tokens(neox, prompt_sets):
    ps = prompt_sets[4]
    x = demo_attention_inputs(neox, ps.demos)
    n_tok = int(ps.demos.valid.sum())
    assert x.shape == (2, n_tok, 32)
    # demonstration 1's first token is row 1, position 0 of its own sequence
    first = int(ps.demos.valid[0].sum())
    row1 = capture(neox, ps.demos.tokens[1:2], ["blocks.1.ln1.hook_out"])["blocks.1.ln1.hook_out"]
    assert torch.allclose(x[1, first], row1[0, 0], atol=1e-6)


def test_prompt_set_errors(neox):
    task = toy_task()
    with pytest.raises(IclgdError, match="demonstrations"):
        text_prompt_sets(task, neox.tokenizer, [11], n_queries=2)  # pool has 10
    with pytest.raises(IclgdError, match="context"):
        text_prompt_sets(task, neox.tokenizer, [8], n_queries=2, n_ctx=20)
    empty = Task("e", [Example("w4", "")], [Example("w5", "w6")], TEMPLATE)
    with pytest.raises(IclgdError, match="tokenises to nothing"):
        text_prompt_sets(empty, neox.tokenizer, [1])


def test_shared_training_token_activations_are_one_copy_for_every_query(neox, prompt_sets):
    from iclgd.probes.finetune import finetune

    ps = prompt_sets[4]
    ft = run_finetuned(neox, ps, finetune(neox, ps.demos, method="gd", lr=0.5), kendall=True)
    for x in (ft.demo_inputs, ft.demo_queries):
        assert x is not None and x.shape[0] == len(ps) == 5
        assert x.stride(0) == 0  # a view expanded over the queries, not 5 copies
        assert torch.equal(x[0], x[4])

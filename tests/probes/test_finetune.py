import copy

import pytest
import torch

from iclgd.data.tasks import TokenizedDemos, demos_from_token_examples, stack_demos
from iclgd.errors import IclgdError
from iclgd.hooks import attention_weights, hf_module, load_model
from iclgd.probes.finetune import finetune, finetune_batched, finetune_batched_epochs

V = 32


def _save_tokenizer(folder):
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.WordLevel({f"t{i}": i for i in range(V)}, unk_token="t0"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="t0", pad_token="t0").save_pretrained(folder)


@pytest.fixture(scope="module")
def bridge(tmp_path_factory):
    from transformers import GPTNeoXConfig, GPTNeoXForCausalLM

    cfg = GPTNeoXConfig(vocab_size=V, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                        intermediate_size=64, max_position_embeddings=64)
    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("neox")
    GPTNeoXForCausalLM(cfg).save_pretrained(folder)
    _save_tokenizer(folder)
    return load_model(folder, device="cpu")


def _demos(seed, n=4, seq=8):
    g = torch.Generator().manual_seed(seed)
    return demos_from_token_examples(torch.randint(0, V, (n, seq), generator=g), [seq - 2, seq - 1])


def _max_diff(a, b):
    return max((a.deltas[n] - b.deltas[n]).abs().max().item() for n in a.deltas)


def test_kv_changes_only_wk_wv_and_model_is_unchanged(bridge):
    hf = hf_module(bridge)
    before = {n: p.detach().clone() for n, p in hf.named_parameters()}
    wd = finetune(bridge, _demos(0), method="kv", lr=0.1)
    assert all(torch.equal(before[n], p) for n, p in hf.named_parameters())
    assert sorted(wd.deltas) == [f"gpt_neox.layers.{i}.attention.query_key_value.{w}"
                                 for i in (0, 1) for w in ("bias", "weight")]
    after = wd.params_after(bridge)
    for layer in (0, 1):
        w0, w1 = attention_weights(bridge, layer), attention_weights(bridge, layer, params=after)
        assert torch.equal(w0.W_Q, w1.W_Q) and torch.equal(w0.b_Q, w1.b_Q)
        assert torch.equal(w0.W_O, w1.W_O)
        assert (w1.W_K - w0.W_K).abs().max() > 1e-6
        assert (w1.W_V - w0.W_V).abs().max() > 1e-4
    assert len(wd.losses) == 4 and wd.loss_on == "all" and wd.batch_size == 1


def test_wv_layer_changes_only_one_value_matrix(bridge):
    wd = finetune(bridge, _demos(1), method="wv-layer", lr=0.5, layer=1, epochs=2)
    after = wd.params_after(bridge)
    w0, w1 = attention_weights(bridge, 1), attention_weights(bridge, 1, params=after)
    assert torch.equal(w0.W_K, w1.W_K) and torch.equal(w0.W_Q, w1.W_Q)
    assert (w1.W_V - w0.W_V).abs().max() > 1e-4
    assert all("layers.1." in n for n in wd.deltas) and len(wd.losses) == 2
    with pytest.raises(IclgdError, match="layer="):
        finetune(bridge, _demos(1), method="wv-layer", lr=0.1)


def test_gd_is_order_invariant_and_sgd_is_not(bridge):
    d = _demos(2)
    rev = d.reordered([3, 2, 1, 0])
    gd_a = finetune(bridge, d, method="gd", lr=0.05, epochs=2)
    gd_b = finetune(bridge, rev, method="gd", lr=0.05, epochs=2)
    assert _max_diff(gd_a, gd_b) < 1e-6
    sgd_a = finetune(bridge, d, method="sgd", lr=0.05)
    sgd_b = finetune(bridge, rev, method="sgd", lr=0.05)
    assert _max_diff(sgd_a, sgd_b) > 1e-4


def test_sgd_and_adam_match_torch_optim(bridge):
    d = _demos(3, n=2)
    for method, opt in (("sgd", torch.optim.SGD), ("adam", torch.optim.Adam)):
        wd = finetune(bridge, d, method=method, lr=1e-2, epochs=2)
        ref = copy.deepcopy(hf_module(bridge))
        o = opt(ref.parameters(), lr=1e-2)
        start = {n: p.detach().clone() for n, p in ref.named_parameters()}
        losses = []
        for _ in range(2):
            for i in range(2):
                tok = d.tokens[i:i + 1]
                logits = ref(tok).logits[:, :-1]
                ce = torch.nn.functional.cross_entropy(logits[0], tok[0, 1:], reduction="none")
                loss = ce[d.label_mask[i, 1:]].mean()
                losses.append(loss.item())
                o.zero_grad()
                loss.backward()
                o.step()
        assert wd.losses == pytest.approx(losses, abs=1e-5)
        for n, p in ref.named_parameters():
            if method == "adam" and n.endswith("query_key_value.bias"):
                continue  # key-bias gradient is 0 in exact arithmetic: Adam amplifies rounding
            assert (wd.deltas[n] - (p.detach() - start[n])).abs().max() < 1e-5, n


def test_batched_equals_loop(bridge):
    tasks = [_demos(10 + i, n=2, seq=6 + i) for i in range(3)]
    for method in ("sgd", "layer-causal"):
        batched = finetune_batched(bridge, tasks, method=method, lr=0.05)
        for t, demos in enumerate(tasks):
            single = finetune(bridge, demos, method=method, lr=0.05)
            assert _max_diff(batched[t], single) < 1e-6
            assert batched[t].losses == pytest.approx(single.losses, abs=1e-6)


@pytest.mark.parametrize("method", ["adam", "layer-causal"])
def test_epoch_snapshots_equal_separate_runs_and_see_the_plain_model(bridge, method):
    tasks = [_demos(20 + i, n=3, seq=7) for i in range(2)]
    tok = _demos(30).tokens[:2]
    with torch.no_grad():
        plain = bridge(tok)
    seen, logits_inside = {}, []

    def on_epoch(e, deltas):
        seen[e] = deltas
        with torch.no_grad():  # no training hook is active between epochs
            logits_inside.append(bridge(tok))

    finetune_batched_epochs(bridge, tasks, method=method, lr=0.02, epochs=[1, 3, 4],
                            on_epoch=on_epoch)
    assert sorted(seen) == [1, 3, 4]
    assert all(torch.equal(x, plain) for x in logits_inside)
    for e in (1, 3, 4):
        separate = finetune_batched(bridge, tasks, method=method, lr=0.02, epochs=e)
        for got, want in zip(seen[e], separate, strict=True):
            assert got.epochs == e and len(got.losses) == 3 * e
            assert got.losses == want.losses
            assert all(torch.equal(got.deltas[n], want.deltas[n]) for n in want.deltas)
    with pytest.raises(IclgdError, match="epochs must be >= 1"):
        finetune_batched_epochs(bridge, tasks, method="sgd", lr=0.1, epochs=[0, 2],
                                on_epoch=on_epoch)


def test_layer_causal_last_layer_matches_kv_first_does_not(bridge):
    # one step: the last layer's K/V only see the final read-out in both methods; the first
    # layer's see only its own logit-lens read-out under layer-causal GD
    d = _demos(4, n=1)
    lc = finetune(bridge, d, method="layer-causal", lr=0.1)
    kv = finetune(bridge, d, method="kv", lr=0.1)
    last = "gpt_neox.layers.1.attention.query_key_value.weight"
    first = "gpt_neox.layers.0.attention.query_key_value.weight"
    assert (lc.deltas[last] - kv.deltas[last]).abs().max() < 1e-7
    assert (lc.deltas[first] - kv.deltas[first]).abs().max() > 1e-5


def test_errors(bridge):
    d = _demos(7)
    with pytest.raises(IclgdError, match="step"):
        finetune(bridge, d, method="sgd", lr=1e12, epochs=3)
    with pytest.raises(IclgdError, match="unknown finetuning method"):
        finetune(bridge, d, method="lbfgs", lr=0.1)
    with pytest.raises(IclgdError, match="full batch"):
        finetune(bridge, d, method="gd", lr=0.1, batch_size=2)
    with pytest.raises(IclgdError, match="learning rate"):
        finetune(bridge, d, method="sgd", lr=float("nan"))
    no_label = TokenizedDemos(d.tokens, d.valid, torch.zeros_like(d.label_mask))
    with pytest.raises(IclgdError, match="target tokens"):
        finetune(bridge, no_label, method="sgd", lr=0.1)
    with pytest.raises(IclgdError, match="finetune_batched"):
        finetune(bridge, stack_demos([d, d]), method="sgd", lr=0.1)


class _InfGradient(torch.autograd.Function):
    """Identity forward, infinite gradient backward."""

    @staticmethod
    def forward(ctx, x):
        return x.clone()

    @staticmethod
    def backward(ctx, g):
        return torch.full_like(g, float("inf"))


def test_non_finite_gradient_inside_backward_is_an_error_and_leaves_nothing_behind(
        bridge, monkeypatch):
    # a single run applies each tensor's update inside backward: an inf gradient there must
    # surface as the one-line error, and the next run must be unaffected
    from iclgd.probes import finetune_methods

    d = _demos(8, n=2)
    before = finetune(bridge, d, method="adam", lr=1e-2)
    ce = finetune_methods.masked_ce
    with monkeypatch.context() as m:  # finite loss, infinite gradient into the logits
        m.setattr(finetune_methods, "masked_ce", lambda lg, *a: ce(_InfGradient.apply(lg), *a))
        with pytest.raises(IclgdError, match=r"adam finetuning, step 1 .*gradient of .* not finite"):
            finetune(bridge, d, method="adam", lr=1e-2)
    again = finetune(bridge, d, method="adam", lr=1e-2)
    assert again.losses == before.losses
    assert all(torch.equal(again.deltas[n], before.deltas[n]) for n in before.deltas)
    assert not any(t.requires_grad for t in again.deltas.values())


def _kv_rows_changed(hf):
    g = torch.Generator().manual_seed(0)
    d = demos_from_token_examples(torch.randint(0, V, (2, 6), generator=g))
    wd = finetune(hf, d, method="kv", lr=0.5, loss_on="all")
    w0 = attention_weights(hf, 0)
    w1 = attention_weights(hf, 0, params=wd.params_after(hf))
    return w0, w1


@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_kv_on_other_layouts(family):
    import transformers as tr

    torch.manual_seed(0)
    if family == "gpt2":
        hf = tr.GPT2LMHeadModel(tr.GPT2Config(vocab_size=V, n_embd=16, n_layer=1, n_head=2,
                                              n_positions=16, attn_implementation="eager")).eval()
    else:
        hf = tr.LlamaForCausalLM(tr.LlamaConfig(
            vocab_size=V, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
            num_attention_heads=4, num_key_value_heads=2, attn_implementation="eager")).eval()
    w0, w1 = _kv_rows_changed(hf)
    assert torch.equal(w0.W_Q, w1.W_Q) and torch.equal(w0.W_O, w1.W_O)
    assert (w1.W_K - w0.W_K).abs().max() > 1e-7 and (w1.W_V - w0.W_V).abs().max() > 1e-4


def test_task_bytes_counts_trained_copies_and_adam_moments(tiny_models):
    """One task holds its trained tensors, their gradient and a snapshot delta (3 copies), and
    Adam's two moments (5 copies); kv finetuning counts only the keys and values."""
    from iclgd.hooks import load_model
    from iclgd.hooks.weights import hf_module
    from iclgd.probes.finetune import task_bytes
    from iclgd.probes.finetune_methods import method_spec, trainable_parameters

    model = load_model(tiny_models["neox"], device="cpu")
    hf = hf_module(model)
    named = dict(hf.named_parameters())
    every = sum(p.numel() * 4 for p in named.values())  # float32
    assert task_bytes(model, "sgd") == 3 * every
    assert task_bytes(model, "adam") == 5 * every
    kv = sum(named[n].numel() * 4 for n in trainable_parameters(hf, method_spec("kv")))
    assert 0 < kv < every and task_bytes(model, "kv") == 3 * kv

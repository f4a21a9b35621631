import pytest
import torch

from iclgd.data.tasks import demos_from_token_examples
from iclgd.errors import IclgdError
from iclgd.hooks import capture, finetuned, load_model
from iclgd.probes.delta_w import (
    FactoredDelta,
    compare_delta_w,
    finetuned_delta_w,
    implied_delta_w,
    top_singular_subspaces,
)
from iclgd.probes.finetune import finetune

V = 32


@pytest.fixture(scope="module")
def bridge(tmp_path_factory):
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import GPTNeoXConfig, GPTNeoXForCausalLM, PreTrainedTokenizerFast

    cfg = GPTNeoXConfig(vocab_size=V, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                        intermediate_size=64, max_position_embeddings=64)
    torch.manual_seed(0)
    hf = GPTNeoXForCausalLM(cfg)
    with torch.no_grad():  # non-trivial LayerNorm affine maps, so hook choice matters
        for n, p in hf.named_parameters():
            if "layernorm" in n:
                p.add_(0.3 * torch.randn_like(p))
    folder = tmp_path_factory.mktemp("neox_dw")
    hf.save_pretrained(folder)
    tok = Tokenizer(models.WordLevel({f"t{i}": i for i in range(V)}, unk_token="t0"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="t0", pad_token="t0").save_pretrained(folder)
    return load_model(folder, device="cpu")


def _kv(bridge, tokens, layer):
    names = [f"blocks.{layer}.attn.hook_k", f"blocks.{layer}.attn.hook_v"]
    c = capture(bridge, tokens[None], names)
    return c[names[0]][0].double(), c[names[1]][0].double()  # [pos, heads, d_head]


def test_implied_factors_reproduce_the_materialised_sum(bridge):
    tokens = torch.randint(0, V, (12,), generator=torch.Generator().manual_seed(0))
    demo_pos = list(range(9))
    for layer in (0, 1):
        d = implied_delta_w(bridge, tokens, layer, positions=demo_pos)
        assert d.left.shape == (4, 8, 9)
        k, v = _kv(bridge, tokens, layer)
        dense = torch.zeros(4, 8, 8, dtype=torch.float64)
        for i in demo_pos:  # Σ_i (W_V x'_i) ⊗ (W_K x'_i), one demonstration token at a time
            for h in range(4):
                dense[h] += torch.outer(v[i, h], k[i, h])
        assert torch.allclose(d.materialize(), dense, atol=1e-5)
        q = torch.randn(4, 8, dtype=torch.float64)  # dual form: ΔW q = Σ_i v_i (k_i · q)
        direct = torch.einsum("ihe,ih->he", v[demo_pos], torch.einsum("ihe,he->ih", k[demo_pos], q))
        assert torch.allclose(torch.einsum("hab,hb->ha", d.materialize(), q), direct, atol=1e-5)


def test_finetuned_delta_w_base_and_own_inputs(bridge):
    g = torch.Generator().manual_seed(1)
    wd = finetune(bridge, demos_from_token_examples(torch.randint(0, V, (3, 6), generator=g)),
                  method="kv", lr=0.5)
    query = torch.randint(0, V, (5,), generator=g)
    k, v = _kv(bridge, query, 1)
    with finetuned(bridge, wd):
        k2, v2 = _kv(bridge, query, 1)
    expect = torch.einsum("phv,phk->hvk", v2, k2) - torch.einsum("phv,phk->hvk", v, k)
    own = finetuned_delta_w(bridge, wd, query, 1, inputs="own")
    assert own.left.shape == (4, 8, 10)
    assert torch.allclose(own.materialize(), expect, atol=1e-5)
    base = finetuned_delta_w(bridge, wd, query, 1)
    # layer 1's input changes with layer 0's K/V update: "base" keeps the base model's inputs
    assert not torch.allclose(base.materialize(), expect, atol=1e-5)
    base0 = finetuned_delta_w(bridge, wd, query, 0)
    k0, v0 = _kv(bridge, query, 0)
    with finetuned(bridge, wd):
        k0b, v0b = _kv(bridge, query, 0)
    expect0 = torch.einsum("phv,phk->hvk", v0b, k0b) - torch.einsum("phv,phk->hvk", v0, k0)
    assert torch.allclose(base0.materialize(), expect0, atol=1e-5)  # layer 0: same inputs
    with pytest.raises(IclgdError):
        finetuned_delta_w(bridge, wd, query, 1, inputs="other")


def _fd(left, right):
    return FactoredDelta(left.double(), right.double(), 0)


def test_compare_hand_cases():
    e = torch.eye(4, dtype=torch.float64)
    a = _fd(e[None, :, :1], e[None, :, :1])  # e1 e1^T
    b = _fd(e[None, :, 1:2], e[None, :, 1:2])  # e2 e2^T
    same = compare_delta_w(a, a, rank=1)
    assert [same[k].item() for k in ("cosine", "norm_ratio", "left_overlap", "right_overlap")] == \
        pytest.approx([1.0, 1.0, 1.0, 1.0])
    orth = compare_delta_w(a, b, rank=1)
    assert orth["cosine"].item() == 0.0 and orth["left_overlap"].item() == pytest.approx(0.0)
    neg = compare_delta_w(a, _fd(-2 * e[None, :, :1], e[None, :, :1]), rank=1)
    assert neg["cosine"].item() == pytest.approx(-1.0) and neg["norm_ratio"].item() == pytest.approx(0.5)
    # rank-2 subspaces sharing one direction: overlap 1/2
    c = _fd(e[None, :, :2] * torch.tensor([2.0, 1.0]), e[None, :, :2])
    d = _fd(e[None, :, 1:3] * torch.tensor([2.0, 1.0]), e[None, :, 1:3])
    assert compare_delta_w(c, d, rank=2)["left_overlap"].item() == pytest.approx(0.5)
    by_layer = compare_delta_w({3: a}, {3: b}, rank=1)
    assert set(by_layer) == {3}
    with pytest.raises(IclgdError):
        compare_delta_w({3: a}, {4: b})


def test_factored_metrics_match_dense():
    g = torch.Generator().manual_seed(2)
    a = _fd(torch.randn(3, 6, 9, generator=g), torch.randn(3, 6, 9, generator=g))
    b = _fd(torch.randn(3, 6, 2, generator=g), torch.randn(3, 6, 2, generator=g))
    A, B = a.materialize(), b.materialize()
    out = compare_delta_w(a, b, rank=2)
    cos = (A * B).sum((1, 2)) / (A.norm(dim=(1, 2)) * B.norm(dim=(1, 2)))
    assert torch.allclose(out["cosine"], cos, atol=1e-10)
    assert torch.allclose(out["norm_ratio"], A.norm(dim=(1, 2)) / B.norm(dim=(1, 2)), atol=1e-10)
    ua, sa, va = torch.linalg.svd(A)
    ub, sb, vb = torch.linalg.svd(B)
    left = (ua[..., :2].transpose(1, 2) @ ub[..., :2]).pow(2).sum((1, 2)) / 2
    right = (va[:, :2] @ vb[:, :2].transpose(1, 2)).pow(2).sum((1, 2)) / 2
    assert torch.allclose(out["left_overlap"], left, atol=1e-8)
    assert torch.allclose(out["right_overlap"], right, atol=1e-8)
    u, s, _ = top_singular_subspaces(a, 3)
    assert torch.allclose(s, sa[:, :3], atol=1e-10)

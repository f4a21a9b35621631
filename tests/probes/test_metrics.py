import math

import pytest
import torch

from iclgd.errors import IclgdError
from iclgd.probes.metrics import (
    cosine,
    kendall_tau,
    order_sensitivity,
    overlap_cosine,
    random_baseline_simaou,
    rec2ftp,
    simam,
    simam_delta,
    simaou,
    token_overlap,
)


def test_cosine_hand_values_and_zero_vector():
    assert cosine(torch.tensor([1.0, 0.0]), torch.tensor([1.0, 1.0])).item() == pytest.approx(
        1 / math.sqrt(2), abs=1e-12
    )
    assert cosine(torch.tensor([0.0, 0.0]), torch.tensor([1.0, 1.0])).item() == 0.0
    out = cosine(torch.tensor([[1.0, 2.0], [0.0, 0.0]]), torch.tensor([[-2.0, -4.0], [0.0, 0.0]]))
    assert out.tolist() == pytest.approx([-1.0, 0.0], abs=1e-12)
    with pytest.raises(IclgdError):
        cosine(torch.ones(3), torch.ones(4))


def test_simaou_normalized_and_raw():
    icl, zs, ft = torch.tensor([2.0, 0.0]), torch.tensor([0.0, 3.0]), torch.tensor([1.0, 1.0])
    # Dai: unit vectors first: (1,0)-(0,1) vs (1/√2, 1/√2)-(0,1) -> cos 22.5°
    assert simaou(icl, zs, ft).item() == pytest.approx(math.cos(math.pi / 8), abs=1e-12)
    # Deutch: raw (2,-3) vs (1,-2) -> 8/√65
    assert simaou(icl, zs, ft, normalize=False).item() == pytest.approx(8 / math.sqrt(65), abs=1e-12)
    batch = simaou(torch.stack([icl, icl]), torch.stack([zs, zs]), torch.stack([ft, icl]))
    assert batch.shape == (2,)
    assert batch[1].item() == pytest.approx(1.0, abs=1e-12)  # ICL vs ICL


def test_random_baseline_simaou_is_the_stated_draw():
    g = torch.Generator().manual_seed(3)
    icl, zs = torch.randn(4, 5, generator=g), torch.randn(4, 5, generator=g)
    out = random_baseline_simaou(icl, zs, torch.Generator().manual_seed(7))
    u = torch.rand((4, 5), generator=torch.Generator().manual_seed(7), dtype=torch.float64)
    d = icl.double() / icl.double().norm(dim=-1, keepdim=True) - zs.double() / zs.double().norm(
        dim=-1, keepdim=True
    )
    expect = (d * u).sum(-1) / (d.norm(dim=-1) * u.norm(dim=-1))
    assert torch.allclose(out, expect, atol=1e-12)
    # on many random unrelated vectors in high dimension the control averages near 0
    g = torch.Generator().manual_seed(0)
    big = random_baseline_simaou(torch.randn(2000, 256, generator=g), torch.randn(2000, 256, generator=g), g)
    assert abs(big.mean().item()) < 0.01


def test_simam_and_delta():
    a, b = torch.tensor([1.0, 2.0, 2.0]), torch.tensor([2.0, 1.0, 2.0])
    assert simam(a, b).item() == pytest.approx(8 / 9, abs=1e-12)
    assert simam(a, a).item() == pytest.approx(1.0, abs=1e-12)
    zs = torch.tensor([1.0, 1.0, 1.0])
    # (0,1,1) vs (1,0,1) -> 1/2
    assert simam_delta(a, zs, b).item() == pytest.approx(0.5, abs=1e-12)
    with pytest.raises(IclgdError, match="inf"):
        simam(torch.tensor([1.0, -float("inf")]), torch.tensor([1.0, 2.0]))


def test_rec2ftp():
    zs = torch.tensor([False, False, False, True, False])
    ft = torch.tensor([True, True, False, True, True])
    icl = torch.tensor([True, False, True, True, True])
    assert rec2ftp(zs, ft, icl).item() == pytest.approx(2 / 3, abs=1e-12)
    assert math.isnan(rec2ftp(torch.tensor([True]), torch.tensor([True]), torch.tensor([True])).item())


def test_kendall_tau_hand_values():
    t = lambda a, b, **kw: kendall_tau(torch.tensor(a), torch.tensor(b), **kw).item()  # noqa: E731
    assert t([1.0, 2.0, 3.0], [1.0, 3.0, 2.0]) == pytest.approx(1 / 3)
    # x = [0,0,1,2], y = [0,1,1,2]: S = 4 over 6 pairs, 5 untied in x and 5 in y
    assert t([0.0, 0.0, 1.0, 2.0], [0.0, 1.0, 1.0, 2.0]) == pytest.approx(0.8, abs=1e-15)
    assert t([0.0, 0.0, 1.0, 2.0], [0.0, 1.0, 1.0, 2.0], variant="a") == pytest.approx(4 / 6)
    # tie in x: S = 2, untied pairs 2 (x) and 3 (y)
    assert t([1.0, 1.0, 2.0], [1.0, 2.0, 3.0]) == pytest.approx(2 / math.sqrt(6), abs=1e-15)
    assert t([1.0, 1.0, 2.0], [1.0, 2.0, 3.0], variant="a") == pytest.approx(2 / 3)
    x = torch.tensor([[4.0, 3.0, 2.0, 1.0], [0.1, 0.2, 0.3, 0.4]])
    assert kendall_tau(x, torch.tensor([1.0, 2.0, 3.0, 4.0]).expand(2, 4)).tolist() == pytest.approx([-1.0, 1.0])
    assert math.isnan(t([1.0], [2.0]))
    # a constant row has no untied pair: NaN for τ-b (as scipy), 0 for τ-a
    assert math.isnan(t([3.0, 3.0, 3.0], [1.0, 2.0, 3.0]))
    assert t([3.0, 3.0, 3.0], [1.0, 2.0, 3.0], variant="a") == 0.0
    assert math.isnan(t([1.0, float("nan"), 3.0], [1.0, 2.0, 3.0]))
    with pytest.raises(IclgdError, match="variant"):
        t([1.0, 2.0], [1.0, 2.0], variant="c")


def test_kendall_tau_b_matches_scipy_on_tied_and_untied_data():
    scipy_stats = pytest.importorskip("scipy.stats")
    g = torch.Generator().manual_seed(0)
    tied_x = torch.randint(0, 4, (40, 17), generator=g).double()
    tied_y = torch.randint(0, 3, (40, 17), generator=g).double()
    untied_x, untied_y = torch.randn(40, 17, generator=g), torch.randn(40, 17, generator=g)
    for x, y in ((tied_x, tied_y), (untied_x, untied_y), (tied_x, untied_y)):
        got = kendall_tau(x.reshape(4, 10, 17), y.reshape(4, 10, 17)).reshape(-1)
        want = [scipy_stats.kendalltau(a.numpy(), b.numpy())[0] for a, b in zip(x, y, strict=True)]
        assert got.tolist() == pytest.approx(want, abs=1e-15)
    # rows longer than one chunk of pairs take the chunked path and agree too
    x, y = torch.randint(0, 50, (3, 1300), generator=g), torch.randint(0, 50, (3, 1300), generator=g)
    want = [scipy_stats.kendalltau(a.numpy(), b.numpy())[0] for a, b in zip(x, y, strict=True)]
    assert kendall_tau(x, y).tolist() == pytest.approx(want, abs=1e-12)


def test_token_overlap_and_overlap_cosine():
    p = torch.tensor([0.4, 0.3, 0.2, 0.05, 0.03, 0.02], dtype=torch.float64)
    q = torch.tensor([0.05, 0.5, 0.1, 0.3, 0.03, 0.02], dtype=torch.float64)
    # Top3(p) = {0,1,2}, Top3(q) = {1,3,2}: overlap {1,2}
    assert token_overlap(p, q, k=3).item() == pytest.approx(2 / 3)
    # restricted: p (0.3, 0.2), q (0.5, 0.1) -> 0.17 / sqrt(0.13 * 0.26)
    assert overlap_cosine(p, q, k=3).item() == pytest.approx(0.17 / math.sqrt(0.13 * 0.26), abs=1e-12)
    # empty overlap
    assert token_overlap(p, q, k=1).item() == 0.0
    assert overlap_cosine(p, q, k=1).item() == 0.0
    # ICL vs itself: overlap 1, cosine 1, batched
    r = torch.softmax(torch.randn(3, 50, generator=torch.Generator().manual_seed(0)), -1)
    assert token_overlap(r, r).tolist() == [1.0, 1.0, 1.0]
    assert overlap_cosine(r, r).tolist() == pytest.approx([1.0, 1.0, 1.0], abs=1e-12)
    with pytest.raises(IclgdError):
        token_overlap(p, q, k=7)


def test_order_sensitivity():
    d = torch.tensor([[0.5, 0.5, 0.0], [0.7, 0.3, 0.0]], dtype=torch.float64)
    assert order_sensitivity(d).item() == pytest.approx(0.2, abs=1e-12)
    same = torch.tensor([0.2, 0.8]).expand(5, 4, 2)  # invariant to order -> 0 for each query
    assert order_sensitivity(same).tolist() == [0.0, 0.0, 0.0, 0.0]
    with pytest.raises(IclgdError):
        order_sensitivity(torch.ones(1, 3))

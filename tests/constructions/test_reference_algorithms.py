import pytest
import torch

from iclgd.constructions import reference as R
from iclgd.data.regression import sample_linear_tasks
from iclgd.errors import IclgdError


def _tasks(batch=6, n=5, d=3, d_out=2, seed=0):
    return sample_linear_tasks(
        batch, n, d, d_out=d_out, generator=torch.Generator().manual_seed(seed)
    )


def test_gd_matches_explicit_loops():
    t = _tasks()
    w0 = torch.randn(2, 3, dtype=torch.float64)
    W = R.gd(t.X, t.Y, eta=0.7, steps=3, w0=w0)
    for b in range(t.batch):
        w = w0.clone()
        for _ in range(3):
            g = sum(torch.outer(w @ t.X[b, i] - t.Y[b, i], t.X[b, i]) for i in range(t.n)) / t.n
            w = w - 0.7 * g
        assert torch.allclose(W[b], w, atol=1e-13)


def test_averaging_is_one_gd_step_with_unit_rate():
    t = _tasks()
    assert torch.allclose(R.averaging(t.X, t.Y), R.gd(t.X, t.Y, eta=1.0), atol=1e-14)


def test_least_squares_recovers_w_and_ridge_limit():
    t = _tasks(n=8, d=3)
    assert torch.allclose(R.least_squares(t.X, t.Y), t.W, atol=1e-10)
    assert torch.allclose(R.ridge(t.X, t.Y, lam=1e-10), t.W, atol=1e-7)
    lam = 0.5
    W = R.ridge(t.X, t.Y, lam=lam)
    grad = (torch.einsum("bod,bnd->bno", W, t.X) - t.Y).transpose(1, 2) @ t.X + lam * W
    assert grad.abs().max() < 1e-12  # normal equations of the ridge objective
    # min-norm when n < d: fits exactly, lies in the row space
    t2 = _tasks(n=2, d=5)
    W2 = R.least_squares(t2.X, t2.Y)
    assert torch.allclose(torch.einsum("bod,bnd->bno", W2, t2.X), t2.Y, atol=1e-10)
    assert W2.norm() <= t2.W.norm()


def test_online_sgd_order_and_factor():
    t = _tasks(batch=1, d_out=1)
    w = torch.zeros(1, 3, dtype=torch.float64)
    for i in range(t.n):
        x, y = t.X[0, i], t.Y[0, i]
        w = w - 0.3 * ((w @ x) - y)[:, None] * x[None]
    assert torch.allclose(R.online_sgd(t.X, t.Y, lr=0.3)[0], w, atol=1e-14)
    rev = R.online_sgd(t.X.flip(1), t.Y.flip(1), lr=0.3)
    assert not torch.allclose(rev[0], w)


def test_preconditioned_gd_and_gdpp_special_cases():
    t = _tasks()
    eye = torch.eye(3, dtype=torch.float64)
    assert torch.allclose(
        R.preconditioned_gd(t.X, t.Y, preconditioners=[0.4 * eye] * 2),
        R.gd(t.X, t.Y, eta=0.4, steps=2),
        atol=1e-14,
    )
    # GD++ with gamma = 0 is GD with per-layer rates
    pp = R.gdpp_predict(t.X, t.Y, t.x_query, etas=[0.4, 0.9], gammas=[0.0, 0.0])
    W = R.gd(t.X, t.Y, eta=0.4)
    W = R.gd(t.X, t.Y, eta=0.9, w0=W)
    assert torch.allclose(pp, R.predict(W, t.x_query), atol=1e-14)


def test_gdpp_one_layer_preconditioning_by_hand():
    t = _tasks(batch=1, d_out=1)
    eta, g1 = 0.5, 0.2
    pp = R.gdpp_predict(t.X, t.Y, t.x_query, etas=[eta, eta], gammas=[g1, 0.0])
    X, y, xq = t.X[0], t.Y[0, :, 0], t.x_query[0]
    w1 = eta / t.n * (y @ X)
    C = X.T @ X
    M = torch.eye(3, dtype=torch.float64) - g1 * C
    X2, xq2 = X @ M, M @ xq
    resid = y - X @ w1
    w2 = eta / t.n * (resid @ X2)
    assert torch.allclose(pp[0, 0], w1 @ xq + w2 @ xq2, atol=1e-13)


def test_losses_and_errors():
    p = torch.tensor([[1.0, 2.0], [0.0, 0.0]])
    y = torch.zeros(2, 2)
    assert R.half_mse(p, y) == pytest.approx(0.5 * 5 / 2)
    assert R.mse(p, y) == pytest.approx(5 / 2)
    t = _tasks()
    with pytest.raises(IclgdError):
        R.gd(t.X, t.Y[:, :3], eta=0.1)
    with pytest.raises(IclgdError):
        R.gd(t.X, t.Y, eta=float("nan"))
    with pytest.raises(IclgdError):
        R.ridge(t.X, t.Y, lam=0.0)
    with pytest.raises(IclgdError):
        R.gd_predict(t.X, t.Y, t.x_query[:, :2], eta=0.1)
    with pytest.raises(IclgdError):
        R.gd(t.X, t.Y, eta=0.1, w0=torch.zeros(3, 3))


# ----------------------------------------------------------------------------- iterates
def test_gd_iterates_match_gd_per_step():
    t = _tasks()
    its = R.gd_iterates(t.X, t.Y, eta=0.8, steps=4)
    assert its.shape == (5, t.batch, 2, 3)
    assert its[0].abs().max() == 0
    for k in range(5):
        assert torch.allclose(its[k], R.gd(t.X, t.Y, eta=0.8, steps=k), atol=1e-14)


def test_preconditioned_gd_iterates_match_explicit_preconditioners():
    t = _tasks()
    A = torch.tensor([[0.5, 0.1, 0.0], [0.1, 0.9, 0.2], [0.0, 0.2, 0.3]], dtype=torch.float64)
    its = R.preconditioned_gd_iterates(t.X, t.Y, preconditioner=A, steps=3)
    for k in range(4):
        ref = R.preconditioned_gd(t.X, t.Y, preconditioners=[A] * k)
        assert torch.allclose(its[k], ref, atol=1e-14)
    with pytest.raises(IclgdError, match="preconditioner"):
        R.preconditioned_gd_iterates(t.X, t.Y, preconditioner=torch.eye(2), steps=1)


def test_gdpp_iterates_by_hand_in_one_dimension():
    # d = d_out = 1, n = 2: x = (1, 2), y = (3, 5); eta = 0.5, gamma = 0.1.
    X = torch.tensor([[[1.0], [2.0]]], dtype=torch.float64)
    Y = torch.tensor([[[3.0], [5.0]]], dtype=torch.float64)
    its = R.gdpp_iterates(X, Y, etas=[0.5, 0.5], gammas=[0.1, 0.1])
    # layer 1: dW = (0.5/2) (3*1 + 5*2) = 3.25, T = 1 - 0.1 * 5 = 0.5
    # layer 2: residuals (3 - 3.25, 5 - 6.5) = (-0.25, -1.5), inputs 0.5 x = (0.5, 1)
    #          dW = 0.25 * (-0.125 - 1.5) = -0.40625, W = 3.25 - 0.40625 * 0.5 = 3.046875
    assert torch.allclose(its[:, 0, 0, 0], torch.tensor([0.0, 3.25, 3.046875], dtype=torch.float64))


def test_gdpp_iterates_agree_with_gdpp_predict():
    t = _tasks(d_out=1)
    etas, gammas = [0.9, 0.6, 1.2], [0.05, -0.02, 0.1]
    its = R.gdpp_iterates(t.X, t.Y, etas=etas, gammas=gammas)
    for k in range(1, 4):
        pred = R.gdpp_predict(t.X, t.Y, t.x_query, etas=etas[:k], gammas=gammas[:k])
        assert torch.allclose(R.predict(its[k], t.x_query), pred, atol=1e-13)


def test_newton_iterates_by_hand_and_convergence():
    # one task, d = 1: S = s = 5 (x = 1, 2), X^T y = 13; alpha = 1 / s^2 = 0.04
    X = torch.tensor([[[1.0], [2.0]]], dtype=torch.float64)
    Y = torch.tensor([[[3.0], [5.0]]], dtype=torch.float64)
    its = R.newton_iterates(X, Y, steps=2)
    # M_0 = 0.2, M_1 = 0.4 - 0.2 * 5 * 0.2 = 0.2 (already 1 / s): w = 13 / 5 = 2.6
    assert torch.allclose(its[:, 0, 0, 0], torch.full((3,), 2.6, dtype=torch.float64))
    # Fu et al.'s literal alpha = 2 / s^2: M_0 = 0.4, M_1 = 0.8 - 0.8 = 0, stuck at 0
    lit = R.newton_iterates(X, Y, steps=2, alpha_scale=2.0)
    assert torch.allclose(lit[:, 0, 0, 0], torch.tensor([5.2, 0.0, 0.0], dtype=torch.float64))
    t = _tasks(n=8, d=3)
    its = R.newton_iterates(t.X, t.Y, steps=30)
    assert torch.allclose(its[-1], R.least_squares(t.X, t.Y), atol=1e-10)
    t2 = _tasks(n=2, d=5)  # n < d: converges to the minimum-norm fit
    its2 = R.newton_iterates(t2.X, t2.Y, steps=60)
    assert torch.allclose(its2[-1], R.least_squares(t2.X, t2.Y), atol=1e-8)
    with pytest.raises(IclgdError, match="alpha_scale"):
        R.newton_iterates(t.X, t.Y, steps=1, alpha_scale=3.0)


def test_ridge_path_stacks_ridge():
    t = _tasks()
    path = R.ridge_path(t.X, t.Y, [0.1, 1.0])
    assert torch.allclose(path[1], R.ridge(t.X, t.Y, lam=1.0), atol=1e-14)
    with pytest.raises(IclgdError):
        R.ridge_path(t.X, t.Y, [])

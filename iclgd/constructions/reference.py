"""Reference learning algorithms for in-context linear regression (von Oswald et al. 2023; Ahn et
al. 2023; Akyürek et al. 2023; Fu et al. 2023), batched over tasks.

Shapes: `X [batch, n, d]`, `Y [batch, n, d_out]`, `x_query [batch, d]`; weights `W [batch, d_out, d]`
(`y = W x`); predictions `[batch, d_out]`. Everything runs in the inputs' dtype (use float64 to
audit constructions).

Loss conventions: the gradient-based algorithms use the half-MSE empirical loss
`L(W) = (1/2n) sum_i ||W x_i - y_i||^2`, so `grad L(W) = (1/n) sum_i (W x_i - y_i) x_i^T`
(von Oswald et al. 2023). `half_mse` / `mse` report the evaluation losses
`0.5 * mean_tasks ||y_hat - y||^2` (von Oswald) and `mean_tasks ||y_hat - y||^2` (Ahn et al.).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from jaxtyping import Float
from torch import Tensor

from iclgd.errors import IclgdError


def check_regression_inputs(X: Tensor, Y: Tensor, x_query: Tensor | None = None) -> None:
    """Raise `IclgdError` unless `X [batch, n, d]`, `Y [batch, n, d_out]`, `x_query [batch, d]` agree."""
    if not all(isinstance(t, Tensor) for t in (X, Y)) or X.ndim != 3 or Y.ndim != 3:
        raise IclgdError("X must be [batch, n, d] and Y [batch, n, d_out] tensors")
    if X.shape[:2] != Y.shape[:2]:
        raise IclgdError(f"X {tuple(X.shape)} and Y {tuple(Y.shape)} disagree on batch or n")
    if X.shape[1] < 1 or X.shape[2] < 1:
        raise IclgdError(f"need n >= 1 context points and d >= 1, got X {tuple(X.shape)}")
    if x_query is not None and (x_query.ndim != 2 or x_query.shape != (X.shape[0], X.shape[2])):
        raise IclgdError(
            f"x_query must be [batch, d] = {(X.shape[0], X.shape[2])}, got {tuple(x_query.shape)}"
        )


def _w0(w0: Tensor | None, X: Tensor, Y: Tensor) -> Tensor:
    batch, _, d = X.shape
    d_out = Y.shape[2]
    if w0 is None:
        return X.new_zeros(batch, d_out, d)
    w0 = torch.as_tensor(w0, dtype=X.dtype, device=X.device)
    if w0.shape == (d_out, d):
        return w0.expand(batch, d_out, d).clone()
    if w0.shape != (batch, d_out, d):
        raise IclgdError(f"w0 must be [d_out, d] or [batch, d_out, d], got {tuple(w0.shape)}")
    return w0.clone()


def _finite(name: str, value: float) -> float:
    value = float(value)
    if not math.isfinite(value):
        raise IclgdError(f"{name} must be finite, got {value}")
    return value


def predict(W: Float[Tensor, "batch d_out d"], x_query: Float[Tensor, "batch d"]) -> Tensor:
    """`W x_q` per task: `[batch, d_out]`."""
    return torch.einsum("bod,bd->bo", W, x_query)


def half_mse_grad(W: Tensor, X: Tensor, Y: Tensor) -> Float[Tensor, "batch d_out d"]:
    """Gradient of `L(W) = (1/2n) sum_i ||W x_i - y_i||^2`: `(1/n) sum_i (W x_i - y_i) x_i^T`."""
    resid = torch.einsum("bod,bnd->bno", W, X) - Y
    return torch.einsum("bno,bnd->bod", resid, X) / X.shape[1]


def gd(X: Tensor, Y: Tensor, *, eta: float, steps: int = 1, w0: Tensor | None = None) -> Tensor:
    """`steps` full-batch GD steps `W <- W - eta grad L(W)` from `w0` (default 0), half-MSE loss.

    Returns `W [batch, d_out, d]`. `w0` is `[d_out, d]` or `[batch, d_out, d]`.
    """
    check_regression_inputs(X, Y)
    eta = _finite("eta", eta)
    if steps < 0:
        raise IclgdError(f"steps must be >= 0, got {steps}")
    W = _w0(w0, X, Y)
    for _ in range(steps):
        W = W - eta * half_mse_grad(W, X, Y)
    return W


def gd_predict(X, Y, x_query, *, eta: float, steps: int = 1, w0: Tensor | None = None) -> Tensor:
    """Prediction `[batch, d_out]` of `gd(...)` at the query (von Oswald et al. 2023)."""
    check_regression_inputs(X, Y, x_query)
    return predict(gd(X, Y, eta=eta, steps=steps, w0=w0), x_query)


def averaging(X: Tensor, Y: Tensor) -> Tensor:
    """Averaging estimator `W = (1/n) sum_i y_i x_i^T` (= one GD step from 0 with eta = 1)."""
    check_regression_inputs(X, Y)
    return torch.einsum("bno,bnd->bod", Y, X) / X.shape[1]


def ridge(X: Tensor, Y: Tensor, *, lam: float) -> Tensor:
    """Ridge `argmin_W sum_i ||W x_i - y_i||^2 + lam ||W||_F^2` = `Y^T X (X^T X + lam I)^-1`.

    `lam > 0` (use `least_squares` for lam = 0). Returns `W [batch, d_out, d]`.
    """
    check_regression_inputs(X, Y)
    lam = _finite("lam", lam)
    if lam <= 0:
        raise IclgdError(f"ridge needs lam > 0, got {lam}; use least_squares for lam = 0")
    d = X.shape[2]
    A = X.transpose(1, 2) @ X + lam * torch.eye(d, dtype=X.dtype, device=X.device)
    return torch.linalg.solve(A, X.transpose(1, 2) @ Y).transpose(1, 2)


def least_squares(X: Tensor, Y: Tensor) -> Tensor:
    """Minimum-norm least squares `W = Y^T (X^+)^T` (pseudo-inverse; unique fit when n >= d)."""
    check_regression_inputs(X, Y)
    return (torch.linalg.pinv(X) @ Y).transpose(1, 2)


def online_sgd(
    X: Tensor, Y: Tensor, *, lr: float, w0: Tensor | None = None, steps: int | None = None
) -> Tensor:
    """Online SGD, one example per step in order: `W <- W - lr (W x_i - y_i) x_i^T`.

    This is the gradient of the per-example half squared error `(1/2)||W x_i - y_i||^2`.
    Akyürek et al. write `w' = w - 2 alpha (w^T x_i - y_i) x_i` (squared error without the 1/2):
    that is `lr = 2 alpha`. `steps` examples are used (default all n; more than n cycles).
    """
    check_regression_inputs(X, Y)
    lr = _finite("lr", lr)
    n = X.shape[1]
    steps = n if steps is None else steps
    if steps < 0:
        raise IclgdError(f"steps must be >= 0, got {steps}")
    W = _w0(w0, X, Y)
    for t in range(steps):
        x, y = X[:, t % n], Y[:, t % n]
        resid = torch.einsum("bod,bd->bo", W, x) - y
        W = W - lr * torch.einsum("bo,bd->bod", resid, x)
    return W


def preconditioned_gd(
    X: Tensor, Y: Tensor, *, preconditioners: Sequence[Tensor], w0: Tensor | None = None
) -> Tensor:
    """Preconditioned GD (Ahn et al. 2023): `W <- W - grad L(W) A_l^T` for each `A_l [d, d]`.

    In vector form (d_out = 1) `w <- w - A_l grad L(w)`, half-MSE `L`. `A_l = eta I` is plain GD.
    """
    check_regression_inputs(X, Y)
    W = _w0(w0, X, Y)
    d = X.shape[2]
    for A in preconditioners:
        A = torch.as_tensor(A, dtype=X.dtype, device=X.device)
        if A.shape != (d, d):
            raise IclgdError(
                f"each preconditioner must be [d, d] = [{d}, {d}], got {tuple(A.shape)}"
            )
        W = W - half_mse_grad(W, X, Y) @ A.T
    return W


def per_layer(name: str, value: float | Sequence[float], layers: int) -> list[float]:
    """`value` repeated `layers` times when scalar, else checked to have one finite entry per layer."""
    values = [value] * layers if isinstance(value, int | float) else list(value)
    if len(values) != layers:
        raise IclgdError(f"{name} needs one value per layer ({layers}), got {len(values)}")
    return [_finite(name, v) for v in values]


def gdpp_predict(
    X: Tensor,
    Y: Tensor,
    x_query: Tensor,
    *,
    etas: Sequence[float],
    gammas: Sequence[float],
) -> Tensor:
    """GD++ (von Oswald et al. 2023, §4), from W_0 = 0, one (eta, gamma) per layer.

    Layer l, with current inputs `x` and accumulated predictions `f` (context and query, f = 0):
    `Delta W_l = (eta_l / n) sum_i (y_i - f_i) x_i^T` (a GD step on the half-MSE residuals),
    `f_j += Delta W_l x_j`, then every input is preconditioned `x_j <- (I - gamma_l C) x_j` with
    `C = sum_i x_i x_i^T` (unnormalised sum over the context). Returns `f_query [batch, d_out]`.
    """
    check_regression_inputs(X, Y, x_query)
    etas = per_layer("eta", etas, len(list(etas)))
    gammas = per_layer("gamma", gammas, len(etas))
    return gdpp_forward(X, Y, x_query, etas, gammas)


def gdpp_forward(
    X: Tensor, Y: Tensor, x_query: Tensor, etas: Sequence[Any], gammas: Sequence[Any]
) -> Float[Tensor, "batch d_out"]:
    """GD++ without input checks; `etas`/`gammas` may be floats or (differentiable) 0-d tensors.

    Same algorithm and conventions as `gdpp_predict`; used for tuning η, γ by gradient.
    """
    n = X.shape[1]
    xs = torch.cat([X, x_query[:, None]], dim=1)
    f = torch.zeros(X.shape[0], n + 1, Y.shape[2], dtype=X.dtype, device=X.device)
    for eta, gamma in zip(etas, gammas, strict=True):
        ctx = xs[:, :n]
        dW = torch.einsum("bno,bnd->bod", Y - f[:, :n], ctx) * (eta / n)
        f = f + torch.einsum("bod,bpd->bpo", dW, xs)
        C = ctx.transpose(1, 2) @ ctx
        xs = xs - gamma * xs @ C  # C symmetric: (I - gamma C) x_j for every row
    return f[:, n]


def half_mse(pred: Tensor, target: Tensor) -> float:
    """`0.5 * mean over tasks of ||pred - target||^2` (von Oswald's loss); `[batch, d_out]` inputs."""
    if pred.shape != target.shape:
        raise IclgdError(
            f"pred {tuple(pred.shape)} and target {tuple(target.shape)} differ in shape"
        )
    return float(0.5 * ((pred - target) ** 2).sum(-1).mean().detach())


def mse(pred: Tensor, target: Tensor) -> float:
    """`mean over tasks of ||pred - target||^2` (full MSE, Ahn et al.)."""
    return 2.0 * half_mse(pred, target)


# ----------------------------------------------------------------------------- iterates
# Every `*_iterates` function returns the whole trajectory `[steps + 1, batch, d_out, d]`
# (entry k = the weights after k steps, entry 0 the start), in the inputs' dtype. The private
# `_..._path` versions skip input checks and accept 0-d tensors for their scalar hyperparameters,
# so the layer-wise probe can fit them by autograd.


def _check_steps(steps: int) -> int:
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 0:
        raise IclgdError(f"steps must be an integer >= 0, got {steps!r}")
    return steps


def _gd_path(X: Tensor, Y: Tensor, eta: Any, steps: int, A: Tensor | None = None) -> Tensor:
    W = X.new_zeros(X.shape[0], Y.shape[2], X.shape[2])
    out = [W]
    for _ in range(steps):
        g = half_mse_grad(W, X, Y)
        W = W - eta * (g if A is None else g @ A.transpose(-1, -2))
        out.append(W)
    return torch.stack(out)


def gd_iterates(X: Tensor, Y: Tensor, *, eta: float, steps: int) -> Float[Tensor, "k batch o d"]:
    """All iterates `W_0 = 0, ..., W_steps` of full-batch GD `W <- W - eta grad L(W)` on the half-MSE
    loss (von Oswald et al. 2023, §2): `[steps + 1, batch, d_out, d]`; entry k equals
    `gd(X, Y, eta=eta, steps=k)`."""
    check_regression_inputs(X, Y)
    return _gd_path(X, Y, _finite("eta", eta), _check_steps(steps))


def preconditioned_gd_iterates(
    X: Tensor, Y: Tensor, *, preconditioner: Tensor, steps: int
) -> Float[Tensor, "k batch o d"]:
    """All iterates of preconditioned GD with one preconditioner `A [d, d]` for every step,
    `w <- w - A grad L(w)` (half MSE; Ahn et al. 2023, Lemma 1, with `A = -Q`): entry k equals
    `preconditioned_gd(X, Y, preconditioners=[A] * k)`."""
    check_regression_inputs(X, Y)
    d = X.shape[2]
    A = torch.as_tensor(preconditioner, dtype=X.dtype, device=X.device)
    if A.shape != (d, d) or not torch.isfinite(A).all():
        raise IclgdError(f"preconditioner must be a finite [d, d] = [{d}, {d}] matrix")
    return _gd_path(X, Y, 1.0, _check_steps(steps), A)


def _gdpp_path(X: Tensor, Y: Tensor, etas: Sequence[Any], gammas: Sequence[Any]) -> Tensor:
    """Effective GD++ weights after each layer (see `gdpp_iterates`)."""
    batch, n, d = X.shape
    T = torch.eye(d, dtype=X.dtype, device=X.device).expand(batch, d, d)
    W = X.new_zeros(batch, Y.shape[2], d)
    out = [W]
    for eta, gamma in zip(etas, gammas, strict=True):
        ctx = X @ T  # the preconditioned context inputs, one row per point
        resid = Y - torch.einsum("bod,bnd->bno", W, X)
        dW = torch.einsum("bno,bnd->bod", resid, ctx) * (eta / n)
        W = W + dW @ T.transpose(1, 2)
        T = T - gamma * T @ (ctx.transpose(1, 2) @ ctx)
        out.append(W)
    return torch.stack(out)


def gdpp_iterates(
    X: Tensor, Y: Tensor, *, etas: Sequence[float], gammas: Sequence[float]
) -> Float[Tensor, "k batch o d"]:
    """GD++ (von Oswald et al. 2023, §4) as effective weights after each layer, `[L + 1, batch,
    d_out, d]`; `gdpp_predict` with the first k `(eta, gamma)` equals `iterates[k] x_q`.

    GD++ keeps every prediction linear in its input: with the accumulated input transform `T_l`
    (`x_j <- T_l^T x_j`, `T_0 = I`, `T_{l+1} = T_l (I - gamma_l C_l)`, `C_l = sum_i T_l^T x_i
    x_i^T T_l`), layer l adds `Delta W_l T_l^T` to the effective weights, `Delta W_l = (eta_l / n)
    sum_i (y_i - W x_i) (T_l^T x_i)^T`.
    """
    check_regression_inputs(X, Y)
    etas = per_layer("eta", etas, len(list(etas)))
    return _gdpp_path(X, Y, etas, per_layer("gamma", gammas, len(etas)))


def _newton_path(X: Tensor, Y: Tensor, steps: int, alpha_scale: Any = 1.0) -> Tensor:
    S = X.transpose(1, 2) @ X
    alpha = alpha_scale / torch.linalg.matrix_norm(S @ S.transpose(1, 2), ord=2)
    M = alpha[:, None, None] * S
    XtY = X.transpose(1, 2) @ Y  # [batch, d, d_out]
    out = []
    for k in range(steps + 1):
        out.append((M @ XtY).transpose(1, 2))
        if k < steps:
            M = 2 * M - M @ S @ M
    return torch.stack(out)


def newton_iterates(
    X: Tensor, Y: Tensor, *, steps: int, alpha_scale: float = 1.0
) -> Float[Tensor, "k batch o d"]:
    """Iterative Newton's method for least squares (Fu, Chen, Jia, Sharan 2024, §3; the
    Newton-Schulz iteration for `S^+`), `[steps + 1, batch, d_out, d]`:

    `S = X^T X`, `M_0 = alpha S`, `M_{k+1} = 2 M_k - M_k S M_k`, `w_k = M_k X^T y`, with
    `alpha = alpha_scale / ||S S^T||_2`. The iteration converges (quadratically, to the
    minimum-norm least-squares weights) for `0 < alpha_scale < 2`. Fu et al. write
    `alpha = 2 / ||S S^T||_2`, the edge of that range: there the top eigendirection's error
    `1 - alpha lambda_max^2 = -1` squares to 1 and, in exact arithmetic, never decays (in
    float64 only after about 50 steps). The default `alpha_scale = 1` removes that direction's
    error at step 0; pass 2 for the literal formula.
    """
    check_regression_inputs(X, Y)
    scale = _finite("alpha_scale", alpha_scale)
    if not 0 < scale <= 2:
        raise IclgdError(f"alpha_scale must be in (0, 2] for Newton to converge, got {scale}")
    return _newton_path(X, Y, _check_steps(steps), scale)


def ridge_path(X: Tensor, Y: Tensor, lams: Sequence[float]) -> Float[Tensor, "k batch o d"]:
    """`ridge(X, Y, lam=l)` for every `l` in `lams`, stacked: `[len(lams), batch, d_out, d]`
    (Akyürek et al. 2023's ridge family; `least_squares` is the `lam -> 0` end)."""
    check_regression_inputs(X, Y)
    if not lams:
        raise IclgdError("ridge_path needs at least one lambda")
    return torch.stack([ridge(X, Y, lam=float(lam)) for lam in lams])

"""The reference algorithms a layer is compared with, and how their hyperparameters are chosen.

Each family yields weight iterates `w_k [batch, d]` (d_out = 1) for every step `k` of a step grid
(`iclgd.constructions.reference`, float64):

| family   | iterate k                                             | free parameters         |
|----------|-------------------------------------------------------|-------------------------|
| `gd`     | k GD steps from 0, one rate eta (von Oswald et al.)   | eta                     |
| `gdpp`   | k GD++ layers sharing (eta, gamma) (von Oswald et al.) | eta, gamma             |
| `pgd`    | k preconditioned steps, `A = eta Sigma^-1` (Ahn et al.) | eta                   |
| `newton` | k iterative-Newton steps (Fu et al. 2024)             | none                    |
| `ridge`  | ridge at `lambda_k` ("step" = index into the grid)    | none (grid)             |
| `ols`    | minimum-norm least squares (step 0 only)              | none                    |

`Sigma` is the population covariance of the task distribution's inputs; Ahn et al. (2023, Thm. 1)
show the loss-optimal one-layer preconditioner is a function of it. For isotropic inputs `pgd`
is the same function family as `gd` (reported as equivalent, not as a rival). The ridge grid is
`lambda_j = c_j * mean_tasks tr(X^T X) / d`, `c_j` log-spaced in [1e-4, 1e2] (scale-free).

Hyperparameters (`fit`) are chosen on held-out *fit* tasks, never on the tasks the errors are
reported on:
- `"match"` (default): per layer and step, the values whose predictions are closest (mean
  squared difference) to the layer's predictions: "is there a k-step GD that reproduces layer
  l?", exact for the constructions;
- `"loss"`: per step, the values minimising the squared error to the true labels (the
  algorithm's own best, as von Oswald et al. tune eta), the same for every layer.
Fitting: the best point of a grid, refined by Levenberg-Marquardt (float64, forward-mode
Jacobian), which reaches the exact parameters when the layer is in the family.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor

from iclgd.constructions import reference as R
from iclgd.errors import IclgdError

ALGORITHMS = ("gd", "gdpp", "pgd", "newton", "ridge", "ols")
FITS = ("match", "loss")
DEFAULT_STEPS = (*range(9), 12, 16, 24, 32)
RIDGE_SCALES = tuple(10.0 ** (e / 2) for e in range(-8, 5))
_PREFERENCE = ("ols", "newton", "ridge", "gd", "pgd", "gdpp")  # tie-break among equivalents


@dataclass
class Iterate:
    """One candidate: `algorithm` at `step` with fitted `params`, its weights on the probe tasks
    `[n_targets, batch, d]` (one per fit target: a layer in "match" mode, shared in "loss")."""

    algorithm: str
    step: int
    weights: Tensor
    params: list[dict[str, float]] = field(default_factory=list)
    n_params: int = 0
    other_weights: Tensor | None = None  # the same iterate on `also` tasks, when asked for

    @property
    def key(self) -> str:
        return f"{self.algorithm}:{self.step}"

    def preference(self) -> tuple[int, int, int]:
        """Sort key among equivalent candidates: fewer parameters, simpler family, fewer steps."""
        return (self.n_params, _PREFERENCE.index(self.algorithm), self.step)


def check_algorithms(names: Sequence[str]) -> list[str]:
    """The algorithm names, validated against `ALGORITHMS`."""
    out = [n.strip() for n in names if n.strip()]
    bad = [n for n in out if n not in ALGORITHMS]
    if bad or not out:
        raise IclgdError(f"unknown algorithm {bad[0] if bad else '(none)'!r}: use some of "
                         f"{', '.join(ALGORITHMS)}")
    return out


# ----------------------------------------------------------------------------- families
def _w(path: Tensor) -> Tensor:
    """`[k, batch, 1, d]` -> `[k, batch, d]`."""
    return path[:, :, 0, :]


def _family_path(name: str, X: Tensor, Y: Tensor, theta: Tensor, steps: int,
                 sigma_inv: Tensor) -> Tensor:
    """Weights `[steps + 1, batch, d]` of a parametric family at parameters `theta`."""
    if name == "gd":
        return _w(R._gd_path(X, Y, theta[0], steps))
    if name == "pgd":
        return _w(R._gd_path(X, Y, theta[0], steps, sigma_inv))
    if name == "gdpp":
        return _w(R._gdpp_path(X, Y, [theta[0]] * steps, [theta[1]] * steps))
    raise AssertionError(name)


def _spectral(X: Tensor, Y: Tensor, xq: Tensor, name: str, sigma_inv: Tensor) -> tuple:
    """`(s, beta, q, n)`: the three parametric families in the eigenbasis of `S = X^T X`.

    GD, GD++ (shared eta, gamma) and preconditioned GD with `A = eta Sigma^-1` keep every
    quantity a polynomial in `S` (for pgd, after `x <- Sigma^-1/2 x`), so per eigen-direction i
    the weight component is a scalar recursion (`_spectral_preds`); used to fit their
    parameters quickly. Reported numbers come from the reference implementations."""
    if name == "pgd":
        evals, evecs = torch.linalg.eigh(sigma_inv)
        root = evecs @ torch.diag(evals.sqrt()) @ evecs.T
        X, xq = X @ root, xq @ root
    s, V = torch.linalg.eigh(X.transpose(1, 2) @ X)
    beta = torch.einsum("bdi,bd->bi", V, (X.transpose(1, 2) @ Y)[..., 0])
    q = torch.einsum("bdi,bd->bi", V, xq)
    return s, beta, q, X.shape[1]


def _spectral_preds(spec: tuple, eta: Tensor, gamma: Tensor, steps: int) -> Tensor:
    """Query predictions `[..., steps + 1, batch]` for parameters broadcast as `eta[..., 1, 1]`.

    Per eigen-direction (eigenvalue `s_i` of `S`, `beta = V^T X^T y`, `q = V^T x_q`):
    `omega_i += (eta / n) t_i^2 (beta_i - s_i omega_i)`, `t_i <- t_i (1 - gamma t_i^2 s_i)`,
    `t_i = 1` initially (gamma = 0: GD); prediction `sum_i q_i omega_i`."""
    s, beta, q, n = spec
    omega = torch.zeros(torch.broadcast_shapes(eta.shape, s.shape), dtype=s.dtype)
    t2 = torch.ones_like(omega)
    out = [(q * omega).sum(-1)]
    for _ in range(steps):
        omega = omega + (eta / n) * t2 * (beta - s * omega)
        t2 = t2 * (1 - gamma * t2 * s).square()
        out.append((q * omega).sum(-1))
    return torch.stack(out, -2)


def _spectral_jac(spec: tuple, theta: Tensor, steps: int) -> tuple[Tensor, Tensor]:
    """`(prediction at step `steps` [batch], d prediction / d theta [batch, p])` for one
    `theta = (eta[, gamma])`, by differentiating `_spectral_preds`' recursion by hand."""
    s, beta, q, n = spec
    eta = theta[0]
    gamma = theta[1] if len(theta) > 1 else theta.new_zeros(())
    omega, t2 = torch.zeros_like(s), torch.ones_like(s)
    d_eta, d_gam, dt2 = torch.zeros_like(s), torch.zeros_like(s), torch.zeros_like(s)
    for _ in range(steps):
        resid = beta - s * omega
        shrink = 1 - (eta / n) * t2 * s
        d_gam = d_gam * shrink + (eta / n) * resid * dt2
        d_eta = d_eta * shrink + t2 * resid / n
        omega = omega + (eta / n) * t2 * resid
        u = 1 - gamma * t2 * s
        dt2 = dt2 * u.square() + t2 * 2 * u * (-t2 * s - gamma * s * dt2)
        t2 = t2 * u.square()
    cols = [(q * d_eta).sum(-1)] + ([(q * d_gam).sum(-1)] if len(theta) > 1 else [])
    return (q * omega).sum(-1), torch.stack(cols, -1)


def _grid(name: str, spec: tuple) -> Tensor:
    """Starting points `[G, n_params]` scaled to the tasks: GD is stable for
    `eta < 2 n / lambda_max(S)`; GD++'s gamma multiplies the unnormalised `S`."""
    n = spec[3]
    lam = float(spec[0][:, -1].mean()) / n
    mags = torch.logspace(-3, math.log10(4.0), 200, dtype=torch.float64) / lam
    etas = torch.cat([-mags.flip(0), torch.zeros(1, dtype=torch.float64), mags])
    if name != "gdpp":
        return etas[:, None]
    gmag = torch.logspace(-3, 0, 20, dtype=torch.float64) / (n * lam)
    gammas = torch.cat([-gmag.flip(0), torch.zeros(1, dtype=torch.float64), gmag])
    return torch.cartesian_prod(etas[::5], gammas)


def _params(theta: Tensor) -> tuple[Tensor, Tensor]:
    """`(eta, gamma)` broadcastable against `[batch, d]` from `theta [..., p]`."""
    gamma = theta[..., 1] if theta.shape[-1] > 1 else torch.zeros_like(theta[..., 0])
    return theta[..., 0, None, None], gamma[..., None, None]


def _mse(pred: Tensor, target: Tensor) -> Tensor:
    """Mean squared difference over the last axis, non-finite -> inf."""
    err = (pred - target).square().mean(-1)
    return torch.where(torch.isfinite(err), err, torch.full_like(err, math.inf))


def _lm(residual: Callable[[Tensor], tuple[Tensor, Tensor]], theta: Tensor,
        iters: int = 100) -> Tensor:
    """Levenberg-Marquardt on `mean r(theta)^2`, `residual(theta) -> (r [batch], J [batch, p])`
    (float64)."""
    mu = 1e-3
    r, J = residual(theta)
    f = float(r.square().mean())
    for _ in range(iters):
        if not math.isfinite(f) or f < 1e-300:
            break
        JtJ, g = J.T @ J, J.T @ r
        damp = torch.diag(torch.diag(JtJ).clamp_min(1e-300))
        improved = converged = False
        for _ in range(12):
            cand = theta + torch.linalg.lstsq(JtJ + mu * damp, -g[:, None]).solution[:, 0]
            rc, Jc = residual(cand)
            fc = float(rc.square().mean())
            if math.isfinite(fc) and fc < f:
                converged = f - fc <= 1e-14 * f
                theta, r, J, f, improved = cand, rc, Jc, fc, True
                mu = max(mu / 10, 1e-15)
                break
            mu *= 10
        if not improved or converged:
            break
    return theta


def fit_family(
    name: str,
    fit_X: Tensor,
    fit_Y: Tensor,
    fit_xq: Tensor,
    targets: Tensor,
    steps: Sequence[int],
    sigma_inv: Tensor,
) -> dict[int, Tensor]:
    """Per step, the parameters `[n_targets, n_params]` whose query predictions on the fit tasks
    are closest to each row of `targets [n_targets, batch]` (grid, then Levenberg-Marquardt)."""
    spec = _spectral(fit_X, fit_Y, fit_xq, name, sigma_inv)
    grid = _grid(name, spec)
    top = max(steps)
    preds = torch.cat([_spectral_preds(spec, *_params(chunk), top)
                       for chunk in grid.split(64)])  # [G, top + 1, batch]
    out: dict[int, Tensor] = {}
    for k in steps:
        if k == 0:
            out[k] = torch.zeros(len(targets), grid.shape[1], dtype=torch.float64)
            continue
        errs = _mse(preds[:, k][None], targets[:, None])  # [n_targets, G]
        rows = []
        for t, target in enumerate(targets):

            def residual(th: Tensor, k: int = k, target: Tensor = target) -> tuple:
                pred, jac = _spectral_jac(spec, th, k)
                return pred - target, jac

            rows.append(_lm(residual, grid[int(errs[t].argmin())].clone()))
        out[k] = torch.stack(rows)
    return out


_PARAM_NAMES = {"gd": ("eta",), "pgd": ("eta",), "gdpp": ("eta", "gamma")}


def build_iterates(
    algorithms: Sequence[str],
    fit_tasks: tuple[Tensor, Tensor, Tensor],
    probe_tasks: tuple[Tensor, Tensor],
    targets: Tensor,
    *,
    steps: Sequence[int] = DEFAULT_STEPS,
    sigma: Tensor | None = None,
    ridge_scales: Sequence[float] = RIDGE_SCALES,
    newton_alpha_scale: float = 1.0,
    also: tuple[Tensor, Tensor] | None = None,
) -> list[Iterate]:
    """Every candidate iterate, with its weights on the probe tasks.

    `fit_tasks = (X, Y, x_query)` (held-out), `probe_tasks = (X, Y)`, `targets [n_targets,
    batch_fit]`: what the parametric families are fitted to (each layer's predictions for
    "match", the true labels `[1, batch]` for "loss"). `sigma [d, d]`: the inputs' population
    covariance (for `pgd`; identity when None). Parameter-free families get one weight row,
    broadcast over targets. `also = (X, Y)`: the same iterates on other tasks too
    (`Iterate.other_weights`, e.g. the fit tasks for a probe).
    """
    out = _iterates(algorithms, fit_tasks, probe_tasks, targets, steps, sigma, ridge_scales,
                    newton_alpha_scale)
    if also is not None:
        fitted = {it.key: it for it in out}
        others = _iterates(algorithms, fit_tasks, also, targets, steps, sigma, ridge_scales,
                           newton_alpha_scale, fitted)
        for it in others:
            fitted[it.key].other_weights = it.weights
    return out


def _iterates(algorithms, fit_tasks, probe_tasks, targets, steps, sigma, ridge_scales,
              newton_alpha_scale, fitted: dict[str, Iterate] | None = None) -> list[Iterate]:
    fX, fY, fxq = fit_tasks
    pX, pY = probe_tasks
    d = pX.shape[2]
    sigma_inv = torch.linalg.inv(sigma) if sigma is not None else torch.eye(d, dtype=pX.dtype)
    steps = sorted(set(int(s) for s in steps))
    out: list[Iterate] = []
    for name in check_algorithms(algorithms):
        if name in _PARAM_NAMES:
            thetas = None if fitted else fit_family(name, fX, fY, fxq, targets, steps, sigma_inv)
            for k in steps:
                theta = thetas[k] if thetas else torch.tensor(
                    [[p[n] for n in _PARAM_NAMES[name]] for p in fitted[f"{name}:{k}"].params],
                    dtype=torch.float64)
                w = torch.stack([_family_path(name, pX, pY, th, k, sigma_inv)[k] for th in theta])
                params = [dict(zip(_PARAM_NAMES[name], th.tolist(), strict=True)) for th in theta]
                out.append(Iterate(name, k, w, params, 0 if k == 0 else len(_PARAM_NAMES[name])))
        elif name == "newton":
            path = _w(R._newton_path(pX, pY, max(steps), newton_alpha_scale))
            out += [Iterate(name, k, path[k][None]) for k in steps]
        elif name == "ridge":
            scale = float((fX.square().sum((1, 2)) / d).mean())  # fit tasks: one grid
            lams = [c * scale for c in ridge_scales]
            path = _w(R.ridge_path(pX, pY, lams))
            out += [Iterate(name, j, path[j][None], [{"lambda": lam}]) for j, lam in enumerate(lams)]
        else:  # ols
            out.append(Iterate(name, 0, _w(R.least_squares(pX, pY)[None])))
    return out

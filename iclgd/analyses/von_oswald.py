"""Trained vs constructed linear self-attention (von Oswald et al. 2023, "Transformers
learn in-context by gradient descent", and their released code).

`train_lsa` trains a `LinearAttentionTransformer` on the ICL objective (fresh tasks every step,
d = n = 10, x ~ U(-0.5, 0.5), w ~ N(0, I), half-MSE loss at the query) with their settings: Adam
(0.9, 0.98, eps 1e-9), lr 1e-3, batch 2048, global-norm gradient clipping 0.001 (10 for more than 2
layers), init N(0, (0.002 / L) / fan_in), 1 head, key size d + 1, no LayerNorm/bias/MLP/positions.
`tune_gd_eta` picks the K-step GD rate on held-out tasks by their grid ([0.001, 25) step 0.1) and a
finer grid (step 0.001) around the best point; `tune_gdpp` learns (eta_l, gamma_l) per layer by Adam.
`compare` reports, on evaluation tasks, the losses and von Oswald's metrics: sensitivity
`s = d y_hat / d x_q` (autograd); "model cos" = mean cos(s_TF, s_alg); "model diff" = mean
||s_TF - s_alg||; "prediction diff" = mean |y_hat_TF - y_hat_alg|.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import Tensor

from iclgd.constructions.reference import gd_predict, gdpp_forward, half_mse
from iclgd.constructions.von_oswald import von_oswald_tokens
from iclgd.data.regression import RegressionTasks, sample_linear_tasks
from iclgd.errors import IclgdError
from iclgd.hooks.linear_attention import LinearAttentionConfig, LinearAttentionTransformer

Predictor = Callable[[Tensor, Tensor, Tensor], Tensor]


@dataclass
class TrainResult:
    """A trained LSA model, its loss history (`(step, half-MSE)`), wall time and throughput."""

    model: LinearAttentionTransformer
    history: list[tuple[int, float]] = field(default_factory=list)
    wall_s: float = 0.0
    steps: int = 0

    @property
    def steps_per_s(self) -> float:
        return self.steps / self.wall_s if self.wall_s > 0 else float("nan")


def lsa_predict(model: LinearAttentionTransformer, X: Tensor, Y: Tensor, x_query: Tensor) -> Tensor:
    """`y_hat [batch, d_out] = -` (query y-slot) of `model` on von Oswald's constructed tokens."""
    dt = model.cfg.dtype
    tokens = von_oswald_tokens(X.to(dt), Y.to(dt), x_query.to(dt))
    return -model(tokens, n_context=X.shape[1])[:, -1, X.shape[2] :]


def _fast_ok(cfg: LinearAttentionConfig) -> bool:
    return (
        cfg.attention == "linear" and not cfg.causal and not cfg.include_query and not cfg.mlp
        and not cfg.layer_norm and not cfg.normalize_by_keys and cfg.attn_scale == 1.0
    )  # fmt: skip


def lsa_fast_predict(
    model: LinearAttentionTransformer, X: Tensor, Y: Tensor, x_query: Tensor
) -> Tensor:
    """Same `y_hat` as `lsa_predict`, computed for training speed (hooks are not run).

    Uses associativity of linear attention: a layer maps every row `e_j` to
    `e_j + e_j sum_h W_Q[h] W_K[h]^T C W_V[h] W_O[h]` with `C = sum_{i <= n} e_i^T e_i` (context
    only), so the weights act through large matmuls; the last layer is evaluated at the query only.
    Falls back to `lsa_predict` for configurations it does not cover (softmax, MLP, causal, ...).
    """
    if not _fast_ok(model.cfg):
        return lsa_predict(model, X, Y, x_query)
    dt = model.cfg.dtype
    E = von_oswald_tokens(X.to(dt), Y.to(dt), x_query.to(dt))
    n, d, last = X.shape[1], X.shape[2], len(model.blocks) - 1
    for layer, block in enumerate(model.blocks):
        a = block.attn
        ctx = E[:, :n]
        C = ctx.transpose(1, 2) @ ctx  # [batch, m, m]
        M = 0
        for h in range(model.cfg.n_heads):
            A = a.W_Q[h] @ a.W_K[h].T  # [m, m]
            B = a.W_V[h] @ a.W_O[h]  # [m, m]
            M = M + torch.matmul(A, C @ B)  # broadcast A over the batch
        if layer == last:
            q = E[:, -1]
            return -(q + (q[:, :, None] * M).sum(1))[:, d:]
        E = E + E @ M
    raise AssertionError("unreachable")


def lsa_config(
    d: int, layers: int, *, shared: bool, dtype: torch.dtype = torch.float32
) -> LinearAttentionConfig:
    """von Oswald's LSA: d_model = key size = d + 1, 1 head, projection on, init scale 0.002 / L."""
    return LinearAttentionConfig(
        d_model=d + 1, n_layers=layers, n_heads=1, d_head=d + 1, shared_weights=shared,
        include_query=False, init_scale=0.002 / layers, dtype=dtype,
    )  # fmt: skip


def train_lsa(
    *,
    layers: int = 1,
    steps: int = 5000,
    batch: int = 2048,
    lr: float = 1e-3,
    d: int = 10,
    n: int = 10,
    shared: bool = True,
    clip: float | None = None,
    seed: int = 0,
    device: str = "cpu",
    log_every: int = 100,
    progress: bool = True,
    fast: bool = True,
) -> TrainResult:
    """Train an LSA model on fresh tasks every step (settings in the module docstring), float32.

    `fast` uses `lsa_fast_predict` (same maths, no hooks); `fast=False` runs the hooked forward.
    """
    for name, v in (("layers", layers), ("steps", steps), ("batch", batch), ("d", d), ("n", n)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise IclgdError(f"{name} must be an integer >= 1, got {v!r}")
    if not math.isfinite(lr) or lr <= 0:
        raise IclgdError(f"lr must be a finite number > 0, got {lr}")
    clip = (10.0 if layers > 2 else 0.001) if clip is None else clip
    torch.manual_seed(seed)
    model = LinearAttentionTransformer(lsa_config(d, layers, shared=shared), seed=seed).to(device)
    opt = torch.optim.Adam(model.parameters(), lr=lr, betas=(0.9, 0.98), eps=1e-9)
    gen = torch.Generator(device=device).manual_seed(seed + 1)
    result = TrainResult(model=model, steps=steps)
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=steps, desc=f"train LSA L={layers}", leave=False)
    start = time.perf_counter()
    for step in range(steps):
        t = sample_linear_tasks(batch, n, d, generator=gen, dtype=torch.float32, device=device)
        pred = (lsa_fast_predict if fast else lsa_predict)(model, t.X, t.Y, t.x_query)
        loss = 0.5 * ((pred - t.y_query) ** 2).sum(-1).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
        opt.step()
        if step % log_every == 0 or step == steps - 1:
            value = float(loss.detach())
            result.history.append((step, value))
            if bar is not None:
                bar.set_postfix(loss=f"{value:.4f}")
        if bar is not None:
            bar.update(1)
    result.wall_s = time.perf_counter() - start
    if bar is not None:
        bar.close()
    return result


def tune_gd_eta(tasks: RegressionTasks, *, steps: int = 1) -> tuple[float, float]:
    """K-step GD rate minimising the half-MSE on `tasks`: their grid, then a step-0.001 refinement.

    Returns `(eta, loss)`.
    """

    def loss(eta: float) -> float:
        return half_mse(
            gd_predict(tasks.X, tasks.Y, tasks.x_query, eta=eta, steps=steps), tasks.y_query
        )

    grid = [0.001 + 0.1 * i for i in range(250)]
    losses = [loss(e) for e in grid]
    best = min(range(len(grid)), key=lambda i: losses[i] if math.isfinite(losses[i]) else math.inf)
    fine = [grid[best] + 0.001 * k for k in range(-100, 101) if grid[best] + 0.001 * k > 0]
    fine_losses = [loss(e) for e in fine]
    j = min(
        range(len(fine)),
        key=lambda i: fine_losses[i] if math.isfinite(fine_losses[i]) else math.inf,
    )
    return fine[j], fine_losses[j]


def gdpp_predict_tensors(
    X: Tensor, Y: Tensor, x_query: Tensor, etas: Tensor, gammas: Tensor
) -> Tensor:
    """Differentiable GD++ (`reference.gdpp_forward`) with tensor `etas`, `gammas` per layer."""
    return gdpp_forward(X, Y, x_query, list(etas), list(gammas))


def tune_gdpp(
    *, layers: int, d: int = 10, n: int = 10, eta0: float = 1.0, steps: int = 1000,
    batch: int = 512, lr: float = 1e-2, seed: int = 0,
) -> tuple[list[float], list[float]]:  # fmt: skip
    """Learn GD++'s (eta_l, gamma_l) by Adam on fresh tasks (half MSE), from eta = eta0, gamma = 0.

    von Oswald et al. use Adam 1e-3 with batch 512; lr 1e-2 converges in fewer steps on 2L scalars.
    """
    gen = torch.Generator().manual_seed(seed + 7)
    etas = torch.full((layers,), float(eta0), dtype=torch.float64, requires_grad=True)
    gammas = torch.zeros(layers, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.Adam([etas, gammas], lr=lr)
    for _ in range(steps):
        t = sample_linear_tasks(batch, n, d, generator=gen)
        loss = (
            0.5
            * ((gdpp_predict_tensors(t.X, t.Y, t.x_query, etas, gammas) - t.y_query) ** 2).mean()
        )
        opt.zero_grad()
        loss.backward()
        opt.step()
    return etas.detach().tolist(), gammas.detach().tolist()


def sensitivities(predictor: Predictor, tasks: RegressionTasks) -> tuple[Tensor, Tensor]:
    """`(y_hat [batch], s [batch, d])` with `s = d y_hat / d x_q` per task (d_out = 1), by autograd."""
    with torch.enable_grad():
        xq = tasks.x_query.detach().clone().requires_grad_(True)
        pred = predictor(tasks.X, tasks.Y, xq)[:, 0]
        (grad,) = torch.autograd.grad(pred.sum(), xq)
    return pred.detach(), grad.detach()


def compare(a: Predictor, b: Predictor, tasks: RegressionTasks) -> dict[str, float]:
    """von Oswald's agreement metrics of predictor `a` against `b` (float64 recommended), with
    `model_cos_se`, the standard error of the mean cosine over tasks."""
    ya, sa = sensitivities(a, tasks)
    yb, sb = sensitivities(b, tasks)
    cos = torch.nn.functional.cosine_similarity(sa, sb, dim=-1)
    return {
        "model_cos": float(cos.mean()),
        "model_cos_se": float(cos.std() / cos.numel() ** 0.5) if cos.numel() > 1 else float("nan"),
        "model_diff": float((sa - sb).norm(dim=-1).mean()),
        "pred_diff": float((ya - yb).abs().mean()),
    }


def as_float64(model: LinearAttentionTransformer) -> LinearAttentionTransformer:
    """A float64 CPU copy of `model` (same weights) for evaluation."""
    cfg = LinearAttentionConfig(**{**model.cfg.__dict__, "dtype": torch.float64})
    copy = LinearAttentionTransformer(cfg)
    copy.load_state_dict(
        {k: v.detach().to("cpu", torch.float64) for k, v in model.state_dict().items()}
    )
    return copy


def interpolate_with_gd(
    model: LinearAttentionTransformer, *, d: int, n: int, eta: float, alpha: float = 0.5
) -> LinearAttentionTransformer:
    """Shared/one-layer model with merged matrices `(1 - alpha) trained + alpha construction`.

    Scale fixed first: the trained `W_K^T W_Q` is divided by the mean of its x-block diagonal `c`
    and `P W_V` multiplied by `c` (the layer only depends on their product), so both match the
    construction's `[[I, 0], [0, 0]]` normalisation. Every layer uses layer 0's weights.
    """
    m = d + 1
    qk, ov = model.merged_qk(0).detach().double().cpu(), model.merged_ov(0).detach().double().cpu()
    c = float(torch.diagonal(qk[:d, :d]).mean())
    qk, ov = qk / c, ov * c
    qk_c = torch.zeros(m, m, dtype=torch.float64)
    qk_c[:d, :d] = torch.eye(d, dtype=torch.float64)
    ov_c = torch.zeros(m, m, dtype=torch.float64)
    ov_c[d, d] = -eta / n
    cfg = lsa_config(d, model.cfg.n_layers, shared=True, dtype=torch.float64)
    out = LinearAttentionTransformer(cfg)
    out.set_layer_weights(
        0,
        W_K=torch.eye(m, dtype=torch.float64),
        W_Q=(1 - alpha) * qk + alpha * qk_c,
        W_V=(1 - alpha) * ov + alpha * ov_c,
        P=torch.eye(m, dtype=torch.float64),
    )
    return out


def gd_merged(d: int, n: int, eta: float) -> tuple[Tensor, Tensor]:
    """The GD construction's merged `W_K^T W_Q` and `P W_V` (column form, `[d + 1, d + 1]`)."""
    m = d + 1
    qk = torch.zeros(m, m, dtype=torch.float64)
    qk[:d, :d] = torch.eye(d, dtype=torch.float64)
    ov = torch.zeros(m, m, dtype=torch.float64)
    ov[d, d] = -eta / n
    return qk, ov


def reproduce(
    *,
    layers: int = 1,
    steps: int = 5000,
    batch: int = 2048,
    lr: float = 1e-3,
    seed: int = 0,
    device: str = "cpu",
    shared: bool = True,
    eval_tasks: int = 10_000,
    gdpp_steps: int = 1000,
    d: int = 10,
    n: int = 10,
    progress: bool = True,
) -> tuple[dict, TrainResult]:
    """Train an LSA, tune GD (and GD++ when layers > 1) on held-out tasks, compare on eval tasks.

    Returns `(summary, train_result)`; the summary holds `tf_loss`, `gd_loss`, `gdpp_loss`,
    `eta` (+ `gdpp_etas`, `gdpp_gammas`), `vs_gd` / `vs_gdpp` (model_cos, model_diff, pred_diff),
    `interpolation` (losses of trained, GD construction, and their average), wall time, steps/s.
    All losses are half MSE on `eval_tasks` tasks (float64 evaluation of the float32 model).
    """
    result = train_lsa(
        layers=layers, steps=steps, batch=batch, lr=lr, d=d, n=n, shared=shared, seed=seed,
        device=device, progress=progress,
    )  # fmt: skip
    held = sample_linear_tasks(
        eval_tasks, n, d, generator=torch.Generator().manual_seed(seed + 1000)
    )
    ev = sample_linear_tasks(eval_tasks, n, d, generator=torch.Generator().manual_seed(seed + 2000))
    eta, _ = tune_gd_eta(held, steps=layers)
    model64 = as_float64(result.model)

    def tf(X: Tensor, Y: Tensor, xq: Tensor) -> Tensor:
        return lsa_predict(model64, X, Y, xq)

    def gd(X: Tensor, Y: Tensor, xq: Tensor) -> Tensor:
        return gd_predict(X, Y, xq, eta=eta, steps=layers)

    with torch.no_grad():
        tf_loss = half_mse(tf(ev.X, ev.Y, ev.x_query), ev.y_query)
        gd_loss = half_mse(gd(ev.X, ev.Y, ev.x_query), ev.y_query)
    summary: dict = {
        "layers": layers, "shared_weights": shared, "steps": steps, "batch": batch, "lr": lr,
        "d": d, "n": n, "eval_tasks": eval_tasks, "loss_convention": "half_mse",
        "eta_search": "grid [0.001, 25) step 0.1 then step 0.001 around the best, held-out tasks",
        "tf_loss": tf_loss, "gd_loss": gd_loss, "eta": eta,
        "zero_loss": half_mse(torch.zeros_like(ev.y_query), ev.y_query),
        "vs_gd": compare(tf, gd, ev),
        "train_wall_s": result.wall_s, "steps_per_s": result.steps_per_s,
        "final_train_loss": result.history[-1][1],
    }  # fmt: skip
    if layers > 1:
        etas, gammas = tune_gdpp(layers=layers, d=d, n=n, eta0=eta, steps=gdpp_steps, seed=seed)
        et, gt = torch.tensor(etas, dtype=torch.float64), torch.tensor(gammas, dtype=torch.float64)

        def gdpp(X: Tensor, Y: Tensor, xq: Tensor) -> Tensor:
            return gdpp_predict_tensors(X, Y, xq, et, gt)

        with torch.no_grad():
            summary["gdpp_loss"] = half_mse(gdpp(ev.X, ev.Y, ev.x_query), ev.y_query)
        summary.update({"gdpp_etas": etas, "gdpp_gammas": gammas, "vs_gdpp": compare(tf, gdpp, ev)})
    interp = interpolate_with_gd(result.model, d=d, n=n, eta=eta) if layers == 1 else None
    if interp is not None:
        with torch.no_grad():
            summary["interpolation"] = {
                "alpha": 0.5,
                "loss_trained": tf_loss,
                "loss_construction": gd_loss,
                "loss_interpolated": half_mse(
                    lsa_predict(interp, ev.X, ev.Y, ev.x_query), ev.y_query
                ),
            }
    else:
        summary["interpolation"] = None
    return summary, result

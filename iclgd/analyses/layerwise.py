"""Layer by layer: which iterate of which learning algorithm does each layer of an ICL model match?

The claims are layer-wise: von Oswald et al. (2023) say each linear self-attention layer takes one
GD (or GD++) step; Akyürek et al. (2023, §4) probe hidden states for the weights of least squares,
ridge or GD; Fu, Chen, Jia, Sharan (2024) find successive GPT-2 layers match iterative Newton
rather than GD. `layerwise_probe(subject)` compares every layer of a model trained on the ICL
objective with every iterate of the reference algorithms (`iclgd.analyses.layerwise_algorithms`)
on the same regression tasks, in float64.

Per layer l (after block l, l = 1..L) the subject gives its prediction for the query
(`LSASubject`: the negated y-slot of the query token, von Oswald's read-out; `GargSubject`: the
model's own read-out head after the final LayerNorm applied to each layer's residual stream at
the query token, as Fu et al., or a linear probe fitted on held-out tasks), its sensitivity
`s_l = d y_hat_l / d x_q` (autograd; for linear self-attention the prediction is linear in `x_q`,
so `s_l` is the layer's exact implied weight vector) and, for GPT-2, the hidden state at the query
token. For every candidate iterate `w_A` (weights; prediction `w_A . x_q`), on probe tasks disjoint
from the fit tasks:

- `error` = `E[(y_hat_l - y_hat_A)^2]` (Akyürek et al.'s squared prediction difference; plain
  mean squared difference, no 1/2, no 1/d), `pred_diff` = `E|y_hat_l - y_hat_A|` (von Oswald);
- `sens_cos` = `E cos(s_l, w_A)` and `sens_diff` = `E ||s_l - w_A||` (von Oswald's model cos /
  model diff);
- `probe_error` (hidden-state subjects): Akyürek et al.'s probe, a ridge map from the query
  token's hidden state to `w_A` fitted on the fit tasks, scored on the probe tasks as
  `E||P h - w_A||^2 / E||w_A - E w_A||^2` (1 - R^2; 0 = the weights are linearly decodable);
- `loss_model`, `loss_alg`: squared error of each against the true label.

`best`: per layer the candidate with the smallest `error`. Candidates whose predictions equal the
best one's (mean squared difference <= 1e-8 of its mean square) are `equivalent` (e.g. one GD++
step is one GD step; `pgd` is `gd` on isotropic inputs); among them the one with the fewest free
parameters, then the simpler family, then the fewer steps is reported. `margin` = the error of
the best non-equivalent candidate of another algorithm (`runner_up`) minus the best error;
`step_margin` the same against the best algorithm's nearest other non-equivalent step;
`by_algorithm` each algorithm's closest iterate and its error. Families nest (GD++ with gamma = 0
is GD; many GD++ steps can emulate one GD step by shrinking the inputs), so a small margin over a
richer family says the richer family can imitate the best match, not that the layer is ambiguous.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from iclgd.analyses.layerwise_algorithms import (
    ALGORITHMS,
    DEFAULT_STEPS,
    FITS,
    Iterate,
    build_iterates,
)
from iclgd.data.regression import RegressionTasks, sample_linear_tasks
from iclgd.errors import IclgdError

EQUIVALENT_TOL = 1e-8
PROBE_RIDGE = 1e-3


@dataclass
class LayerReadout:
    """Per-layer outputs on a batch of tasks: `preds [L, batch]`, `sens [L, batch, d]` or None,
    `hidden [L, batch, h]` or None (float64)."""

    preds: Tensor
    sens: Tensor | None = None
    hidden: Tensor | None = None


# ----------------------------------------------------------------------------- subjects
class LSASubject:
    """A `LinearAttentionTransformer` (trained LSA or a construction's model) on regression tasks.

    `tokens_fn(X, Y, x_query) -> (tokens, forward kwargs)` and `readout_fn(resid) -> y_hat
    [batch, 1]` default to von Oswald's constructed tokens and negated query y-slot.
    """

    kind = "lsa"
    readout = "query y-slot (negated), von Oswald et al."

    def __init__(self, model: Any, *, name: str, d: int, n: int, x_dist: str = "uniform",
                 tokens_fn: Callable | None = None, readout_fn: Callable | None = None) -> None:
        from iclgd.constructions.von_oswald import von_oswald_tokens

        self.model, self.name, self.d, self.n, self.x_dist = model, name, d, n, x_dist
        self.n_layers = int(model.cfg.n_layers)
        self.tokens_fn = tokens_fn or (lambda X, Y, xq: (von_oswald_tokens(X, Y, xq),
                                                         {"n_context": X.shape[1]}))
        self.readout_fn = readout_fn or (lambda resid: -resid[:, -1, d:])

    def layer_predictions(self, X: Tensor, Y: Tensor, xq: Tensor) -> list[Tensor]:
        """`[batch]` prediction after each block (differentiable in the inputs)."""
        dt = self.model.cfg.dtype
        tokens, kwargs = self.tokens_fn(X.to(dt), Y.to(dt), xq.to(dt))
        allowed = self.model.key_mask(tokens.shape[0], tokens.shape[1], **kwargs)
        resid, out = tokens, []
        for block in self.model.blocks:
            resid = block(resid, allowed)
            out.append(self.readout_fn(resid)[:, 0].double())
        return out

    def __call__(self, tasks: RegressionTasks, *, sens: bool) -> LayerReadout:
        return _readout_with_sens(self.layer_predictions, tasks, sens, None)


def construction_subject(construction: Any, *, x_dist: str = "uniform") -> LSASubject:
    """An `LSASubject` for a `Construction` (its own tokens and read-out)."""
    p = construction.params
    return LSASubject(construction.model, name=construction.name, d=int(p["d"]),
                      n=int(construction.n or p["n"]), x_dist=x_dist,
                      tokens_fn=construction.tokens_fn, readout_fn=construction.readout_fn)


class GargSubject:
    """A Garg et al. (2022) GPT-2 regression model (`GargRegressionModel`), run in float64.

    Context of `n` points (default `n_points - 1`) then the query; the query is read at its x
    token (position 2n). `readout="head"`: `read_out(ln_f(h_l))` for every layer's residual
    stream `h_l` (Fu et al.; the last layer is the model's own output); `"probe"`: a ridge map
    from `h_l` to the true label fitted on the fit tasks (set by `layerwise_probe`).
    """

    kind = "garg"

    def __init__(self, model: Any, *, name: str, n: int | None = None,
                 readout: str = "head") -> None:
        if readout not in ("head", "probe"):
            raise IclgdError(f"readout must be 'head' or 'probe', got {readout!r}")
        self.model = copy.deepcopy(model).double().eval()
        self.name, self.d, self.x_dist = name, int(model.n_dims), "gaussian"
        self.n = int(model.n_points) - 1 if n is None else int(n)
        if not 1 <= self.n <= int(model.n_points) - 1:
            raise IclgdError(f"n must be in [1, {int(model.n_points) - 1}] for this model, "
                             f"got {self.n}")
        self.n_layers = len(self.model.backbone.h)
        self.readout = ("read-out head after ln_f on each layer's residual stream (Fu et al.)"
                        if readout == "head" else "linear probe to the label, fitted on held-out"
                        " tasks")
        self.readout_kind = readout
        self.probe: list[Tensor] | None = None

    def hidden_states(self, X: Tensor, Y: Tensor, xq: Tensor) -> list[Tensor]:
        """The residual stream after each block at the query token, `[batch, d_model]` each."""
        from iclgd.data.curriculum import interleave

        xs = torch.cat([X, xq[:, None]], 1)
        ys = torch.cat([Y[..., 0], torch.zeros_like(Y[:, :1, 0])], 1)
        got: list[Tensor] = []

        def hook(_mod, _args, output):
            got.append((output[0] if isinstance(output, tuple) else output)[:, 2 * X.shape[1]])

        handles = [b.register_forward_hook(hook) for b in self.model.backbone.h]
        try:
            self.model.backbone(inputs_embeds=self.model.read_in(interleave(xs, ys)))
        finally:
            for h in handles:
                h.remove()
        return got

    def fit_probe(self, tasks: RegressionTasks) -> None:
        """Fit the probe read-out: per layer a ridge map from `h_l` to the true label."""
        with torch.no_grad():
            hs = self.hidden_states(tasks.X, tasks.Y, tasks.x_query)
        self.probe = [ridge_probe(h, tasks.y_query[:, 0]) for h in hs]

    def head(self, h: Tensor, layer: int) -> Tensor:
        """The layer's prediction from its hidden state `[batch, d_model]`."""
        if self.readout_kind == "probe":
            if self.probe is None:
                raise IclgdError("fit the probe read-out first: subject.fit_probe(tasks)")
            return _features(h) @ self.probe[layer]
        return self.model.read_out(self.model.backbone.ln_f(h))[:, 0]

    def __call__(self, tasks: RegressionTasks, *, sens: bool) -> LayerReadout:
        hidden: list[Tensor] = []

        def preds(X: Tensor, Y: Tensor, xq: Tensor) -> list[Tensor]:
            hs = self.hidden_states(X, Y, xq)
            hidden.append(torch.stack([h.detach() for h in hs]))
            return [self.head(h, layer) for layer, h in enumerate(hs)]

        return _readout_with_sens(preds, tasks, sens, hidden)


def _readout_with_sens(fn: Callable, tasks: RegressionTasks, sens: bool,
                       hidden: list[Tensor] | None, chunk: int = 500) -> LayerReadout:
    """Run `fn(X, Y, xq) -> [L x batch]` in chunks; sensitivities by autograd when `sens`."""
    preds, grads = [], []
    for lo in range(0, tasks.batch, chunk):
        X, Y = tasks.X[lo:lo + chunk], tasks.Y[lo:lo + chunk]
        xq = tasks.x_query[lo:lo + chunk].clone().requires_grad_(sens)
        with torch.enable_grad() if sens else torch.no_grad():
            out = fn(X, Y, xq)
            if sens:
                grads.append(torch.stack([
                    torch.autograd.grad(p.sum(), xq, retain_graph=True)[0] for p in out]))
        preds.append(torch.stack([p.detach() for p in out]))
    return LayerReadout(
        torch.cat(preds, 1),
        torch.cat(grads, 1).double() if sens else None,
        torch.cat(hidden, 1).double() if hidden else None,
    )


# ----------------------------------------------------------------------------- probes
def _features(h: Tensor) -> Tensor:
    return torch.cat([h, torch.ones_like(h[:, :1])], -1)


def ridge_probe(H: Tensor, T: Tensor, alpha: float = PROBE_RIDGE) -> Tensor:
    """Ridge coefficients `[h + 1, ...]` mapping features `[H, 1]` to targets `T [batch, ...]`;
    the penalty is `alpha` times the mean feature variance (bias unpenalised)."""
    F = _features(H)
    reg = alpha * float(H.var(0).mean()) * torch.eye(F.shape[1], dtype=F.dtype)
    reg[-1, -1] = 0
    return torch.linalg.solve(F.T @ F + reg, F.T @ T.reshape(T.shape[0], -1)).reshape(
        F.shape[1], *T.shape[1:])


def probe_error(fit_h: Tensor, fit_w: Tensor, h: Tensor, w: Tensor) -> float:
    """Akyürek et al.'s weight probe, `1 - R^2` on held-out tasks (module docstring)."""
    coef = ridge_probe(fit_h, fit_w)
    pred = _features(h) @ coef
    return float((pred - w).square().sum(-1).mean() / (w - w.mean(0)).square().sum(-1).mean())


# ----------------------------------------------------------------------------- the probe
@dataclass
class Settings:
    """How a layer-wise probe was run (recorded in the results)."""

    algorithms: tuple[str, ...] = ALGORITHMS
    fit: str = "match"
    n_tasks: int = 2000
    n_fit_tasks: int = 2000
    steps: tuple[int, ...] = DEFAULT_STEPS
    seed: int = 0
    newton_alpha_scale: float = 1.0
    extra: dict[str, Any] = field(default_factory=dict)


def sample_tasks(subject: Any, n_tasks: int, seed: int,
                 input_transform: Tensor | None = None) -> RegressionTasks:
    """Noiseless tasks of the subject's distribution (float64), inputs `x <- T x` when given."""
    t = sample_linear_tasks(n_tasks, subject.n, subject.d, x_dist=subject.x_dist,
                            generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    if input_transform is None:
        return t
    T = input_transform.to(torch.float64)
    X, xq = t.X @ T.T, t.x_query @ T.T
    Y = torch.einsum("bod,bnd->bno", t.W, X)
    return RegressionTasks(X, Y, xq, torch.einsum("bod,bd->bo", t.W, xq), t.W)


def input_covariance(x_dist: str, d: int, input_transform: Tensor | None = None) -> Tensor:
    """Population covariance of the inputs: `I/12` (U(-0.5, 0.5)) or `I` (Gaussian), `T C T^T`."""
    cov = torch.eye(d, dtype=torch.float64) / (12.0 if x_dist == "uniform" else 1.0)
    if input_transform is None:
        return cov
    T = input_transform.to(torch.float64)
    return T @ cov @ T.T


def _layer_metrics(layer: int, it: Iterate, out: LayerReadout,
                   tasks: RegressionTasks) -> dict[str, Any]:
    w = it.weights[min(layer, len(it.weights) - 1)]
    y_alg = (w * tasks.x_query).sum(-1)
    y_mod, y = out.preds[layer], tasks.y_query[:, 0]
    row = {
        "layer": layer + 1, "algorithm": it.algorithm, "step": it.step,
        "error": float((y_mod - y_alg).square().mean()),
        "pred_diff": float((y_mod - y_alg).abs().mean()),
        "loss_model": float((y_mod - y).square().mean()),
        "loss_alg": float((y_alg - y).square().mean()),
        "n_params": it.n_params,
        "params": it.params[min(layer, len(it.params) - 1)] if it.params else {},
    }
    if out.sens is not None:
        s = out.sens[layer]
        row["sens_cos"] = float(torch.nn.functional.cosine_similarity(s, w, dim=-1).mean())
        row["sens_diff"] = float((s - w).norm(dim=-1).mean())
    return row


def best_matches(rows: Sequence[dict[str, Any]], preds: dict[tuple[int, str], Tensor],
                 prefs: dict[str, tuple]) -> list[dict[str, Any]]:
    """Per layer, the best candidate, its equivalents, runner-up and margins (module docstring).

    `preds[(layer, key)]` holds each candidate's probe-task predictions; `prefs[key]` its
    tie-break key (`Iterate.preference`)."""
    out = []
    for layer in sorted({r["layer"] for r in rows}):
        cands = sorted((r for r in rows if r["layer"] == layer), key=lambda r: r["error"])
        top = preds[(layer, _key(cands[0]))]
        scale = float(top.square().mean())
        same = [r for r in cands
                if float((preds[(layer, _key(r))] - top).square().mean()) <= EQUIVALENT_TOL * scale]
        best = min(same, key=lambda r: prefs[_key(r)])
        keys = {_key(r) for r in same}
        others = [r for r in cands if _key(r) not in keys]
        rival = next((r for r in others if r["algorithm"] != best["algorithm"]), None)
        step_rival = next((r for r in others if r["algorithm"] == best["algorithm"]), None)
        out.append({
            "layer": layer, "algorithm": best["algorithm"], "step": best["step"],
            "error": best["error"],
            "margin": rival["error"] - best["error"] if rival else float("nan"),
            "runner_up": _key(rival) if rival else None,
            "runner_up_error": rival["error"] if rival else float("nan"),
            "step_margin": step_rival["error"] - best["error"] if step_rival else float("nan"),
            "equivalent": sorted(keys - {_key(best)}),
            "by_algorithm": {r["algorithm"]: {"step": r["step"], "error": r["error"]}
                             for r in reversed(cands)},
            "sens_cos": best.get("sens_cos", float("nan")),
            "params": best["params"],
        })
    return out


def _key(row: dict[str, Any]) -> str:
    return f"{row['algorithm']}:{row['step']}"


def layerwise_probe(
    subject: Any,
    *,
    algorithms: Sequence[str] = ALGORITHMS,
    fit: str = "match",
    n_tasks: int = 2000,
    n_fit_tasks: int = 2000,
    steps: Sequence[int] = DEFAULT_STEPS,
    seed: int = 0,
    input_transform: Tensor | None = None,
    newton_alpha_scale: float = 1.0,
    provenance: dict[str, Any] | None = None,
) -> Any:
    """Compare every layer of `subject` with every algorithm iterate (module docstring).

    Fit tasks (seed `seed`) choose the hyperparameters (`fit`: "match" or "loss",
    `iclgd.analyses.layerwise_algorithms`) and the probes; probe tasks (seed `seed + 1`) are
    where every reported number is measured. Returns a `LayerwiseResult`.
    """
    from iclgd.analyses.layerwise_results import LayerwiseResult

    if fit not in FITS:
        raise IclgdError(f"fit must be one of {FITS}, got {fit!r}")
    if n_tasks < 2 or n_fit_tasks < 2:
        raise IclgdError("need at least 2 probe tasks and 2 fit tasks")
    fit_t = sample_tasks(subject, n_fit_tasks, seed, input_transform)
    probe_t = sample_tasks(subject, n_tasks, seed + 1, input_transform)
    if getattr(subject, "readout_kind", "head") == "probe":
        subject.fit_probe(fit_t)
    fit_out = subject(fit_t, sens=False)
    out = subject(probe_t, sens=True)
    targets = fit_out.preds if fit == "match" else fit_t.y_query[:, 0][None]
    sigma = input_covariance(subject.x_dist, subject.d, input_transform)
    iterates = build_iterates(
        algorithms, (fit_t.X, fit_t.Y, fit_t.x_query), (probe_t.X, probe_t.Y), targets,
        steps=steps, sigma=sigma, newton_alpha_scale=newton_alpha_scale,
        also=(fit_t.X, fit_t.Y) if out.hidden is not None else None)
    rows, preds = [], {}
    for layer in range(subject.n_layers):
        for it in iterates:
            row = _layer_metrics(layer, it, out, probe_t)
            w = it.weights[min(layer, len(it.weights) - 1)]
            if it.other_weights is not None:
                fw = it.other_weights[min(layer, len(it.other_weights) - 1)]
                row["probe_error"] = probe_error(fit_out.hidden[layer], fw, out.hidden[layer], w)
            rows.append(row)
            preds[(layer + 1, it.key)] = (w * probe_t.x_query).sum(-1)
    prefs = {it.key: it.preference() for it in iterates}
    best = best_matches(rows, preds, prefs)
    settings = Settings(tuple(algorithms), fit, n_tasks, n_fit_tasks, tuple(sorted(set(steps))),
                        seed, newton_alpha_scale)
    info = {"model": subject.name, "kind": subject.kind, "readout": subject.readout,
            "n_layers": subject.n_layers, "d": subject.d, "n_context": subject.n,
            "x_dist": subject.x_dist, "input_transform": input_transform,
            "loss_convention": "error = mean squared prediction difference (no 1/2, no 1/d)",
            "fit_tasks_seed": seed, "probe_tasks_seed": seed + 1,
            "model_loss_by_layer": [float((p - probe_t.y_query[:, 0]).square().mean())
                                    for p in out.preds]}
    return LayerwiseResult(rows=[{"model": subject.name, **r} for r in rows], best=best,
                           settings={**settings.__dict__, **info}, provenance=provenance or {})

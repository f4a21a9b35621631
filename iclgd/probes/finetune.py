"""Finetuning baselines for ICL-vs-GD probes (the "FT" side of Dai et al. 2023, §3; Deutch et
al. 2024, §4; Shen et al. 2024, §3), never in place.

`finetune(model, demos, method="gd")` trains a functional copy of the weights of a
TransformerBridge's Hugging Face module (`iclgd.hooks.hf_module`) with
`torch.func.functional_call` and returns the update as a `WeightDelta` (HF-named
`{param_name: W_after − W_before}` over the parameters it trained, plus the settings and the loss
of every step). The caller's model is never modified; run the finetuned model with
`iclgd.hooks.finetuned(model, delta)`.

`finetune_batched(model, demos_batch, ...)` trains many tasks (or orderings, or seeds) at once:
the trained parameters are stacked along a task axis and every step is one
`vmap(grad_and_value(loss))` call instead of a Python loop over model copies. It gives the same
deltas as looping `finetune` (to float rounding). The HF models loaded by iclgd use eager
attention; PyTorch's SDPA attention under vmap falls back to a slow path on CPU.

Methods, parameter sets and optimisers: see `iclgd.probes.finetune_methods` (gd, sgd, adam,
kv, layer-causal, wv-layer). Conventions:
- loss = mean next-token cross-entropy over the target tokens of the step's batch (token `t`
  predicted from position `t − 1`); `loss_on="label"` targets the answer tokens, `"all"` every
  token of each demonstration but its first; `layer-causal` sums that loss over layers;
- each demonstration is its own sequence (right-padded; padding is never a target and, with
  causal attention, never changes a real position);
- batches are consecutive demonstrations in prompt order (`batch_size`, last batch may be
  smaller); full-batch methods take all demonstrations in one step per epoch;
- a single run (`finetune`) applies each tensor's update inside the backward pass as soon as
  its gradient is complete, then frees that gradient, so the model's full gradient is never
  held at once; a batched run steps after its `vmap(grad)` call;
- SGD: `W ← W − lr · g`; Adam: torch.optim.Adam's defaults (β = 0.9, 0.999, ε = 1e-8, bias
  corrected, no weight decay); fused q/k/v tensors are trained through a gradient mask, so the
  untrained rows of a `WeightDelta` are exactly zero;
- a bfloat16/float16 model is finetuned in mixed precision (Micikevicius et al. 2018, "Mixed
  precision training"): float32 master copies of the trained tensors take the updates (and hold
  Adam's moments), the forward pass casts them to the model's dtype, the loss is computed in
  float32; the `WeightDelta` is float32.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn
from torch.func import grad_and_value, vmap
from torch.optim.adam import adam

from iclgd.data.tasks import TokenizedDemos, stack_demos
from iclgd.errors import IclgdError
from iclgd.hooks.precision import wide_dtype, widen
from iclgd.hooks.weights import hf_module
from iclgd.probes.finetune_methods import (
    MethodSpec,
    layer_causal_hooks,
    make_loss,
    method_spec,
    trainable_parameters,
)

_BETAS, _EPS = (0.9, 0.999), 1e-8
_FUSED_ADAM_DEVICES = ("cpu", "cuda")  # where torch.optim ships the fused Adam kernel


@dataclass
class WeightDelta:
    """A finetuning update: `deltas = {hf_param_name: W_after − W_before}` over the trained
    parameters, the settings that produced it, and `losses` (one per step, measured before that
    step's update; for `layer-causal` the sum over layers).

    Example:
        >>> delta = finetune(model, demos_from_token_examples(tokens), method="wv-layer", layer=1)
        >>> sorted(delta.deltas)  # GPT-2's fused c_attn: only its W_V columns change
        ['transformer.h.1.attn.c_attn.bias', 'transformer.h.1.attn.c_attn.weight']
        >>> delta.metadata()["method"], delta.metadata()["layer"]
        ('wv-layer', 1)
    """

    deltas: dict[str, Tensor]
    method: str
    lr: float
    epochs: int
    batch_size: int
    loss_on: str
    layer: int | None = None
    seed: int = 0
    losses: list[float] = field(default_factory=list)

    def params_after(self, model: nn.Module) -> dict[str, Tensor]:
        """Every HF parameter of `model` (tied aliases included) with the delta added: the
        finetuned weights as a new state dict, to *read* them
        (`iclgd.hooks.attention_weights(model, l, params=...)`) or to differentiate through
        them (`torch.func.functional_call`). To *run* the finetuned model, use
        `iclgd.hooks.finetuned(model, delta)`."""
        hf = hf_module(model)
        canonical = {id(p): n for n, p in hf.named_parameters()}
        out = {}
        for name, p in hf.named_parameters(remove_duplicate=False):
            d = self.deltas.get(canonical[id(p)])
            out[name] = p.detach() if d is None else p.detach() + d
        return out

    def metadata(self) -> dict[str, Any]:
        """The settings and losses (no tensors), for provenance."""
        return {"method": self.method, "lr": self.lr, "epochs": self.epochs,
                "batch_size": self.batch_size, "loss_on": self.loss_on, "layer": self.layer,
                "seed": self.seed, "losses": list(self.losses),
                "trained": sorted(self.deltas)}


def finetune(
    model: nn.Module,
    demonstrations: TokenizedDemos,
    *,
    method: str = "gd",
    lr: float | None = None,
    epochs: int = 1,
    batch_size: int | None = None,
    loss_on: str | None = None,
    layer: int | None = None,
    seed: int = 0,
) -> WeightDelta:
    """Finetune on one task's demonstrations (`tokens [n_demos, seq]`) and return the update.

    `method` ∈ gd, sgd, adam, kv, layer-causal, wv-layer (table in `finetune_methods`); `lr`
    None = the method's untuned default (`MethodSpec.lr`: 1e-3 for adam, 1e-2 otherwise);
    `batch_size` None = the method's default (1, or all demonstrations for gd / wv-layer, which
    are full batch and reject another value); `loss_on` None = the method's default ("all" for
    kv / layer-causal as Dai, "label" otherwise); `layer` is required by wv-layer. A non-finite
    loss or update raises `IclgdError` naming the step and method.

    Example:
        >>> demos = demos_from_token_examples(torch.tensor([[5, 6, 7], [8, 9, 10]]))
        >>> delta = finetune(model, demos)  # full-batch GD on the label (last) tokens
        >>> delta.method, delta.lr, len(delta.losses)
        ('gd', 0.01, 1)
    """
    if demonstrations.tokens.ndim != 2:
        raise IclgdError(
            f"finetune takes one task's demonstrations [n_demos, seq], got shape "
            f"{tuple(demonstrations.tokens.shape)}: use finetune_batched for many tasks"
        )
    stacked = TokenizedDemos(demonstrations.tokens[None], demonstrations.valid[None],
                             demonstrations.label_mask[None])
    out: list[WeightDelta] = []
    _train(model, stacked, method=method, lr=lr, epochs=epochs, batch_size=batch_size,
           loss_on=loss_on, layer=layer, seed=seed, batched=False, snapshots={epochs},
           on_epoch=lambda _e, deltas: out.extend(deltas))
    return out[0]


def finetune_batched(
    model: nn.Module,
    demonstrations_batch: TokenizedDemos | Sequence[TokenizedDemos],
    *,
    method: str = "gd",
    lr: float | None = None,
    epochs: int = 1,
    batch_size: int | None = None,
    loss_on: str | None = None,
    layer: int | None = None,
    seed: int = 0,
) -> list[WeightDelta]:
    """`finetune` for many tasks at once: `tokens [n_tasks, n_demos, seq]` (or a list of
    single-task `TokenizedDemos`, stacked with `stack_demos`), one `vmap(grad)` call per step
    over parameters stacked along the task axis. Returns one `WeightDelta` per task, equal to
    `finetune` on that task alone. Memory: `n_tasks` copies of the trained parameters."""
    out: list[WeightDelta] = []
    finetune_batched_epochs(
        model, demonstrations_batch, method=method, lr=lr, epochs=[epochs],
        on_epoch=lambda _e, deltas: out.extend(deltas), batch_size=batch_size, loss_on=loss_on,
        layer=layer, seed=seed,
    )
    return out


def task_bytes(model: nn.Module, method: str, layer: int | None = None) -> int:
    """Bytes one task of `finetune_batched` holds while it trains with `method`: its copy of the
    trained tensors in their accumulation dtype (float32 master weights for bf16/fp16), their
    gradient and one snapshot's delta, and for Adam its two moment estimates (Kingma & Ba,
    2015, Algorithm 1). Activations are not counted (a few sequences of a few tokens)."""
    spec = method_spec(method)
    named = dict(hf_module(model).named_parameters())
    per_copy = sum(named[n].numel() * wide_dtype(named[n].dtype).itemsize
                   for n in trainable_parameters(hf_module(model), spec, layer))
    return per_copy * (3 + (2 if spec.optimizer == "adam" else 0))


def finetune_batched_epochs(
    model: nn.Module,
    demonstrations_batch: TokenizedDemos | Sequence[TokenizedDemos],
    *,
    method: str = "gd",
    lr: float | None = None,
    epochs: Sequence[int],
    on_epoch: Callable[[int, list[WeightDelta]], None],
    batch_size: int | None = None,
    loss_on: str | None = None,
    layer: int | None = None,
    seed: int = 0,
) -> None:
    """`finetune_batched` observed after each epoch count in `epochs`, in one run of
    `max(epochs)` epochs: calls `on_epoch(e, [WeightDelta per task])` as each count is reached,
    each equal to a separate `finetune_batched(..., epochs=e)` (constant learning rate, fixed
    batch order, Adam's bias correction by step: a run of e epochs is the first e epochs of the
    longer run). The callback runs between epochs on the unmodified model (it may evaluate it,
    and must leave its weights as they were, as `iclgd.hooks.finetuned` does); only the current snapshot is
    held in memory."""
    demos = demonstrations_batch
    if not isinstance(demos, TokenizedDemos):
        demos = stack_demos(list(demos))
    if demos.tokens.ndim != 3:
        raise IclgdError(
            f"finetune_batched takes tokens [n_tasks, n_demos, seq], got {tuple(demos.tokens.shape)}"
        )
    if not epochs or min(epochs) < 1:
        raise IclgdError(f"epochs must be >= 1, got {list(epochs)}")
    _train(model, demos, method=method, lr=lr, epochs=max(epochs), batch_size=batch_size,
           loss_on=loss_on, layer=layer, seed=seed, batched=True, snapshots=set(epochs),
           on_epoch=on_epoch)


def _check_settings(lr: float, epochs: int, batch_size: int | None) -> None:
    if not (isinstance(lr, int | float) and math.isfinite(lr) and lr > 0):
        raise IclgdError(f"learning rate must be a finite number > 0, got {lr!r}")
    if epochs < 1:
        raise IclgdError(f"epochs must be >= 1, got {epochs}")
    if batch_size is not None and batch_size < 1:
        raise IclgdError(f"batch_size must be >= 1, got {batch_size}")


def _train(
    model: nn.Module, demos: TokenizedDemos, *, method: str, lr: float | None, epochs: int,
    batch_size: int | None, loss_on: str | None, layer: int | None, seed: int, batched: bool,
    snapshots: set[int], on_epoch: Callable[[int, list[WeightDelta]], None],
) -> None:
    """Train for `epochs`; after each epoch count in `snapshots` call `on_epoch(count, [delta
    per task])` (outside any training hook, with the model's own weights untouched)."""
    run = _setup(model, demos, method=method, lr=lr, epochs=epochs, batch_size=batch_size,
                 loss_on=loss_on, layer=layer, seed=seed, batched=batched)
    rng = torch.Generator().manual_seed(seed).get_state()  # global RNG forked per epoch
    handles = [] if batched else _update_in_backward(run)
    try:
        for epoch in range(epochs):
            rng = _train_epoch(run, epoch, rng)
            if epoch + 1 in snapshots:
                on_epoch(epoch + 1, _snapshot(run, epoch + 1, last=epoch + 1 == epochs))
    finally:
        for handle in handles:
            handle.remove()


@dataclass
class _Run:
    """One finetuning run of `_train`: its settings, batches, data on the model's device, and the
    trained tensors (`params`, from `init`) with their optimiser `state` and per-step `losses`."""

    hf: nn.Module
    spec: MethodSpec
    method: str
    lr: float
    loss_on: str
    layer: int | None
    seed: int
    batched: bool
    bsz: int
    batches: list[list[int]]
    tokens: Tensor
    target: Tensor
    valid: Tensor
    masks: dict[str, Tensor | None]
    frozen: dict[str, Tensor]
    init: dict[str, Tensor]
    run_dtype: dict[str, torch.dtype]
    params: dict[str, Tensor]
    state: dict[str, tuple[Tensor, Tensor, Tensor]]
    losses: list[Tensor] = field(default_factory=list)
    where: str = ""  # the current step, for error messages raised inside backward


def _setup(
    model: nn.Module, demos: TokenizedDemos, *, method: str, lr: float | None, epochs: int,
    batch_size: int | None, loss_on: str | None, layer: int | None, seed: int, batched: bool,
) -> _Run:
    """Check the settings and the data, cut the batches, and start the trained tensors."""
    spec = method_spec(method)
    lr = spec.lr if lr is None else lr
    _check_settings(lr, epochs, batch_size)
    loss_on = loss_on or spec.loss_on
    hf: nn.Module = hf_module(model)
    if hf.training:
        raise IclgdError("the model is in training mode (dropout): call model.eval() first")
    n_tasks, n_demos, _ = demos.tokens.shape
    if n_demos == 0:
        raise IclgdError("no demonstrations to finetune on")
    if spec.full_batch and batch_size not in (None, n_demos):
        raise IclgdError(f"method {method} is full batch: leave batch_size unset")
    bsz = n_demos if spec.full_batch else (batch_size or 1)
    target = demos.target_mask(loss_on)
    batches = [list(range(i, min(i + bsz, n_demos))) for i in range(0, n_demos, bsz)]
    _check_targets(target, batches, loss_on)
    device = next(hf.parameters()).device
    tokens, target, valid = (x.to(device) for x in (demos.tokens, target, demos.valid))

    masks = trainable_parameters(hf, spec, layer)
    named = dict(hf.named_parameters())
    frozen = {n: p.detach() for n, p in named.items() if n not in masks}
    # bf16/fp16 models train float32 master copies of the trained tensors (mixed precision)
    init = {n: widen(named[n].detach()) for n in masks}
    run_dtype = {n: named[n].dtype for n in masks}
    params = {n: p.expand(n_tasks, *p.shape).clone() if batched else p.clone()
              for n, p in init.items()}
    state = {n: (torch.zeros_like(p), torch.zeros_like(p), torch.zeros((), device=p.device))
             for n, p in params.items()} if spec.optimizer == "adam" else {}
    return _Run(hf, spec, method, lr, loss_on, layer, seed, batched, bsz, batches, tokens,
                target, valid, masks, frozen, init, run_dtype, params, state)


def _check_targets(target: Tensor, batches: list[list[int]], loss_on: str) -> None:
    """Every batch of every task has at least one target token (else its loss is undefined)."""
    for idx in batches:
        empty = (target[:, idx].sum((1, 2)) == 0).nonzero()
        if len(empty):
            raise IclgdError(f"task {int(empty[0])}: demonstrations {idx[0]}..{idx[-1]} have "
                             f"no {loss_on!r} target tokens to train on")


def _train_epoch(run: _Run, epoch: int, rng: Tensor) -> Tensor:
    """One epoch over `run.batches` under the forked global RNG `rng`; returns its next state."""
    # hooks and the forked RNG live per epoch, so `on_epoch` runs on the plain model
    hooks = layer_causal_hooks(run.hf) if run.spec.layer_causal else nullcontext(None)
    with torch.random.fork_rng(devices=[]), hooks as collected:
        torch.set_rng_state(rng)
        loss_fn = _in_run_dtype(make_loss(run.hf, run.frozen, collected), run.run_dtype)
        step_fn = vmap(grad_and_value(loss_fn)) if run.batched else None
        for idx in run.batches:
            seq = int(run.valid[:, idx].any(0).any(0).nonzero().max()) + 1
            where = f"{run.method} finetuning, step {len(run.losses) + 1} (epoch {epoch + 1})"
            _step(run, loss_fn if step_fn is None else step_fn, run.tokens[:, idx, :seq],
                  run.target[:, idx, :seq], where)
        return torch.get_rng_state()


def _step(run: _Run, fn: Callable[..., Any], tokens: Tensor, target: Tensor, where: str) -> None:
    """One finetuning step on `tokens`/`target [n_tasks, b, seq]`: `fn` is the vmapped
    `grad_and_value(loss)` of a batched run, the plain loss of a single one. A single run's
    backward applies each tensor's update as soon as its gradient is complete and frees that
    gradient (the "optimizer step in backward" pattern of PyTorch's
    `register_post_accumulate_grad_hook`), so the whole model's gradients are never held at
    once; the update is the same as stepping after the full backward, tensor by tensor."""
    if run.batched:
        grads, loss = fn(run.params, tokens, target)
    else:
        loss = fn(run.params, tokens[0], target[0])[None]
    if not torch.isfinite(loss).all():
        raise IclgdError(f"{where}: the loss is not finite: lower the learning rate")
    run.losses.append(loss.detach())
    if run.batched:
        _update(run.params, grads, run.masks, run.state, run.spec.optimizer, run.lr, where)
        return
    run.where = where
    loss.sum().backward()


def _update_in_backward(run: _Run) -> list[Any]:
    """Make every trained tensor of a single run a leaf that takes its own update from
    `_update` as soon as backward has completed its gradient (then frees it); returns the hook
    handles."""
    def hook(name: str) -> Callable[[Tensor], None]:
        def apply(p: Tensor) -> None:
            grad, p.grad = p.grad, None
            if grad is None:  # the hook fires only once a gradient has been accumulated
                return
            _update({name: p}, {name: grad}, run.masks, run.state, run.spec.optimizer, run.lr,
                    run.where)
        return apply

    return [p.requires_grad_(True).register_post_accumulate_grad_hook(hook(n))
            for n, p in run.params.items()]


def _snapshot(run: _Run, count: int, *, last: bool) -> list[WeightDelta]:
    """The `WeightDelta` of every task after `count` epochs; the `last` one is built in the
    trained tensors' own memory (and drops the optimiser state)."""
    per_step = torch.stack(run.losses, 1).cpu()  # [n_tasks, n_steps]
    with torch.no_grad():
        if last:
            run.state.clear()
            diff = {n: p.sub_(run.init[n]).detach() for n, p in run.params.items()}
        else:
            diff = {n: p - run.init[n] for n, p in run.params.items()}
    return [
        WeightDelta({n: d[t] if run.batched else d for n, d in diff.items()},
                    run.method, float(run.lr), count, run.bsz, run.loss_on, run.layer, run.seed,
                    per_step[t].tolist())
        for t in range(run.tokens.shape[0])
    ]


def _in_run_dtype(
    loss: Callable[..., Tensor], dtypes: dict[str, torch.dtype]
) -> Callable[..., Tensor]:
    """`loss` with the (float32 master) trainable tensors cast to the model's own dtypes."""
    if all(dtypes[n] == wide_dtype(dtypes[n]) for n in dtypes):
        return loss

    def cast(trainable: dict[str, Tensor], *args: Tensor) -> Tensor:
        return loss({n: p.to(dtypes[n]) for n, p in trainable.items()}, *args)

    return cast


def _update(
    params: dict[str, Tensor], grads: dict[str, Tensor], masks: dict[str, Tensor | None],
    state: dict[str, tuple[Tensor, Tensor, Tensor]], optimizer: str, lr: float, where: str,
) -> None:
    """One SGD or Adam step, in place on `params`.

    SGD: `θ ← θ − lr · g` (one multi-tensor `torch._foreach_add_`). Adam (Kingma & Ba, 2015,
    Algorithm 1) is PyTorch's own functional `torch.optim.adam.adam` with its fused kernel (one
    pass over each tensor, no temporaries): `m ← β1 m + (1 − β1) g`, `v ← β2 v + (1 − β2) g²`,
    `θ ← θ − lr · (m / (1 − β1^t)) / (√(v / (1 − β2^t)) + ε)`, t counted in `state`.
    """
    names = list(grads)
    g = [grads[n] if (mask := masks[n]) is None else grads[n] * mask for n in names]
    norms = torch.stack(torch._foreach_norm(g))  # one pass: NaN/inf anywhere → non-finite norm
    if not torch.isfinite(norms).all():
        bad = names[int((~torch.isfinite(norms)).nonzero()[0])]
        raise IclgdError(f"{where}: the gradient of {bad} is not finite: lower the learning rate")
    p = [params[n].detach() for n in names]  # in place, outside autograd
    if optimizer == "sgd":
        torch._foreach_add_(p, g, alpha=-lr)
        return
    fused = p[0].device.type in _FUSED_ADAM_DEVICES  # elsewhere torch's multi-tensor form
    adam(p, g, [state[n][0] for n in names],
         [state[n][1] for n in names], [], [state[n][2] for n in names], fused=fused,
         foreach=not fused, amsgrad=False, beta1=_BETAS[0], beta2=_BETAS[1], lr=lr, weight_decay=0.0, eps=_EPS,
         maximize=False)

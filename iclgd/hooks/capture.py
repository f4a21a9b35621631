"""Memory-light activation capture: one forward pass, only the named hook points, sliced early.

Unlike `run_with_cache`, nothing but the requested hook outputs is kept, and with `positions`
only those positions are kept: the slice happens inside the hook, so a `[batch, pos, d_model]`
activation at the last position costs `[batch, d_model]` of memory, not the full sequence.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import torch
from einops import rearrange
from jaxtyping import Float, Int
from torch import Tensor

from iclgd.errors import IclgdError
from iclgd.hooks.names import act_name
from iclgd.hooks.types import HookedModel

# hook points whose query-position axis is 2 ([batch, n_heads, q_pos, k_pos]); all others use 1
_QPOS_AXIS_2 = ("hook_attn_scores", "hook_pattern")

Positions = int | Sequence[int] | slice | Tensor | None
PositionsArg = Positions | Mapping[str, Positions]
Names = Sequence[str] | str | Callable[[str], bool]


def check_tokens(tokens: object, n_ctx: int | None, d_vocab: int | None = None) -> Tensor:
    """Validate token ids `[batch, pos]` (1-D is promoted to a batch of one); return them.

    Raises `IclgdError` for empty input, non-integer dtypes, wrong rank, ids outside the
    vocabulary, or sequences longer than the model's context `n_ctx`.
    """
    if not isinstance(tokens, Tensor):
        try:
            tokens = torch.as_tensor(tokens)
        except (TypeError, ValueError) as err:
            raise IclgdError(f"tokens must be a tensor of token ids, got {type(tokens).__name__}") from err
    if tokens.dtype.is_floating_point or tokens.dtype == torch.bool or tokens.is_complex():
        raise IclgdError(f"tokens must be integer token ids, got dtype {tokens.dtype}")
    if tokens.ndim == 1:
        tokens = tokens.unsqueeze(0)
    if tokens.ndim != 2:
        raise IclgdError(f"tokens must have shape [batch, pos], got {tuple(tokens.shape)}")
    if tokens.numel() == 0:
        raise IclgdError("tokens are empty: pass at least one token per sequence")
    if n_ctx is not None and tokens.shape[1] > n_ctx:
        raise IclgdError(
            f"prompt of {tokens.shape[1]} tokens is longer than the model's context n_ctx={n_ctx}:"
            " use fewer demonstrations or shorter examples"
        )
    if d_vocab is not None and (int(tokens.min()) < 0 or int(tokens.max()) >= d_vocab):
        raise IclgdError(f"token ids must lie in [0, {d_vocab}), got {int(tokens.min())}..{int(tokens.max())}")
    return tokens.long()


def check_float_tokens(tokens: object) -> Tensor:
    """Validate float token vectors `[batch, pos, d_model]` (2-D is promoted to a batch of one)
    for a float-input model; return them. The model checks `d_model`, dtype and length."""
    if not isinstance(tokens, Tensor) or not tokens.dtype.is_floating_point:
        kind = tokens.dtype if isinstance(tokens, Tensor) else type(tokens).__name__
        raise IclgdError(f"this model takes float token vectors [batch, pos, d_model], got {kind}")
    if tokens.ndim == 2:
        tokens = tokens.unsqueeze(0)
    if tokens.ndim != 3:
        raise IclgdError(f"float tokens must have shape [batch, pos, d_model], got "
                         f"{tuple(tokens.shape)}")
    if tokens.shape[0] == 0 or tokens.shape[1] == 0:
        raise IclgdError("inputs are empty: pass at least one token per sequence")
    return tokens


def _slicer(name: str, positions: Positions, batch: int) -> Callable[[Tensor], Tensor]:
    if positions is None:
        return lambda t: t
    axis = 2 if name.endswith(_QPOS_AXIS_2) else 1
    if isinstance(positions, Tensor) and positions.ndim == 2:
        if positions.shape[0] != batch:
            raise IclgdError(f"positions [batch, k] must have one row per sequence ({batch}), "
                             f"got {tuple(positions.shape)}")
        rows_k = positions.long()

        def k_per_row(t: Tensor) -> Tensor:
            rows = torch.arange(t.shape[0], device=t.device)[:, None]
            moved = t.movedim(axis, 1)  # [batch, pos, ...]
            return moved[rows, rows_k.to(t.device)].movedim(1, axis)  # [batch, k, ...]
        return k_per_row
    if isinstance(positions, Tensor) and positions.ndim == 1 and positions.numel() == batch:
        idx = positions.long()

        def per_row(t: Tensor) -> Tensor:
            rows = torch.arange(t.shape[0], device=t.device)
            moved = t.movedim(axis, 1)  # [batch, pos, ...]
            return moved[rows, idx.to(t.device)]  # [batch, ...]: one position per row
        return per_row
    if isinstance(positions, int):
        pos = positions
        return lambda t: t.select(axis, pos)
    if isinstance(positions, slice):
        cut = positions
        return lambda t: t.movedim(axis, 1)[:, cut].movedim(1, axis)
    index = torch.as_tensor(positions if isinstance(positions, Tensor) else list(positions),
                            dtype=torch.long)
    return lambda t: t.movedim(axis, 1)[:, index.to(t.device)].movedim(1, axis)


def _positions_of(positions: PositionsArg, name: str, batch: int) -> Positions:
    """The positions spec for hook `name` (a 1-D tensor not of one entry per row is a list)."""
    if isinstance(positions, Mapping):
        positions = positions.get(name)
    if isinstance(positions, Tensor) and positions.ndim == 1 and positions.numel() != batch:
        return positions.tolist()
    return positions


def resolve_names(model: HookedModel, names: Names) -> list[str]:
    """Expand a name filter into the model's hook-point names; unknown names raise."""
    hooks = model.hook_dict  # a bridge rebuilds this dict on every access: read it once
    available = list(hooks)
    if callable(names):
        chosen = [n for n in available if names(n)]
        if not chosen:
            raise IclgdError("the name filter matched no hook point of this model")
        return chosen
    if isinstance(names, str):
        names = [names]
    names = list(names)
    if not names:
        raise IclgdError("no hook names given: pass e.g. ['blocks.0.hook_attn_out']")
    missing = [n for n in names if n not in hooks]
    if missing:
        hint = difflib.get_close_matches(missing[0], available, n=3)
        raise IclgdError(
            f"unknown hook point {missing[0]!r}"
            + (f" (did you mean {', '.join(hint)}?)" if hint else "")
        )
    return names


def capture(
    model: HookedModel,
    tokens: Int[Tensor, "batch pos"] | Float[Tensor, "batch pos d_model"],
    names: Names,
    *,
    positions: PositionsArg = None,
    to: str | torch.device | None = "cpu",
    return_logits: bool = False,
    forward_kwargs: Mapping[str, Any] | None = None,
) -> dict[str, Tensor]:
    """Run one forward pass and return only the requested hook activations.

    Args:
        model: a TransformerBridge (any model `load_model` returns) or an iclgd
            `LinearAttentionTransformer` (any model with `takes_float_inputs = True`), which
            takes float token vectors `[batch, pos, d_model]` instead of token ids.
        tokens: token ids `[batch, pos]` (1-D: one sequence), or float token vectors
            `[batch, pos, d_model]` (2-D: one sequence) for a float-input model.
        names: hook-point names (e.g. `"blocks.0.hook_attn_out"`) or a filter `name -> bool`.
        positions: None (all), an int (e.g. -1, the last token), a list/slice of positions, a
            1-D tensor of one position per batch row, or a 2-D tensor `[batch, k]` of k
            positions per row. Applied to the query-position axis (axis 1, or axis 2 for
            `hook_attn_scores`/`hook_pattern`) inside the hook. A mapping `{name: positions}`
            sets them per hook name (`"logits"` for the logits); names it lacks keep every
            position.
        to: device for the stored tensors ("cpu" by default; None keeps them where they are).
        return_logits: also return the model's output under key `"logits"` (the final residual
            stream for a `LinearAttentionTransformer`), sliced the same way.
        forward_kwargs: extra keyword arguments for the forward pass (e.g. `n_context` or
            `key_mask` of a `LinearAttentionTransformer`).

    Returns:
        `{name: tensor}`, detached; an int position drops the position axis.

    Example:
        >>> acts = capture(model, tokens, act_names("attn_out", 2), positions=-1)
        >>> tuple(acts["blocks.1.hook_attn_out"].shape)  # [batch, d_model] at the last token
        (2, 64)
    """
    if getattr(model, "takes_float_inputs", False):
        tokens = check_float_tokens(tokens)
    else:
        tokens = check_tokens(tokens, getattr(model.cfg, "n_ctx", None), getattr(model.cfg, "d_vocab", None))
    chosen = resolve_names(model, names)
    batch = tokens.shape[0]
    store: dict[str, Tensor] = {}
    dest = None if to is None else torch.device(to)

    def make_hook(name: str) -> Callable[..., None]:
        cut = _slicer(name, _positions_of(positions, name, batch), batch)

        def hook(act: Tensor, hook: Any = None) -> None:
            out = cut(act.detach())
            store[name] = out.to(dest) if dest is not None else out
        return hook

    device = _model_device(model)
    kwargs = dict(forward_kwargs or {})
    cut_logits = _slicer("logits", _positions_of(positions, "logits", batch), batch)
    if return_logits and "logits_to_keep" not in kwargs and _takes_logits_to_keep(model, chosen):
        keep, cut_logits = _kept_logits(positions, batch, tokens.shape[1])
        if keep is not None:
            kwargs["logits_to_keep"] = keep.to(device)
    with torch.no_grad(), model.hooks(fwd_hooks=[(n, make_hook(n)) for n in chosen]):
        logits = model(tokens.to(device), **kwargs)
    if return_logits and isinstance(logits, Tensor):
        out = cut_logits(logits.detach())
        store["logits"] = out.to(dest) if dest is not None else out
    return store


def _takes_logits_to_keep(model: HookedModel, chosen: Sequence[str]) -> bool:
    """Whether the model is a Hugging Face LM whose forward computes logits only at the
    positions given by `logits_to_keep` (the unembedding's own hooks are not being captured,
    since they would then see fewer positions)."""
    import inspect

    hf = getattr(model, "original_model", None)
    if hf is None or any(n.startswith("unembed") for n in chosen):
        return False
    return "logits_to_keep" in inspect.signature(hf.forward).parameters


def _kept_logits(
    positions: PositionsArg, batch: int, seq: int
) -> tuple[Tensor | None, Callable[[Tensor], Tensor]]:
    """The sorted positions whose logits are needed (`logits_to_keep`) and the slicer that picks
    each row's logits from the logits at those positions only; `None` and the plain slicer when
    every position is kept. The unembedding over all positions of a long prompt is a large part
    of a forward pass (SmolLM2: 49,152 × 576 per token) and its full output the largest tensor."""
    where = _positions_of(positions, "logits", batch)
    cut = _slicer("logits", where, batch)
    if where is None:
        return None, cut
    grid = torch.arange(seq).expand(batch, seq)[..., None]  # [batch, pos, 1]
    chosen = cut(grid)[..., 0]  # the positions each row keeps: [batch] or [batch, k]
    keep = chosen.unique()  # sorted
    col = torch.searchsorted(keep, chosen.contiguous())
    rows = torch.arange(batch).view(-1, *[1] * (chosen.ndim - 1))
    return keep, lambda t: t[rows.to(t.device), col.to(t.device)]


def stack_layers(
    acts: Mapping[str, Tensor], name: str, layers: int | Iterable[int]
) -> Tensor:
    """`acts[act_name(name, l)]` for each layer, stacked on a new axis 1: `[batch, n_layers, ...]`.

    Example:
        >>> acts = capture(model, tokens, act_names("attn_out", 2), positions=-1)
        >>> tuple(stack_layers(acts, "attn_out", 2).shape)  # [batch, n_layers, d_model]
        (2, 2, 64)
    """
    chosen = range(layers) if isinstance(layers, int) else layers
    try:
        per_layer = [acts[act_name(name, layer)] for layer in chosen]
    except KeyError as err:
        raise IclgdError(f"no captured activation {err.args[0]!r}: capture it first") from err
    if not per_layer:
        raise IclgdError("no layers to stack")
    return rearrange(per_layer, "layer batch ... -> batch layer ...")


def _model_device(model: torch.nn.Module) -> torch.device:
    try:
        return next(model.parameters()).device
    except StopIteration:  # pragma: no cover
        return torch.device("cpu")

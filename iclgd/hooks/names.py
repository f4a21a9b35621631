"""Hook-point names: `act_name("attn_out", 3)` → `"blocks.3.hook_attn_out"`.

Like TransformerLens' `utils.get_act_name`, for the names a TransformerBridge (and iclgd's
`LinearAttentionTransformer`) exposes. Short names (`SHORT_NAMES`) follow TransformerLens;
anything holding `hook_` is taken as a suffix inside block `layer` (`act_name("ln1.hook_out", 0)`
→ `"blocks.0.ln1.hook_out"`) or, without a layer, as a full name. Names are not checked against
a model here: `iclgd.hooks.capture` does that, with a suggestion for near misses.
"""

from __future__ import annotations

from collections.abc import Iterable

from iclgd.errors import IclgdError

SHORT_NAMES = {  # short name → the hook inside block l
    "resid_pre": "hook_resid_pre",
    "resid_mid": "hook_resid_mid",
    "resid_post": "hook_resid_post",
    "attn_out": "hook_attn_out",  # after W_O, before the residual add
    "mlp_out": "hook_mlp_out",
    "ln1": "ln1.hook_out",
    "ln2": "ln2.hook_out",
    "q": "attn.hook_q",
    "k": "attn.hook_k",
    "v": "attn.hook_v",
    "z": "attn.hook_z",
    "scores": "attn.hook_attn_scores",  # pre-softmax, [batch, head, q_pos, k_pos]
    "attn_scores": "attn.hook_attn_scores",
    "pattern": "attn.hook_pattern",  # post-softmax
    "pre": "mlp.hook_pre",
    "post": "mlp.hook_post",
}
MODEL_NAMES = {  # short name → a hook outside the blocks
    "embed": "hook_embed",
    "pos_embed": "hook_pos_embed",
    "ln_final": "ln_final.hook_out",
}


def act_name(name: str, layer: int | None = None) -> str:
    """The full hook-point name for `name` in block `layer` (None: a model-level hook).

    Example:
        >>> act_name("attn_out", 3)
        'blocks.3.hook_attn_out'
        >>> act_name("pattern", 0), act_name("ln1.hook_out", 1), act_name("embed")
        ('blocks.0.attn.hook_pattern', 'blocks.1.ln1.hook_out', 'hook_embed')
    """
    if layer is None:
        if name in MODEL_NAMES:
            return MODEL_NAMES[name]
        if "hook_" in name:
            return name
        if name in SHORT_NAMES:
            raise IclgdError(f"hook {name!r} is per layer: pass layer=, e.g. act_name({name!r}, 0)")
    else:
        if isinstance(layer, bool) or not isinstance(layer, int) or layer < 0:
            raise IclgdError(f"layer must be an int >= 0, got {layer!r}")
        if name in SHORT_NAMES:
            return f"blocks.{layer}.{SHORT_NAMES[name]}"
        if "hook_" in name:
            return f"blocks.{layer}.{name.removeprefix(f'blocks.{layer}.')}"
    known = ", ".join([*SHORT_NAMES, *MODEL_NAMES])
    raise IclgdError(f"unknown hook name {name!r}: use one of {known}, or a name with 'hook_'")


def act_names(name: str, layers: int | Iterable[int]) -> list[str]:
    """`act_name(name, l)` for every layer in `layers` (an int n means layers 0..n-1).

    Example:
        >>> act_names("attn_out", 2)
        ['blocks.0.hook_attn_out', 'blocks.1.hook_attn_out']
    """
    return [act_name(name, layer) for layer in (range(layers) if isinstance(layers, int) else layers)]

"""hooks: one interface over every model iclgd analyses.

- `load_model(spec)`: named model (`"smollm2-135m"`), local HF folder, checkpoint series, cached
  hub name, in-memory HF model or native config → TransformerLens `TransformerBridge` (eval
  mode, raw weights); `model_info` / `model_provenance` describe it.
- `list_checkpoints` / `iter_checkpoints`: checkpoint series, one skeleton reused.
- `capture`: names-filtered, position-sliced activations from one forward pass; `act_name` /
  `act_names` build hook names (`act_name("attn_out", 3)` → `"blocks.3.hook_attn_out"`),
  `stack_layers` stacks per-layer captures into `[batch, n_layers, ...]`.
- `attention_weights` / `mlp_weights`: raw per-head weights straight from the HF tensors
  (`hf_state_dict`: the raw state dict; `hf_module`: a plain HF module sharing it).
- `finetuned(model, delta)`: the model with `W + ΔW` inside a `with` block, restored exactly.
- `LinearAttentionTransformer`: iclgd's own hooked linear self-attention model.
"""

from typing import TYPE_CHECKING, Any

from iclgd.hooks.capture import capture, stack_layers
from iclgd.hooks.checkpoints import iter_checkpoints
from iclgd.hooks.edit import finetuned
from iclgd.hooks.info import model_info, model_provenance
from iclgd.hooks.loading import load_model
from iclgd.hooks.names import act_name, act_names
from iclgd.hooks.types import AttentionWeights, HookedModel, MLPWeights
from iclgd.hooks.weights import attention_weights, hf_module, hf_state_dict, mlp_weights
from iclgd.specs import list_checkpoints

if TYPE_CHECKING:
    from iclgd.hooks.linear_attention import LinearAttentionConfig, LinearAttentionTransformer

# Lower-level helpers that iclgd's analyses import from here; not part of the public API.
from iclgd.hooks.checkpoints import read_hf_weights as read_hf_weights  # noqa: E402
from iclgd.hooks.loading import resolve_device as resolve_device  # noqa: E402

__all__ = [
    "AttentionWeights",
    "HookedModel",
    "LinearAttentionConfig",
    "LinearAttentionTransformer",
    "MLPWeights",
    "act_name",
    "act_names",
    "attention_weights",
    "capture",
    "finetuned",
    "hf_module",
    "hf_state_dict",
    "iter_checkpoints",
    "list_checkpoints",
    "load_model",
    "mlp_weights",
    "model_info",
    "model_provenance",
    "stack_layers",
]


def __getattr__(name: str) -> Any:  # LinearAttentionTransformer and its config, on first use
    if name in ("LinearAttentionTransformer", "LinearAttentionConfig"):
        from iclgd.hooks import linear_attention

        return getattr(linear_attention, name)
    raise AttributeError(f"module 'iclgd.hooks' has no attribute {name!r}")

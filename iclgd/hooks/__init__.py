"""hooks: one interface over every model iclgd analyses.

- `load_model(spec)`: named model (`"smollm2-135m"`), local HF folder, checkpoint series, cached
  hub name, or native config → TransformerLens `TransformerBridge` (eval mode, raw weights);
  `model_provenance(model)` is what results record about it.
- `list_checkpoints` / `iter_checkpoints`: checkpoint series, one skeleton reused.
- `attention_weights` / `mlp_weights`: raw per-head weights straight from the HF tensors.
- `capture`: names-filtered, position-sliced activations from one forward pass.
- `LinearAttentionTransformer`: iclgd's own hooked linear self-attention model.
"""

from iclgd.hooks.capture import capture, check_tokens, resolve_names
from iclgd.hooks.checkpoints import (
    arch_signature,
    iter_checkpoints,
    list_checkpoints,
    load_weights_into,
    read_hf_weights,
    refresh_split_weights,
    select_checkpoint,
)
from iclgd.hooks.info import model_info, model_provenance
from iclgd.hooks.loading import load_model, resolve_device, resolve_dtype
from iclgd.hooks.types import AttentionWeights, MLPWeights
from iclgd.hooks.weights import attention_weights, hf_module, hf_state_dict, mlp_weights

__all__ = [
    "AttentionWeights",
    "MLPWeights",
    "arch_signature",
    "attention_weights",
    "capture",
    "check_tokens",
    "hf_module",
    "hf_state_dict",
    "iter_checkpoints",
    "list_checkpoints",
    "load_model",
    "load_weights_into",
    "mlp_weights",
    "model_info",
    "model_provenance",
    "read_hf_weights",
    "refresh_split_weights",
    "resolve_device",
    "resolve_dtype",
    "resolve_names",
    "select_checkpoint",
]


def __getattr__(name: str):  # LinearAttentionTransformer and its config, imported on first use
    if name in ("LinearAttentionTransformer", "LinearAttentionConfig"):
        from iclgd.hooks import linear_attention

        return getattr(linear_attention, name)
    raise AttributeError(f"module 'iclgd.hooks' has no attribute {name!r}")

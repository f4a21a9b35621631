"""The untrained-model control (Deutch et al. 2024).

Deutch et al. showed that an untrained model scores about the same SimAOU as a trained one
(SST-2, 1.3B: 0.104 vs 0.111), so every ICL-vs-GD similarity must be shown next to the same
number on a model that has learnt nothing in its transformer blocks. The control is a copy of
the model whose **attention and MLP parameters** (every parameter inside a transformer layer
except its LayerNorm/RMSNorm parameters) are re-initialised, while the **token and position
embeddings, every norm and the unembedding** keep their trained values — the same split as
Deutch et al.'s code, which loads only the embeddings, layer norms and output projection of the
checkpoint into a freshly built model. The caller's model is not modified. Two initialisations:

- `init="normal"` (`--control untrained`): weights ~ N(0, `initializer_range`²) (the config's
  value, 0.02 when absent), biases 0 — how Hugging Face initialises plain linear layers;
- `init="default"` (`--control untrained-default-init`, Deutch et al.'s variant): the values a
  freshly constructed model of the same architecture and config gets from its own
  initialisation (`PreTrainedModel._init_weights`; e.g. GPT-2 scales its residual projections
  by 1/sqrt(2 n_layers)), under `torch.manual_seed(seed)` with the global RNG left untouched.

`describe_init` states the initialisation in words; `untrained_control` records it in
`cfg.iclgd_control_init` for provenance.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import Tensor

from iclgd.errors import IclgdError
from iclgd.hooks.edit import copy_model, write_weights
from iclgd.hooks.weights import hf_module, layer_layout

_NORM_MARKERS = ("norm", "ln_", "ln1", "ln2", "layernorm")
INITS = ("normal", "default")


def is_norm_parameter(name: str) -> bool:
    """True for LayerNorm/RMSNorm parameters (by the module name, e.g. `input_layernorm`,
    `ln_1`, `post_attention_layernorm`)."""
    module = name.rsplit(".", 1)[0].rsplit(".", 1)[-1].lower()
    return any(m in module for m in _NORM_MARKERS)


def reinitialized_names(model: Any) -> list[str]:
    """HF names of the parameters the control re-initialises: every parameter inside a
    transformer layer except norm parameters (attention and MLP weights and biases)."""
    hf = hf_module(model)
    prefix = layer_layout(model).layer_prefix
    return [
        n for n, _ in hf.named_parameters() if n.startswith(prefix) and not is_norm_parameter(n)
    ]


def _std(hf: Any) -> float:
    return float(getattr(hf.config, "initializer_range", 0.02) or 0.02)


def untrained_params(model: Any, *, seed: int = 0, init: str = "normal") -> dict[str, Tensor]:
    """Re-initialised HF-named tensors for `reinitialized_names(model)` (module docstring):
    `init="normal"`: weights (≥ 2-D) ~ N(0, σ²) with σ = the config's `initializer_range` (0.02
    when absent), 1-D biases zero, drawn in float32 from `torch.Generator().manual_seed(seed)`
    in name order, then cast; `init="default"`: the architecture's own initialisation."""
    if init not in INITS:
        raise IclgdError(f"unknown initialisation {init!r}: use one of {', '.join(INITS)}")
    if init == "default":
        return default_init_params(model, seed=seed)
    hf = hf_module(model)
    std = _std(hf)
    params = dict(hf.named_parameters())
    gen = torch.Generator().manual_seed(seed)
    out = {}
    for name in reinitialized_names(model):
        p = params[name]
        if p.ndim >= 2:
            w = torch.randn(p.shape, generator=gen, dtype=torch.float32) * std
        else:
            w = torch.zeros(p.shape, dtype=torch.float32)
        out[name] = w.to(p.device, p.dtype)
    return out


def default_init_params(model: Any, *, seed: int = 0) -> dict[str, Tensor]:
    """The `reinitialized_names(model)` tensors of a freshly constructed Hugging Face model of the
    same class and config (its own `_init_weights`), built in float32 under
    `torch.manual_seed(seed)` inside `torch.random.fork_rng` (the global RNG is left as it was),
    then cast to the model's dtype. Memory: one extra float32 copy of the model while it runs."""
    hf = hf_module(model)
    params = dict(hf.named_parameters())
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        fresh = type(hf)(copy.deepcopy(hf.config))
    new = dict(fresh.named_parameters())
    return {n: new[n].detach().to(params[n].device, params[n].dtype)
            for n in reinitialized_names(model)}


def describe_init(model: Any, *, seed: int = 0, init: str = "normal") -> str:
    """The control's initialisation in words, for provenance."""
    hf = hf_module(model)
    kept = "embeddings, norms and unembedding keep their trained values"
    if init == "default":
        return (f"attention and MLP parameters from {type(hf).__name__}'s own initialisation "
                f"(_init_weights, torch.manual_seed({seed})); {kept}")
    return (f"attention and MLP weights ~ N(0, {_std(hf):g}^2), biases 0 "
            f"(torch.Generator seed {seed}); {kept}")


def untrained_control(model: Any, *, seed: int = 0, init: str = "normal") -> Any:
    """A copy of `model` (a TransformerBridge) with attention and MLP parameters re-initialised
    (`init`: "normal" or "default", see the module docstring) and embeddings, norms and
    unembedding kept. Provenance fields are copied; `cfg.iclgd_control = "untrained"`,
    `cfg.iclgd_control_seed` and `cfg.iclgd_control_init` (`describe_init`) are set."""
    control = copy_model(model)
    write_weights(control, untrained_params(model, seed=seed, init=init))
    control.cfg.iclgd_control = "untrained"
    control.cfg.iclgd_control_seed = seed
    control.cfg.iclgd_control_init = describe_init(model, seed=seed, init=init)
    return control

"""iclgd: test, on real transformer weights and activations, whether in-context learning is
gradient descent.

What an analysis script needs is importable from `iclgd` itself (loaded on first use, so
`import iclgd` stays fast):

| to ...                                  | use                                                    |
|-----------------------------------------|--------------------------------------------------------|
| load a model, record where it came from | `load_model`, `model_provenance`                       |
| walk a checkpoint series                | `list_checkpoints`, `iter_checkpoints`                 |
| capture activations                     | `capture`, `act_name`, `act_names`, `stack_layers`     |
| read raw per-head weights               | `attention_weights`, `mlp_weights`                     |
| build demonstrations to finetune on     | `demos_from_token_examples`, `TokenizedDemos`          |
| finetune, run the finetuned model       | `finetune` → `WeightDelta`, `finetuned(model, delta)`  |
| compare ICL with finetuning             | `simaou`, `simam`, `simam_delta`, `rec2ftp`, `kendall_tau`, `token_overlap`, `overlap_cosine`, `order_sensitivity` |
| measure weight density                  | `fraction_below`, `hoyer`, `stable_rank`               |
| linear self-attention models            | `LinearAttentionTransformer`, `LinearAttentionConfig`  |
| published constructions and their audit | `von_oswald_gd`, `von_oswald_gdpp`, `akyurek_sgd_step`, `ahn_preconditioned_gd`, `Construction`, `audit_construction` |
| bad input                               | `IclgdError` (a `ValueError`)                          |

The docstring examples assume `model` is the README's tiny GPT-2 (`load_model` of a
`GPT2LMHeadModel` with 2 layers, 4 heads, d_model 64, vocabulary 100) and `tokens` a `[2, 8]`
batch of token ids; the test suite runs every one of them.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

_HOME = {  # public name → the module that defines it
    "load_model": "iclgd.hooks.loading",
    "model_provenance": "iclgd.hooks.info",
    "list_checkpoints": "iclgd.specs",
    "iter_checkpoints": "iclgd.hooks.checkpoints",
    "capture": "iclgd.hooks.capture",
    "stack_layers": "iclgd.hooks.capture",
    "act_name": "iclgd.hooks.names",
    "act_names": "iclgd.hooks.names",
    "attention_weights": "iclgd.hooks.weights",
    "mlp_weights": "iclgd.hooks.weights",
    "finetuned": "iclgd.hooks.edit",
    "LinearAttentionTransformer": "iclgd.hooks.linear_attention",
    "LinearAttentionConfig": "iclgd.hooks.linear_attention",
    "demos_from_token_examples": "iclgd.data.tasks",
    "TokenizedDemos": "iclgd.data.tasks",
    "finetune": "iclgd.probes.finetune",
    "WeightDelta": "iclgd.probes.finetune",
    "simaou": "iclgd.probes.metrics",
    "simam": "iclgd.probes.metrics",
    "simam_delta": "iclgd.probes.metrics",
    "rec2ftp": "iclgd.probes.metrics",
    "kendall_tau": "iclgd.probes.metrics",
    "token_overlap": "iclgd.probes.metrics",
    "overlap_cosine": "iclgd.probes.metrics",
    "order_sensitivity": "iclgd.probes.metrics",
    "fraction_below": "iclgd.probes.density",
    "hoyer": "iclgd.probes.density",
    "stable_rank": "iclgd.probes.density",
    "von_oswald_gd": "iclgd.constructions.von_oswald",
    "von_oswald_gdpp": "iclgd.constructions.von_oswald",
    "akyurek_sgd_step": "iclgd.constructions.akyurek",
    "ahn_preconditioned_gd": "iclgd.constructions.ahn",
    "Construction": "iclgd.constructions.base",
    "audit_construction": "iclgd.probes.audit",
    "IclgdError": "iclgd.errors",
}

if TYPE_CHECKING:
    from iclgd.constructions.ahn import ahn_preconditioned_gd
    from iclgd.constructions.akyurek import akyurek_sgd_step
    from iclgd.constructions.base import Construction
    from iclgd.constructions.von_oswald import von_oswald_gd, von_oswald_gdpp
    from iclgd.data.tasks import TokenizedDemos, demos_from_token_examples
    from iclgd.errors import IclgdError
    from iclgd.hooks.capture import capture, stack_layers
    from iclgd.hooks.checkpoints import iter_checkpoints
    from iclgd.hooks.edit import finetuned
    from iclgd.hooks.info import model_provenance
    from iclgd.hooks.linear_attention import LinearAttentionConfig, LinearAttentionTransformer
    from iclgd.hooks.loading import load_model
    from iclgd.hooks.names import act_name, act_names
    from iclgd.hooks.weights import attention_weights, mlp_weights
    from iclgd.probes.audit import audit_construction
    from iclgd.probes.density import fraction_below, hoyer, stable_rank
    from iclgd.probes.finetune import WeightDelta, finetune
    from iclgd.probes.metrics import (
        kendall_tau,
        order_sensitivity,
        overlap_cosine,
        rec2ftp,
        simam,
        simam_delta,
        simaou,
        token_overlap,
    )
    from iclgd.specs import list_checkpoints

_SUBPACKAGES = frozenset({"analyses", "constructions", "data", "hooks", "probes", "training"})

__all__ = [
    "Construction",
    "IclgdError",
    "LinearAttentionConfig",
    "LinearAttentionTransformer",
    "TokenizedDemos",
    "WeightDelta",
    "act_name",
    "act_names",
    "ahn_preconditioned_gd",
    "akyurek_sgd_step",
    "attention_weights",
    "audit_construction",
    "capture",
    "demos_from_token_examples",
    "finetune",
    "finetuned",
    "fraction_below",
    "hoyer",
    "iter_checkpoints",
    "kendall_tau",
    "list_checkpoints",
    "load_model",
    "mlp_weights",
    "model_provenance",
    "order_sensitivity",
    "overlap_cosine",
    "rec2ftp",
    "simam",
    "simam_delta",
    "simaou",
    "stable_rank",
    "stack_layers",
    "token_overlap",
    "von_oswald_gd",
    "von_oswald_gdpp",
]


def __getattr__(name: str) -> Any:
    """Import a public name from its home module, or a subpackage (`iclgd.hooks`), on first use
    (PEP 562)."""
    if name in _SUBPACKAGES:
        value = importlib.import_module(f"iclgd.{name}")
    elif name in _HOME:
        value = getattr(importlib.import_module(_HOME[name]), name)
    else:
        raise AttributeError(f"module 'iclgd' has no attribute {name!r}")
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__, *_SUBPACKAGES})

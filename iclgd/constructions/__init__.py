"""Hand-built weights from the ICL-as-GD papers and the algorithms they claim (von Oswald et al.
2023; Akyürek et al. 2023; Ahn et al. 2023; Dai et al. 2023).

Each builder returns a `Construction` (model, `predict`, `reference`, `weights`);
`iclgd.probes.audit` measures error, loss, density and robustness of any construction or
user-supplied weights.
"""

from iclgd.constructions.ahn import ahn_preconditioned_gd
from iclgd.constructions.akyurek import akyurek_sgd_step
from iclgd.constructions.base import Construction
from iclgd.constructions.dual_form import (
    apply_dual_form,
    delta_w_finetune,
    delta_w_icl,
    dual_form_factors,
    dual_form_layer,
)
from iclgd.constructions.standard_tokens import von_oswald_standard_tokens
from iclgd.constructions.von_oswald import von_oswald_gd, von_oswald_gdpp, von_oswald_tokens

__all__ = [
    "Construction",
    "ahn_preconditioned_gd",
    "akyurek_sgd_step",
    "apply_dual_form",
    "delta_w_finetune",
    "delta_w_icl",
    "dual_form_factors",
    "dual_form_layer",
    "von_oswald_gd",
    "von_oswald_gdpp",
    "von_oswald_standard_tokens",
    "von_oswald_tokens",
]

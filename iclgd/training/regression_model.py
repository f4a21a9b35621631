"""Garg et al. (2022) in-context regression model: GPT-2 backbone with linear read-in/read-out.

Architecture (as in their `TransformerModel`): `read_in = Linear(d, d_model)` maps every prompt
token (see `iclgd.data.curriculum.interleave`) into the residual stream of a Hugging Face
`GPT2Model` (learned position embeddings, no dropout; its token embedding is unused because the
model is fed `inputs_embeds`), and `read_out = Linear(d_model, 1)` maps the final hidden state at
each x position to the prediction for that point's y.

Checkpoint folder layout (one `step{N}/` folder per checkpoint):

- `config.json` + `model.safetensors`: the backbone as a stock Hugging Face `GPT2Model` folder
  (`GPT2Model.from_pretrained(folder)` loads it; vocab_size 1 since tokens are never embedded);
- `read_in_out.safetensors`: `read_in.weight [d_model, d]`, `read_in.bias [d_model]`,
  `read_out.weight [1, d_model]`, `read_out.bias [1]`;
- `regression_model.json`: `format` ("iclgd-garg-regression/1"), `n_dims` (d), `n_points` (the
  largest prompt the position embeddings cover), `d_out` (1), `layout`, plus what the trainer adds
  (step, curriculum and its state at that step).

`load_regression_model(folder)` rebuilds the full model from such a folder.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from jaxtyping import Float
from torch import Tensor, nn

from iclgd.data.curriculum import interleave, prediction_positions
from iclgd.errors import IclgdError
from iclgd.results import read_json

FORMAT = "iclgd-garg-regression/1"
HEAD_FILE = "read_in_out.safetensors"
META_FILE = "regression_model.json"
LAYOUT = "tokens x_1, (y_1, 0...), x_2, ...; prediction for point k read at token 2k"


class GargRegressionModel(nn.Module):
    """GPT-2 with linear read-in (width `n_dims`) and read-out (1 output), Garg et al. 2022.

    `forward(xs, ys)` returns the prediction for every point: entry k has seen points 0..k-1.
    """

    def __init__(
        self,
        n_dims: int,
        n_points: int,
        *,
        d_model: int = 64,
        n_layers: int = 3,
        n_heads: int = 2,
        attn_implementation: str = "sdpa",
    ) -> None:
        super().__init__()
        from transformers import GPT2Config, GPT2Model

        if d_model % n_heads:
            raise IclgdError(f"d_model ({d_model}) must be divisible by n_heads ({n_heads})")
        if n_dims < 1 or n_points < 1 or n_layers < 1:
            raise IclgdError("n_dims, n_points and n_layers must all be >= 1")
        self.n_dims = n_dims
        self.n_points = n_points
        config = GPT2Config(
            vocab_size=1,
            n_positions=2 * n_points,
            n_embd=d_model,
            n_layer=n_layers,
            n_head=n_heads,
            resid_pdrop=0.0,
            embd_pdrop=0.0,
            attn_pdrop=0.0,
            use_cache=False,
            bos_token_id=0,
            eos_token_id=0,
        )
        self.read_in = nn.Linear(n_dims, d_model)
        self.backbone = GPT2Model._from_config(config, attn_implementation=attn_implementation)
        self.read_out = nn.Linear(d_model, 1)

    @property
    def d_model(self) -> int:
        """Residual stream width."""
        return int(self.backbone.config.n_embd)

    def forward(
        self, xs: Float[Tensor, "batch n d"], ys: Float[Tensor, "batch n"]
    ) -> Float[Tensor, "batch n"]:
        """Predictions at the x positions of the interleaved prompt (Garg et al.'s layout)."""
        if xs.ndim != 3 or xs.shape[-1] != self.n_dims:
            raise IclgdError(
                f"xs must be [batch, n, {self.n_dims}], got {tuple(xs.shape)}; pad or truncate "
                "the inputs to the model's width"
            )
        n = xs.shape[1]
        if n > self.n_points:
            raise IclgdError(f"prompt has {n} points but the model covers at most {self.n_points}")
        embeds = self.read_in(interleave(xs, ys))
        hidden = self.backbone(inputs_embeds=embeds).last_hidden_state
        return self.read_out(hidden[:, prediction_positions(n).to(hidden.device)])[..., 0]

    def save_pretrained(self, folder: str | Path, safe_serialization: bool = True) -> None:
        """Write the checkpoint folder files (HF-style entry point; see the module docstring)."""
        save_regression_model(self, folder)

    def metadata(self) -> dict[str, Any]:
        """The architecture fields written to `regression_model.json`."""
        return {
            "format": FORMAT,
            "n_dims": self.n_dims,
            "n_points": self.n_points,
            "d_out": 1,
            "layout": LAYOUT,
        }


def save_regression_model(
    model: GargRegressionModel, folder: str | Path, *, extra: dict[str, Any] | None = None
) -> Path:
    """Write the three parts of a checkpoint folder (see the module docstring) into `folder`.

    Not atomic by itself: trainers write into a temporary folder and rename it.
    """
    from safetensors.torch import save_file

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    model.backbone.config.save_pretrained(folder)
    backbone = {k: v.detach().contiguous().cpu() for k, v in model.backbone.state_dict().items()}
    save_file(backbone, str(folder / "model.safetensors"), metadata={"format": "pt"})
    heads = {
        "read_in.weight": model.read_in.weight,
        "read_in.bias": model.read_in.bias,
        "read_out.weight": model.read_out.weight,
        "read_out.bias": model.read_out.bias,
    }
    heads = {k: v.detach().contiguous().cpu() for k, v in heads.items()}
    save_file(heads, str(folder / HEAD_FILE), metadata={"format": "pt"})
    meta = {**model.metadata(), **(extra or {})}
    (folder / META_FILE).write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
    return folder


def read_regression_metadata(folder: str | Path) -> dict[str, Any]:
    """The `regression_model.json` of a checkpoint folder."""
    path = Path(folder) / META_FILE
    if not path.exists():
        raise IclgdError(
            f"{path} not found: not a regression checkpoint folder (train one with "
            "`iclgd train regression`)"
        )
    meta = read_json(path)
    if meta.get("format") != FORMAT:
        raise IclgdError(f"{path}: unknown format {meta.get('format')!r}, expected {FORMAT!r}")
    return meta


def load_regression_model(
    folder: str | Path,
    *,
    device: str | torch.device = "cpu",
    attn_implementation: str = "eager",
) -> GargRegressionModel:
    """Rebuild a `GargRegressionModel` from a checkpoint folder, in eval mode."""
    from safetensors.torch import load_file
    from transformers import GPT2Config

    folder = Path(folder)
    meta = read_regression_metadata(folder)
    config = GPT2Config.from_pretrained(folder)
    with torch.random.fork_rng(devices=[]):  # the random init is overwritten below
        model = GargRegressionModel(
            int(meta["n_dims"]),
            int(meta["n_points"]),
            d_model=config.n_embd,
            n_layers=config.n_layer,
            n_heads=config.n_head,
            attn_implementation=attn_implementation,
        )
    model.backbone.load_state_dict(load_file(str(folder / "model.safetensors")))
    heads = load_file(str(folder / HEAD_FILE))
    model.read_in.load_state_dict({"weight": heads["read_in.weight"], "bias": heads["read_in.bias"]})
    model.read_out.load_state_dict(
        {"weight": heads["read_out.weight"], "bias": heads["read_out.bias"]}
    )
    return model.to(device).eval()

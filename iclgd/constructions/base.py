"""`Construction`: hand-set weights in a `LinearAttentionTransformer` plus the algorithm they claim.

A construction bundles the model, how regression data become its input tokens, how its prediction
is read from the output residual stream (sign conventions handled here: `predict` always returns
`y_hat`), the reference algorithm it is audited against, and its weights as named in the paper
(column-vector form, `k = W_K e`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from jaxtyping import Float
from torch import Tensor

from iclgd.constructions.reference import check_regression_inputs
from iclgd.errors import IclgdError
from iclgd.hooks.linear_attention import LinearAttentionTransformer

TokensFn = Callable[[Tensor, Tensor, Tensor], tuple[Tensor, dict[str, Any]]]


@dataclass
class Construction:
    """A constructed model and the algorithm it implements.

    - `tokens_fn(X, Y, x_query) -> (tokens [batch, pos, d_model], forward kwargs)`;
    - `readout_fn(resid [batch, pos, d_model]) -> y_hat [batch, d_out]`;
    - `reference_fn(X, Y, x_query) -> y_hat [batch, d_out]` (the claimed algorithm);
    - `weights_fn() -> {name: matrix}` in the paper's column-vector form;
    - `exact`: True when the construction equals its reference up to rounding;
    - `loss_convention`: "half_mse" (von Oswald) or "mse" (Ahn);
    - `nonzero_at_width(width) -> {name: (rows, cols, nonzeros)}`: the same construction rebuilt at
      residual width `width` (analytic counts), or None when not defined.

    Example:
        >>> c = von_oswald_gd(2, n=4, eta=0.1)
        >>> c.name, c.exact, c.loss_convention, sorted(c.weights())
        ('von-oswald-gd', True, 'half_mse', ['P', 'W_K', 'W_Q', 'W_V'])
    """

    name: str
    model: LinearAttentionTransformer
    tokens_fn: TokensFn
    readout_fn: Callable[[Tensor], Tensor]
    reference_fn: Callable[[Tensor, Tensor, Tensor], Tensor]
    weights_fn: Callable[[], dict[str, Tensor]]
    params: dict[str, Any] = field(default_factory=dict)
    exact: bool = True
    loss_convention: str = "half_mse"
    nonzero_at_width: Callable[[int], dict[str, tuple[int, int, int]]] | None = None
    n: int | None = None
    notes: str = ""
    reference_name: str = ""

    def _inputs(self, X: Tensor, Y: Tensor, x_query: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        check_regression_inputs(X, Y, x_query)
        if self.n is not None and X.shape[1] != self.n:
            raise IclgdError(
                f"construction {self.name} was built for n={self.n} context points, got {X.shape[1]}; "
                "rebuild it with the right n"
            )
        dt = self.model.cfg.dtype
        return X.to(dt), Y.to(dt), x_query.to(dt)

    def tokens(self, X: Tensor, Y: Tensor, x_query: Tensor) -> tuple[Tensor, dict[str, Any]]:
        """Input tokens `[batch, pos, d_model]` and the forward kwargs (`n_context` / `key_mask`)."""
        return self.tokens_fn(*self._inputs(X, Y, x_query))

    def predict(
        self,
        X: Float[Tensor, "batch n d"],
        Y: Float[Tensor, "batch n d_out"],
        x_query: Float[Tensor, "batch d"],
        *,
        model: LinearAttentionTransformer | None = None,
    ) -> Float[Tensor, "batch d_out"]:
        """`y_hat [batch, d_out]` of the constructed model (or of `model`, e.g. a perturbed copy)."""
        tokens, kwargs = self.tokens(X, Y, x_query)
        return self.readout_fn((model or self.model)(tokens, **kwargs))

    def reference(self, X: Tensor, Y: Tensor, x_query: Tensor) -> Float[Tensor, "batch d_out"]:
        """`y_hat [batch, d_out]` of the algorithm the construction claims to implement."""
        return self.reference_fn(*self._inputs(X, Y, x_query))

    def weights(self) -> dict[str, Tensor]:
        """Named matrices as written in the paper (column-vector form)."""
        return self.weights_fn()


def place(
    rows: int, cols: int, *pieces: tuple[int, int, Tensor], dtype: torch.dtype = torch.float64
) -> Tensor:
    """A `[rows, cols]` zero matrix with each `(row_offset, col_offset, block)` written in."""
    out = torch.zeros(rows, cols, dtype=dtype)
    for r, c, t in pieces:
        t = torch.as_tensor(t, dtype=dtype)
        out[r : r + t.shape[0], c : c + t.shape[1]] = t
    return out

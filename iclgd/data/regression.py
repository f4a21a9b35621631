"""Random linear-regression tasks for in-context learning (von Oswald et al. 2023; Garg et al. 2022).

A task is a weight matrix `W [d_out, d]`, `n` context inputs `x_i [d]` with labels
`y_i = W x_i + noise`, and one query `x_q` with its noiseless-model label `y_q = W x_q + noise`.
Batched: the task axis comes first.

Input distributions:
- `"uniform"`: every coordinate ~ U(-0.5, 0.5), as in von Oswald et al.'s code (their docstring's
  U(-1, 1) is not what the code samples);
- `"gaussian"`: x ~ N(0, I), as in Garg et al. (2022).

Weights: every entry of `W` ~ N(0, w_scale²) (w_scale = 1: N(0, I), both papers).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from jaxtyping import Float
from torch import Tensor

from iclgd.errors import IclgdError

X_DISTRIBUTIONS: tuple[str, ...] = ("uniform", "gaussian")


@dataclass
class RegressionTasks:
    """A batch of linear-regression tasks (task axis first).

    `X [batch, n, d]` context inputs, `Y [batch, n, d_out]` context labels, `x_query [batch, d]`,
    `y_query [batch, d_out]`, and the true weights `W [batch, d_out, d]` (`y = W x + noise`).
    """

    X: Float[Tensor, "batch n d"]
    Y: Float[Tensor, "batch n d_out"]
    x_query: Float[Tensor, "batch d"]
    y_query: Float[Tensor, "batch d_out"]
    W: Float[Tensor, "batch d_out d"]

    @property
    def batch(self) -> int:
        """Number of tasks."""
        return int(self.X.shape[0])

    @property
    def n(self) -> int:
        """Number of context examples per task."""
        return int(self.X.shape[1])

    @property
    def d(self) -> int:
        """Input dimension."""
        return int(self.X.shape[2])

    @property
    def d_out(self) -> int:
        """Output dimension."""
        return int(self.Y.shape[2])

    def to(
        self, device: str | torch.device | None = None, dtype: torch.dtype | None = None
    ) -> RegressionTasks:
        """A copy moved to `device` and/or cast to `dtype`."""
        return RegressionTasks(
            *(
                t.to(device=device, dtype=dtype)
                for t in (self.X, self.Y, self.x_query, self.y_query, self.W)
            )
        )


def _sample_x(
    shape: tuple[int, ...],
    x_dist: str,
    generator: torch.Generator | None,
    dtype: torch.dtype,
    device,
) -> Tensor:
    if x_dist == "uniform":
        return torch.rand(shape, generator=generator, dtype=dtype, device=device) - 0.5
    return torch.randn(shape, generator=generator, dtype=dtype, device=device)


def sample_linear_tasks(
    batch: int,
    n: int,
    d: int,
    *,
    d_out: int = 1,
    x_dist: str = "uniform",
    noise_std: float = 0.0,
    generator: torch.Generator | None = None,
    dtype: torch.dtype = torch.float64,
    device: str | torch.device = "cpu",
    w_scale: float = 1.0,
) -> RegressionTasks:
    """Sample `batch` linear-regression tasks with `n` context points each.

    `x_dist`: `"uniform"` (U(-0.5, 0.5) per coordinate, von Oswald's code) or `"gaussian"`
    (N(0, I), Garg et al.). `W` entries ~ N(0, w_scale²); `y = W x + noise_std * N(0, I)` for the
    context and the query. `n = 0` (zero-shot prompt) is allowed. Draws come from `generator`
    when given (which must live on `device`), in the order W, X, x_query, noise.
    Returns a `RegressionTasks` with `X [batch, n, d]`, `Y [batch, n, d_out]`, `x_query [batch, d]`,
    `y_query [batch, d_out]`, `W [batch, d_out, d]`.
    """
    for name, value, low in (("batch", batch, 1), ("n", n, 0), ("d", d, 1), ("d_out", d_out, 1)):
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise IclgdError(f"{name} must be an integer >= {low}, got {value!r}")
    if x_dist not in X_DISTRIBUTIONS:
        raise IclgdError(f"x_dist must be one of {X_DISTRIBUTIONS}, got {x_dist!r}")
    if not math.isfinite(noise_std) or noise_std < 0:
        raise IclgdError(f"noise_std must be a finite number >= 0, got {noise_std!r}")
    if not math.isfinite(w_scale) or w_scale < 0:
        raise IclgdError(f"w_scale must be a finite number >= 0, got {w_scale!r}")
    if not (isinstance(dtype, torch.dtype) and dtype.is_floating_point):
        raise IclgdError(
            f"dtype must be a floating torch dtype (e.g. torch.float64), got {dtype!r}"
        )

    W = torch.randn((batch, d_out, d), generator=generator, dtype=dtype, device=device) * w_scale
    X = _sample_x((batch, n, d), x_dist, generator, dtype, device)
    x_query = _sample_x((batch, d), x_dist, generator, dtype, device)
    Y = torch.einsum("bod,bnd->bno", W, X)
    y_query = torch.einsum("bod,bd->bo", W, x_query)
    if noise_std > 0:
        Y = Y + noise_std * torch.randn(Y.shape, generator=generator, dtype=dtype, device=device)
        y_query = y_query + noise_std * torch.randn(
            y_query.shape, generator=generator, dtype=dtype, device=device
        )
    return RegressionTasks(X=X, Y=Y, x_query=x_query, y_query=y_query, W=W)

"""Density and sparsity of one weight tensor (Shen, Mishra & Khashabi 2024, the weight-density
argument).

Pure functions on a tensor; every computation runs in float64 on a detached copy, so the caller's
dtype (bf16, fp16) never changes the answer beyond the rounding already in the weights.
Measure raw weights (`iclgd.hooks.attention_weights`): TransformerLens' weight processing makes
sparse matrices dense.

Conventions for degenerate inputs (documented, tested):
- an all-zero tensor is "as sparse as can be": `hoyer` and `gini` return 1.0 (consistent with
  `fraction_below(w, tau) == 1.0`), `stable_rank` returns 0.0 (rank zero);
- an empty tensor raises `IclgdError`.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from iclgd.errors import IclgdError

DEFAULT_THRESHOLDS: tuple[float, ...] = (1e-2, 1e-3, 1e-4, 1e-5, 1e-6)


def _flat64(w: Tensor) -> Tensor:
    if not isinstance(w, Tensor):
        w = torch.as_tensor(w)
    if w.numel() == 0:
        raise IclgdError("density of an empty tensor is undefined: pass a weight with entries")
    return w.detach().to(torch.float64).reshape(-1)


def threshold_key(tau: float) -> str:
    """Key used for threshold `tau` in `fractions_below`: `"%.0e" % tau` (e.g. "1e-02")."""
    return f"{tau:.0e}"


def fraction_below(w: Tensor, tau: float) -> float:
    """Fraction of entries with `|w| < tau` (strict), over all entries of `w` (Shen et al.).

    Example:
        >>> fraction_below(torch.tensor([0.001, 0.5, -0.002, 1.0]), 1e-2)
        0.5
    """
    if tau < 0:
        raise IclgdError(f"threshold tau must be >= 0, got {tau}")
    x = _flat64(w)
    return float((x.abs() < tau).sum().item() / x.numel())


def fractions_below(
    w: Tensor, thresholds: tuple[float, ...] | list[float] = DEFAULT_THRESHOLDS
) -> dict[str, float]:
    """`fraction_below(w, tau)` for each threshold, keyed `"%.0e" % tau` ("1e-02", ..., "1e-06")."""
    x = _flat64(w).abs()
    return {threshold_key(t): float((x < t).sum().item() / x.numel()) for t in thresholds}


def nonzero_count(w: Tensor) -> int:
    """Number of entries exactly different from zero."""
    return int(torch.count_nonzero(_flat64(w)).item())


def hoyer(w: Tensor) -> float:
    """Hoyer sparsity `(sqrt(N) - ||w||_1 / ||w||_2) / (sqrt(N) - 1)` over all N entries.

    1 for a single non-zero entry, 0 when all |w_i| are equal. All-zero `w` → 1.0; N = 1 → 1.0.

    Example:
        >>> hoyer(torch.tensor([0.0, 0.0, 3.0, 0.0])), hoyer(torch.ones(4))
        (1.0, 0.0)
    """
    x = _flat64(w)
    n = x.numel()
    l2 = float(torch.linalg.vector_norm(x, 2))
    if l2 == 0.0 or n == 1:
        return 1.0
    l1 = float(x.abs().sum())
    root = math.sqrt(n)
    return (root - l1 / l2) / (root - 1.0)


def gini(w: Tensor) -> float:
    """Gini index of |w| (Hurley & Rickard 2009): with `c` the |entries| sorted ascending,
    `G = 1 - 2 * sum_k (c_k / ||c||_1) * (N - k + 1/2) / N`, k = 1..N.

    0 when all |w_i| are equal, `1 - 1/N` for a single non-zero entry. All-zero `w` → 1.0.
    """
    c, _ = torch.sort(_flat64(w).abs())
    n = c.numel()
    total = float(c.sum())
    if total == 0.0:
        return 1.0
    k = torch.arange(1, n + 1, dtype=torch.float64)
    return float(1.0 - 2.0 * ((c / total) * (n - k + 0.5) / n).sum())


def stable_ranks(w: Tensor) -> Tensor:
    """Stable rank `||W||_F^2 / ||W||_2^2` of each matrix in `w [..., rows, cols]` (float64).

    The leading axes are a batch of independent matrices (e.g. per-head `W_K [n_heads, d_model,
    d_head]` → one value per head). A zero matrix has stable rank 0.
    """
    if w.ndim < 2:
        raise IclgdError(f"stable rank needs a matrix, got shape {tuple(w.shape)}")
    if w.numel() == 0:
        raise IclgdError("stable rank of an empty matrix is undefined")
    x = w.detach().to(torch.float64)
    fro2 = (x * x).sum(dim=(-2, -1))
    # ||W||_2^2 = largest eigenvalue of the Gram matrix on the smaller side (3x faster than an
    # SVD of a 576 x 1536 matrix, same value to rounding)
    gram = x @ x.mT if x.shape[-2] <= x.shape[-1] else x.mT @ x
    spec2 = torch.linalg.eigvalsh(gram)[..., -1].clamp_min(0.0)
    return torch.where(spec2 > 0, fro2 / spec2.clamp_min(1e-300), torch.zeros_like(fro2))


def stable_rank(w: Tensor) -> float:
    """Stable rank `||W||_F^2 / ||W||_2^2` of a 2-D matrix (a soft count of its large singular
    values, between 1 and rank(W); 0 for the zero matrix).

    For a 3-D per-head tensor (`[n_heads, d_model, d_head]`, iclgd's per-head layout) each head is
    its own linear map: the result is the **mean over heads of the per-head stable ranks**
    (`stable_ranks(w)` gives them one by one). For the whole projection instead, pass the 2-D
    concatenation, e.g. `W_K.permute(1, 0, 2).reshape(d_model, -1)`.

    Example:
        >>> stable_rank(torch.eye(3)), stable_rank(torch.ones(3, 3))
        (3.0, 1.0)
    """
    if w.ndim == 2:
        return float(stable_ranks(w))
    if w.ndim == 3:
        return float(stable_ranks(w).mean())
    raise IclgdError(f"stable_rank takes a 2-D matrix or a 3-D per-head tensor, got {w.ndim}-D")


def block_grid(w: Tensor, block: int = 32, levels: int = 16) -> dict[str, float]:
    """How well `w` lies on a per-block affine quantisation grid (GGUF Q4_1 by default).

    Q4_1 stores blocks of `block` consecutive weights along the last (input) axis as
    `w = d·q + m` with `q ∈ {0, …, levels − 1}`, `m` = the block's minimum and `d` = (max −
    min) / (levels − 1) (fp16 scale and minimum). For each block this takes `m` and `d` from the
    block itself and measures `r = |(w − m)/d − round((w − m)/d)|`. Returns `median_step` (median
    of `d` over blocks), `mean_residual` (mean of `r`: ≈ 0 on the grid up to the fp16 rounding of
    `d` and `m`, ≈ 0.25 for weights off any grid) and `blocks`. A density threshold below about
    `median_step / 2` measures the grid, not the model. Needs the last axis to be a multiple of
    `block` (else `IclgdError`); blocks with `d = 0` are skipped.
    """
    if w.ndim < 1 or w.shape[-1] % block:
        raise IclgdError(f"last axis {tuple(w.shape)[-1:]} is not a multiple of the block {block}")
    x = w.detach().to(torch.float64).reshape(-1, block)
    lo, hi = x.min(-1).values, x.max(-1).values
    step = (hi - lo) / (levels - 1)
    keep = step > 0
    if not bool(keep.any()):
        return {"median_step": 0.0, "mean_residual": 0.0, "blocks": 0}
    q = (x[keep] - lo[keep, None]) / step[keep, None]
    return {
        "median_step": float(step[keep].median()),
        "mean_residual": float((q - q.round()).abs().mean()),
        "blocks": int(keep.sum()),
    }

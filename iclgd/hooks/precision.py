"""Accumulation precision for models run in reduced precision (bfloat16, float16).

A model may run in bf16/fp16 to fit a device; every reduction over its outputs (softmax, losses,
means, cosines) is done in at least float32, and construction audits stay in float64.
`wide_dtype(torch.bfloat16)` is float32, `wide_dtype(torch.float64)` stays float64.
"""

from __future__ import annotations

import torch
from torch import Tensor


def wide_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype to accumulate in: `dtype` promoted to at least float32 (float64 is kept)."""
    return torch.promote_types(dtype, torch.float32)


def widen(x: Tensor) -> Tensor:
    """`x` cast to `wide_dtype(x.dtype)` (no copy when it already is)."""
    return x.to(wide_dtype(x.dtype))


def is_reduced(dtype: torch.dtype) -> bool:
    """True for floating dtypes narrower than float32 (bfloat16, float16)."""
    return dtype.is_floating_point and wide_dtype(dtype) != dtype

"""Accumulation precision for models run in reduced precision (bfloat16, float16).

A model may run in bf16/fp16 to fit a device; every reduction over its outputs (softmax, losses,
means, cosines) is done in at least float32, and construction audits stay in float64.
`wide_dtype(torch.bfloat16)` is float32, `wide_dtype(torch.float64)` stays float64.
"""

from __future__ import annotations

from collections.abc import Mapping

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


def first_non_finite(tensors: Mapping[str, Tensor]) -> str | None:
    """The name of the first floating-point tensor holding NaN or inf, else None.

    One multi-tensor norm pass (`torch._foreach_norm`; a NaN/inf entry makes its norm
    non-finite), per device and dtype; a non-finite norm is confirmed entry by entry, since the
    norm of huge finite values can overflow."""
    names = [n for n, t in tensors.items() if t.is_floating_point() and not t.is_meta]
    groups: dict[tuple[torch.device, torch.dtype], list[str]] = {}
    for n in names:
        groups.setdefault((tensors[n].device, tensors[n].dtype), []).append(n)
    bad = set()
    for group in groups.values():
        norms = torch._foreach_norm([tensors[n] for n in group])
        flags = torch.stack([x.float() for x in norms]).isfinite().cpu().tolist()
        bad |= {n for n, ok in zip(group, flags, strict=True)
                if not ok and not bool(torch.isfinite(tensors[n]).all())}
    return next((n for n in names if n in bad), None)

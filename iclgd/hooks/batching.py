"""Batches of forward passes that back off on GPU out-of-memory (`--batch-size auto`).

`run_batched(n, batch_size, step)` calls `step(lo, hi)` over consecutive chunks of `n` rows.
With an integer batch size the chunks have that size and an out-of-memory error becomes a
one-line `IclgdError` (pass a smaller size, or `auto`). With an `AutoBatch` the first chunk tries
as many rows as allowed (on CUDA: every row, capped at `AutoBatch.cap`; on CPU, where memory
exhaustion is not a catchable error, the caller's default), and on `torch.OutOfMemoryError` the
chunk is retried at half the size, with one line on stderr per halving. The size reached is kept
on the `AutoBatch`, so later calls sharing it start there.

Results do not depend on the batch size beyond float rounding (each row is its own sequence).
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any, TypeVar

import torch

from iclgd.errors import IclgdError
from iclgd.runtime import heap_free_bytes

T = TypeVar("T")
AUTO = "auto"


class AutoBatch:
    """A batch size found by halving on out-of-memory, shared by the calls that use it.

    `size` is None until an out-of-memory error, then the size halved to (it never grows).
    `log(msg)` reports each halving (default: one line on stderr).
    """

    cap = 4096

    def __init__(self, start: int | None = None, log: Callable[[str], None] | None = None):
        if start is not None and start < 1:
            raise IclgdError(f"batch size must be >= 1, got {start}")
        self.size = start
        self.log = log or (lambda msg: print(msg, file=sys.stderr))
        self.backoffs = 0

    def __repr__(self) -> str:
        return f"AutoBatch(size={self.size})"

    def first(self, n: int, default: int, device: torch.device) -> int:
        """The size to try first for `n` rows."""
        if self.size is None:
            return max(1, min(n, self.cap if device.type == "cuda" else default))
        return max(1, min(n, self.size))


BatchSize = int | AutoBatch | str


def parse_batch_size(value: Any) -> int | AutoBatch:
    """`"auto"` → a fresh `AutoBatch`; an integer ≥ 1 (or its string) → that int."""
    if isinstance(value, AutoBatch):
        return value
    if isinstance(value, str) and value.strip().lower() == AUTO:
        return AutoBatch()
    try:
        size = int(value)
    except (TypeError, ValueError) as err:
        raise IclgdError(f"batch size must be an integer >= 1 or 'auto', got {value!r}") from err
    if size < 1 or (isinstance(value, float) and value != size):
        raise IclgdError(f"batch size must be an integer >= 1 or 'auto', got {value!r}")
    return size


def model_device(model: Any) -> torch.device:
    """Device of the model's first parameter (CPU when it has none or it is offloaded)."""
    try:
        dev = next(model.parameters()).device
    except (StopIteration, AttributeError):
        return torch.device("cpu")
    return torch.device("cpu") if dev.type == "meta" else dev


def available_memory(device: torch.device | str) -> int | None:
    """Bytes the device can still hand out: free GPU memory on CUDA (`torch.cuda.mem_get_info`);
    on a Linux CPU `MemAvailable` of `/proc/meminfo` plus what this process's heap holds freed
    (`iclgd.runtime.heap_free_bytes`); None where neither is known."""
    device = torch.device(device)
    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0])
    if device.type != "cpu":
        return None
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024 + heap_free_bytes()
    except OSError:
        return None
    return None


def run_batched(
    n: int,
    batch_size: BatchSize,
    step: Callable[[int, int], T],
    *,
    default: int = 32,
    device: torch.device | str = "cpu",
    what: str = "forward pass",
) -> list[T]:
    """`[step(lo, hi) for consecutive chunks covering range(n)]` (module docstring)."""
    size_or_auto = parse_batch_size(batch_size)
    out: list[T] = []
    if isinstance(size_or_auto, int):
        for lo in range(0, n, size_or_auto):
            try:
                out.append(step(lo, min(lo + size_or_auto, n)))
            except torch.OutOfMemoryError as err:
                _free()
                raise IclgdError(
                    f"out of memory in the {what} at batch size {size_or_auto}: pass a smaller "
                    "--batch-size, or --batch-size auto"
                ) from err
        return out
    auto = size_or_auto
    size = auto.first(n, default, torch.device(device))
    lo = 0
    while lo < n:
        hi = min(lo + size, n)
        try:
            out.append(step(lo, hi))
        except torch.OutOfMemoryError as err:
            _free()
            if hi - lo == 1:
                raise IclgdError(
                    f"out of memory in the {what} at batch size 1: use a larger device, a "
                    "reduced --dtype (bfloat16) or a device_map across devices"
                ) from err
            size = (hi - lo) // 2
            auto.size = size if auto.size is None else min(auto.size, size)
            auto.backoffs += 1
            auto.log(f"iclgd: out of memory in the {what} at batch size {hi - lo}; "
                     f"retrying with batch size {size}")
            continue
        lo = hi
    return out


def _free() -> None:
    if torch.cuda.is_available():
        torch.cuda.empty_cache()

"""`--batch-size auto`: halving on (injected) out-of-memory errors, same numbers as a fixed size."""

from __future__ import annotations

import pytest
import torch

from iclgd.errors import IclgdError
from iclgd.hooks import load_model
from iclgd.hooks.batching import AutoBatch, parse_batch_size, run_batched
from iclgd.probes.icl import IclPrompts, icl_accuracy, icl_score


def _oom_above(limit: int, calls: list[int]):
    def step(lo: int, hi: int) -> list[int]:
        calls.append(hi - lo)
        if hi - lo > limit:
            raise torch.OutOfMemoryError("CUDA out of memory (injected)")
        return list(range(lo, hi))
    return step


def test_auto_halves_retries_and_remembers():
    calls, logs = [], []
    auto = AutoBatch(log=logs.append)
    parts = run_batched(20, auto, _oom_above(5, calls), default=16, device="cuda")
    assert [i for p in parts for i in p] == list(range(20))  # every row once, in order
    assert calls[:3] == [20, 10, 5]  # CUDA: all 20 rows first, then halves
    assert calls[3:] == [5, 5, 5]
    assert auto.size == 5 and auto.backoffs == 2
    assert logs == ["iclgd: out of memory in the forward pass at batch size 20; retrying with "
                    "batch size 10",
                    "iclgd: out of memory in the forward pass at batch size 10; retrying with "
                    "batch size 5"]
    calls.clear()
    run_batched(9, auto, _oom_above(5, calls), default=16, device="cuda")
    assert calls == [5, 4] and auto.backoffs == 2  # starts at the remembered size
    calls.clear()
    run_batched(40, AutoBatch(), _oom_above(100, calls), default=16, device="cpu")
    assert calls == [16, 16, 8]  # CPU: no catchable OOM, the caller's default


def test_fixed_size_turns_oom_into_one_line_and_bad_sizes():
    with pytest.raises(IclgdError, match="at batch size 8: pass a smaller --batch-size"):
        run_batched(20, 8, _oom_above(5, []))
    with pytest.raises(IclgdError, match="at batch size 1"):
        run_batched(3, AutoBatch(log=lambda m: None), _oom_above(0, []), device="cuda")
    assert parse_batch_size("12") == 12 and isinstance(parse_batch_size("auto"), AutoBatch)
    for bad in ("0", "x", -3, 2.5):
        with pytest.raises(IclgdError, match="integer >= 1 or 'auto'"):
            parse_batch_size(bad)


def test_icl_probes_with_injected_oom_match_fixed_batches(tiny_models, monkeypatch):
    model = load_model(tiny_models["neox"], device="cpu")
    gen = torch.Generator().manual_seed(0)
    tokens = torch.randint(1, 64, (13, 40), generator=gen)
    prompts = [IclPrompts.last_token(2, tokens, tokens[:, 5])]
    want_acc = icl_accuracy(model, prompts, batch_size=3)
    want_score = icl_score(model, tokens, early=4, late=30, batch_size=3)
    forward = type(model).forward
    sizes = []

    def fake_forward(self, tokens, *args, **kwargs):  # a GPU that fits 3 rows
        sizes.append(tokens.shape[0])
        if tokens.shape[0] > 3:
            raise torch.OutOfMemoryError("CUDA out of memory (injected)")
        return forward(self, tokens, *args, **kwargs)

    monkeypatch.setattr(type(model), "forward", fake_forward)
    logs = []
    auto = AutoBatch(start=13, log=logs.append)
    got = icl_accuracy(model, prompts, batch_size=auto)
    assert got.accuracy == want_acc.accuracy and got.count == {2: 13}
    assert sizes[:3] == [13, 6, 3] and auto.size == 3 and len(logs) == 2
    assert "ICL accuracy at batch size 13; retrying with batch size 6" in logs[0]
    score = icl_score(model, tokens, early=4, late=30, batch_size=auto)
    assert score.score == pytest.approx(want_score.score, abs=1e-12)
    assert len(logs) == 2  # the remembered size fits: no new back-off


def test_available_memory_counts_the_heap_it_keeps():
    """On a Linux CPU: the kernel's MemAvailable plus the process's freed-but-kept heap."""
    import ctypes
    import ctypes.util
    import sys

    from iclgd.hooks.batching import available_memory
    from iclgd.runtime import heap_free_bytes

    if not sys.platform.startswith("linux"):
        pytest.skip("reads /proc/meminfo")
    with open("/proc/meminfo") as f:
        kernel = next(int(line.split()[1]) * 1024 for line in f if line.startswith("MemAvailable"))
    got = available_memory("cpu")
    assert got is not None and abs(got - kernel - heap_free_bytes()) < 256 << 20
    libc = ctypes.CDLL(ctypes.util.find_library("c"))
    if not hasattr(libc, "mallinfo2"):
        pytest.skip("glibc < 2.33")
    libc.malloc.restype = ctypes.c_void_p
    libc.free.argtypes = [ctypes.c_void_p]
    blocks = [libc.malloc(16 << 10) for _ in range(257)]  # below the mmap threshold: heap
    before = heap_free_bytes()
    for b in blocks[:-1]:  # the last one keeps the freed space from being trimmed
        libc.free(b)
    assert heap_free_bytes() - before >= 256 * (16 << 10) * 0.9
    libc.free(blocks[-1])

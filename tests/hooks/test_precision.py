"""Numeric helpers of iclgd.hooks.precision."""

import torch


def test_first_non_finite_names_the_first_bad_tensor_and_not_overflowing_norms():
    from iclgd.hooks.precision import first_non_finite

    ok = torch.ones(3)
    huge = torch.full((4,), 3e38)  # finite, but its norm overflows float32
    nan, inf = torch.tensor([0.0, float("nan")]), torch.tensor([float("-inf")], dtype=torch.float64)
    assert first_non_finite({"a": ok, "b": huge, "i": torch.arange(3)}) is None
    assert first_non_finite({"a": ok, "n": nan, "f": inf}) == "n"
    assert first_non_finite({"f": inf, "n": nan}) == "f"
    assert first_non_finite({}) is None

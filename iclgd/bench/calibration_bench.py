"""The CPU/GPU peak-memory method checked on tensors of known size (`measure.calibration_setup`):
measured peak / allocated bytes should be 1 (page rounding aside)."""

from __future__ import annotations

from iclgd.bench import Row
from iclgd.bench.measure import peak_memory


def run(quick: bool, device: str, tiny: bool = False) -> list[Row]:
    mib = 8 if tiny else 64
    got = peak_memory("iclgd.bench.measure:calibration_setup", {"mib": mib}, 3, "cpu")
    rows = []
    for name, count in (("one", 1), ("three", 3)):
        s = got[name]
        want = count * mib
        rows.append(Row("calibration", f"peak-memory check, {count} x {mib} MiB alive (CPU)",
                        s.median / 2**20, want, s.median / 2**20 / want, "MiB", "~ 0.01",
                        (min(s.values) / 2**20 / want, max(s.values) / 2**20 / want)))
    return rows

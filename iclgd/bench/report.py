"""The bench's table, its machine record, and `bench/RESULTS.md`'s generated section."""

from __future__ import annotations

import math
import os
import platform
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from iclgd.bench import Row

START, END = "<!-- iclgd bench: start (generated, do not edit) -->", "<!-- iclgd bench: end -->"


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine(device: str) -> dict[str, Any]:
    """Where and when the bench ran: CPU, cores, GPU, versions, date, load average."""
    import torch
    import transformers

    info: dict[str, Any] = {
        "date_utc": datetime.now(UTC).isoformat(timespec="seconds"),
        "cpu": cpu_model(), "cores": os.cpu_count(), "platform": platform.platform(),
        "python": platform.python_version(), "torch": torch.__version__,
        "transformers": transformers.__version__, "torch_threads": torch.get_num_threads(),
        "device": device,
        "load_average": [round(x, 2) for x in os.getloadavg()],
    }
    if str(device).startswith("cuda"):
        info["gpu"] = torch.cuda.get_device_name(torch.device(device))
    return info


def _num(x: float) -> str:
    if not math.isfinite(x):
        return "–"
    if x == 0:
        return "0"
    if abs(x) >= 1000:
        return f"{x:,.0f}"
    return f"{x:.3g}" if abs(x) < 1 else f"{x:.3f}" if abs(x) < 10 else f"{x:.1f}"


def table(rows: Sequence[Row]) -> str:
    """A Markdown table: one line per row, ratio with its spread and the target."""
    lines = ["| benchmark | ours | baseline | unit | ratio (spread) | target | met | note |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        finite = r.spread is not None and all(math.isfinite(x) for x in r.spread)
        spread = f" ({_num(r.spread[0])}–{_num(r.spread[1])})" if finite else ""
        met = {True: "yes", False: "**no**", None: ""}[r.passed]
        target = (r.target or "").replace("<=", "≤").replace(">=", "≥").replace("~", "1 ±")
        lines.append(f"| {r.name} | {_num(r.ours)} | {_num(r.baseline)} | {r.unit} | "
                     f"{_num(r.ratio)}{spread} | {target} | {met} | {r.note} |")
    return "\n".join(lines)


def machine_line(info: dict[str, Any]) -> str:
    gpu = f", GPU {info['gpu']}" if "gpu" in info else ", no GPU"
    load = ", ".join(str(x) for x in info["load_average"])
    return (f"{info['date_utc']}, {info['cpu']} ({info['cores']} cores){gpu}, device "
            f"{info['device']}, torch {info['torch']}, transformers {info['transformers']}, "
            f"Python {info['python']}, {info['torch_threads']} torch thread(s), load average "
            f"at start {load}")


def section(rows: Sequence[Row], info: dict[str, Any], command: str) -> str:
    """The generated part of RESULTS.md."""
    return "\n".join([
        START, "## Benchmarks (`iclgd bench`)", "",
        f"`{command}` — {machine_line(info)}.", "",
        "Each ratio sets iclgd's code against the same work done by plain PyTorch / Hugging "
        "Face calls, measured in the same run (variants interleaved; CPU time on CPU, wall "
        "time on CUDA; ratio = median over rounds of the per-round ratio, spread = lowest and "
        "highest). CPU peak memory: fresh process, glibc malloc thresholds fixed, kernel "
        "high-water mark reset before each pass (`iclgd.bench.measure`); the calibration rows "
        "check it on tensors of known size.", "",
        table(rows), "", END])


def write_results(path: Path, rows: Sequence[Row], info: dict[str, Any], command: str) -> Path:
    """Replace the generated section of `path` (or put it first), atomically."""
    from iclgd.results import atomic_write_text

    new = section(rows, info, command)
    text = path.read_text(encoding="utf-8") if path.exists() else "# Benchmarks\n"
    if START in text and END in text:
        head, rest = text.split(START, 1)
        text = head + new + rest.split(END, 1)[1]
    else:
        title, _, body = text.partition("\n")
        text = f"{title}\n\n{new}\n{body}"
    atomic_write_text(path, text)
    return path

"""The README's Python examples run and print the numbers the README shows."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"


def _examples() -> list[tuple[str, str]]:
    section = README.read_text().split("## Python in ten lines", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```python\n(.*?)```\n\nprints\n\n```\n(.*?)\n```", section, re.S)


def test_the_section_has_both_examples():
    examples = _examples()
    assert len(examples) == 2
    assert len(examples[0][0].strip().splitlines()) <= 10
    assert len([line for line in examples[1][0].splitlines() if line.strip()]) <= 15


@pytest.mark.parametrize("index", [0, 1])
def test_readme_example_prints_documented_output(index):
    code, expected = _examples()[index]
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == expected.strip()

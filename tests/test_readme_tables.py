"""The README's reliability table names tests that exist: a row whose test was renamed or removed would
promise a behaviour nothing checks any more."""

from __future__ import annotations

import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _reliability_rows() -> list[str]:
    readme = (REPO / "README.md").read_text()
    section = readme[readme.index("## Reliability") :]
    section = section[: section.index("\n## ", 1)]
    return [line for line in section.splitlines() if line.startswith("| ") and not line.startswith("| fault")]


def test_every_test_the_reliability_table_names_exists():
    rows = _reliability_rows()
    assert len(rows) > 20
    missing = []
    for row in rows:
        cell = row.rstrip().rstrip("|").rsplit("|", 1)[-1]
        module = None  # a bare `::name` belongs to the last file named before it in the cell
        named = re.findall(r"`(test_\w+\.py)?::(\w+)`", cell)
        assert named, f"a row without a test: {row[:80]}"
        for file, name in named:
            module = file or module
            source = (REPO / "tests" / module).read_text()
            if not re.search(rf"^def {name}\(", source, re.MULTILINE):
                missing.append(f"{module}::{name}")
    assert missing == []

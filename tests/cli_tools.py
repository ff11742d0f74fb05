"""The command-line tools of ``tools/``, loaded by path for in-process tests: ``tools`` is not a package."""

from __future__ import annotations

import importlib.util
from collections.abc import Callable
from pathlib import Path

TOOLS = Path(__file__).resolve().parents[1] / "tools"


def tool_main(name: str) -> Callable[[list[str]], int]:
    """``main`` of ``tools/<name>.py``."""
    spec = importlib.util.spec_from_file_location(f"{name}_tool", TOOLS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.main

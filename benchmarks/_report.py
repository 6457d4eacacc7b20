"""Shared output of the benchmarks: print the figures, write them as JSON (``--json PATH``)."""

from __future__ import annotations

import json
import platform
import sys
from pathlib import Path
from typing import Any


def emit(figures: dict[str, Any], json_path: str | None) -> None:
    """Add the interpreter and machine, print numeric figures aligned, write JSON if asked."""
    figures["python"] = sys.version.split()[0]
    figures["machine"] = platform.machine()
    for key, value in figures.items():
        if isinstance(value, float):
            print(f"{key:45s} {value:10.3f}")
        elif isinstance(value, int) and not isinstance(value, bool):
            print(f"{key:45s} {value:10d}")
    if json_path:
        path = Path(json_path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(figures, indent=2, sort_keys=True) + "\n")

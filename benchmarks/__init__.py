"""PacketCloud benchmarks.

Each benchmark is a module in this package, runnable on its own as
``python -m benchmarks.<name> --json PATH [--quick]``: it measures its figures together with a
baseline in the same run (so ratios survive a noisy shared machine), prints a summary and, with
``--json``, writes its figures under the names its issue gives. ``--quick`` runs a tiny
iteration count (for tests that only check the benchmark works).

``python -m benchmarks [names...] [--quick]`` runs every benchmark module (or the named ones),
each in its own interpreter, and writes ``results/<name>.json``. Benchmarks are not part of the
test suite.
"""

from __future__ import annotations

import pkgutil
from pathlib import Path

__all__ = ["available"]

_SKIP = {"__main__", "common"}


def available() -> list[str]:
    """Names of the benchmark modules in this package, sorted."""
    here = str(Path(__file__).parent)
    return sorted(
        m.name
        for m in pkgutil.iter_modules([here])
        if not m.ispkg and not m.name.startswith("_") and m.name not in _SKIP
    )

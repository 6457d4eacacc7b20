from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

TOPOLOGIES = Path(__file__).resolve().parents[2] / "testbed" / "topologies"
PREFIX = "pct"


@pytest.fixture(scope="session")
def fig2() -> Iterator[object]:
    """One fig2 testbed shared by the tests that only read it (built once, torn down at the end)."""
    if os.geteuid() != 0:
        pytest.skip("needs root")
    from testbed import Testbed

    with Testbed.from_file(TOPOLOGIES / "fig2.toml", prefix=PREFIX) as tb:
        yield tb

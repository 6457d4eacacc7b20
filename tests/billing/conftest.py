"""Fixtures shared by the billing tests."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from pcsite_lite.billing.ledger import Ledger


@pytest.fixture
def run_id() -> str:
    """A per-run id; names this test creates (sites, child processes' arguments) carry it."""
    return f"pcb-{uuid.uuid4().hex[:8]}"


@pytest.fixture
def ledger(tmp_path: Path) -> Iterator[Ledger]:
    with Ledger(tmp_path / "site.ledger") as led:
        yield led

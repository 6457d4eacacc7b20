"""Shared test configuration.

Tests that need root, network namespaces and veth carry ``@pytest.mark.netns``. CI runs as
root, so they run there; elsewhere they are skipped with the reason printed.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if os.geteuid() == 0:
        return
    skip = pytest.mark.skip(reason="needs root for network namespaces (CI runs as root)")
    for item in items:
        if "netns" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(autouse=True)
def _keep_vcpus() -> Iterator[None]:
    """Benchmarks run in-process by tests pin the calling thread to one vCPU (their load
    generator's); give the test process its vCPUs back so later tests are not squeezed."""
    before = os.sched_getaffinity(0)
    yield
    if os.sched_getaffinity(0) != before:
        os.sched_setaffinity(0, before)

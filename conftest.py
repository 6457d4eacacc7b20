"""Shared test configuration.

Tests that need root, network namespaces and veth carry ``@pytest.mark.netns``. CI runs as
root, so they run there; elsewhere they are skipped with the reason printed.
"""

from __future__ import annotations

import os

import pytest


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if os.geteuid() == 0:
        return
    skip = pytest.mark.skip(reason="needs root for network namespaces (CI runs as root)")
    for item in items:
        if "netns" in item.keywords:
            item.add_marker(skip)

"""Fixtures for the site pipeline tests."""

from __future__ import annotations

import pytest

from tests.support.site_topo import Fig2, make_fig2


@pytest.fixture
def fig2() -> Fig2:
    return make_fig2()

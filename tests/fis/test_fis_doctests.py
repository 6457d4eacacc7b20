"""The docstring examples of the FIS modules run as written."""

from __future__ import annotations

import doctest

import pytest

from pcsite_lite import fis, lpm


@pytest.mark.parametrize("module", [fis, lpm], ids=lambda m: m.__name__)
def test_docstring_examples_run(module: object) -> None:
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS)  # type: ignore[arg-type]
    assert result.attempted > 0
    assert result.failed == 0

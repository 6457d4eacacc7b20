"""The examples in pcsock.wire's and pcsock.scapy's docstrings run and hold."""

from __future__ import annotations

import doctest

import pytest

import pcsock.scapy
import pcsock.wire


@pytest.mark.parametrize("module", [pcsock.wire, pcsock.scapy], ids=["wire", "scapy"])
def test_docstring_examples(module: object) -> None:
    result = doctest.testmod(module, raise_on_error=False)  # type: ignore[arg-type]
    assert result.attempted > 0 and result.failed == 0

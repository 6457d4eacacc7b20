"""The docstring examples of the FIS modules run as written."""

from __future__ import annotations

import doctest
import importlib
import pkgutil
from types import ModuleType

import pytest

from pcsite_lite import fis, lpm

MODULES: list[ModuleType] = [
    fis,
    *(
        importlib.import_module(f"{fis.__name__}.{m.name}")
        for m in pkgutil.iter_modules(fis.__path__)
    ),
    lpm,
]


@pytest.mark.parametrize("module", MODULES, ids=lambda m: m.__name__)
def test_docstring_examples_run(module: ModuleType) -> None:
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS)
    assert result.failed == 0


def test_docstring_examples_exist() -> None:
    attempted = {
        m.__name__: doctest.testmod(m, optionflags=doctest.ELLIPSIS).attempted for m in MODULES
    }
    assert attempted[fis.__name__] > 0 and attempted[lpm.__name__] > 0
    assert attempted[f"{fis.__name__}.names"] > 0 and attempted[f"{fis.__name__}.cache"] > 0

"""The runnable examples of the SDK docs run (every ```python block not marked ``# needs root``)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

DOCS = Path(__file__).resolve().parents[2] / "docs"
FILES = ["pcsock.md", "tutorial-form1.md", "tutorial-form2.md", "tutorial-form3.md"]


def _blocks():
    for name in FILES:
        text = (DOCS / name).read_text()
        for i, m in enumerate(re.finditer(r"```python\n(.*?)```", text, re.S)):
            code = m.group(1)
            if code.lstrip().startswith("# needs root"):
                continue
            yield pytest.param(code, id=f"{name}#{i}")


@pytest.mark.parametrize("code", list(_blocks()))
def test_doc_example_runs(code, capsys):
    exec(compile(code, "<doc>", "exec"), {"__name__": "__doc_example__"})


def test_every_doc_has_runnable_examples():
    ids = {p.id.split("#")[0] for p in _blocks()}
    assert ids == set(FILES)

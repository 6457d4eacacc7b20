"""The Python API example in docs/testbed.md runs as written."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

DOC = Path(__file__).resolve().parents[2] / "docs" / "testbed.md"


@pytest.mark.netns
def test_docs_python_example_runs(tmp_path: Path) -> None:
    text = DOC.read_text()
    start = text.index("```python\n# runnable") + len("```python\n")
    code = text[start : text.index("```", start)].replace('prefix="pcx"', 'prefix="pct"')
    script = tmp_path / "example.py"
    script.write_text(code)
    out = subprocess.run(
        [sys.executable, str(script)],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=DOC.parents[1],
    )
    assert out.returncode == 0, out.stderr
    assert "['198.18.64.0/24']" in out.stdout and "DNSKEY 257 3 15" in out.stdout

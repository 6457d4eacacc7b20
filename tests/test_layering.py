"""The packages import one another only along the arrows of docs/architecture.md.

Every module of every package of ours is parsed (nothing is imported to check it) and each
import is resolved to the package it names: module-level and function-local ``import`` /
``from ... import`` (relative ones resolved), imports under ``TYPE_CHECKING``, and
``importlib.import_module("...")`` / ``__import__("...")`` of a literal name. An import of a
package of ours that the table in docs/architecture.md does not allow fails the test, with
file and line.
"""

from __future__ import annotations

import ast
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "architecture.md"

#: What each package may import of ours (docs/architecture.md, "Packages and their arrows").
ALLOWED: dict[str, frozenset[str]] = {
    "pcsock": frozenset(),
    "testbed": frozenset(),
    "pcsite_lite": frozenset({"pcsock"}),
    "pcdemo": frozenset({"pcsock", "pcsite_lite", "testbed", "examples"}),
    "examples": frozenset({"pcsock", "pcsite_lite", "testbed", "pcdemo"}),
    "benchmarks": frozenset({"pcsock", "pcsite_lite", "testbed", "pcdemo", "examples"}),
}
#: Our top-level packages; ``tests`` is importable by nothing of ours.
OURS = frozenset(ALLOWED) | {"tests"}


def _is_test(path: Path) -> bool:
    """The example services' tests are tests (they may import anything, like tests/)."""
    return path.name.startswith("test_") or path.name == "conftest.py"


def modules(package: str) -> list[Path]:
    return sorted(
        p for p in (ROOT / package).rglob("*.py") if ".venv" not in p.parts and not _is_test(p)
    )


def _module_name(path: Path) -> str:
    parts = list((path.relative_to(ROOT) if path.is_absolute() else path).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _absolute(node: ast.ImportFrom, module: str, is_package: bool) -> list[str]:
    """The absolute module names a ``from ... import`` names."""
    if node.level == 0:
        return [node.module or ""]
    base = module.split(".")
    if not is_package:
        base.pop()
    base = base[: len(base) - (node.level - 1)] if node.level > 1 else base
    prefix = ".".join(base)
    if node.module:
        return [f"{prefix}.{node.module}" if prefix else node.module]
    return [f"{prefix}.{a.name}" if prefix else a.name for a in node.names]


def imports(source: str, module: str, *, is_package: bool = False) -> list[tuple[int, str]]:
    """(line, absolute module name) of every import in ``source``, wherever it is."""
    found: list[tuple[int, str]] = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            found += [(node.lineno, m) for m in _absolute(node, module, is_package)]
        elif isinstance(node, ast.Call) and node.args:
            fn = node.func
            name = fn.attr if isinstance(fn, ast.Attribute) else getattr(fn, "id", None)
            arg = node.args[0]
            if name in ("import_module", "__import__") and isinstance(arg, ast.Constant):
                if isinstance(arg.value, str) and not arg.value.startswith("."):
                    found.append((node.lineno, arg.value))
    return found


def violations(package: str, path: Path, source: str) -> list[str]:
    module = _module_name(path)
    bad = []
    for line, name in imports(source, module, is_package=path.name == "__init__.py"):
        top = name.split(".")[0]
        if top in OURS and top != package and top not in ALLOWED[package]:
            where = path.relative_to(ROOT) if path.is_absolute() else path
            bad.append(f"{where}:{line}: {package} imports {name}")
    return bad


@pytest.mark.parametrize("package", sorted(ALLOWED))
def test_package_imports_only_what_the_layers_allow(package):
    files = modules(package)
    assert files, f"no modules found under {package}/"
    bad = [v for f in files for v in violations(package, f, f.read_text())]
    assert not bad, "imports against docs/architecture.md's arrows:\n" + "\n".join(bad)


@pytest.mark.parametrize(
    ("package", "source", "flagged"),
    [
        ("pcsock", "def f():\n    from pcsite_lite.circuits import OutHopEntry\n", True),
        ("pcsock", "import testbed.net as tn\n", True),
        (
            "pcsock",
            "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    import pcdemo\n",
            True,
        ),
        ("pcsock", "import importlib\nimportlib.import_module('examples.rbf.demo')\n", True),
        ("pcsock", "x = __import__('pcsite_lite')\n", True),
        ("testbed", "class A:\n    def m(self):\n        import pcsock.wire\n", True),
        ("benchmarks", "def f():\n    from tests.support import sites\n", True),
        ("pcsite_lite", "from pcsock import wire\nfrom pcsock.lookup import SiteEntry\n", False),
        ("pcsock", "from . import wire\nfrom .session import Circuit\nimport scapy\n", False),
        ("benchmarks", "from pcdemo.scenarios import SRCROUTE\nimport examples.rbf\n", False),
    ],
)
def test_the_checker_finds_imports_wherever_they_are(package, source, flagged):
    bad = violations(package, Path(f"{package}/probe.py"), source)
    assert bool(bad) is flagged, bad


def test_relative_imports_resolve_to_their_package():
    src = "from .. import circuits\nfrom ..control.client import OutHop\nfrom . import x\n"
    names = [n for _, n in imports(src, "pcsite_lite.control.app")]
    assert names == ["pcsite_lite.circuits", "pcsite_lite.control.client", "pcsite_lite.control.x"]


def test_the_architecture_doc_draws_exactly_these_arrows():
    text = DOC.read_text()
    rows = re.findall(r"^\| `(\w+)` \| (.+?) \|$", text, re.M)
    table = {
        pkg: frozenset() if cell.strip() == "nothing" else frozenset(re.findall(r"`(\w+)`", cell))
        for pkg, cell in rows
        if pkg in OURS
    }
    assert table == ALLOWED


def test_importing_the_sdk_and_the_testbed_loads_nothing_else_of_ours():
    """Every module of pcsock and testbed imported in a fresh interpreter (from another
    directory, so only the installed packages are on the path): no module of another package
    of ours is loaded."""
    names = [
        _module_name(p)
        for pkg in ("pcsock", "testbed")
        for p in modules(pkg)
        if p.name != "__main__.py"
    ]
    code = (
        "import importlib, sys\n"
        f"for n in {names!r}:\n"
        "    importlib.import_module(n)\n"
        "print(' '.join(sorted({m.split('.')[0] for m in sys.modules})))\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd="/", env=env,
        timeout=120,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    loaded = set(out.stdout.split())
    assert {"pcsock", "testbed"} <= loaded
    assert not loaded & (OURS - {"pcsock", "testbed"}), loaded & OURS

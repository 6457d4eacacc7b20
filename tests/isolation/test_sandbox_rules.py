"""The in-process rules (first line of defence): every binding form, private module copies."""

from __future__ import annotations

import zlib

import pytest

from pcsite_lite.sandbox import ServiceLoadError, compile_service, load_service

TICK = "__pc_tick__"

#: Every way Python binds a name, each aimed at the inserted budget tick.
BINDINGS = {
    "match capture": f"match 'x'.upper:\n    case {TICK}:\n        pass\n",
    "match as": f"match 1:\n    case 1 as {TICK}:\n        pass\n",
    "match star": f"match [1]:\n    case [*{TICK}]:\n        pass\n",
    "match mapping rest": f"match {{}}:\n    case {{**{TICK}}}:\n        pass\n",
    "match class keyword": f"match 1:\n    case int(real={TICK}):\n        pass\n",
    "nested in process": (
        f"def process(pkt):\n    match pkt:\n        case {TICK}:\n            pass\n"
    ),
    "assignment": f"{TICK} = len\n",
    "walrus": f"y = ({TICK} := len)\n",
    "for target": f"for {TICK} in [len]:\n    pass\n",
    "comprehension target": f"y = [1 for {TICK} in [len]]\n",
    "with as": f"def f(c):\n    with c as {TICK}:\n        pass\n",
    "except as": f"try:\n    pass\nexcept Exception as {TICK}:\n    pass\n",
    "global": f"def f():\n    global {TICK}\n",
    "nonlocal": f"def f():\n    x = 1\n    def g():\n        nonlocal {TICK}\n",
    "import as": f"import zlib as {TICK}\n",
    "from import as": f"from zlib import crc32 as {TICK}\n",
    "del": f"del {TICK}\n",
    "function name": f"def {TICK}():\n    pass\n",
    "class name": f"class {TICK}:\n    pass\n",
    "argument": f"def f({TICK}):\n    pass\n",
    "lambda argument": f"f = lambda {TICK}: 1\n",
    "augmented": f"{TICK} += 1\n",
}


@pytest.mark.parametrize("form", sorted(BINDINGS))
def test_no_binding_form_can_rebind_the_budget_tick(form: str) -> None:
    with pytest.raises(ServiceLoadError) as e:
        compile_service(BINDINGS[form] + "def process(pkt):\n    pass\n")
    assert e.value.reason in ("forbidden_name", "forbidden_attribute"), e.value


def test_match_capture_of_an_ordinary_name_still_loads() -> None:
    src = "def process(pkt):\n    match pkt.form:\n        case 1 as f:\n            return f\n"
    assert callable(load_service(src).process)


def test_a_service_that_replaces_a_module_function_changes_only_its_own_copy() -> None:
    evil = load_service(
        "import zlib\nzlib.compress = lambda b: b'EVIL'\n"
        "def process(pkt):\n    return zlib.compress(b'x')\n"
    )
    other = load_service("import zlib\ndef process(pkt):\n    return zlib.compress(b'x')\n")
    assert evil.process(None) == b"EVIL"
    assert other.process(None) == zlib.compress(b"x")
    assert zlib.compress(b"x") != b"EVIL"  # the real module is untouched

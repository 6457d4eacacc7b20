"""docs/tutorial-form2.md §3 ("With real sockets") as written: D's listener first, then S's
form-2 socket, both in UDP mode, and D receives what S sent (issue #13 item 5: the tutorial
used to listen with mode="ip" for a UDP-mode sender, and to send before listening)."""

from __future__ import annotations

import re
import threading
import time
from pathlib import Path

import pytest

from tests.support.netns import call_in, netns

DOC = Path(__file__).resolve().parents[2] / "docs" / "tutorial-form2.md"
D, S = "198.18.64.2", "198.18.0.10"

pytestmark = pytest.mark.netns


def _section3_blocks() -> tuple[str, str]:
    text = DOC.read_text()
    section = text[text.index("## 3. With real sockets") :]
    code = re.findall(r"```python\n(.*?)```", section, re.S)
    [d_code] = [c for c in code if "pcsock.listen(" in c]
    [s_code] = [c for c in code if "service_socket(" in c]
    return d_code, s_code


def test_the_blocks_say_listen_first_in_the_senders_mode() -> None:
    d_code, s_code = _section3_blocks()
    assert "pcsock.listen(" in d_code and "service_socket(" in s_code
    assert 'mode="ip"' not in d_code + s_code  # both UDP mode, the default


def test_d_receives_what_s_sends() -> None:
    d_code, s_code = _section3_blocks()
    # Both ends share one namespace here, so S's block names its own address (on the testbed
    # S and D are different hosts and the kernel picks it).
    s_code = s_code.replace("port=9)", f'port=9, local_ip="{S}")')
    assert f'local_ip="{S}"' in s_code
    printed: list[tuple[object, ...]] = []
    with netns([D, S]) as ns:
        done = threading.Event()

        def at_d() -> None:
            try:
                exec(d_code, {"print": lambda *a: printed.append(a)})
            finally:
                done.set()

        box: dict[str, BaseException] = {}

        def run_d() -> None:
            try:
                call_in(ns, at_d, timeout=40)
            except BaseException as exc:
                box["e"] = exc

        t = threading.Thread(target=run_d, daemon=True)
        t.start()
        deadline = time.monotonic() + 30
        # S sends until D has received (a datagram sent before D listens is lost, as the
        # tutorial says)
        while not done.is_set() and time.monotonic() < deadline:
            call_in(ns, lambda: exec(s_code, {}))
            done.wait(0.2)
        t.join(10)
    assert "e" not in box, box.get("e")
    assert printed, "D received nothing"
    form, service_id, _metadata, payload = printed[0]
    assert (form, service_id, payload) == (2, "0xc0de", b"hello")

"""Test helpers: throw-away network namespaces (prefix "pcs") and running code inside them."""

from __future__ import annotations

import ctypes
import os
import subprocess
import threading
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TypeVar

T = TypeVar("T")
_libc = ctypes.CDLL(None, use_errno=True)
CLONE_NEWNET = 0x40000000


def sh(*args: str) -> None:
    subprocess.run(args, check=True, capture_output=True)


@contextmanager
def netns(addresses: list[str]) -> Iterator[str]:
    """A namespace ``pcs-<run id>`` whose loopback holds ``addresses`` (/32 each)."""
    name = f"pcs-{uuid.uuid4().hex[:8]}"
    sh("ip", "netns", "add", name)
    try:
        sh("ip", "-n", name, "link", "set", "lo", "up")
        for a in addresses:
            sh("ip", "-n", name, "addr", "add", f"{a}/32", "dev", "lo")
        yield name
    finally:
        subprocess.run(["ip", "netns", "del", name], capture_output=True)


def call_in(name: str, fn: Callable[[], T], timeout: float = 30.0) -> T:
    """Run ``fn`` in a thread moved into namespace ``name``; sockets it opens stay there."""
    box: dict[str, object] = {}

    def run() -> None:
        try:
            fd = os.open(f"/run/netns/{name}", os.O_RDONLY)
            try:
                if _libc.setns(fd, CLONE_NEWNET) != 0:
                    raise OSError(ctypes.get_errno(), "setns")
            finally:
                os.close(fd)
            box["r"] = fn()
        except BaseException as exc:
            box["e"] = exc

    t = threading.Thread(target=run, daemon=True)
    t.start()
    t.join(timeout)
    if t.is_alive():
        raise TimeoutError(f"work in {name} did not finish")
    if "e" in box:
        raise box["e"]  # type: ignore[misc]
    return box["r"]  # type: ignore[return-value]

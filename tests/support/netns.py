"""A throw-away network namespace with addresses on its loopback (the SDK tests' world).

Made and removed with :mod:`testbed.netns` (no ``ip netns`` fork, no second ``setns``); work
inside runs in a short thread there with :func:`testbed.netns.call_in` (re-exported here).
"""

from __future__ import annotations

import secrets
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from functools import partial

from testbed.netns import call_in, create, remove

__all__ = ["call_in", "netns"]


@contextmanager
def netns(addresses: list[str], prefix: str = "pcs") -> Iterator[str]:
    """A namespace ``<prefix>-<run id>`` whose (up) loopback holds ``addresses`` (/32 each);
    removed on exit, also after a failure."""
    name = f"{prefix}-{secrets.token_hex(4)}"
    call_in(None, partial(create, name))
    try:
        cmds = ["link set lo up"] + [f"addr add {a}/32 dev lo" for a in addresses]
        subprocess.run(["ip", "-n", name, "-batch", "-"], input="\n".join(cmds) + "\n",
                       check=True, capture_output=True, text=True)  # fmt: skip
        yield name
    finally:
        remove(name)

"""A circuit through a chain of sites, set up by the PSP (the lookup service's part).

Used by the examples whose service runs at two or more presences on one path (encryption
offload, redundancy elimination, rule-based forwarding). Sites are any handle with
``public_ip``, ``allocate_label(service)`` and ``install(label, service, in_key, out)`` --
:class:`pcdemo.example_testbed.SimSite` (simulator) and :class:`pcsock.control.SiteHandle`
(a site daemon, the namespace testbed) both are.
"""

from __future__ import annotations

import secrets
from collections.abc import Sequence
from typing import Any

from pcsite_lite.sim import CircuitHandle as Chain
from pcsock.wire import HopKey

__all__ = ["Chain", "open_chain"]


def open_chain(sites: Sequence[Any], service: str, destination: str) -> Chain:
    """Allocate a label at every site and install the hops back to front; the last site
    forwards to ``destination`` (label 0, no MAC: the receiver does not verify). The sender's
    part is a :class:`pcsite_lite.sim.CircuitHandle` (first site, label, hop key; every label
    in path order; ``packet()`` builds a form-1 packet into the circuit)."""
    if not sites:
        raise ValueError("a chain needs at least one site")
    labels = [s.allocate_label(service) for s in sites]
    keys = [secrets.token_bytes(16) for _ in sites]
    for i in range(len(sites) - 1, -1, -1):
        if i == len(sites) - 1:
            out: list[tuple[int, str, bytes | None]] = [(0, destination, None)]
        else:
            out = [(labels[i + 1], sites[i + 1].public_ip, keys[i + 1])]
        sites[i].install(labels[i], service, keys[i], out)
    return Chain(sites[0].public_ip, labels[0], HopKey(keys[0]), tuple(labels))

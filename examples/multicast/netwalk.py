"""A tiny in-process network for the examples' pipeline tests: sites, hosts, link counters.

Each site is a real :class:`pcsite_lite.site.Site` with a real
:class:`pcsite_lite.pipeline.Pipeline`; a packet a pipeline forwards goes to the site or host
that owns its next-hop address, one hop per "link" (counted per (from, to) pair). Routers are
not modelled: this checks what the services decide, hop by hop, with the site runtime and the
Packet API exactly as deployed. ``pcsite_lite.sim`` adds routers, delays and the clock.

:data:`GRAPH` is the small inter-domain graph the walks run over.
"""

from __future__ import annotations

from collections import Counter, deque
from dataclasses import dataclass, field
from typing import Any

from pcsite_lite.pipeline import Pipeline
from pcsite_lite.sandbox import tick_budget
from pcsite_lite.site import Site
from pcsite_lite.verdicts import Deliver, Drop, Forward

from .tree import adjacency_from_links

__all__ = ["GRAPH", "NetWalk"]

#: a small inter-domain graph (AS -> neighbours) with a cycle (64501-64502-64504-64503-64501)
#: and stubs (64505 behind 64504, 64506 behind 64502, 64507 behind 64503)
GRAPH = adjacency_from_links(
    [
        (64501, 64502),
        (64501, 64503),
        (64502, 64504),
        (64503, 64504),
        (64504, 64505),
        (64502, 64506),
        (64503, 64507),
    ]
)


@dataclass
class NetWalk:
    """Sites by public address; anything else is a host that records what it receives."""

    sites: dict[str, Site] = field(default_factory=dict)
    pipelines: dict[str, Pipeline] = field(default_factory=dict)
    received: dict[str, list[bytes]] = field(default_factory=dict)
    links: Counter[tuple[str, str]] = field(default_factory=Counter)
    drops: list[tuple[str, Drop]] = field(default_factory=list)
    now: float = 0.0

    def add_site(self, name: str, public_ip: str, **kw: Any) -> Site:
        kw.setdefault("budget", tick_budget())  # as in pcsite_lite.sim: load-independent
        site = Site(name, public_ip, **kw)
        self.sites[public_ip] = site
        self.pipelines[public_ip] = Pipeline(site)
        return site

    def send(self, from_addr: str, packet: bytes, to: str, *, max_hops: int = 1000) -> None:
        """Inject ``packet`` on the link ``from_addr -> to`` and run it to completion."""
        work: deque[tuple[str, str, bytes]] = deque([(from_addr, to, packet)])
        hops = 0
        while work:
            src, dst, data = work.popleft()
            hops += 1
            if hops > max_hops:
                raise RuntimeError("forwarding loop")
            self.links[src, dst] += 1
            pipe = self.pipelines.get(dst)
            if pipe is None:
                self.received.setdefault(dst, []).append(data)
                continue
            for v in pipe.process(data, self.now):
                if isinstance(v, Forward | Deliver):
                    work.append((dst, v.next_hop, v.data))
                else:
                    self.drops.append((dst, v))

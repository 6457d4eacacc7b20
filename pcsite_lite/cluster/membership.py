"""Cluster membership: which compute nodes take traffic (pure, sans-IO).

Nodes send a heartbeat every ``interval`` seconds to the load balancer (:func:`encode` /
:func:`decode`: JSON authenticated with HMAC-SHA256 under the cluster secret). A node is *in*
the table while its heartbeats keep arriving within ``ttl`` and it says ``up``; a node that
says ``draining`` leaves the table at once (planned removal: its heartbeats go on, so the LB
can tell it "you are out" and the node stops only after that, losing nothing); a node whose
heartbeats stop is *dead* after ``ttl``. Every node keeps a small integer *slot* while it is
known (its firewall mark and routing table on the LB), freed when it is forgotten.

The object holds no clock and no socket: the adapter passes ``now`` and applies what
:meth:`Membership.table` returns.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import json
import re
from dataclasses import dataclass
from typing import Final

from .maglev import DEFAULT_SIZE, MaglevTable

__all__ = ["Heartbeat", "HeartbeatError", "Member", "Membership", "decode", "encode"]

STATES: Final = ("up", "draining")
MAX_HEARTBEAT: Final = 512  #: bytes of one heartbeat datagram
_NODE_RE: Final = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,31}$")
_MAC_LEN: Final = 32


class HeartbeatError(ValueError):
    """A heartbeat the LB drops; ``reason`` is the counter it is counted under."""

    def __init__(self, reason: str, message: str) -> None:
        self.reason = reason
        super().__init__(message)


@dataclass(frozen=True, slots=True)
class Heartbeat:
    node: str  #: the node's name (unique in the site)
    addr: str  #: its address on the internal network (the LB routes to it)
    state: str  #: "up" or "draining"
    seq: int  #: increases with every heartbeat of one node process


def encode(hb: Heartbeat, secret: bytes) -> bytes:
    body = json.dumps(
        {"node": hb.node, "addr": hb.addr, "state": hb.state, "seq": hb.seq},
        separators=(",", ":"),
    ).encode()
    return hmac.new(secret, body, hashlib.sha256).digest() + body


def decode(data: bytes, secret: bytes) -> Heartbeat:
    """A heartbeat, or :class:`HeartbeatError` (never another exception)."""
    if len(data) > MAX_HEARTBEAT:
        raise HeartbeatError("too_long", f"heartbeat of {len(data)} bytes")
    if len(data) <= _MAC_LEN:
        raise HeartbeatError("truncated", "heartbeat shorter than its MAC")
    mac, body = data[:_MAC_LEN], data[_MAC_LEN:]
    if not hmac.compare_digest(mac, hmac.new(secret, body, hashlib.sha256).digest()):
        raise HeartbeatError("bad_mac", "heartbeat MAC does not verify")
    try:
        doc = json.loads(body)
        node, addr, st, seq = doc["node"], doc["addr"], doc["state"], doc["seq"]
    except (ValueError, TypeError, KeyError) as exc:
        raise HeartbeatError("malformed", f"heartbeat body: {exc}") from None
    if not isinstance(node, str) or not _NODE_RE.match(node):
        raise HeartbeatError("malformed", "heartbeat node name")
    if st not in STATES:
        raise HeartbeatError("malformed", f"heartbeat state {st!r}")
    if not isinstance(seq, int) or isinstance(seq, bool) or seq < 0:
        raise HeartbeatError("malformed", "heartbeat seq")
    try:
        ipaddress.IPv4Address(addr)
    except (ValueError, TypeError):
        raise HeartbeatError("malformed", "heartbeat address") from None
    return Heartbeat(node, addr, st, seq)


@dataclass
class Member:
    node: str
    addr: str
    state: str
    slot: int
    last: float  #: time of its last heartbeat
    seq: int


class Membership:
    """The LB's view of the compute nodes; :meth:`table` is the lookup table to install."""

    def __init__(
        self, *, ttl: float = 0.5, max_nodes: int = 64, size: int = DEFAULT_SIZE,
        forget_after: float = 60.0,
    ) -> None:  # fmt: skip
        if ttl <= 0:
            raise ValueError("ttl must be positive")
        self.ttl = ttl
        self.max_nodes = max_nodes
        self.size = size
        self.forget_after = forget_after
        self.members: dict[str, Member] = {}
        self.version = 0  #: bumps whenever the set of nodes in the table changes
        self._in: frozenset[str] = frozenset()
        self._table: MaglevTable | None = None
        self.dropped: dict[str, int] = {}

    def _drop(self, reason: str) -> None:
        self.dropped[reason] = self.dropped.get(reason, 0) + 1

    def heartbeat(self, hb: Heartbeat, now: float) -> bool:
        """Record one heartbeat; True if the node is in the table afterwards."""
        m = self.members.get(hb.node)
        if m is None:
            used = {x.slot for x in self.members.values()}
            free = [s for s in range(self.max_nodes) if s not in used]
            if not free:
                self._drop("no_slot")
                return False
            m = Member(hb.node, hb.addr, hb.state, free[0], now, hb.seq)
            self.members[hb.node] = m
        else:
            alive = now - m.last <= self.ttl
            if alive and hb.seq <= m.seq and hb.addr == m.addr:
                self._drop("stale")  # replayed or reordered
                return hb.node in self._in
            m.addr, m.state, m.last, m.seq = hb.addr, hb.state, now, hb.seq
        self._recompute(now)
        return hb.node in self._in

    def in_table(self, now: float) -> frozenset[str]:
        """Nodes that take traffic at ``now``: heard within ttl and not draining."""
        return frozenset(
            m.node for m in self.members.values() if m.state == "up" and now - m.last <= self.ttl
        )

    def expire(self, now: float) -> bool:
        """Drop nodes silent for ``ttl`` from the table (forget them after ``forget_after``);
        True if the table changed."""
        for name in [n for n, m in self.members.items() if now - m.last > self.forget_after]:
            del self.members[name]
        return self._recompute(now)

    def _recompute(self, now: float) -> bool:
        live = self.in_table(now)
        if live == self._in:
            return False
        self._in = live
        self.version += 1
        # from the previous table: only the nodes that came or went change positions
        self._table = MaglevTable(live, self.size, previous=self._table) if live else None
        return True

    def table(self) -> MaglevTable | None:
        """The current lookup table (None: no node takes traffic)."""
        return self._table

    def next_expiry(self) -> float | None:
        """The earliest time a node in the table expires (the adapter wakes up then)."""
        ts = [self.members[n].last + self.ttl for n in self._in]
        return min(ts) if ts else None

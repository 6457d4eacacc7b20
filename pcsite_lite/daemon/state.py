"""Site state shared by the supervisor (the master copy) and the workers (replicas).

The control API changes the master copy (:class:`SiteState`); each change is also expressed as
a small JSON *op* that the supervisor sends to every worker, which applies it to its
:class:`WorkerSite`. A worker that (re)starts receives :meth:`SiteState.snapshot_ops` first, so
replicas converge. FIS entries are not replicated this way: every worker opens the FIS engine
(SQLite WAL on one machine, Redis across machines) behind a node-local cache.

Ops::

    {"op": "circuit", "label": L, "psp": P, "service": S, "in_key": hex, "expires": t,
     "out": [{"label", "next_hop", "key", "final", "strip"}], "destination": ip | null}
    {"op": "teardown", "label": L}
    {"op": "renew", "label": L, "expires": t}
    {"op": "service_id", "id": N, "psp": P, "service": S}   /   {"op": "release_id", "id": N}
    {"op": "destination", "prefix": p, "psp": P, "service": S}
"""

from __future__ import annotations

import time
from typing import Any

from pcsite_lite import fis as fislib
from pcsite_lite.circuits import Circuit, CircuitTable, OutHop
from pcsite_lite.metering import Counters
from pcsite_lite.verdicts import Deliver, Drop, Forward, Verdict
from pcsock import wire

from .config import SiteConfig

__all__ = ["SiteState", "WorkerSite", "circuit_op"]


def circuit_op(c: Circuit) -> dict[str, Any]:
    """The replication op that installs circuit hop ``c``."""
    return {
        "op": "circuit",
        "label": c.in_label,
        "psp": c.psp,
        "service": c.service,
        "in_key": c.in_key.key.hex(),
        "expires": c.expires,
        "destination": c.destination,
        "out": [
            {
                "label": h.label,
                "next_hop": h.next_hop,
                "key": h.key.key.hex() if h.key else None,
                "final": h.final,
                "strip": h.strip,
            }
            for h in c.out_hops
        ],
    }


def _out_hops(doc: list[dict[str, Any]]) -> list[OutHop]:
    return [
        OutHop(
            label=int(h["label"]),
            next_hop=str(h["next_hop"]),
            key=wire.HopKey(bytes.fromhex(h["key"])) if h.get("key") else None,
            final=bool(h.get("final", False)),
            strip=bool(h.get("strip", False)),
        )
        for h in doc
    ]


class SiteState:
    """The supervisor's master copy: circuits, service IDs, destination registrations."""

    def __init__(self, cfg: SiteConfig) -> None:
        self.cfg = cfg
        self.circuits = CircuitTable()
        self.service_ids: dict[int, tuple[str, str]] = {}
        self.destinations: dict[str, dict[str, Any]] = {}  # prefix -> registration

    def snapshot_ops(self) -> list[dict[str, Any]]:
        """Ops that rebuild a replica from nothing."""
        ops: list[dict[str, Any]] = [circuit_op(c) for c in self.circuits]
        ops += [
            {"op": "service_id", "id": sid, "psp": p, "service": s}
            for sid, (p, s) in self.service_ids.items()
        ]
        ops += [
            {"op": "destination", "prefix": pfx, "psp": d["owner"], "service": d["service"]}
            for pfx, d in self.destinations.items()
        ]
        return ops


class WorkerSite:
    """A worker's replica of the site state and its per-packet processing.

    Form-1 packets take the circuit fast path: look the incoming label up in the replicated
    circuit table, verify the MAC under the in hop key, pick the out hop (the only one, or the
    one the PSP's FIS entry for the label names: a node-local cache hit), swap the label,
    rewrite the destination and re-MAC under the out hop key (:meth:`pcsock.wire.Packet.switch`).
    Everything else is counted and dropped with a reason until the service runtime handles it.
    """

    def __init__(self, cfg: SiteConfig, *, clock: Any = time.time) -> None:
        self.cfg = cfg
        self.table = CircuitTable()
        self.service_ids: dict[int, tuple[str, str]] = {}
        self.destinations: dict[str, tuple[str, str]] = {}
        self.clock = clock
        self.usage: dict[tuple[str, str], Counters] = {}
        self.fis: fislib.CachedFIS | None = fislib.CachedFIS(fislib.open_engine(cfg.fis_url))
        self._proto = cfg.dataplane.proto
        self._udp_port = cfg.dataplane.udp_port
        self._site_ip = wire.ip2int(cfg.public_ip)

    # --- replication
    def apply(self, op: dict[str, Any]) -> None:
        kind = op["op"]
        if kind == "circuit":
            label = int(op["label"])
            self.table._reserved[label] = (op["psp"], float("inf"))  # replica: trust master
            self.table.install(
                label,
                psp=op["psp"],
                service=op["service"],
                in_key=bytes.fromhex(op["in_key"]),
                out_hops=_out_hops(op["out"]),
                expires=float(op["expires"]),
                destination=op.get("destination"),
            )
        elif kind == "teardown":
            c = self.table.get(int(op["label"]))
            if c is not None:
                self.table.teardown(c.in_label, psp=c.psp)
        elif kind == "renew":
            c = self.table.get(int(op["label"]))
            if c is not None:
                self.table.renew(c.in_label, psp=c.psp, expires=float(op["expires"]))
        elif kind == "service_id":
            self.service_ids[int(op["id"])] = (op["psp"], op["service"])
        elif kind == "release_id":
            self.service_ids.pop(int(op["id"]), None)
        elif kind == "destination":
            self.destinations[op["prefix"]] = (op["psp"], op["service"])
        else:
            raise ValueError(f"unknown op {kind!r}")

    def usage_json(self) -> dict[str, Any]:
        return {f"{p}/{s}": c.as_dict() for (p, s), c in self.usage.items()}

    # --- data path
    def process(self, data: bytes) -> list[Verdict]:
        try:
            pkt = wire.parse(
                bytearray(data), verify_ip_checksum=False, proto=self._proto,
                udp_port=self._udp_port,
            )  # fmt: skip
        except wire.WireError as exc:
            return [Drop(exc.reason)]
        if pkt.form != wire.FORM_CIRCUIT:
            return [Drop("no_service")]
        if pkt.dst != self._site_ip:
            return [Drop("not_for_site")]
        c = self.table.get(pkt.label)
        if c is None:
            return [Drop("unknown_label")]
        key = (c.psp, c.service)
        meter = self.usage.get(key)
        if meter is None:
            meter = self.usage[key] = Counters()
        if c.expires <= self.clock():
            meter.drops += 1
            return [Drop("circuit_expired", f"{c.psp}/{c.service}")]
        hop = c.default
        if hop is None and self.fis is not None:
            meter.fis_reads += 1
            choice = self.fis.get(fislib.namespace(c.psp, c.service), fislib.label_key(pkt.label))
            if isinstance(choice, dict) and "out_label" in choice:
                hop = c.by_label.get(choice["out_label"])
        if hop is None:
            meter.drops += 1
            return [Drop("no_decision", f"{c.psp}/{c.service}")]
        n = len(pkt.buf)
        try:
            if hop.key is not None:
                pkt.switch(c.in_key, hop.label, hop.addr, hop.key)
            else:
                if not pkt.verify_mac(c.in_key):
                    raise wire.WireError("bad_mac")
                pkt.set_label(hop.label)
                pkt.set_dst(hop.addr)
        except wire.WireError as exc:
            meter.drops += 1
            return [Drop(exc.reason, f"{c.psp}/{c.service}")]
        if pkt.encap == "udp":
            # switch() patches the UDP checksum for the address only, not for the new label and
            # MAC: send none (RFC 768 allows 0 over IPv4; the shim carries its own check)
            pkt.buf[pkt.ihl + 6 : pkt.ihl + 8] = b"\0\0"
        meter.packets += 1
        meter.bytes_in += n
        meter.bytes_out += n
        if hop.final:
            out = pkt.strip_shim() if hop.strip else pkt.buf
            return [Deliver(bytes(out), hop.next_hop, stripped=hop.strip)]
        return [Forward(bytes(pkt.buf), hop.next_hop)]

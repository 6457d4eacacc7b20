"""The sans-IO heart of a pcsock socket: what bytes to send where, and what a received packet
means. No sockets, no clock; :mod:`pcsock.socket` adapts it to the kernel.

Two encapsulations (docs/protocol.md §2):

* ``"udp"`` — the shim rides in a UDP datagram to port 6253; the kernel writes the IP and UDP
  headers, so no privileges are needed. :meth:`Session.encode_circuit` returns the UDP payload.
* ``"ip"`` — the shim follows the IP header directly (IP protocol 253); the socket is raw and
  :meth:`Session.encode_circuit` returns the whole IPv4 packet (``IP_HDRINCL``).

What follows the shim is a transport header, as the paper's Fig. 1 puts the shim between the IP
header and the payload: pcsock writes a UDP header (application source and destination ports,
checksum 0 = none, RFC 768) and sets the shim's next protocol to 17. A last hop that strips the
shim for a legacy receiver thus hands it an ordinary UDP datagram to the right port, and
services read the application ports at payload offsets 0..3 in every form.

Replies (paper §2.1: "the embedding of the source IP address is used for the receiver to send
an ACK packet or even create a feedback tunnel to the sender"): :meth:`Session.encode_reply`
builds a form-1 packet with label 0 sent straight to the shim's original source (no sites on
the way); its own original source is the replier, so the exchange can go on.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from pcsock import wire

__all__ = ["REPLY_LABEL", "Circuit", "Datagram", "Session"]

#: The label of a direct reply to an original source (never allocated by sites: sites hand out
#: labels from 1).
REPLY_LABEL = 0

_UDP_HDR_LEN = 28  # IPv4 (20, no options) + UDP (8)


@dataclass(frozen=True)
class Circuit:
    """What a sender needs to use a circuit (handed out by a PSP's lookup service)."""

    first_hop: str  #: public IP of the first site
    label: int  #: the first hop's label
    key: wire.HopKey  #: the first hop's MAC key
    destination: str
    service: str = ""
    circuit_id: str = ""
    sites: tuple[str, ...] = ()
    expires: float = 0.0  #: POSIX seconds (0 = unknown)
    port: int = wire.UDP_PORT  #: the first site's UDP-encapsulation port
    psp: str = ""


@dataclass(frozen=True)
class Datagram:
    """A received datagram with its PacketCloud metadata."""

    payload: bytes
    source: str  #: the original source (form 1: from the shim; otherwise the IP source)
    destination: str
    form: int  #: wire.FORM_CIRCUIT, FORM_SERVICE or FORM_NONE
    metadata: int = 0
    label: int | None = None  #: form 1: the label the packet arrived with
    service_id: int | None = None  #: form 2
    via: str = ""  #: the IP source of the packet (the last site, for circuit traffic)
    sport: int = 0  #: application source port (the inner UDP header; 0 if none)
    dport: int = 0  #: application destination port
    encap: str = "udp"
    tos: int | None = None  #: the IP ToS byte (raw-IP mode only; the UDP socket does not see it)
    next_proto: int = wire.IPPROTO_UDP
    extra: dict[str, object] = field(default_factory=dict, compare=False)

    @property
    def is_reply(self) -> bool:
        """True for a direct reply (label 0) from a receiver."""
        return self.form == wire.FORM_CIRCUIT and self.label == REPLY_LABEL


class Session:
    """Encoder/decoder for one local endpoint (``local_ip``) in one encapsulation ``mode``."""

    def __init__(
        self, local_ip: str, *, mode: str = "udp", proto: int = wire.IPPROTO_PACKETCLOUD
    ) -> None:
        if mode not in ("udp", "ip"):
            raise ValueError(f"mode must be 'udp' or 'ip', not {mode!r}")
        wire.ip2int(local_ip)
        self.local_ip = local_ip
        self.mode = mode
        self.proto = proto
        self.ident = 0
        self.sent = 0
        self.received = 0
        self.dropped: dict[str, int] = {}
        self._shims: dict[tuple[str, int, bytes, int], bytes] = {}

    def _next_ident(self) -> int:
        self.ident = (self.ident + 1) & 0xFFFF
        return self.ident

    def _out(self, pkt: bytearray) -> bytes:
        self.sent += 1
        return bytes(pkt[_UDP_HDR_LEN:]) if self.mode == "udp" else bytes(pkt)

    @staticmethod
    def _transport(payload: bytes, sport: int, dport: int) -> bytes:
        if not (0 <= sport <= 0xFFFF and 0 <= dport <= 0xFFFF):
            raise wire.WireError("bad_field", "ports are 16-bit")
        if 8 + len(payload) > 0xFFFF:
            raise wire.WireError("bad_field", f"a {len(payload)}-byte payload is too large")
        return wire.UDP_HEADER.pack(sport, dport, 8 + len(payload), 0) + payload

    def circuit_prefix(
        self, circuit: Circuit, *, metadata: int = 0, sport: int = 0, dport: int = 0
    ) -> bytes:
        """What precedes the payload in every datagram :meth:`encode_circuit` makes for
        ``circuit`` with this metadata and these ports, for a payload of 0 bytes: in UDP mode
        the sealed shim and the application's UDP header; in IP mode the IPv4 header
        (identification 0), the shim and the UDP header.

        The shim and its MAC do not depend on the payload, so a sender can keep this and, per
        datagram, write the lengths (the UDP header's, in IP mode also the IPv4 total length,
        identification and header checksum) and append the payload: the bytes are then those
        of :meth:`encode_circuit`. ``pcsock._accel.Sender`` does exactly that in C."""
        pkt = wire.build_circuit_packet(
            src=self.local_ip,
            dst=circuit.first_hop,
            label=circuit.label,
            key=circuit.key,
            payload=self._transport(b"", sport, dport),
            metadata=metadata,
            udp=self.mode == "udp",
            dport=circuit.port,
            proto=self.proto,
        )
        return bytes(pkt[_UDP_HDR_LEN:]) if self.mode == "udp" else bytes(pkt)

    def encode_circuit(
        self, circuit: Circuit, payload: bytes, *, metadata: int = 0, sport: int = 0, dport: int = 0
    ) -> tuple[bytes, tuple[str, int]]:
        """(bytes to send, (address, port)) for ``payload`` on ``circuit``, to application
        port ``dport`` at the destination.

        In UDP mode the shim of a (circuit, metadata) pair never changes (its MAC covers the
        shim and the first hop's address only), so it is built once by the codec and reused:
        a datagram is then that shim, an 8-byte UDP header and the payload."""
        if self.mode == "udp":
            ck = (circuit.first_hop, circuit.label, circuit.key.key, metadata)
            shim = self._shims.get(ck)
            if shim is None:
                if len(self._shims) > 1024:
                    self._shims.clear()
                shim = bytes(
                    wire.build_circuit_packet(
                        src=self.local_ip, dst=circuit.first_hop, label=circuit.label,
                        key=circuit.key, metadata=metadata, udp=True,
                    )[_UDP_HDR_LEN:]
                )  # fmt: skip
                self._shims[ck] = shim
            self.sent += 1
            return shim + self._transport(payload, sport, dport), (circuit.first_hop, circuit.port)
        common = self._common(circuit.first_hop, payload, sport, dport, metadata, circuit.port)
        pkt = wire.build_circuit_packet(label=circuit.label, key=circuit.key, **common)
        return self._out(pkt), (circuit.first_hop, circuit.port)

    def encode_service(
        self,
        destination: str,
        service_id: int,
        payload: bytes,
        *,
        metadata: int = 0,
        port: int = wire.UDP_PORT,
        sport: int = 0,
        dport: int = 0,
    ) -> tuple[bytes, tuple[str, int]]:
        """Form 2: toward the real ``destination``; the socket must set ToS 0xAC (UDP mode) —
        in IP mode the header built here carries it."""
        pkt = wire.build_service_packet(
            service_id=service_id,
            **self._common(destination, payload, sport, dport, metadata, port),
        )
        return self._out(pkt), (destination, port)

    def _common(self, dst: str, payload: bytes, sport: int, dport: int, metadata: int,
                port: int) -> dict[str, Any]:  # fmt: skip
        """The packet builders' arguments every form sends with."""
        return {"src": self.local_ip, "dst": dst, "payload": self._transport(payload, sport, dport),
                "metadata": metadata, "udp": self.mode == "udp", "dport": port,
                "proto": self.proto, "ident": self._next_ident()}  # fmt: skip

    def encode_reply(self, to: Datagram | str, payload: bytes, *, metadata: int = 0,
                     port: int = wire.UDP_PORT, sport: int = 0,
                     dport: int = 0) -> tuple[bytes, tuple[str, int]]:  # fmt: skip
        """A direct reply (label 0) to a datagram's original source (or to an address); to a
        datagram, the application ports are swapped."""
        if isinstance(to, Datagram):
            dst, sport, dport = to.source, to.dport, to.sport
        else:
            dst = to
        pkt = wire.build_circuit_packet(
            label=REPLY_LABEL, key=None, **self._common(dst, payload, sport, dport, metadata, port)
        )
        return self._out(pkt), (dst, port)

    def decode(
        self,
        data: bytes,
        source: tuple[str, int] | None = None,
        *,
        destination: str = "",
        plain: bool = False,
    ) -> Datagram | None:
        """Interpret what the socket read: in UDP mode the UDP payload plus the sender's
        ``source`` (address, port); in IP mode a whole IPv4 packet. Returns None (and counts
        the reason in :attr:`dropped`) for anything that is not a well-formed PacketCloud
        packet (with ``plain=True``, a plain IPv4 packet is returned as form 0: what a form-3
        sender's ordinary socket sent)."""
        try:
            if self.mode == "udp":
                if source is None:
                    raise ValueError("UDP mode needs the datagram's source address")
                udp = wire.UDP_HEADER.pack(source[1], wire.UDP_PORT, 8 + len(data), 0)
                raw = wire.build_ipv4(
                    src=source[0],
                    dst=destination or self.local_ip,
                    proto=wire.IPPROTO_UDP,
                    payload=udp + data,
                )
                pkt = wire.parse(raw, verify_ip_checksum=False)
            else:
                pkt = wire.parse(data, proto=self.proto)
                if pkt.dst != wire.ip2int(self.local_ip):
                    # a raw socket sees every protocol-253 packet the host receives
                    self.dropped["not_for_me"] = self.dropped.get("not_for_me", 0) + 1
                    return None
        except wire.WireError as exc:
            self.dropped[exc.reason] = self.dropped.get(exc.reason, 0) + 1
            return None
        if pkt.form == wire.FORM_SERVICE and not pkt.verify_check():
            self.dropped["bad_check"] = self.dropped.get("bad_check", 0) + 1
            return None
        if pkt.form == wire.FORM_NONE and not plain:
            self.dropped["not_packetcloud"] = self.dropped.get("not_packetcloud", 0) + 1
            return None
        self.received += 1
        circuit = pkt.form == wire.FORM_CIRCUIT
        shim = pkt.form != wire.FORM_NONE
        body = pkt.payload
        sport = dport = 0
        if pkt.next_proto == wire.IPPROTO_UDP and len(body) >= 8:
            sport, dport, ulen, _ = wire.UDP_HEADER.unpack_from(body)
            body = body[8 : max(8, min(ulen, len(body)))]
        return Datagram(
            payload=bytes(body),
            sport=sport,
            dport=dport,
            source=wire.int2ip(pkt.orig_src if circuit else pkt.src),
            destination=wire.int2ip(pkt.dst),
            form=pkt.form,
            metadata=pkt.metadata if shim else 0,
            label=pkt.label if circuit else None,
            service_id=pkt.service_id if pkt.form == wire.FORM_SERVICE else None,
            via=wire.int2ip(pkt.src),
            encap=pkt.encap,
            tos=pkt.tos if self.mode == "ip" else None,
            next_proto=pkt.next_proto,
        )

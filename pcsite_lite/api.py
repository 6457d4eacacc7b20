"""The Packet API (paper Table 1): the only way a service touches a packet.

A service module defines ``process(pkt)``; ``pkt`` is a :class:`PacketApi`. The paper's §2.1
source-routing service (``pcsite_lite/services/source_routing.py``) is five lines of it:
``fetch`` the out hop of ``shim.read().label``, ``drop`` without one, else ``shim.update`` the
label and ``forward_to`` the next hop.

=================  ==========================================================================
Table 1 category   Calls
=================  ==========================================================================
Packet I/O         ``read(offset, length)``, ``write(offset, data)``, ``set_payload(data)``,
                   ``src``, ``dst``, ``proto``, ``tos``, ``ttl``, ``length``, ``form``, ``now``
Shim info          ``shim.read()``, ``shim.update(label=..., metadata=...)``, ``shim.label``,
                   ``shim.metadata``, ``shim.orig_src``, ``shim.service_id``, ``shim.hop_limit``
FIS lookup         ``fetch(key)``, ``lookup(table, addr)``, ``store(key, value)``,
                   ``isp_fetch(key)``, ``isp_lookup(table, addr)`` (ISP-published tables)
Caching            ``cache(key, buf)``, ``cache_get(key)`` (node-local, best effort)
Building blocks    ``aes(buf, key, decrypt=False, aad=b"")`` (AES-GCM),
                   ``compress(buf, decompress=False)``,
                   ``ed25519_verify(public_key, signature, message)``
Node identity      ``site_id``, ``node_id``
Logging            ``log(text)``
Delivery           ``forward_to(next_hop)``, ``replicate(targets, payloads=None)``,
                   ``encapsulate(outer_dst)``
Drop               ``drop(reason)``
=================  ==========================================================================

Offsets of ``read``/``write`` count from the start of the payload: what follows the shim (for
a plain form-3 packet: what follows the IP header), i.e. the transport header.

What a service can change, and nothing else (paper §2.4): the payload, the shim metadata, and
-- for a circuit -- the label/next hop, but only to one of the out hops the PSP installed for
this circuit. The IP source, the shim's original source, hop limit and checks are the site's:
the site rewrites the source to its own address and re-MACs after the service returns. A
refused call raises :class:`PacketApiError` and the packet is dropped as ``spoof_attempt`` even if
the service catches the error. Every call runs inside the service's metered CPU time; FIS
reads/writes, cache bytes and log lines are also counted in the service's
:class:`~pcsite_lite.metering.Counters`.

The ``pkt`` object is valid only during the ``process`` call that received it.
"""

from __future__ import annotations

import os
import struct
import zlib
from collections.abc import Callable, Iterable
from operator import attrgetter, itemgetter
from typing import TYPE_CHECKING, Any, Final

from cryptography.exceptions import InvalidSignature, InvalidTag
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from pcsite_lite.metering import Counters
from pcsite_lite.verdicts import PipelineReason
from pcsock.wire import (
    FORM_CIRCUIT,
    FORM_SERVICE,
    Packet,
    WireError,
    int2ip,
    internet_checksum,
    ip2int,
)

if TYPE_CHECKING:
    from pcsite_lite.circuits import CircuitEntry, OutHopEntry

__all__ = [
    "ACT_DROP",
    "ACT_ENCAP",
    "ACT_FORWARD",
    "ACT_NONE",
    "ACT_REPLICATE",
    "FisReader",
    "PacketApi",
    "PacketApiError",
    "ServiceContext",
    "Shim",
    "ShimView",
]

ACT_NONE: Final = 0
ACT_FORWARD: Final = 1
ACT_DROP: Final = 2
ACT_ENCAP: Final = 3
ACT_REPLICATE: Final = 4

#: Default cap on the copies one packet may become through ``replicate``.
REPLICATE_PER_PACKET: Final = 16
#: Most bytes of per-target payloads one ``replicate`` call may carry (all copies together).
REPLICATE_PAYLOAD_BYTES: Final = 0xFFFF
#: Most bytes an ``ed25519_verify`` message may have (an IPv4 packet's largest payload).
VERIFY_MESSAGE_BYTES: Final = 0xFFFF
#: Budget ticks one ``ed25519_verify`` costs (about 60 us of CPU, the time of ~1000 loop
#: iterations); the budget also reads its clock after each one.
VERIFY_TICKS: Final = 1000

#: A service's node-local cache holds at most this many bytes (keys + values); older entries
#: are evicted first. Best effort (paper §2.4): another node does not see it.
CACHE_LIMIT: Final = 1 << 20
_AES_KEYS: Final = 64  # AES-GCM contexts (and Ed25519 public keys) kept per service


class PacketApiError(Exception):
    """A Packet API call the site refuses. ``reason``: ``spoof_attempt`` (a field, label or
    next hop the service does not own) or ``api_misuse`` (bad arguments)."""

    def __init__(self, reason: str, detail: str) -> None:
        self.reason = reason
        self.detail = detail
        super().__init__(f"{reason}: {detail}")


class FisReader:
    """What the API needs from the FIS (``pcsite_lite.fis.CachedFIS`` provides it)."""

    def get(self, ns: str, key: str) -> Any:  # pragma: no cover - protocol
        raise NotImplementedError

    def lookup(self, ns: str, table: str, addr: int | str) -> Any:  # pragma: no cover
        raise NotImplementedError

    def put(self, ns: str, key: str, value: Any, *, writer: str) -> None:  # pragma: no cover
        raise NotImplementedError


class ServiceContext:
    """Per-(PSP, service) state the API acts on: FIS namespace, counters, cache, log sink."""

    __slots__ = (
        "aes_keys",
        "budget",
        "cache",
        "cache_limit",
        "cache_used",
        "counters",
        "cpu_source",
        "fis",
        "log_sink",
        "name",
        "node_id",
        "ns",
        "psp",
        "rep_max",
        "rep_rate",
        "rep_t",
        "rep_tokens",
        "service",
        "site_id",
        "verify_keys",
        "window_ns",
    )

    def __init__(
        self,
        psp: str,
        service: str,
        *,
        fis: Any = None,
        log_sink: Callable[[str], None] | None = None,
        counters: Counters | None = None,
        cache_limit: int = CACHE_LIMIT,
        replicate_caps: tuple[int, int | None] = (REPLICATE_PER_PACKET, None),
        identity: tuple[str, str] = ("", "0"),
        budget: Any = None,
    ) -> None:
        self.psp = psp
        self.service = service
        self.name = f"{psp}/{service}"
        self.ns = self.name  # == pcsite_lite.fis.namespace(psp, service)
        self.fis = fis
        self.log_sink = log_sink
        self.counters = counters if counters is not None else Counters()
        self.cache: dict[Any, bytes] = {}
        self.cache_used = 0
        self.cache_limit = cache_limit
        self.aes_keys: dict[bytes, AESGCM] = {}
        self.verify_keys: dict[bytes, Ed25519PublicKey] = {}
        #: the site's name and which node (and worker) of it runs the service
        self.site_id, self.node_id = identity
        #: the per-call budget the service ticks against (a building block charges it)
        self.budget = budget
        #: service time (cheap clock, ns) not yet scaled by ``Pipeline.account``
        self.window_ns = 0
        #: a confined service: ``() -> ns`` of kernel-accounted CPU of its process since the
        #: last call, billed instead of the pipeline's timing (see pcsite_lite.confine)
        self.cpu_source: Callable[[], int] | None = None
        #: replicate caps: copies per packet, copies per second (token bucket over the
        #: packet clock; None: no rate cap)
        self.rep_max, self.rep_rate = replicate_caps
        self.rep_tokens = float(self.rep_rate or 0)
        self.rep_t = 0.0


class ShimView(tuple):
    """``shim.read()``: the shim as the service sees it (addresses as dotted quads).

    Fields: ``form``; ``label`` (form 1: this hop's incoming label, or the out label the
    service already chose); ``service_id`` (form 2); ``metadata`` (None for a plain packet);
    ``orig_src`` (form 1: the original sender); ``hop_limit`` (form 1). A tuple underneath
    (built without a Python-level constructor: this is on every packet's path).
    """

    __slots__ = ()

    form = property(itemgetter(0))
    label = property(itemgetter(1))
    service_id = property(itemgetter(2))
    metadata = property(itemgetter(3))
    hop_limit = property(itemgetter(5))

    @property
    def orig_src(self) -> str | None:
        orig = self[4]
        return None if orig is None else int2ip(orig)

    def as_tuple(self) -> tuple[Any, ...]:
        """(form, label, service_id, metadata, orig_src, hop_limit)."""
        return (self[0], self[1], self[2], self[3], self.orig_src, self[5])

    def __repr__(self) -> str:
        names = ("form", "label", "service_id", "metadata", "orig_src", "hop_limit")
        return "ShimView(" + ", ".join(f"{n}={v!r}" for n, v in zip(names, self.as_tuple())) + ")"


_new_view = tuple.__new__
#: form-1 shim bytes 2..11: hop limit, metadata, label, original source
_SHIM1: Final = struct.Struct("!2xBBII")
_PLAIN_VIEW: Final = _new_view(ShimView, (0, None, None, None, None, None))


def _misuse(detail: str) -> PacketApiError:
    return PacketApiError(PipelineReason.API_MISUSE, detail)


def _addr(value: object, what: str) -> int:
    if isinstance(value, str | int) and not isinstance(value, bool):
        try:
            return ip2int(value)
        except WireError:
            pass
    raise _misuse(f"{what} must be an IPv4 address, got {value!r}")


class Shim:
    """``pkt.shim``: read the shim, update its label or metadata."""

    __slots__ = ("_d",)

    def __init__(self, decision: Decision) -> None:
        self._d = decision

    def read(self) -> ShimView:
        api = self._d
        p = api.pkt
        form = p.form
        if form == FORM_CIRCUIT:
            hops, md, label, orig = _SHIM1.unpack_from(p.buf, p.shim_off)
            if api.label is not None:
                label = api.label
            return _new_view(ShimView, (form, label, None, md, orig, hops))
        if form == FORM_SERVICE:
            return _new_view(ShimView, (form, None, p.service_id, p.metadata, None, None))
        return _PLAIN_VIEW

    @property
    def form(self) -> int:
        return self._d.pkt.form

    @property
    def label(self) -> int | None:
        """This hop's incoming label, or the out label the service already chose."""
        api = self._d
        p = api.pkt
        if p.form != FORM_CIRCUIT:
            return None
        return api.label if api.label is not None else p.label

    @property
    def metadata(self) -> int | None:
        p = self._d.pkt
        return p.metadata if p.form else None

    @property
    def orig_src(self) -> str | None:
        p = self._d.pkt
        return int2ip(p.orig_src) if p.form == FORM_CIRCUIT else None

    @property
    def service_id(self) -> int | None:
        p = self._d.pkt
        return p.service_id if p.form == FORM_SERVICE else None

    @property
    def hop_limit(self) -> int | None:
        p = self._d.pkt
        return p.hop_limit if p.form == FORM_CIRCUIT else None

    def update(
        self, *, label: int | None = None, metadata: int | None = None, **other: object
    ) -> None:
        """Set the out label (form 1: must be one the circuit owns) and/or the metadata.

        Any other field (original source, hop limit, check, service ID) is refused."""
        api = self._d
        if other:
            raise api.refuse(f"shim fields {sorted(other)} are not writable by services")
        if label is not None:
            circuit = api.circuit
            if circuit is None:
                raise api.refuse("only a circuit (form-1) packet has a label")
            if label not in circuit.by_label:
                raise api.refuse(f"label {label!r} is not an out hop of this circuit")
            api.label = label
            if api.hop is not None and api.hop.label != label:
                api.hop = None  # the last choice wins: egress follows the new label
        if metadata is not None:
            if not isinstance(metadata, int) or isinstance(metadata, bool):
                raise _misuse("metadata must be an int 0..255")
            if not 0 <= metadata <= 255:
                raise _misuse("metadata must be an int 0..255")
            if not api.pkt.form:
                raise _misuse("a plain packet has no shim metadata")
            api.pkt.set_metadata(metadata)
            api.md_changed = True


class Decision:
    """The site's side of one :class:`PacketApi`: the stage it is bound to and what the
    service decided there. The pipeline (and :mod:`~pcsite_lite.confine`) creates it, hands
    it to ``PacketApi(decision)``, binds it per packet and reads the outcome from it; the
    service never sees it (its ``pkt`` keeps it in a private slot).

    Inputs (set by :meth:`bind`): ``pkt`` the packet, ``ctx`` the service's context, ``now``
    the arrival time, ``circuit`` (form 1) and ``allowed`` (forms 2/3: the ``(net, mask)``
    prefixes ``encapsulate``/``replicate`` may tunnel to).

    Outputs (cleared by :meth:`reset`): ``action`` (an ``ACT_*`` constant), ``hop`` (form 1:
    the :class:`~pcsite_lite.circuits.OutHopEntry` ``forward_to`` chose), ``label`` (form 1: the
    out label ``shim.update`` chose), ``detail`` (``drop``'s reason), ``encap`` (the tunnel
    end point), ``replicas`` (``replicate``'s hops or addresses), ``payloads`` (None, or
    ``replicate``'s payload per replica: None keeps the packet's), ``spoof`` (the detail of a
    refused call: the packet is dropped even if the service caught the error) and
    ``md_changed`` (the shim metadata was rewritten).
    """

    __slots__ = (
        "action",
        "allowed",
        "circuit",
        "ctx",
        "detail",
        "encap",
        "hop",
        "label",
        "md_changed",
        "now",
        "payloads",
        "pkt",
        "replicas",
        "spoof",
    )

    pkt: Packet
    ctx: ServiceContext
    now: float
    circuit: CircuitEntry | None
    allowed: tuple[tuple[int, int], ...]
    action: int
    hop: OutHopEntry | None
    label: int | None
    detail: str
    encap: int
    replicas: list[Any]
    payloads: list[bytes | None] | None
    spoof: str | None
    md_changed: bool

    def __init__(self) -> None:
        self.now = 0.0
        self.circuit = None
        self.allowed = ()
        self.replicas = []
        self.payloads = None
        self.reset()

    def bind(
        self,
        pkt: Packet,
        ctx: ServiceContext,
        now: float,
        circuit: CircuitEntry | None,
        allowed: tuple[tuple[int, int], ...],
    ) -> None:
        """Point at one packet and one service stage, outputs cleared."""
        self.pkt = pkt
        self.ctx = ctx
        self.now = now
        self.circuit = circuit
        self.allowed = allowed
        self.reset()

    def reset(self) -> None:
        """Clear every output."""
        self.action = ACT_NONE
        self.hop = None
        self.label = None
        self.detail = ""
        self.encap = 0
        self.spoof = None
        self.md_changed = False
        if self.replicas:
            self.replicas = []
            self.payloads = None

    def refuse(self, detail: str) -> PacketApiError:
        """Record a refused call (the packet becomes a ``spoof_attempt`` drop even if the
        service catches the error) and return the error to raise."""
        self.spoof = detail
        return PacketApiError(PipelineReason.SPOOF_ATTEMPT, detail)


def _address(field: str, refusal: str) -> property:
    """A :class:`PacketApi` address as a dotted quad; assigning it is refused (``spoof_attempt``
    with ``refusal``)."""
    get = attrgetter(field)

    def read(api: PacketApi) -> str:
        return int2ip(get(api._d.pkt))

    def refuse(api: PacketApi, value: object) -> None:
        raise api._refuse(refusal)

    return property(read, refuse, doc=f"The packet's IPv4 {field} (read only).")


class PacketApi:
    """The ``pkt`` a service's ``process(pkt)`` receives (see the module docstring).

    One instance per pipeline is rebound for every packet and stage through its
    :class:`Decision` (no per-packet allocation).
    """

    __slots__ = ("_d", "_shim")

    def __init__(self, decision: Decision | None = None) -> None:
        self._d = decision if decision is not None else Decision()
        self._shim = Shim(self._d)

    def _refuse(self, detail: str) -> PacketApiError:
        return self._d.refuse(detail)

    def _may_redirect(self, addr: int) -> bool:
        for net, mask in self._d.allowed:
            if addr & mask == net:
                return True
        return False

    #: The shim: ``read()``, ``update(label=..., metadata=...)``, field properties.
    #: (A read-only property over a C getter: no Python frame on every packet.)
    shim = property(attrgetter("_shim"))

    # ---- packet I/O
    @property
    def form(self) -> int:
        """0 plain (form 3), 1 circuit, 2 service ID."""
        return self._d.pkt.form

    src = _address("src", "the IP source is the site's to set")
    dst = _address("dst", "the IP destination changes only through forward_to/encapsulate")

    @property
    def proto(self) -> int:
        """The payload's protocol (the shim's next protocol; IP protocol for plain packets)."""
        return self._d.pkt.next_proto

    @property
    def tos(self) -> int:
        return self._d.pkt.tos

    @property
    def ttl(self) -> int:
        return self._d.pkt.ttl

    @property
    def length(self) -> int:
        """Payload length in bytes."""
        p = self._d.pkt
        return len(p.buf) - p.payload_off

    @property
    def now(self) -> float:
        """Arrival time of the packet (the site's clock, seconds)."""
        return self._d.now

    # ---- node identity
    @property
    def site_id(self) -> str:
        """The name of the site running the service (the same on every node of the site)."""
        return self._d.ctx.site_id

    @property
    def node_id(self) -> str:
        """Which node of the site (and which worker of it) runs this call: distinct for every
        copy of the service's module state, so several copies can split work (e.g. a ring of
        FIS slots) without writing over each other."""
        return self._d.ctx.node_id

    def read(self, offset: int = 0, length: int | None = None) -> bytes:
        """``length`` payload bytes from ``offset`` (to the end if None); short at the end."""
        p = self._d.pkt
        if not isinstance(offset, int) or offset < 0:
            raise _misuse("offset must be a non-negative int")
        start = p.payload_off + offset
        if length is None:
            return bytes(p.buf[start:])
        if not isinstance(length, int) or length < 0:
            raise _misuse("length must be a non-negative int")
        return bytes(p.buf[start : start + length])

    def write(self, offset: int, data: bytes | bytearray) -> None:
        """Overwrite payload bytes in place (must lie inside the payload)."""
        p = self._d.pkt
        if not isinstance(data, bytes | bytearray) or not isinstance(offset, int) or offset < 0:
            raise _misuse("write(offset: int >= 0, data: bytes)")
        start = p.payload_off + offset
        if start + len(data) > len(p.buf):
            raise _misuse("write past the end of the payload (use set_payload to grow it)")
        p.buf[start : start + len(data)] = data
        if p.encap == "udp":
            _zero_udp_checksum(p)

    def set_payload(self, data: bytes | bytearray) -> None:
        """Replace the whole payload (any length); the site fixes lengths and checksums."""
        if not isinstance(data, bytes | bytearray):
            raise _misuse("set_payload(data: bytes)")
        p = self._d.pkt
        if p.payload_off + len(data) > 0xFFFF:
            raise _misuse("payload too large for an IPv4 packet")
        replace_payload(p, data)

    # ---- FIS
    def fetch(self, key: str | int) -> Any:
        """Value of ``key`` in this service's FIS namespace (int keys: decimal text)."""
        ctx = self._d.ctx
        ctx.counters.fis_reads += 1
        if type(key) is int:
            key = str(key)
        elif not isinstance(key, str):
            raise _misuse("FIS keys are str or int")
        return ctx.fis.get(ctx.ns, key)

    def lookup(self, table: str, addr: str | int) -> Any:
        """Longest-prefix match of ``addr`` in this service's FIS table ``table``."""
        ctx = self._d.ctx
        ctx.counters.fis_reads += 1
        return ctx.fis.lookup(ctx.ns, table, _addr(addr, "lookup address"))

    def isp_fetch(self, key: str) -> Any:
        """Value of ``key`` in the ISP-published namespace (read only)."""
        ctx = self._d.ctx
        ctx.counters.fis_reads += 1
        return ctx.fis.get("isp", str(key))

    def isp_lookup(self, table: str, addr: str | int) -> Any:
        """Longest-prefix match in an ISP-published table (e.g. ``"congestion"``)."""
        ctx = self._d.ctx
        ctx.counters.fis_reads += 1
        return ctx.fis.lookup("isp", table, _addr(addr, "lookup address"))

    def store(self, key: str | int, value: Any) -> None:
        """Write ``key`` in this service's own FIS namespace (shared by the site's nodes)."""
        ctx = self._d.ctx
        ctx.counters.fis_writes += 1
        ctx.fis.put(ctx.ns, str(key), value, writer=ctx.psp)

    # ---- node-local cache (best effort)
    def cache(self, key: str | int | bytes, buf: bytes) -> None:
        """Remember ``buf`` under ``key`` on this node (may be evicted at any time)."""
        if not isinstance(buf, bytes | bytearray):
            raise _misuse("cache values are bytes")
        if not isinstance(key, str | int | bytes) or isinstance(key, bool):
            raise _misuse("cache keys are str, int or bytes")
        ctx = self._d.ctx
        size = len(buf) + (len(key) if isinstance(key, str | bytes) else 8)
        if size > ctx.cache_limit:
            raise _misuse("value larger than the service's cache")
        ctx.counters.cache_bytes += size
        cache = ctx.cache
        old = cache.pop(key, None)
        if old is not None:
            ctx.cache_used -= len(old) + (len(key) if isinstance(key, str | bytes) else 8)
        while cache and ctx.cache_used + size > ctx.cache_limit:
            k, v = next(iter(cache.items()))
            del cache[k]
            ctx.cache_used -= len(v) + (len(k) if isinstance(k, str | bytes) else 8)
        cache[key] = bytes(buf)
        ctx.cache_used += size

    def cache_get(self, key: str | int | bytes) -> bytes | None:
        """What :meth:`cache` stored under ``key`` on this node, or None."""
        return self._d.ctx.cache.get(key)

    # ---- building blocks
    def aes(self, buf: bytes, key: bytes, decrypt: bool = False, aad: bytes = b"") -> bytes:
        """AES-GCM: encrypt to ``nonce(12) || ciphertext || tag`` or decrypt that form;
        ``aad``: associated data the tag also covers (at most 256 bytes; decrypting needs the
        same bytes).

        Raises PacketApiError(api_misuse) for a bad key or a ciphertext that does not
        authenticate.
        """
        return aes_gcm(self._d.ctx, buf, key, decrypt, aad)

    def compress(self, buf: bytes, decompress: bool = False) -> bytes:
        """zlib compress (or decompress; output capped at 64 KiB)."""
        if not isinstance(buf, bytes | bytearray):
            raise _misuse("compress(buf: bytes)")
        if not decompress:
            return zlib.compress(bytes(buf))
        d = zlib.decompressobj()
        try:
            out = d.decompress(bytes(buf), 0xFFFF)
        except zlib.error as exc:
            raise _misuse(f"not zlib data: {exc}") from None
        if d.unconsumed_tail:
            raise _misuse("decompressed data exceeds 64 KiB")
        return out

    def ed25519_verify(self, public_key: bytes, signature: bytes, message: bytes) -> bool:
        """True if ``signature`` (64 bytes) is ``public_key``'s (32 bytes, raw) Ed25519
        signature over ``message`` (at most 64 KiB), else False.

        Raises PacketApiError(api_misuse) for arguments of the wrong type or size. Each call
        costs :data:`VERIFY_TICKS` of the per-packet budget."""
        return ed25519_verify(self._d.ctx, public_key, signature, message)

    # ---- logging
    def log(self, text: str) -> None:
        """Append one accounting line to the service's log (billing stores it)."""
        ctx = self._d.ctx
        ctx.counters.log_lines += 1
        if ctx.log_sink is not None:
            ctx.log_sink(str(text)[:4096])

    # ---- delivery
    def forward_to(self, next_hop: str) -> None:
        """Send the packet on. Form 1: ``next_hop`` must be an out hop of the circuit (with
        the label set by ``shim.update``, if any). Forms 2/3: only the packet's own
        destination (use :meth:`encapsulate` to redirect)."""
        d = self._d
        circuit = d.circuit
        if circuit is not None:
            if not isinstance(next_hop, str):
                next_hop = int2ip(_addr(next_hop, "next hop"))
            hop: OutHopEntry | None
            if d.label is not None:
                hop = circuit.by_label[d.label]
                if hop.next_hop != next_hop:
                    raise self._refuse(f"label {d.label} does not lead to {next_hop}")
            else:
                hop = circuit.by_addr.get(next_hop)
                if hop is None:
                    raise self._refuse(f"{next_hop} is not an out hop of this circuit")
            d.hop = hop
        elif _addr(next_hop, "next hop") != d.pkt.dst:
            raise self._refuse(f"{next_hop} is not the packet's destination")
        d.action = ACT_FORWARD

    def drop(self, reason: str = "") -> None:
        """Drop the packet (``reason`` goes to the site's logs, the counter is service_drop)."""
        self._d.action = ACT_DROP
        self._d.detail = str(reason)[:200]

    def encapsulate(self, outer_dst: str) -> None:
        """IP-in-IP (RFC 2003) the packet to ``outer_dst`` (forms 2/3; e.g. mobility). The
        outer source is the site; ``outer_dst`` must lie in the prefixes the ISP allowed for
        this registration."""
        addr = _addr(outer_dst, "tunnel end point")
        if self._d.circuit is not None or not self._may_redirect(addr):
            raise self._refuse(f"may not tunnel to {outer_dst}")
        self._d.encap = addr
        self._d.action = ACT_ENCAP

    def replicate(
        self, targets: Iterable[str | int], payloads: Iterable[bytes | None] | None = None
    ) -> None:
        """Send one copy per target. Form 1: each target is an out label (int) or next hop
        (str) of the circuit. Forms 2/3: each target is a tunnel end point (as encapsulate).
        ``payloads``: one per target, the payload that copy carries instead of the packet's
        (None: the packet's); at most :data:`REPLICATE_PAYLOAD_BYTES` together.

        Amplification is capped (``ServiceContext.rep_max`` copies per packet, default
        :data:`REPLICATE_PER_PACKET`; ``rep_rate`` copies per second per service); the same
        target twice is refused. Each copy is checked as one target alone would be and metered
        as egress bytes (with its own payload's length)."""
        if isinstance(targets, str | bytes):
            raise _misuse("replicate takes a list of targets")
        circuit = self._d.circuit
        ctx = self._d.ctx
        cap = ctx.rep_max
        out: list[Any] = []
        for t in targets:
            if len(out) >= cap:
                raise _misuse(f"at most {cap} replicas per packet")
            if circuit is not None:
                hop = (
                    circuit.by_label.get(t)
                    if isinstance(t, int)
                    else circuit.by_addr.get(t)
                    if isinstance(t, str)
                    else None
                )
                if hop is None:
                    raise self._refuse(f"{t!r} is not an out hop of this circuit")
                out.append(hop)
            else:
                addr = _addr(t, "replica target")
                if not self._may_redirect(addr):
                    raise self._refuse(f"may not tunnel to {t}")
                out.append(addr)
        if len(set(map(id, out) if circuit is not None else out)) != len(out):
            raise _misuse("the same replica target twice")
        per_copy = None
        if payloads is not None:
            per_copy = _replica_payloads(payloads, len(out), 0xFFFF - self._d.pkt.payload_off)
        rate = ctx.rep_rate
        if rate is not None:
            now = self._d.now
            tokens = min(float(rate), ctx.rep_tokens + max(0.0, now - ctx.rep_t) * rate)
            ctx.rep_t = now
            if tokens < len(out):
                ctx.rep_tokens = tokens
                raise _misuse(f"replicate over its cap of {rate} copies per second")
            ctx.rep_tokens = tokens - len(out)
        self._d.replicas = out
        self._d.payloads = per_copy
        self._d.action = ACT_REPLICATE


def _replica_payloads(payloads: Any, n: int, room: int) -> list[bytes | None]:
    """``replicate``'s per-target payloads, checked: one per target, bytes or None, each
    fitting an IPv4 packet (``room`` bytes after the headers), all together at most
    :data:`REPLICATE_PAYLOAD_BYTES`."""
    if isinstance(payloads, str | bytes | bytearray) or not isinstance(payloads, list | tuple):
        raise _misuse("replicate payloads are a list (one per target)")
    if len(payloads) != n:
        raise _misuse(f"{len(payloads)} payloads for {n} replica targets")
    out: list[bytes | None] = []
    total = 0
    for data in payloads:
        if data is None:
            out.append(None)
            continue
        if not isinstance(data, bytes | bytearray):
            raise _misuse("replicate payloads are bytes or None")
        if len(data) > room:
            raise _misuse("a replica payload too large for an IPv4 packet")
        total += len(data)
        out.append(bytes(data))
    if total > REPLICATE_PAYLOAD_BYTES:
        raise _misuse(f"replica payloads over {REPLICATE_PAYLOAD_BYTES} bytes together")
    return out


def ed25519_verify(
    ctx: ServiceContext, public_key: bytes, signature: bytes, message: bytes
) -> bool:
    """:meth:`PacketApi.ed25519_verify` for the service of ``ctx`` (which keeps its parsed
    public keys and its budget); the confined runtime calls it too."""
    if not (
        isinstance(public_key, bytes | bytearray)
        and isinstance(signature, bytes | bytearray)
        and isinstance(message, bytes | bytearray)
    ):
        raise _misuse("ed25519_verify(public_key: bytes, signature: bytes, message: bytes)")
    if len(public_key) != 32 or len(signature) != 64:
        raise _misuse("Ed25519 keys are 32 bytes and signatures 64")
    if len(message) > VERIFY_MESSAGE_BYTES:
        raise _misuse(f"Ed25519 messages are at most {VERIFY_MESSAGE_BYTES} bytes")
    budget = ctx.budget
    if budget is not None:
        budget.charge(VERIFY_TICKS)
    key = bytes(public_key)
    pub = ctx.verify_keys.get(key)
    if pub is None:
        try:
            pub = Ed25519PublicKey.from_public_bytes(key)
        except ValueError:
            return False
        if len(ctx.verify_keys) >= _AES_KEYS:
            ctx.verify_keys.clear()
        ctx.verify_keys[key] = pub
    try:
        pub.verify(bytes(signature), bytes(message))
    except InvalidSignature:
        return False
    return True


def aes_gcm(
    ctx: ServiceContext, buf: bytes, key: bytes, decrypt: bool = False, aad: bytes = b""
) -> bytes:
    """:meth:`PacketApi.aes` for the service of ``ctx`` (which keeps its AES contexts); the
    confined runtime calls it too."""
    if not isinstance(buf, bytes | bytearray) or not isinstance(key, bytes):
        raise _misuse("aes(buf: bytes, key: bytes)")
    if not isinstance(aad, bytes | bytearray) or len(aad) > 256:
        raise _misuse("aes(..., aad: bytes of at most 256)")
    ad = bytes(aad) or None
    gcm = ctx.aes_keys.get(key)
    if gcm is None:
        try:
            gcm = AESGCM(key)
        except ValueError as exc:
            raise _misuse(f"AES key: {exc}") from None
        if len(ctx.aes_keys) >= _AES_KEYS:
            ctx.aes_keys.clear()
        ctx.aes_keys[key] = gcm
    if decrypt:
        if len(buf) < 28:
            raise _misuse("ciphertext too short")
        try:
            return gcm.decrypt(bytes(buf[:12]), bytes(buf[12:]), ad)
        except InvalidTag:
            raise _misuse("ciphertext does not authenticate") from None
    nonce = os.urandom(12)
    return nonce + gcm.encrypt(nonce, bytes(buf), ad)


def decision_of(api: PacketApi) -> Decision:
    """The :class:`Decision` of ``api`` (platform code that is handed a service's ``pkt``,
    e.g. the confined runtime's proxy, reads the stage from it)."""
    return api._d


def _zero_udp_checksum(p: Packet) -> None:
    """The payload changed: an outer UDP checksum would be stale, so send none (RFC 768)."""
    p.buf[p.ihl + 6] = p.buf[p.ihl + 7] = 0


def replace_payload(p: Packet, data: bytes | bytearray) -> None:
    """Make ``data`` the payload of ``p`` (it must fit an IPv4 packet) and fix its lengths."""
    del p.buf[p.payload_off :]
    p.buf += data
    _fix_lengths(p)


def _fix_lengths(p: Packet) -> None:
    """After a payload length change: IP total length, UDP length, IP header checksum."""
    b = p.buf
    n = len(b)
    b[2] = n >> 8
    b[3] = n & 0xFF
    if p.encap == "udp":
        ulen = n - p.ihl
        b[p.ihl + 4] = ulen >> 8
        b[p.ihl + 5] = ulen & 0xFF
        _zero_udp_checksum(p)
    b[10] = b[11] = 0
    c = internet_checksum(b[: p.ihl])
    b[10] = c >> 8
    b[11] = c & 0xFF

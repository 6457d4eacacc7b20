"""The site's circuit table: form-1 label switching state (paper §2.1).

Labels are hop-local, so *this site* picks the incoming label of each circuit hop it serves: a
random 32-bit value (never 0), drawn from ``secrets`` so that a sender cannot guess the labels
of other circuits, and unique in this table. A PSP's control plane (through the daemon's
control API) first :meth:`~CircuitTable.allocate`\\ s a label, then
:meth:`~CircuitTable.install`\\ s the hop once it knows the downstream labels::

    label = table.allocate("psp-a", now=t)
    table.install(label, psp="psp-a", service="srcroute", in_key=k_in,
                  out_hops=[OutHopEntry(label=77, next_hop="198.18.3.1", key=k_out)],
                  destination="198.18.9.9", expires=t + 600)

Each hop holds: the PSP and service that own it, the incoming hop key (verifies the shim MAC),
the out hops the service may choose from (out label + next hop address + out hop key; a
``final`` out hop delivers to the destination, optionally ``strip``\\ ping the shim for a
legacy receiver), the final destination if known (for the receiver-first precedence rule) and
an expiry. Only these out hops can ever leave the site for this circuit: that is what stops a
service from faking a label or steering packets elsewhere.

Errors are :class:`CircuitError` with a stable ``code`` the control API maps to JSON errors.
"""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Final

from pcsock.errors import CodedError
from pcsock.wire import CIRCUIT_SHIM_LEN, HopKey, WireError, ip2int

#: Length of the form-1 check (the truncated MAC) in bytes.
MAC_LEN: Final = 4

__all__ = [
    "CIRCUIT_ERRORS",
    "CircuitEntry",
    "CircuitError",
    "CircuitErrorCode",
    "CircuitTable",
    "OutHopEntry",
]

MAX_LABEL: Final = 0xFFFFFFFF


class CircuitErrorCode(StrEnum):
    """Every code a :class:`CircuitError` can carry (a ``str``)."""

    UNKNOWN_LABEL = "unknown_label"  # no reservation or circuit with this label
    NOT_OWNER = "not_owner"  # the label belongs to another PSP
    BAD_HOP = "bad_hop"  # an out hop / key / address / label is malformed
    BAD_REQUEST = "bad_request"  # other malformed arguments (no out hops, past expiry, ...)
    TABLE_FULL = "table_full"  # the site holds its maximum number of circuits


#: Every code a :class:`CircuitError` can carry, as a set.
CIRCUIT_ERRORS: Final = frozenset(CircuitErrorCode)


class CircuitError(CodedError):
    """A control-plane request the circuit table refuses; ``code`` is in CIRCUIT_ERRORS."""

    CODES = CIRCUIT_ERRORS


def mac_hasher(key: HopKey) -> Any:
    """The pre-keyed form-1 MAC state of ``key``: ``BLAKE2s(key, digest_size=4)``, the check
    of ``pcsock.wire.circuit_mac`` (the pipeline's fast path copies it per packet)."""
    return hashlib.blake2s(key=key.key, digest_size=MAC_LEN)


assert CIRCUIT_SHIM_LEN == 16  # the pipeline's fast path hard-codes the form-1 layout


def _key(key: HopKey | bytes | None, what: str) -> HopKey | None:
    if key is None or isinstance(key, HopKey):
        return key
    try:
        return HopKey(key)
    except WireError as exc:
        raise CircuitError("bad_hop", f"{what}: {exc}") from exc


@dataclass(slots=True)
class OutHopEntry:
    """One hop an installed circuit may leave the site by (the site's record; the control
    API client's request for one is :class:`pcsock.control.OutHop`).

    ``label`` is the downstream hop's incoming label (chosen by the next site), ``next_hop``
    the address the packet is sent to, ``key`` the downstream hop key the site re-MACs with
    (``None``: the check is left zero, e.g. toward a receiver that does not verify). ``final``
    marks delivery to the circuit's destination; ``strip`` (final hops only) removes the shim.
    ``addr`` (derived) is ``next_hop`` as a 32-bit integer. Nobody changes a record once it is
    made (a slotted dataclass, not a frozen one: its derived fields are set in
    ``__post_init__``).
    """

    label: int
    next_hop: str
    key: HopKey | None = None
    final: bool = False
    strip: bool = False
    addr: int = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not isinstance(self.label, int) or not 0 <= self.label <= MAX_LABEL:
            raise CircuitError("bad_hop", f"out label must be a 32-bit integer: {self.label!r}")
        try:
            self.addr = ip2int(self.next_hop)
        except WireError as exc:
            raise CircuitError("bad_hop", f"next hop: {exc}") from exc
        if self.strip and not self.final:
            raise CircuitError("bad_hop", "only a final hop can strip the shim")
        self.key = _key(self.key, "out hop key")


@dataclass(slots=True, eq=False)
class CircuitEntry:
    """One installed circuit hop (incoming label -> owner, keys, allowed out hops)."""

    in_label: int
    psp: str
    service: str
    in_key: HopKey
    out_hops: tuple[OutHopEntry, ...]
    destination: str | None
    expires: float
    # derived, precomputed once so the per-packet path does dict lookups only
    by_label: dict[int, OutHopEntry] = field(init=False, repr=False)
    by_addr: dict[str, OutHopEntry] = field(init=False, repr=False)
    default: OutHopEntry | None = field(init=False, repr=False)
    dest_addr: int | None = field(init=False, repr=False)
    #: the in hop key's MAC state (the pipeline copies it per packet)
    in_mac: Any = field(init=False, repr=False)
    #: the pipeline's cached ServiceSlot for (psp, service) (set on first packet)
    slot: Any = field(init=False, repr=False, default=None)

    def __post_init__(self) -> None:
        self.by_label = {}
        self.by_addr = {}
        for hop in self.out_hops:
            self.by_label.setdefault(hop.label, hop)
            self.by_addr.setdefault(hop.next_hop, hop)
        self.default = self.out_hops[0] if len(self.out_hops) == 1 else None
        self.dest_addr = None if self.destination is None else ip2int(self.destination)
        self.in_mac = mac_hasher(self.in_key)


class CircuitTable:
    """Incoming label -> :class:`CircuitEntry`, with reservations and expiry.

    ``randbits`` draws labels (default ``secrets.randbits``; tests may inject a seeded one).
    The per-packet path uses :attr:`get` (a bound ``dict.get``) and nothing else.
    """

    def __init__(
        self,
        *,
        max_circuits: int = 1_000_000,
        randbits: Callable[[int], int] = secrets.randbits,
    ) -> None:
        self._circuits: dict[int, CircuitEntry] = {}
        self._reserved: dict[int, tuple[str, float]] = {}  # label -> (psp, hold until)
        self._max = max_circuits
        self._randbits = randbits
        #: ``get(label) -> CircuitEntry | None``: the data path's lookup.
        self.get = self._circuits.get

    # ---- control plane
    def allocate(self, psp: str, *, now: float, hold: float = 60.0) -> int:
        """Reserve a fresh incoming label for ``psp`` until ``now + hold`` (install it before)."""
        if len(self._circuits) + len(self._reserved) >= self._max:
            self._purge_reservations(now)
            if len(self._circuits) + len(self._reserved) >= self._max:
                raise CircuitError("table_full", f"{self._max} circuits")
        while True:
            label = self._randbits(32) & MAX_LABEL
            if label and label not in self._circuits and label not in self._reserved:
                self._reserved[label] = (psp, now + hold)
                return label

    def reserve(self, label: int, psp: str, *, until: float = float("inf")) -> None:
        """Hold a *given* label for ``psp`` (a replica applying what its master allocated).

        Raises ``not_owner`` if another PSP holds or owns it, ``bad_request`` for label 0 or
        a value outside 32 bits.
        """
        if not isinstance(label, int) or not 0 < label <= MAX_LABEL:
            raise CircuitError("bad_request", f"label must be in 1..2**32-1: {label!r}")
        held = self._reserved.get(label)
        owner = held[0] if held is not None else None
        circuit = self._circuits.get(label)
        if circuit is not None:
            owner = circuit.psp
        if owner is not None and owner != psp:
            raise CircuitError("not_owner", f"label {label}")
        if circuit is None:
            self._reserved[label] = (psp, until)

    def install(
        self,
        in_label: int,
        *,
        psp: str,
        service: str,
        in_key: HopKey | bytes,
        out_hops: Iterable[OutHopEntry],
        expires: float,
        destination: str | None = None,
        now: float | None = None,
    ) -> CircuitEntry:
        """Install (or replace) the hop for a label reserved by, or installed for, ``psp``."""
        self._check_owner(in_label, psp, now)
        hops = tuple(out_hops)
        if not hops:
            raise CircuitError("bad_request", "a circuit needs at least one out hop")
        if not all(isinstance(h, OutHopEntry) for h in hops):
            raise CircuitError("bad_hop", "out hops must be OutHopEntry records")
        if not service or not isinstance(service, str):
            raise CircuitError("bad_request", "service name required")
        key = _key(in_key, "in hop key")
        assert key is not None
        if destination is not None:
            try:
                ip2int(destination)
            except WireError as exc:
                raise CircuitError("bad_request", f"destination: {exc}") from exc
        circuit = CircuitEntry(
            in_label=in_label,
            psp=psp,
            service=service,
            in_key=key,
            out_hops=hops,
            destination=destination,
            expires=float(expires),
        )
        self._reserved.pop(in_label, None)
        self._circuits[in_label] = circuit
        return circuit

    def renew(self, in_label: int, *, psp: str, expires: float) -> CircuitEntry:
        """Extend (or shorten) a circuit's lifetime."""
        circuit = self._owned(in_label, psp)
        circuit.expires = float(expires)
        return circuit

    def teardown(self, in_label: int, *, psp: str) -> None:
        """Remove a circuit (or a reservation) owned by ``psp``."""
        if in_label in self._reserved:
            if self._reserved[in_label][0] != psp:
                raise CircuitError("not_owner", f"label {in_label}")
            del self._reserved[in_label]
            return
        self._owned(in_label, psp)
        del self._circuits[in_label]

    def expire(self, now: float) -> int:
        """Drop circuits and reservations whose time is over; returns how many circuits."""
        dead = [label for label, c in self._circuits.items() if c.expires <= now]
        for label in dead:
            del self._circuits[label]
        self._purge_reservations(now)
        return len(dead)

    # ---- queries
    def __len__(self) -> int:
        return len(self._circuits)

    def __iter__(self) -> Iterator[CircuitEntry]:
        return iter(list(self._circuits.values()))

    def __contains__(self, label: object) -> bool:
        return label in self._circuits

    def owned_by(self, psp: str) -> list[CircuitEntry]:
        return [c for c in self._circuits.values() if c.psp == psp]

    # ---- helpers
    def _purge_reservations(self, now: float) -> None:
        for label in [lb for lb, (_, until) in self._reserved.items() if until <= now]:
            del self._reserved[label]

    def _check_owner(self, in_label: int, psp: str, now: float | None) -> None:
        held = self._reserved.get(in_label)
        if held is not None:
            if held[0] != psp:
                raise CircuitError("not_owner", f"label {in_label}")
            if now is not None and held[1] <= now:
                del self._reserved[in_label]
                raise CircuitError("unknown_label", f"reservation of {in_label} expired")
            return
        self._owned(in_label, psp)

    def _owned(self, in_label: int, psp: str) -> CircuitEntry:
        circuit = self._circuits.get(in_label)
        if circuit is None:
            raise CircuitError("unknown_label", f"label {in_label}")
        if circuit.psp != psp:
            raise CircuitError("not_owner", f"label {in_label}")
        return circuit

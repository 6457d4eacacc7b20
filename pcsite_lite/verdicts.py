"""Verdicts: what the site pipeline decides for one received packet.

:meth:`pcsite_lite.pipeline.Pipeline.process` turns bytes into a list of verdicts; adapters
(the TUN dataplane, the simulator) carry them out. A packet replicated to several next hops is
several :class:`Forward` verdicts; a dropped packet is one :class:`Drop`. Verdicts are values:
nobody changes one after it is made (they are slotted dataclasses, not frozen ones, because a
frozen dataclass costs the per-packet path an ``object.__setattr__`` per field).

Every ``Drop.reason`` is a stable token from :data:`DROP_REASONS` (the wire codec's
:class:`pcsock.wire.WireReason` plus the pipeline's own :class:`PipelineReason`; both are
``StrEnum`` types, so a token is its string value), so counters and dashboards can key on it.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Final

from pcsock.wire import REASONS as WIRE_REASONS

__all__ = [
    "DROP_REASONS",
    "PIPELINE_REASONS",
    "Deliver",
    "Drop",
    "Forward",
    "PipelineReason",
    "Verdict",
]


@dataclass(slots=True)
class Forward:
    """Send ``data`` (a complete IPv4 packet) toward ``next_hop`` (the packet's IP destination,
    dotted quad): another site, a tunnel end point, or the real destination of a form-2/3
    packet."""

    data: bytes
    next_hop: str


@dataclass(slots=True)
class Deliver:
    """Last hop of a circuit: send ``data`` to the circuit's final destination ``next_hop``.

    ``stripped`` is True when the circuit asked for delivery to a legacy receiver: the shim is
    removed and the packet is what the sender's IP layer would have sent. Otherwise the shim is
    kept (a pcsock receiver reads the original source from it to answer).
    """

    data: bytes
    next_hop: str
    stripped: bool = False


@dataclass(slots=True)
class Drop:
    """The packet is dropped. ``reason`` is a token from :data:`DROP_REASONS`; ``service`` is
    ``"psp/service"`` when a service caused or decided the drop; ``detail`` is free text for
    logs (never a counter key)."""

    reason: str
    service: str | None = None
    detail: str = ""


Verdict = Forward | Deliver | Drop


class PipelineReason(StrEnum):
    """Drop reasons the pipeline adds to the wire codec's :class:`~pcsock.wire.WireReason`
    (a ``str``: counters, metrics and JSON key on the value)."""

    NOT_FOR_SITE = "not_for_site"  # a circuit packet addressed to some other address
    UNKNOWN_LABEL = "unknown_label"  # no circuit with this incoming label (forged, guessed or
    # torn down)
    CIRCUIT_EXPIRED = "circuit_expired"  # the circuit's lifetime ended
    HOP_LIMIT_EXCEEDED = "hop_limit_exceeded"  # the shim's hop limit reached zero (a loop)
    TTL_EXCEEDED = "ttl_exceeded"  # a form-2/3 packet's IP TTL reached zero
    NO_SERVICE = "no_service"  # no service registered for this service ID / destination prefix
    SERVICE_UNAVAILABLE = "service_unavailable"  # the service's code cannot be loaded
    SERVICE_ERROR = "service_error"  # the service raised an exception
    SERVICE_TIMEOUT = "service_timeout"  # the service ran over its per-packet CPU budget
    SERVICE_DISABLED = "service_disabled"  # the service failed too often and is disabled
    SERVICE_DROP = "service_drop"  # the service called drop()
    NO_DECISION = "no_decision"  # the service chose no next hop and there is no default one
    SPOOF_ATTEMPT = "spoof_attempt"  # the service tried a field, label or next hop it does not
    # own
    API_MISUSE = "api_misuse"  # an API call with bad arguments (wrong type, out of range, ...)
    TOO_BIG = "too_big"  # the rewritten packet exceeds the IPv4 maximum
    INTERNAL_ERROR = "internal_error"  # a bug in the site itself (logged as a site event)
    FIS_UNAVAILABLE = "fis_unavailable"  # the FIS engine is unreachable and the entry is not
    # cached (a platform fault: never counted against the service, never billed)


#: Reasons the pipeline adds to the wire codec's, as a set.
PIPELINE_REASONS: Final = frozenset(PipelineReason)

#: Every token a :class:`Drop` may carry.
DROP_REASONS: Final = WIRE_REASONS | PIPELINE_REASONS

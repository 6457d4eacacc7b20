"""pcsock: the PacketCloud end-host SDK — the :mod:`socket` module with superpowers.

>>> import pcsock
>>> with pcsock.listen("198.18.4.2") as rx:                                  # doctest: +SKIP
...     with pcsock.open_circuit("198.18.4.2", "srcroute", lookup=("198.18.240.10", 7053),
...                              sites=["C2", "C3"]) as s:
...         s.send(b"hello", metadata=1)
...     d = rx.recv(timeout=1.0)          # d.source is the original sender, d.label the circuit
...     rx.reply(d, b"ack")               # straight back to the original source

Modules: :mod:`pcsock.wire` (the sans-IO wire codec), :mod:`pcsock.session` (the sans-IO
endpoint), :mod:`pcsock.socket` (blocking and trio sockets), :mod:`pcsock.lookup` (a PSP's
circuit lookup service and its client), :mod:`pcsock.discovery` (DNS records for sites and
lookup services), :mod:`pcsock.ownership` (DNSSEC prefix ownership proofs for form 3),
:mod:`pcsock.control` (the site control API's client), ``pcsock.scapy`` (scapy layers). The
end-to-end demo is the separate package :mod:`pcdemo`. See docs/pcsock.md.
"""

# ruff: noqa: F401  (a re-export module: its imports are its interface)
from typing import TYPE_CHECKING, Any

from pcsock.wire import IPPROTO_PACKETCLOUD, TOS_SERVICE, UDP_PORT, HopKey, WireError

# Everything else loads on first use (PEP 562), so that sites importing only pcsock.wire on
# their fast path do not pay for trio and dnspython.
_LAZY = {
    "Circuit": "pcsock.session",
    "Datagram": "pcsock.session",
    "Session": "pcsock.session",
    "AsyncCircuitSocket": "pcsock.socket",
    "AsyncPacketCloudSocket": "pcsock.socket",
    "CircuitSocket": "pcsock.socket",
    "PacketCloudSocket": "pcsock.socket",
    "PcsockError": "pcsock.socket",
    "PrivilegeError": "pcsock.socket",
    "ServiceSocket": "pcsock.socket",
    "listen": "pcsock.socket",
    "local_address_for": "pcsock.socket",
    "open_circuit": "pcsock.socket",
    "open_circuit_async": "pcsock.socket",
    "ordinary_socket": "pcsock.socket",
    "service_socket": "pcsock.socket",
    "LookupClient": "pcsock.lookup",
    "LookupServiceError": "pcsock.lookup",
    "DiscoveryError": "pcsock.discovery",
    "Resolver": "pcsock.discovery",
    "OwnershipError": "pcsock.ownership",
}

if TYPE_CHECKING:  # re-exported: __all__ names every _LAZY entry (ruff cannot see that)
    from pcsock.discovery import DiscoveryError, Resolver
    from pcsock.lookup import LookupClient, LookupServiceError
    from pcsock.ownership import OwnershipError
    from pcsock.session import Circuit, Datagram, Session
    from pcsock.socket import (
        AsyncCircuitSocket,
        AsyncPacketCloudSocket,
        CircuitSocket,
        PacketCloudSocket,
        PcsockError,
        PrivilegeError,
        ServiceSocket,
        listen,
        local_address_for,
        open_circuit,
        open_circuit_async,
        ordinary_socket,
        service_socket,
    )


def __getattr__(name: str) -> Any:
    mod = _LAZY.get(name)
    if mod is None:
        raise AttributeError(f"module 'pcsock' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(mod), name)
    globals()[name] = value
    return value


__version__ = "0.1.0"

#: the wire constants above and every lazily loaded name
__all__ = ["IPPROTO_PACKETCLOUD", "TOS_SERVICE", "UDP_PORT", "HopKey", "WireError", *_LAZY]

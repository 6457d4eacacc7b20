"""The mobility PSP's control plane and the mobile router's side (paper §2.6.1, NEMO-like).

* :class:`MobilityPSP` deploys ``service.py`` as a destination-controlled service for the
  mobile network's prefix at a set of sites (the ISP diverts the prefix there after the DNSSEC
  ownership proof and allows tunnels toward the access networks' prefixes), verifies the
  mobile router's signed binding updates (:class:`.binding.BindingRegistry`: Ed25519,
  increasing sequence numbers) and writes the care-of address into every site's FIS
  (LPM table ``"bindings"``). A refused update changes nothing.
* :class:`MobileRouter` signs binding updates when it moves and decapsulates the tunnelled
  packets (RFC 2003, :mod:`.ipip`) for the devices of its network.
* :class:`HomeAgent` is the baseline: Mobile IP's home agent on the home network, which
  tunnels from there (the triangle route this example is compared against).

Sites are reached through a PSP's site handle: :class:`pcsock.control.SiteHandle` (a site
daemon, through its control API) or :class:`pcdemo.example_testbed.SimSite` (a simulated site).
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from pcsock.wire import ip2int

from .binding import Binding, BindingRegistry, sign_update
from .ipip import TunnelError, decapsulate, encapsulate

__all__ = [
    "SERVICE",
    "SERVICE_SOURCE",
    "HomeAgent",
    "MobileRouter",
    "MobilityPSP",
]

SERVICE = "mobility"
SERVICE_SOURCE = Path(__file__).with_name("service.py").read_text()
BINDINGS = "bindings"


class MobilityPSP:
    """Mobility for one mobile network ``prefix`` over ``sites``."""

    def __init__(
        self,
        prefix: str,
        router_key: Ed25519PublicKey,
        sites: Iterable[Any],
        *,
        access_prefixes: Iterable[str],
        service: str = SERVICE,
        proof: str = "",
    ) -> None:
        self.prefix = prefix
        self.sites = list(sites)
        self.service = service
        self.access_prefixes = list(access_prefixes)
        self.proof = proof  #: the DNSSEC proof that the PSP may serve ``prefix``
        self.registry = BindingRegistry()
        self.registry.register(prefix, router_key)
        self.current: Binding | None = None
        self.refused: list[str] = []

    def deploy(self) -> None:
        """Upload the service and register the prefix at every site; the access prefixes are
        where the service may tunnel to (the ISP's approval: a site daemon takes them only
        from a handle with the ISP's credential)."""
        for s in self.sites:
            s.deploy(self.service, SERVICE_SOURCE)
            s.register_destination(
                self.prefix, self.service, self.proof, redirect_prefixes=self.access_prefixes
            )

    def handle_update(self, raw: bytes) -> Binding | None:
        """Verify a binding update; on success write it to every site's FIS."""
        from .binding import BindingError

        try:
            b = self.registry.apply(raw)
        except BindingError as exc:
            self.refused.append(exc.reason)
            return None
        if b.prefix != self.prefix:
            self.refused.append("unknown_prefix")
            return None
        for s in self.sites:
            s.fis_lpm_put(self.service, BINDINGS, b.prefix, {"care_of": b.care_of, "seq": b.seq})
        self.current = b
        return b


class MobileRouter:
    """The mobile router: holds the key, numbers its updates, decapsulates."""

    def __init__(self, prefix: str, key: Ed25519PrivateKey | None = None) -> None:
        self.prefix = prefix
        self.key = key or Ed25519PrivateKey.generate()
        self.seq = 0
        self.care_of: str | None = None

    @property
    def public_key(self) -> Ed25519PublicKey:
        return self.key.public_key()

    def move_to(self, care_of: str) -> bytes:
        """Attach at ``care_of``; the signed binding update to send to the PSP."""
        self.seq += 1
        self.care_of = care_of
        return sign_update(self.key, self.prefix, care_of, seq=self.seq)

    def decapsulate(self, packet: bytes) -> bytes | None:
        """The inner packet for the mobile network, or None if it is not a tunnel packet."""
        try:
            return decapsulate(packet, local=self.care_of)
        except TunnelError:
            return None


class HomeAgent:
    """Mobile IP's home agent (the baseline): tunnels from the home network to the care-of."""

    def __init__(self, address: str) -> None:
        self.address = address
        self.care_of: str | None = None

    def tunnel(self, packet: bytes) -> bytes | None:
        if self.care_of is None:
            return None
        try:
            return bytes(encapsulate(packet, src=self.address, dst=self.care_of))
        except TunnelError:
            return None


def in_prefix(addr: str, prefix: str) -> bool:
    net, plen = prefix.split("/")
    mask = (0xFFFFFFFF << (32 - int(plen))) & 0xFFFFFFFF
    return ip2int(addr) & mask == ip2int(net) & mask

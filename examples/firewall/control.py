"""The firewall owner's control plane: sign-up, whitelist, ports and StopIt filters.

In the paper's example the destination (a web-service operator) is both the PSP and the user
of the service. :class:`FirewallPSP`:

* signs up for its prefixes with a DNSSEC ownership proof (``pcsock.ownership``; validated
  against the trust anchor before anything is deployed), then deploys ``service.py`` as a
  destination-controlled service at the sites nearest the sources;
* changes the source whitelist (FIS LPM table ``"whitelist"``) and the allowed ports (FIS key
  ``"ports"``) on line, at every site, without redeploying;
* installs StopIt filters (FIS keys ``"stopit:<src>><dst>"`` -> ``{"until": t}``) through a
  :class:`.stopit.FilterManager` (only for its own destinations, per-owner quota, capped
  duration) and deletes them when they expire.

Sites are reached through a PSP's site handle: :class:`pcsock.control.SiteHandle` (a site
daemon, through its control API) or :class:`pcdemo.example_testbed.SimSite` (a simulated site).
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

from pcsock.ownership import OwnershipClaim, Proof, validate_proof

from .stopit import Filter, FilterManager

__all__ = ["SERVICE", "SERVICE_SOURCE", "FirewallPSP"]

SERVICE = "firewall"
SERVICE_SOURCE = Path(__file__).with_name("service.py").read_text()
WHITELIST = "whitelist"


class FirewallPSP:
    """One destination operator's distributed firewall."""

    def __init__(
        self,
        owner: str,
        sites: Iterable[Any],
        *,
        quota: int = 64,
        service: str = SERVICE,
    ) -> None:
        self.owner = owner
        self.sites = list(sites)
        self.service = service
        self.filters = FilterManager(quota=quota)
        self.prefixes: list[str] = []

    def sign_up(
        self, prefix: str, proof: Proof | str, trust_anchor: str, *, now: float
    ) -> OwnershipClaim:
        """Validate the ownership proof, then deploy and register ``prefix`` at every site
        (each site's ISP checks the proof again against its own trust anchor).

        Raises ``pcsock.ownership.OwnershipError`` (and changes nothing) if the proof fails.
        """
        claim = validate_proof(
            proof, prefix, trust_anchor, now, owner=self.owner, service=self.service
        )
        text = proof.text if isinstance(proof, Proof) else proof
        for s in self.sites:
            s.deploy(self.service, SERVICE_SOURCE)
            s.register_destination(prefix, self.service, text)
        self.prefixes.append(prefix)
        self.filters.add_owner(self.owner, self.prefixes)
        return claim

    def allow_source(self, prefix: str) -> None:
        """Whitelist a source prefix (every protocol and port passes)."""
        for s in self.sites:
            s.fis_lpm_put(self.service, WHITELIST, prefix, {"since": "on line"})

    def revoke_source(self, prefix: str) -> None:
        for s in self.sites:
            s.fis_lpm_delete(self.service, WHITELIST, prefix)

    def set_ports(self, ports: Iterable[int]) -> None:
        """The TCP ports strangers may reach (default 80 and 443)."""
        value = sorted({int(p) for p in ports})
        for s in self.sites:
            s.fis_put(self.service, "ports", value)

    def stopit(self, src: str, dst: str, *, duration: float, now: float) -> Filter:
        """Block ``src -> dst`` at every site for ``duration`` seconds (StopIt request).

        Raises :class:`.stopit.FilterError` (``quota``, ``not_owner``, ...) if refused.
        """
        f = self.filters.request(self.owner, src=src, dst=dst, duration=duration, now=now)
        for s in self.sites:
            s.fis_put(self.service, f.key, {"until": f.until})
        return f

    def expire(self, now: float) -> list[Filter]:
        """Delete the FIS entries of expired filters (the service ignores them already)."""
        gone = self.filters.expire(now)
        for f in gone:
            for s in self.sites:
                s.fis_delete(self.service, f.key)
        return gone

"""Finding PacketCloud sites and PSP lookup services through DNS (paper §2.1: "The site public
IPs ... to the potential users through systems such as DNS").

Record formats
--------------
**Sites of an ISP** (one SRV record per site, its target carries the site's address and a TXT
description)::

    _packetcloud._udp.isp.example.  300 IN SRV 10 10 6253 c2.sites.isp.example.
    c2.sites.isp.example.  300 IN A   198.18.2.1
    c2.sites.isp.example.  300 IN TXT "v=pcsite1 name=C2 forms=1,2,3 control=198.18.250.2:8053"

SRV port = the site's UDP-encapsulation port (6253 by default); the target's A records are the
site's public IPs. TXT keys: ``name`` (site name), ``forms`` (service forms it serves),
``control`` (``host:port`` of its control API, on the control network; optional), and anything
else (kept in :attr:`SiteRecord.attrs`).

**PSP lookup services** (a PSP publishes where senders ask it for circuits)::

    _pcpsp._tcp.psp.example.  300 IN SRV 10 10 7053 lookup.psp.example.
    lookup.psp.example.       300 IN A   198.18.240.10
    _pcpsp._tcp.psp.example.  300 IN TXT "v=pcpsp1 psp=acme services=srcroute,firewall"

Answers are cached for their TTL (the smallest TTL of the RRsets used); the clock is injectable
so tests are deterministic. dnspython does the DNS (it is the well-kept resolver library; this
module only fixes the record formats).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Final

import dns.exception
import dns.name
import dns.rdatatype
import dns.resolver
import dns.rrset

__all__ = [
    "PSP_SERVICE",
    "SITE_SERVICE",
    "DiscoveryError",
    "LookupServiceRecord",
    "Resolver",
    "SiteRecord",
    "psp_records",
    "site_records",
]

#: Owner-name prefix of site SRV records.
SITE_SERVICE: Final = "_packetcloud._udp"
#: Owner-name prefix of PSP lookup-service SRV (and TXT) records.
PSP_SERVICE: Final = "_pcpsp._tcp"
SITE_TXT_VERSION: Final = "v=pcsite1"
PSP_TXT_VERSION: Final = "v=pcpsp1"


class DiscoveryError(Exception):
    """Discovery failed; ``reason`` is ``"nxdomain"``, ``"no_answer"``, ``"timeout"`` or
    ``"malformed"``."""

    def __init__(self, reason: str, detail: str = "") -> None:
        self.reason = reason
        self.detail = detail
        super().__init__(f"{reason}: {detail}" if detail else reason)


@dataclass(frozen=True)
class SiteRecord:
    """One PacketCloud site as published by its ISP."""

    name: str
    addresses: tuple[str, ...]  #: public IPv4 addresses
    port: int  #: UDP-encapsulation port
    priority: int = 0
    weight: int = 0
    forms: tuple[int, ...] = (1, 2, 3)
    control: str | None = None  #: "host:port" of the control API
    target: str = ""
    attrs: dict[str, str] = field(default_factory=dict, compare=False)

    @property
    def address(self) -> str:
        return self.addresses[0]


@dataclass(frozen=True)
class LookupServiceRecord:
    """A PSP's circuit lookup service."""

    psp: str
    host: str
    port: int
    services: tuple[str, ...] = ()
    priority: int = 0
    weight: int = 0


def _kv(text: str, version: str) -> dict[str, str] | None:
    tokens = text.split()
    if not tokens or tokens[0] != version:
        return None
    out = {}
    for tok in tokens[1:]:
        k, sep, v = tok.partition("=")
        if sep:
            out[k] = v
    return out


def _txt_strings(rrset: dns.rrset.RRset | None) -> list[str]:
    if rrset is None:
        return []
    return [" ".join(s.decode(errors="replace") for s in rd.strings) for rd in rrset]


class Resolver:
    """A small TTL-caching stub resolver against configured servers (dnspython underneath).

    >>> r = Resolver(["198.18.250.53"], clock=lambda: 0.0)   # doctest: +SKIP
    >>> r.sites("isp.example")                                # doctest: +SKIP
    """

    def __init__(
        self,
        servers: list[str],
        *,
        port: int = 53,
        timeout: float = 2.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._dns = dns.resolver.Resolver(configure=False)
        self._dns.nameservers = list(servers)
        self._dns.port = port
        self._dns.lifetime = timeout
        self._dns.timeout = timeout
        self._dns.cache = None  # we cache, with our clock
        self.clock = clock
        self._cache: dict[tuple[str, int], tuple[float, dns.rrset.RRset | None]] = {}
        self.queries = 0  #: DNS queries actually sent (cache misses)

    def query(self, name: str, rdtype: str, *, missing_ok: bool = False) -> dns.rrset.RRset | None:
        """The answer RRset for (name, type), from the cache while its TTL lasts."""
        qname = dns.name.from_text(name).to_text()
        t = dns.rdatatype.from_text(rdtype)
        now = self.clock()
        hit = self._cache.get((qname, t))
        if hit is not None and hit[0] > now:
            if hit[1] is None and not missing_ok:
                raise DiscoveryError("no_answer", f"{qname} {rdtype}")
            return hit[1]
        self.queries += 1
        try:
            ans = self._dns.resolve(qname, t, raise_on_no_answer=True, search=False)
            rrset = ans.rrset
            assert rrset is not None
            self._cache[(qname, t)] = (now + rrset.ttl, rrset)
            return rrset
        except dns.resolver.NXDOMAIN as exc:
            self._cache[(qname, t)] = (now + 30, None)
            if missing_ok:
                return None
            raise DiscoveryError("nxdomain", f"{qname}") from exc
        except dns.resolver.NoAnswer as exc:
            self._cache[(qname, t)] = (now + 30, None)
            if missing_ok:
                return None
            raise DiscoveryError("no_answer", f"{qname} {rdtype}") from exc
        except (dns.resolver.LifetimeTimeout, dns.resolver.NoNameservers) as exc:
            raise DiscoveryError("timeout", f"{qname} {rdtype}: {exc}") from exc
        except dns.exception.DNSException as exc:
            raise DiscoveryError("malformed", f"{qname} {rdtype}: {exc}") from exc

    def clear(self) -> None:
        self._cache.clear()

    # --- high level
    def sites(self, domain: str) -> list[SiteRecord]:
        """The PacketCloud sites of ``domain`` (priority, then weight order)."""
        srv = self.query(f"{SITE_SERVICE}.{dns.name.from_text(domain)}", "SRV")
        assert srv is not None
        out = []
        for rd in srv:
            target = rd.target.to_text()
            a = self.query(target, "A")
            assert a is not None
            attrs = self._txt_attrs(target, SITE_TXT_VERSION, unversioned=True)
            try:
                forms = tuple(int(f) for f in attrs.get("forms", "1,2,3").split(",") if f)
            except ValueError as exc:
                raise DiscoveryError("malformed", f"forms= of {target}") from exc
            out.append(
                SiteRecord(
                    name=attrs.get("name", target.split(".")[0]),
                    addresses=tuple(sorted(r.address for r in a)),
                    port=rd.port,
                    priority=rd.priority,
                    weight=rd.weight,
                    forms=forms,
                    control=attrs.get("control"),
                    target=target,
                    attrs=attrs,
                )
            )
        out.sort(key=lambda s: (s.priority, -s.weight, s.name))
        return out

    def _txt_attrs(self, owner: str, version: str, *, unversioned: bool = False) -> dict[str, str]:
        """The key=value pairs of ``owner``'s first TXT string of ``version``; with
        ``unversioned``, bare key=value strings ("router=R2" "compute_nodes=2") count too."""
        attrs: dict[str, str] = {}
        for s in _txt_strings(self.query(owner, "TXT", missing_ok=True)):
            kv = _kv(s, version)
            if kv is not None:
                return kv
            if unversioned:
                attrs.update(_kv(f"{version} {s}", version) or {})
        return attrs

    def site(self, domain: str, name: str) -> SiteRecord:
        """The site called ``name`` (case-insensitive) in ``domain``."""
        for s in self.sites(domain):
            if s.name.lower() == name.lower():
                return s
        raise DiscoveryError("no_answer", f"no site {name!r} in {domain}")

    def lookup_services(self, psp_domain: str) -> list[LookupServiceRecord]:
        """The PSP's lookup services (priority, then weight order)."""
        owner = f"{PSP_SERVICE}.{dns.name.from_text(psp_domain)}"
        srv = self.query(owner, "SRV")
        assert srv is not None
        attrs = self._txt_attrs(owner, PSP_TXT_VERSION)
        out = []
        for rd in sorted(srv, key=lambda r: (r.priority, -r.weight)):
            target = rd.target.to_text()
            a = self.query(target, "A")
            assert a is not None
            for r in a:
                out.append(
                    LookupServiceRecord(
                        psp=attrs.get("psp", psp_domain),
                        host=r.address,
                        port=rd.port,
                        services=tuple(x for x in attrs.get("services", "").split(",") if x),
                        priority=rd.priority,
                        weight=rd.weight,
                    )
                )
        return out


def site_records(
    domain: str, sites: list[tuple[str, str, str]], *, port: int = 6253, ttl: int = 300
) -> str:
    """Zone-file lines publishing ``sites`` = [(name, public ip, control host:port or "")]
    in the format above (relative to nothing: absolute names)."""
    d = dns.name.from_text(domain).to_text()
    lines = []
    for name, ip, control in sites:
        host = f"{name.lower()}.sites.{d}"
        lines.append(f"{SITE_SERVICE}.{d} {ttl} IN SRV 10 10 {port} {host}")
        lines.append(f"{host} {ttl} IN A {ip}")
        txt = f"{SITE_TXT_VERSION} name={name} forms=1,2,3"
        if control:
            txt += f" control={control}"
        lines.append(f'{host} {ttl} IN TXT "{txt}"')
    return "\n".join(lines) + "\n"


def psp_records(
    domain: str, psp: str, host_ip: str, port: int, services: list[str], *, ttl: int = 300
) -> str:
    """Zone-file lines publishing a PSP lookup service in the format above."""
    d = dns.name.from_text(domain).to_text()
    host = f"lookup.{d}"
    return (
        f"{PSP_SERVICE}.{d} {ttl} IN SRV 10 10 {port} {host}\n"
        f"{host} {ttl} IN A {host_ip}\n"
        f'{PSP_SERVICE}.{d} {ttl} IN TXT "{PSP_TXT_VERSION} psp={psp} '
        f'services={",".join(services)}"\n'
    )

"""The testbed's authoritative DNS: Knot DNS (Debian's ``knotd``) plus DNSSEC signing.

The testbed writes a Knot configuration and zone files into the run directory, starts
``/usr/sbin/knotd`` inside the DNS node's namespace (listening on the node's data and control
addresses) and stops it with the run. Zones are handed over as zone-file text
(:meth:`DnsServer.set_zone`); :func:`sign_zone` signs a zone with dnspython (Ed25519, NSEC)
and returns the signed text plus the DNSKEY set that serves as the trust anchor, so reverse
zones used as destination-ownership proofs are served signed and can be validated from any
host. Knot only serves what it is given (``dnssec-signing`` stays off): the signatures come
from dnspython, where a test can check them independently.
"""

from __future__ import annotations

import ipaddress
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import dns.dnssec
import dns.message
import dns.name
import dns.query
import dns.rdataclass
import dns.rdatatype
import dns.rrset
import dns.zone
from cryptography.hazmat.primitives.asymmetric import ed25519

if TYPE_CHECKING:
    from testbed.net import Node, Process

__all__ = ["KNOTD", "DnsServer", "SignedZone", "reverse_zone_name", "sign_zone"]

KNOTD = "/usr/sbin/knotd"
KNOTC = "/usr/sbin/knotc"


@dataclass(frozen=True)
class SignedZone:
    """A signed zone: its text, the DNSKEY RRset (trust anchor) and the signing key."""

    origin: str
    text: str
    dnskey: dns.rrset.RRset
    key: ed25519.Ed25519PrivateKey


def reverse_zone_name(prefix: str | ipaddress.IPv4Network) -> str:
    """``198.18.64.0/24`` -> ``64.18.198.in-addr.arpa.`` (octet-aligned prefixes only)."""
    net = ipaddress.IPv4Network(prefix)
    if net.prefixlen % 8:
        raise ValueError(f"{net}: reverse zones need an octet-aligned prefix")
    octets = str(net.network_address).split(".")[: net.prefixlen // 8]
    return ".".join(reversed(octets)) + ".in-addr.arpa."


def sign_zone(
    origin: str,
    text: str,
    key: ed25519.Ed25519PrivateKey | None = None,
    lifetime: int = 7 * 86400,
) -> SignedZone:
    """Sign zone ``text`` (Ed25519, algorithm 15) with dnspython; one key acts as KSK+ZSK."""
    key = key or ed25519.Ed25519PrivateKey.generate()
    zone = dns.zone.from_text(text, origin=origin, relativize=False, check_origin=True)
    dnskey = dns.dnssec.make_dnskey(key.public_key(), dns.dnssec.Algorithm.ED25519, flags=257)
    inception = int(time.time()) - 3600
    with zone.writer() as txn:
        dns.dnssec.sign_zone(
            zone,
            txn=txn,
            keys=[(key, dnskey)],
            inception=inception,
            expiration=inception + lifetime,
        )
    name = dns.name.from_text(origin)
    rrset = dns.rrset.RRset(name, dns.rdataclass.IN, dns.rdatatype.DNSKEY)
    rrset.update(zone.get_rdataset(name, dns.rdatatype.DNSKEY))
    return SignedZone(origin, zone.to_text(relativize=False), rrset, key)


def _soa_serial(origin: str, text: str) -> int:
    zone = dns.zone.from_text(text, origin=origin, relativize=False, check_origin=True)
    soa = zone.get_rdataset(origin, dns.rdatatype.SOA)
    assert soa is not None
    return soa[0].serial


class DnsServer:
    """Knot DNS in the DNS node's namespace; zones are set as text at any time."""

    def __init__(self, node: Node, addresses: list[str], rundir: Path) -> None:
        self.node = node
        self.addresses = addresses
        self.rundir = rundir
        self.zones: dict[str, str] = {}
        self.trust_anchors: dict[str, dns.rrset.RRset] = {}
        self.process: Process | None = None

    @property
    def address(self) -> str:
        """The address hosts query (the DNS node's first data address)."""
        return self.addresses[0]

    @property
    def config_path(self) -> Path:
        return self.rundir / "knot.conf"

    def _write_config(self) -> None:
        (self.rundir / "zones").mkdir(parents=True, exist_ok=True)
        (self.rundir / "db").mkdir(exist_ok=True)
        listen = ", ".join(f"{a}@53" for a in self.addresses)
        zones = "".join(
            f'  - domain: "{origin}"\n    file: "{self._file(origin).name}"\n'
            for origin in self.zones
        )
        self.config_path.write_text(
            f"""server:
    rundir: "{self.rundir}"
    listen: [ {listen} ]
    udp-workers: 1
    tcp-workers: 1
    background-workers: 1
control:
    listen: "{self.rundir}/knot.sock"
database:
    storage: "{self.rundir}/db"
log:
  - target: stderr
    any: notice
template:
  - id: default
    storage: "{self.rundir}/zones"
    zonefile-sync: -1
    zonefile-load: whole
    journal-content: none
    semantic-checks: off
zone:
{zones or "  []"}
"""
        )

    def _file(self, origin: str) -> Path:
        return self.rundir / "zones" / f"{origin.rstrip('.') or 'root'}.zone"

    def start(self, timeout: float = 10.0) -> None:
        """Start knotd and wait until it answers for every zone."""
        self._write_config()
        for origin, text in self.zones.items():
            self._file(origin).write_text(text)
        self.process = self.node.start(
            [KNOTD, "-c", str(self.config_path)], name="knotd", ready=self._serving, timeout=timeout
        )

    def _serving(self) -> bool:
        return all(self.serial(o) == _soa_serial(o, t) for o, t in self.zones.items()) and (
            bool(self.zones) or self._answers()
        )

    def _answers(self) -> bool:
        try:
            self.query("invalid.", "SOA", timeout=0.2)
            return True
        except Exception:
            return False

    def set_zone(self, origin: str, text: str, timeout: float = 10.0) -> None:
        """Serve zone ``origin`` from zone-file ``text`` (replacing it) and wait until served.

        Raise the SOA serial when replacing a zone: the wait is for the new serial.
        """
        if not origin.endswith("."):
            raise ValueError(f"zone origin {origin!r} must be absolute (end with '.')")
        serial = _soa_serial(origin, text)  # validates the text before anything changes
        new = origin not in self.zones
        self.zones[origin] = text
        self._file(origin).parent.mkdir(parents=True, exist_ok=True)
        self._file(origin).write_text(text)
        if self.process is None:
            return
        if new:
            self._write_config()
            self._knotc("reload")
        else:
            self._knotc("zone-reload", origin)
        deadline = time.monotonic() + timeout
        while self.serial(origin) != serial:
            if time.monotonic() > deadline:
                raise TimeoutError(f"knot did not serve {origin} serial {serial} in {timeout} s")
            time.sleep(0.02)

    def set_signed_zone(
        self, origin: str, text: str, key: ed25519.Ed25519PrivateKey | None = None
    ) -> SignedZone:
        """Sign ``text`` (see :func:`sign_zone`), serve it, remember its trust anchor."""
        signed = sign_zone(origin, text, key)
        self.set_zone(origin, signed.text)
        self.trust_anchors[origin] = signed.dnskey
        return signed

    def _knotc(self, *args: str) -> None:
        out = subprocess.run(
            [KNOTC, "-c", str(self.config_path), "-t", "5", *args],
            capture_output=True,
            text=True,
            timeout=15,
        )
        if out.returncode != 0:
            raise RuntimeError(f"knotc {' '.join(args)} failed: {out.stderr.strip() or out.stdout}")

    def query(
        self,
        name: str,
        rdtype: str,
        dnssec: bool = False,
        timeout: float = 2.0,
        node: Node | None = None,
    ) -> dns.message.Message:
        """Ask the server (from ``node``'s namespace, default the DNS node's own)."""
        q = dns.message.make_query(name, rdtype, want_dnssec=dnssec)
        where = node or self.node
        return where.call(lambda: dns.query.udp(q, self.address, timeout=timeout))

    def serial(self, origin: str) -> int | None:
        try:
            ans = self.query(origin, "SOA", timeout=0.3)
        except Exception:
            return None
        for rrset in ans.answer:
            if rrset.rdtype == dns.rdatatype.SOA:
                return rrset[0].serial
        return None

    def stop(self) -> None:
        if self.process is not None:
            self.process.stop()
            self.process = None


def soa(origin: str, ns_name: str, serial: int = 1) -> str:
    """An SOA + NS header for a zone served by this testbed."""
    return (
        f"$TTL 300\n{origin} 300 IN SOA {ns_name} hostmaster.{origin} {serial} 3600 600 86400 60\n"
        f"{origin} 300 IN NS {ns_name}\n"
    )

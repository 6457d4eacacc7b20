"""The testbed's authoritative DNS: Knot DNS (Debian's ``knotd``) plus DNSSEC signing.

The testbed writes a Knot configuration and zone files into the run directory, starts
``/usr/sbin/knotd`` inside the DNS node's namespace (listening on the node's data and control
addresses) and stops it with the run. Zones are handed over as zone-file text
(:meth:`DnsServer.set_zone`); :func:`sign_zone` signs a zone with dnspython (Ed25519, NSEC)
and returns the signed text plus the DNSKEY set that serves as the trust anchor, so reverse
zones used as destination-ownership proofs are served signed and can be validated from any
host. Knot only serves what it is given (``dnssec-signing`` stays off): the signatures come
from dnspython, where a test can check them independently.

The key a zone was signed with is kept in the run directory (``dns/keys/<zone>key``, mode
0600, PKCS#8 PEM after a ``# zone <origin>`` line: the format of ``pcsock signup keygen``), so
a zone can be re-signed with the same key (its DS, the trust anchor, stays) and a command-line
user can sign the zone's records themselves. :meth:`DnsServer.attach` drives the DNS server of
a run built by another process (``testbed up``); :meth:`DnsServer.publish_owner` publishes a
destination-ownership TXT record (``_packetcloud-owner.<reverse zone>``, docs/protocol.md) and
re-signs the zone.
"""

from __future__ import annotations

import datetime as _dt
import ipaddress
import os
import re
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import dns.dnssec
import dns.message
import dns.name
import dns.query
import dns.rdata
import dns.rdataclass
import dns.rdatatype
import dns.rrset
import dns.zone
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519

if TYPE_CHECKING:
    from testbed.net import Node, Process

__all__ = [
    "KNOTD",
    "DnsServer",
    "SignedZone",
    "key_from_pem",
    "key_to_pem",
    "owner_txt",
    "reverse_zone_name",
    "sign_zone",
]

#: The ownership record's first label and claim format (docs/protocol.md, pcsock.ownership;
#: written here again because the testbed imports nothing of the packages above it)
OWNER_LABEL = "_packetcloud-owner"
_DNSSEC_TYPES = {
    dns.rdatatype.RRSIG,
    dns.rdatatype.NSEC,
    dns.rdatatype.NSEC3,
    dns.rdatatype.NSEC3PARAM,
    dns.rdatatype.DNSKEY,
}


def key_to_pem(origin: str, key: ed25519.Ed25519PrivateKey) -> bytes:
    """``# zone <origin>`` then the key as unencrypted PKCS#8 PEM (``pcsock signup`` reads it)."""
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    return f"# zone {origin}\n".encode() + pem


def key_from_pem(data: bytes) -> tuple[str, ed25519.Ed25519PrivateKey]:
    """(origin, key) from :func:`key_to_pem`'s format."""
    first, _, rest = data.partition(b"\n")
    if not first.startswith(b"# zone "):
        raise ValueError("a zone key file starts with a '# zone <origin>' line")
    key = serialization.load_pem_private_key(rest, password=None)
    if not isinstance(key, ed25519.Ed25519PrivateKey):
        raise ValueError("zone keys are Ed25519")
    return first[7:].decode().strip(), key


def owner_txt(prefix: str, owner: str, service: str, not_before: float, not_after: float) -> str:
    """The ownership claim string (``v=pcown1 prefix=... owner=... service=... not-before=...
    not-after=...``, UTC ``YYYYMMDDHHMMSS``)."""
    for what, v in (("owner", owner), ("service", service)):
        if not re.fullmatch(r"[A-Za-z0-9._-]{1,64}", v):
            raise ValueError(f"{what} {v!r} must be 1-64 of letters, digits, '.', '_', '-'")

    def ts(t: float) -> str:
        return _dt.datetime.fromtimestamp(t, _dt.UTC).strftime("%Y%m%d%H%M%S")

    net = ipaddress.IPv4Network(prefix)
    return (
        f"v=pcown1 prefix={net} owner={owner} service={service} "
        f"not-before={ts(not_before)} not-after={ts(not_after)}"
    )


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
        self.attached = False  #: knotd was started by another process (see :meth:`attach`)

    @classmethod
    def attach(cls, node: Node, rundir: Path) -> DnsServer:
        """The DNS server a run already runs (``node`` needs only ``call``): its zones are
        read back from ``rundir`` (``zones/*.zone``), its addresses from ``knot.conf``."""
        conf = (rundir / "knot.conf").read_text()
        m = re.search(r"listen: \[ (.*?) \]", conf)
        addrs = [a.strip().rsplit("@", 1)[0] for a in m.group(1).split(",")] if m else []
        if not addrs:
            raise RuntimeError(f"{rundir / 'knot.conf'}: no listen addresses")
        srv = cls(node, addrs, rundir)
        for f in sorted((rundir / "zones").glob("*.zone")):
            srv.zones[("" if f.stem == "root" else f.stem) + "."] = f.read_text()
        srv.attached = True
        return srv

    @property
    def running(self) -> bool:
        return self.process is not None or self.attached

    # --- keys
    def _key_file(self, origin: str) -> Path:
        return self.rundir / "keys" / f"{origin.rstrip('.') or 'root'}.key"

    def save_key(self, origin: str, key: ed25519.Ed25519PrivateKey) -> Path:
        """Keep ``origin``'s signing key in the run directory (mode 0600)."""
        path = self._key_file(origin)
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as fh:
            fh.write(key_to_pem(origin, key))
        return path

    def signing_key(self, origin: str) -> ed25519.Ed25519PrivateKey | None:
        """The key ``origin`` was signed with in this run (None if it never was)."""
        try:
            return key_from_pem(self._key_file(origin).read_bytes())[1]
        except FileNotFoundError:
            return None

    def key_pem(self, origin: str) -> bytes:
        """``origin``'s signing key in the ``pcsock signup`` key-file format."""
        key = self.signing_key(origin)
        if key is None:
            raise KeyError(f"zone {origin} was not signed by this testbed (no key kept)")
        return key_to_pem(origin, key)

    def anchor_text(self, origin: str, dnskey: bool = False) -> str:
        """The trust anchor of signed zone ``origin``: its DS (SHA-256) or DNSKEY record."""
        key = self.signing_key(origin)
        if key is None:
            raise KeyError(f"zone {origin} was not signed by this testbed (no key kept)")
        rec = dns.dnssec.make_dnskey(key.public_key(), dns.dnssec.Algorithm.ED25519, flags=257)
        if dnskey:
            return f"{origin} IN DNSKEY {rec.to_text()}"
        return f"{origin} IN DS {dns.dnssec.make_ds(origin, rec, 'SHA256').to_text()}"

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
        if not self.running:
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
        signed = sign_zone(origin, text, key or self.signing_key(origin))
        self.set_zone(origin, signed.text)
        self.trust_anchors[origin] = signed.dnskey
        self.save_key(origin, signed.key)
        return signed

    def publish_owner(
        self, prefix: str, owner: str, service: str, not_before: float, not_after: float
    ) -> str:
        """Put the ownership claim for ``prefix`` (replacing any) into its reverse zone, which
        this testbed serves, and re-sign the zone with its key. Returns the TXT record line."""
        origin = reverse_zone_name(prefix)
        if origin not in self.zones:
            raise KeyError(
                f"this testbed serves no zone {origin} (zones: {', '.join(sorted(self.zones))}); "
                f"add it with signed_reverse in the topology or `testbed dns sign`"
            )
        txt = owner_txt(prefix, owner, service, not_before, not_after)
        zone = dns.zone.from_text(self.zones[origin], origin=origin, relativize=False)
        name = dns.name.from_text(f"{OWNER_LABEL}.{origin}")
        with zone.writer() as w:
            for n, rds in list(zone.iterate_rdatasets()):
                if rds.rdtype in _DNSSEC_TYPES:
                    w.delete(n, rds.rdtype, rds.covers)
            w.delete(name, dns.rdatatype.TXT)
            w.add(name, 300, dns.rdata.from_text("IN", "TXT", f'"{txt}"'))
            soa = zone.get_rdataset(origin, dns.rdatatype.SOA)
            assert soa is not None
            w.replace(origin, soa.ttl, soa[0].replace(serial=soa[0].serial + 1))
        self.set_signed_zone(origin, zone.to_text(relativize=False))
        return f'{name} 300 IN TXT "{txt}"'

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

"""Destination sign-up (service form 3): DNSSEC-signed prefix ownership records and proofs.

Paper §2.2: *"we require the owner of a destination prefix to sign up with the ISP with proof
that it actually owns the prefix. One candidate of the proof can be the signed DNSSEC records of
the reverse DNS zone corresponding to the prefix."* This module is that proof, built on
dnspython's :mod:`dns.dnssec` (signing and RRSIG verification are dnspython's; this module only
decides *which* RRsets must chain to the trust anchor and what the record says).

The ownership record
--------------------
A TXT RRset at ``_packetcloud-owner.<reverse zone>``; each string is one claim::

    _packetcloud-owner.5.18.198.in-addr.arpa. 300 IN TXT "v=pcown1 prefix=198.18.5.0/24
        owner=acme-psp service=firewall not-before=20261125000000 not-after=20261225000000"

(one string, wrapped here). ``owner`` is the PSP the prefix owner authorises to run its
destination-controlled service, ``service`` that service's name, the dates are UTC
``YYYYMMDDHHMMSS``. Several TXT strings may authorise several (owner, service) pairs.

Prefix -> reverse zone
----------------------
``/8``, ``/16``, ``/24``: the octet-aligned zone (``198.18.5.0/24`` ->
``5.18.198.in-addr.arpa.``). ``/25``..``/32``: RFC 2317 classless delegation with the RFC's own
label form ``<first>/<len>`` (``198.18.5.64/26`` -> ``64/26.5.18.198.in-addr.arpa.``).
Other lengths (``/9``..``/23`` not on an octet boundary) are not one zone: sign up each
covered octet-aligned zone separately (:func:`reverse_zone` raises ``unsupported_prefix``).

The proof
---------
A :class:`Proof` is plain zone-file text holding, from the trust anchor's zone down to the
reverse zone: each zone's DNSKEY RRset + its RRSIG, each child's DS RRset + the parent's RRSIG,
and finally the ownership TXT RRset + its RRSIG. :func:`validate_proof` accepts a trust anchor
given as a DS or a DNSKEY record (zone-file text), walks that chain and returns the validated
:class:`OwnershipClaim`, or raises :class:`OwnershipError` whose ``reason`` is one of
:data:`REASONS`.
"""

from __future__ import annotations

import datetime as _dt
import ipaddress
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Final

import dns.dnssec
import dns.exception
import dns.name
import dns.rdata
import dns.rdataclass
import dns.rdataset
import dns.rdatatype
import dns.rdtypes.ANY.DNSKEY
import dns.rdtypes.ANY.DS
import dns.rdtypes.ANY.RRSIG
import dns.rrset
import dns.zone
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519

from pcsock.errors import CodedError

__all__ = [
    "OWNER_LABEL",
    "REASONS",
    "OwnershipClaim",
    "OwnershipError",
    "Proof",
    "ZoneKey",
    "build_proof",
    "fetch_proof",
    "owner_record_name",
    "ownership_rrset",
    "reverse_zone",
    "signed_zone_text",
    "validate_proof",
]

#: First label of the ownership record's owner name.
OWNER_LABEL: Final = "_packetcloud-owner"
#: Version tag the first token of every claim string carries.
CLAIM_VERSION: Final = "v=pcown1"
_TIME_FMT: Final = "%Y%m%d%H%M%S"

#: Every reason an :class:`OwnershipError` can carry.
REASONS: Final = frozenset(
    {
        "malformed",  # the proof or the claim text does not parse
        "unsupported_prefix",  # the prefix is not one reverse zone (see module docstring)
        "unsigned",  # an RRset of the chain carries no RRSIG
        "bad_signature",  # an RRSIG does not verify (forged or altered data)
        "untrusted",  # the chain does not reach the trust anchor
        "expired",  # an RRSIG or the claim's not-after is in the past
        "not_yet_valid",  # an RRSIG inception or the claim's not-before is in the future
        "wrong_prefix",  # the proof is for another prefix / reverse zone
        "wrong_owner",  # no claim names the expected owner (and service)
    }
)


class OwnershipError(CodedError):
    """An ownership proof that is rejected; ``reason`` is one of :data:`REASONS`."""

    CODES = REASONS


# --- names -----------------------------------------------------------------------------------


def _net(prefix: str | ipaddress.IPv4Network) -> ipaddress.IPv4Network:
    try:
        return ipaddress.IPv4Network(prefix, strict=True)
    except ValueError as exc:
        raise OwnershipError("unsupported_prefix", f"not an IPv4 prefix: {prefix!r}") from exc


def reverse_zone(prefix: str | ipaddress.IPv4Network) -> dns.name.Name:
    """The reverse zone that holds ``prefix``'s ownership record (see module docstring)."""
    net = _net(prefix)
    octets = str(net.network_address).split(".")
    n = net.prefixlen
    if n in (8, 16, 24):
        labels = list(reversed(octets[: n // 8]))
    elif 25 <= n <= 32:
        labels = [f"{octets[3]}/{n}", *reversed(octets[:3])]
    else:
        raise OwnershipError(
            "unsupported_prefix",
            f"/{n} is not one reverse zone: sign up each covered /8, /16 or /24 separately",
        )
    return dns.name.from_text(".".join([*labels, "in-addr", "arpa", ""]))


def owner_record_name(prefix: str | ipaddress.IPv4Network) -> dns.name.Name:
    """``_packetcloud-owner.<reverse zone>``."""
    return dns.name.Name((OWNER_LABEL.encode(), *reverse_zone(prefix).labels))


def _ts(value: _dt.datetime | float) -> float:
    return value.timestamp() if isinstance(value, _dt.datetime) else float(value)


def _fmt_time(t: float) -> str:
    return _dt.datetime.fromtimestamp(t, _dt.UTC).strftime(_TIME_FMT)


def _parse_time(text: str) -> float:
    try:
        return _dt.datetime.strptime(text, _TIME_FMT).replace(tzinfo=_dt.UTC).timestamp()
    except ValueError as exc:
        raise OwnershipError("malformed", f"bad time {text!r} (want YYYYMMDDHHMMSS)") from exc


# --- the claim -------------------------------------------------------------------------------


@dataclass(frozen=True)
class OwnershipClaim:
    """One ownership statement: ``owner`` may run ``service`` for ``prefix`` in the window."""

    prefix: str
    owner: str
    service: str
    not_before: float  #: POSIX seconds
    not_after: float  #: POSIX seconds

    def to_txt(self) -> str:
        """The TXT string (without quotes)."""
        for field in (self.owner, self.service):
            if not field or any(c.isspace() or c in '"=\\' for c in field):
                raise OwnershipError("malformed", f"owner/service must be a plain token: {field!r}")
        return (
            f"{CLAIM_VERSION} prefix={_net(self.prefix)} owner={self.owner} "
            f"service={self.service} not-before={_fmt_time(self.not_before)} "
            f"not-after={_fmt_time(self.not_after)}"
        )

    @classmethod
    def from_txt(cls, text: str) -> OwnershipClaim:
        """Parse a claim string; OwnershipError("malformed") if it is not one."""
        tokens = text.split()
        if not tokens or tokens[0] != CLAIM_VERSION:
            raise OwnershipError("malformed", f"not a {CLAIM_VERSION} claim: {text!r}")
        fields: dict[str, str] = {}
        for tok in tokens[1:]:
            key, sep, value = tok.partition("=")
            if not sep:
                raise OwnershipError("malformed", f"token without '=': {tok!r}")
            fields[key] = value
        try:
            return cls(
                prefix=str(_net(fields["prefix"])),
                owner=fields["owner"],
                service=fields["service"],
                not_before=_parse_time(fields["not-before"]),
                not_after=_parse_time(fields["not-after"]),
            )
        except KeyError as exc:
            raise OwnershipError("malformed", f"claim lacks {exc.args[0]}") from exc


# --- keys ------------------------------------------------------------------------------------


class ZoneKey:
    """An Ed25519 (DNSSEC algorithm 15) key that signs one zone (a combined KSK/ZSK).

    Ed25519 because it is small and fast and dnspython signs and verifies it through
    ``cryptography``; nothing here depends on the algorithm otherwise.
    """

    def __init__(self, zone: str | dns.name.Name, private: ed25519.Ed25519PrivateKey) -> None:
        self.zone = dns.name.from_text(zone) if isinstance(zone, str) else zone
        self.private = private
        self.dnskey: dns.rdtypes.ANY.DNSKEY.DNSKEY = dns.dnssec.make_dnskey(
            private.public_key(),
            dns.dnssec.Algorithm.ED25519,
            flags=dns.dnssec.Flag.ZONE | dns.dnssec.Flag.SEP,
        )

    @classmethod
    def generate(cls, zone: str | dns.name.Name) -> ZoneKey:
        return cls(zone, ed25519.Ed25519PrivateKey.generate())

    def to_pem(self) -> bytes:
        """The private key as unencrypted PKCS#8 PEM, prefixed by a ``# zone`` comment line."""
        pem = self.private.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        return f"# zone {self.zone.to_text()}\n".encode() + pem

    @classmethod
    def from_pem(cls, data: bytes) -> ZoneKey:
        first, _, rest = data.partition(b"\n")
        if not first.startswith(b"# zone "):
            raise OwnershipError("malformed", "key file lacks its '# zone' line")
        key = serialization.load_pem_private_key(rest, password=None)
        if not isinstance(key, ed25519.Ed25519PrivateKey):
            raise OwnershipError("malformed", "zone keys are Ed25519")
        return cls(first[7:].decode().strip(), key)

    def ds(self) -> dns.rdtypes.ANY.DS.DS:
        """The DS record (SHA-256) the parent publishes for this key."""
        return dns.dnssec.make_ds(self.zone, self.dnskey, "SHA256")

    def ds_text(self) -> str:
        """``<zone> IN DS ...``: usable as a trust anchor."""
        return f"{self.zone.to_text()} IN DS {self.ds().to_text()}"

    def dnskey_text(self) -> str:
        """``<zone> IN DNSKEY ...``: usable as a trust anchor."""
        return f"{self.zone.to_text()} IN DNSKEY {self.dnskey.to_text()}"

    def sign(self, rrset: dns.rrset.RRset, inception: float, expiration: float) -> dns.rrset.RRset:
        """The RRSIG RRset over ``rrset`` by this zone's key."""
        sig = dns.dnssec.sign(
            rrset,
            self.private,
            self.zone,
            self.dnskey,
            inception=inception,
            expiration=expiration,
        )
        out = dns.rrset.RRset(rrset.name, dns.rdataclass.IN, dns.rdatatype.RRSIG, sig.type_covered)
        out.update_ttl(rrset.ttl)
        out.add(sig)
        return out


def _rrset(name: dns.name.Name, ttl: int, rdtype: str, *texts: str) -> dns.rrset.RRset:
    return dns.rrset.from_text(name, ttl, "IN", rdtype, *texts)


def signed_zone_text(
    key: ZoneKey,
    *,
    records: Iterable[dns.rrset.RRset] = (),
    children: Sequence[ZoneKey | str] = (),
    inception: float,
    expiration: float,
    ttl: int = 300,
    nameserver: str = "ns",
    nameserver_ip: str | None = None,
    serial: int = 1,
) -> str:
    """A complete zone file for ``key.zone``, signed with ``key`` (SOA, NS, DNSKEY, ``records``,
    the DS of each child zone; every authoritative RRset with its RRSIG).

    ``children`` are :class:`ZoneKey` objects or DS texts (``"<zone> IN DS ..."``) of
    delegated zones (whose NS records point at the same ``nameserver``). The result is
    zone-file text an authoritative server (knot, with its own signing off) serves as is.
    ``nameserver`` is relative to the zone unless absolute; raise ``serial`` when replacing a
    served zone.
    """
    zone = key.zone
    ns = dns.name.from_text(nameserver, zone)
    sets: list[dns.rrset.RRset] = [
        _rrset(zone, ttl, "SOA", f"{ns} hostmaster.{zone} {serial} 3600 600 86400 {ttl}"),
        _rrset(zone, ttl, "NS", ns.to_text()),
        _rrset(zone, ttl, "DNSKEY", key.dnskey.to_text()),
    ]
    if nameserver_ip is not None and ns.is_subdomain(zone):
        sets.append(_rrset(ns, ttl, "A", nameserver_ip))
    sets.extend(records)
    glue: list[dns.rrset.RRset] = []
    for child in children:
        ds_rr = (
            _rrset(child.zone, ttl, "DS", child.ds().to_text())
            if isinstance(child, ZoneKey)
            else _ds_from_text(child, ttl)
        )
        sets.append(ds_rr)
        glue.append(_rrset(ds_rr.name, ttl, "NS", ns.to_text()))  # delegation: unsigned
    lines = [f"$ORIGIN {zone}", f"$TTL {ttl}"]
    for rrset in sets:
        lines.append(rrset.to_text())
        lines.append(key.sign(rrset, inception, expiration).to_text())
    lines.extend(rr.to_text() for rr in glue)
    return "\n".join(lines) + "\n"


def _ds_from_text(text: str, ttl: int) -> dns.rrset.RRset:
    parts = text.split()
    try:
        i = [p.upper() for p in parts].index("DS")
        return _rrset(dns.name.from_text(parts[0]), ttl, "DS", " ".join(parts[i + 1 :]))
    except (ValueError, dns.exception.DNSException) as exc:
        raise OwnershipError("malformed", f"not a DS record: {text!r}") from exc


# --- proofs ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Proof:
    """An ownership proof: zone-file text of the RRsets and RRSIGs from anchor to record."""

    text: str

    def rrsets(self) -> list[dns.rrset.RRset]:
        """The RRsets of the proof (OwnershipError("malformed") if it does not parse)."""
        out: dict[tuple[dns.name.Name, int, int], dns.rrset.RRset] = {}
        try:
            for line in self.text.splitlines():
                line = line.strip()
                if not line or line.startswith((";", "$")):
                    continue
                rr = _parse_rr_line(line)
                k = (rr.name, rr.rdtype, rr.covers)
                if k in out:
                    out[k].union_update(rr)
                else:
                    out[k] = rr
        except (dns.exception.DNSException, ValueError, IndexError) as exc:
            raise OwnershipError("malformed", f"proof does not parse: {exc}") from exc
        return list(out.values())

    def __str__(self) -> str:
        return self.text


def _parse_rr_line(line: str) -> dns.rrset.RRset:
    """``name [ttl] [IN] TYPE rdata`` -> a one-record RRset."""
    parts = line.split()
    name = dns.name.from_text(parts[0])
    i = 1
    ttl = 300
    if parts[i].isdigit():
        ttl = int(parts[i])
        i += 1
    if parts[i].upper() == "IN":
        i += 1
    rdtype = dns.rdatatype.from_text(parts[i])
    rdata = dns.rdata.from_text(dns.rdataclass.IN, rdtype, " ".join(parts[i + 1 :]))
    covers = rdata.covers()
    rrset = dns.rrset.RRset(name, dns.rdataclass.IN, rdtype, covers)
    rrset.update_ttl(ttl)
    rrset.add(rdata)
    return rrset


def build_proof(
    claims: Sequence[OwnershipClaim],
    owner_key: ZoneKey,
    *,
    chain: Sequence[ZoneKey] = (),
    inception: float,
    expiration: float,
    ttl: int = 300,
) -> Proof:
    """Build a proof offline from the keys (as a zone's signer would serve it).

    ``chain`` lists the ancestor zones' keys from the trust anchor's zone down to (excluding)
    ``owner_key.zone``. Real deployments fetch the same RRsets from DNS (:func:`fetch_proof`).
    """
    if not claims:
        raise OwnershipError("malformed", "no claim to prove")
    zone = reverse_zone(claims[0].prefix)
    if zone != owner_key.zone:
        raise OwnershipError("wrong_prefix", f"claim zone {zone} but key for {owner_key.zone}")
    keys = [*chain, owner_key]
    lines: list[str] = []

    def add(rrset: dns.rrset.RRset, signer: ZoneKey) -> None:
        lines.append(rrset.to_text())
        lines.append(signer.sign(rrset, inception, expiration).to_text())

    for i, k in enumerate(keys):
        add(_rrset(k.zone, ttl, "DNSKEY", k.dnskey.to_text()), k)
        if i + 1 < len(keys):
            add(_rrset(keys[i + 1].zone, ttl, "DS", keys[i + 1].ds().to_text()), k)
    add(ownership_rrset(claims, ttl), owner_key)
    return Proof("\n".join(lines) + "\n")


def ownership_rrset(claims: Sequence[OwnershipClaim], ttl: int = 300) -> dns.rrset.RRset:
    """The TXT RRset publishing ``claims`` (all for one prefix) at its owner name: pass it as
    ``records=`` to :func:`signed_zone_text`."""
    if not claims:
        raise OwnershipError("malformed", "no claim to publish")
    return _rrset(
        owner_record_name(claims[0].prefix), ttl, "TXT", *(_q(c.to_txt()) for c in claims)
    )


def _q(s: str) -> str:
    return '"' + s + '"'


def fetch_proof(
    prefix: str,
    *,
    server: str,
    anchor_zone: str,
    port: int = 53,
    timeout: float = 2.0,
) -> Proof:
    """Collect a proof from an authoritative/recursive DNS server (DNSSEC OK bit set).

    Fetches the ownership TXT, then the DNSKEY of every zone cut from ``anchor_zone`` down to
    the reverse zone and the DS of every child, each with its RRSIGs.
    """
    import dns.message
    import dns.query

    rev = reverse_zone(prefix)
    anchor = dns.name.from_text(anchor_zone)
    if not rev.is_subdomain(anchor):
        raise OwnershipError("wrong_prefix", f"{rev} is not under the anchor zone {anchor}")
    lines: list[str] = []

    def ask(name: dns.name.Name, rdtype: str) -> bool:
        q = dns.message.make_query(name, rdtype, want_dnssec=True)
        try:
            r = dns.query.udp(q, server, port=port, timeout=timeout)
            if r.flags & dns.flags.TC:
                r = dns.query.tcp(q, server, port=port, timeout=timeout)
        except (dns.exception.DNSException, OSError) as exc:
            raise OwnershipError("malformed", f"DNS query {name} {rdtype} failed: {exc}") from exc
        want = dns.rdatatype.from_text(rdtype)
        found = False
        for rrset in r.answer:
            if rrset.rdtype == want or (
                rrset.rdtype == dns.rdatatype.RRSIG and rrset.covers == want
            ):
                lines.append(rrset.to_text())
                found = found or rrset.rdtype == want
        return found

    import dns.flags

    if not ask(owner_record_name(prefix), "TXT"):
        raise OwnershipError("malformed", f"no ownership record at {owner_record_name(prefix)}")
    # zone cuts between the anchor and the reverse zone: every name that has a DNSKEY RRset
    names = [rev]
    n = rev
    while n != anchor:
        n = n.parent()
        names.append(n)
    for name in reversed(names):
        if ask(name, "DNSKEY") and name != anchor:
            ask(name, "DS")
    return Proof("\n".join(lines) + "\n")


@dataclass(frozen=True)
class _Anchor:
    zone: dns.name.Name
    ds: tuple[dns.rdtypes.ANY.DS.DS, ...] = ()
    dnskey: tuple[dns.rdtypes.ANY.DNSKEY.DNSKEY, ...] = ()


def _parse_anchor(text: str) -> _Anchor:
    try:
        rr = [_parse_rr_line(line.strip()) for line in text.splitlines() if line.strip()]
    except (dns.exception.DNSException, ValueError, IndexError) as exc:
        raise OwnershipError("malformed", f"trust anchor does not parse: {exc}") from exc
    if not rr or len({r.name for r in rr}) != 1:
        raise OwnershipError("malformed", "a trust anchor is DS or DNSKEY records of one zone")
    ds = tuple(r for s in rr if s.rdtype == dns.rdatatype.DS for r in s)
    keys = tuple(r for s in rr if s.rdtype == dns.rdatatype.DNSKEY for r in s)
    if not ds and not keys:
        raise OwnershipError("malformed", "a trust anchor is DS or DNSKEY records")
    return _Anchor(rr[0].name, ds, keys)


def _check_sig_times(sigs: dns.rrset.RRset, now: float, what: str) -> None:
    if all(s.expiration < now for s in sigs):
        raise OwnershipError("expired", f"RRSIG over {what} expired")
    if all(s.inception > now for s in sigs):
        raise OwnershipError("not_yet_valid", f"RRSIG over {what} not yet valid")


def _verify(
    rrset: dns.rrset.RRset,
    sigs: dict[tuple[dns.name.Name, int], dns.rrset.RRset],
    zone: dns.name.Name,
    keys: dns.rdataset.Rdataset,
    now: float,
) -> None:
    what = f"{rrset.name} {dns.rdatatype.to_text(rrset.rdtype)}"
    sig = sigs.get((rrset.name, rrset.rdtype))
    if sig is None:
        raise OwnershipError("unsigned", f"no RRSIG over {what}")
    mine = [s for s in sig if s.signer == zone]
    if not mine:
        raise OwnershipError("untrusted", f"{what} is not signed by {zone}")
    own = dns.rrset.RRset(sig.name, sig.rdclass, sig.rdtype, sig.covers)
    for s in mine:
        own.add(s)
    _check_sig_times(own, now, what)
    # dnspython reports every failure as one exception type (ValidationFailure): what our
    # codes tell apart (expired, a key the zone does not hold) is decided here, before it
    current = [s for s in own if s.inception <= now <= s.expiration]
    if not current:
        raise OwnershipError("expired", f"no RRSIG over {what} is valid now")
    held = {(dns.dnssec.key_id(k), k.algorithm) for k in keys}
    if not any((s.key_tag, s.algorithm) in held for s in current):
        raise OwnershipError("untrusted", f"{what} signed by a key {zone} does not hold")
    try:
        dns.dnssec.validate(rrset, own, {zone: keys}, now=now)
    except (dns.exception.UnsupportedAlgorithm, dns.exception.DeniedByPolicy) as exc:
        raise OwnershipError("bad_signature", f"{what}: algorithm not accepted") from exc
    except dns.exception.ValidationFailure as exc:
        raise OwnershipError("bad_signature", f"RRSIG over {what} does not verify") from exc


def validate_proof(
    proof: Proof | str,
    prefix: str,
    trust_anchor: str,
    now: float | _dt.datetime,
    *,
    owner: str | None = None,
    service: str | None = None,
) -> OwnershipClaim:
    """Validate ``proof`` that ``prefix`` is owned, up to ``trust_anchor``, at time ``now``.

    ``trust_anchor`` is zone-file text of DS or DNSKEY records of one zone (e.g.
    ``ZoneKey.ds_text()``). If ``owner`` (and ``service``) are given, a claim naming them must
    exist. Returns the matching claim (the first valid one if no owner is given). Raises
    :class:`OwnershipError` with a reason from :data:`REASONS` otherwise.
    """
    t = _ts(now)
    rev = reverse_zone(prefix)
    net = _net(prefix)
    anchor = _parse_anchor(trust_anchor)
    if not rev.is_subdomain(anchor.zone):
        raise OwnershipError("untrusted", f"{rev} is not under the trust anchor {anchor.zone}")
    p = proof if isinstance(proof, Proof) else Proof(proof)
    data: dict[tuple[dns.name.Name, int], dns.rrset.RRset] = {}
    sigs: dict[tuple[dns.name.Name, int], dns.rrset.RRset] = {}
    for rrset in p.rrsets():
        if rrset.rdtype == dns.rdatatype.RRSIG:
            sigs[(rrset.name, rrset.covers)] = rrset
        else:
            data[(rrset.name, rrset.rdtype)] = rrset

    rec_name = owner_record_name(prefix)
    txt = data.get((rec_name, dns.rdatatype.TXT))
    if txt is None:
        others = [n for (n, ty) in data if ty == dns.rdatatype.TXT]
        raise OwnershipError(
            "wrong_prefix",
            f"no ownership record at {rec_name}" + (f" (proof has {others[0]})" if others else ""),
        )

    # anchor zone's keys
    zone = anchor.zone
    dnskeys = data.get((zone, dns.rdatatype.DNSKEY))
    if dnskeys is None:
        raise OwnershipError("untrusted", f"proof lacks the DNSKEY RRset of {zone}")
    if anchor.dnskey:
        trusted = [k for k in dnskeys if k in anchor.dnskey]
    else:
        trusted = _keys_matching_ds(zone, dnskeys, anchor.ds)
    if not trusted:
        raise OwnershipError("untrusted", f"no DNSKEY of {zone} matches the trust anchor")
    _verify(dnskeys, sigs, zone, _rdataset(trusted), t)
    zone_keys: dns.rdataset.Rdataset = dnskeys.to_rdataset()

    # walk down the zone cuts present in the proof
    labels_below = rev.relativize(zone).labels if rev != zone else ()
    for depth in range(len(labels_below) - 1, -1, -1):
        child = dns.name.Name(labels_below[depth:] + zone.labels)
        ds = data.get((child, dns.rdatatype.DS))
        if ds is None:
            continue  # no zone cut here
        _verify(ds, sigs, zone, zone_keys, t)
        child_keys = data.get((child, dns.rdatatype.DNSKEY))
        if child_keys is None:
            raise OwnershipError("untrusted", f"proof lacks the DNSKEY RRset of {child}")
        matched = _keys_matching_ds(child, child_keys, tuple(ds))
        if not matched:
            raise OwnershipError("untrusted", f"no DNSKEY of {child} matches its DS")
        _verify(child_keys, sigs, child, _rdataset(matched), t)
        zone, zone_keys = child, child_keys.to_rdataset()
    if zone != rev:
        raise OwnershipError(
            "untrusted", f"the chain ends at {zone}, not at the reverse zone {rev} of {net}"
        )
    _verify(txt, sigs, rev, zone_keys, t)

    claims: list[OwnershipClaim] = []
    for rd in txt:
        text = b"".join(rd.strings).decode(errors="replace")
        try:
            claims.append(OwnershipClaim.from_txt(text))
        except OwnershipError:
            continue  # other TXT content at the name is not ours to judge
    if not claims:
        raise OwnershipError("malformed", f"no {CLAIM_VERSION} claim at {rec_name}")
    claims = [c for c in claims if c.prefix == str(net)]
    if not claims:
        raise OwnershipError("wrong_prefix", f"no claim at {rec_name} names {net}")
    if owner is not None:
        claims = [c for c in claims if c.owner == owner]
        if service is not None:
            claims = [c for c in claims if c.service == service]
        if not claims:
            want = owner if service is None else f"{owner}/{service}"
            raise OwnershipError("wrong_owner", f"no claim for {net} names {want}")
    current = [c for c in claims if c.not_before <= t <= c.not_after]
    if current:
        return current[0]
    if all(c.not_after < t for c in claims):
        raise OwnershipError("expired", f"claim for {net} expired")
    raise OwnershipError("not_yet_valid", f"claim for {net} not yet valid")


def _rdataset(keys: Sequence[dns.rdata.Rdata]) -> dns.rdataset.Rdataset:
    rds = dns.rdataset.Rdataset(dns.rdataclass.IN, dns.rdatatype.DNSKEY)
    for k in keys:
        rds.add(k)
    return rds


def _keys_matching_ds(
    zone: dns.name.Name,
    keys: Iterable[dns.rdata.Rdata],
    ds_set: Sequence[dns.rdtypes.ANY.DS.DS],
) -> list[dns.rdata.Rdata]:
    out = []
    for key in keys:
        for ds in ds_set:
            try:
                if dns.dnssec.make_ds(zone, key, ds.digest_type) == ds:
                    out.append(key)
                    break
            except (dns.dnssec.UnsupportedAlgorithm, dns.exception.DNSException):
                continue
    return out

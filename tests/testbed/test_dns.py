"""Knot DNS in the testbed: discovery records answer; signed reverse zones validate from a host."""

from __future__ import annotations

import dns.dnssec
import dns.message
import dns.name
import dns.query
import dns.rdatatype
import pytest

from testbed import Testbed
from testbed.dns import reverse_zone_name, sign_zone, soa

pytestmark = pytest.mark.netns


def _rrsets(msg: dns.message.Message, name: str, rdtype: str):
    n = dns.name.from_text(name)
    rrset = msg.find_rrset(msg.answer, n, dns.rdataclass.IN, dns.rdatatype.from_text(rdtype))
    sig = msg.find_rrset(
        msg.answer, n, dns.rdataclass.IN, dns.rdatatype.RRSIG, dns.rdatatype.from_text(rdtype)
    )
    return rrset, sig


def test_sites_are_discoverable_from_a_host(fig2: Testbed) -> None:
    assert fig2.dns is not None
    s = fig2.node("S")
    srv = fig2.dns.query("_packetcloud._udp.pc.test.", "SRV", node=s)
    targets = sorted(str(r.target) for rr in srv.answer for r in rr)
    assert targets == ["c1.sites.pc.test.", "c2.sites.pc.test.", "c3.sites.pc.test."]
    # kdig, an independent client, from inside the host namespace
    rc, out, err = s.run(["kdig", "+short", f"@{fig2.dns.address}", "c2.sites.pc.test", "A"])
    assert rc == 0 and out.strip() == "198.18.254.2", err
    rc, out, _ = s.run(["kdig", "+short", f"@{fig2.dns.address}", "c2.sites.pc.test", "TXT"])
    assert "v=pcsite1 name=C2" in out


def test_reverse_zone_is_served_signed_and_validates_from_a_host(fig2: Testbed) -> None:
    assert fig2.dns is not None
    origin = reverse_zone_name("198.18.64.0/24")
    anchor = fig2.dns.trust_anchors[origin]
    s = fig2.node("S")
    ptr_name = "2.64.18.198.in-addr.arpa."
    msg = fig2.dns.query(ptr_name, "PTR", dnssec=True, node=s)
    rrset, sig = _rrsets(msg, ptr_name, "PTR")
    assert str(rrset[0].target) == "d.pc.test."
    # validate against the zone's DNSKEY, which is also what the server publishes
    dns.dnssec.validate(rrset, sig, {dns.name.from_text(origin): anchor})
    keys = fig2.dns.query(origin, "DNSKEY", dnssec=True, node=s)
    key_rrset, key_sig = _rrsets(keys, origin, "DNSKEY")
    assert key_rrset == anchor
    dns.dnssec.validate(key_rrset, key_sig, {dns.name.from_text(origin): anchor})
    # a different key does not validate it
    other = sign_zone(origin, soa(origin, "ns.pc.test.")).dnskey
    with pytest.raises(dns.dnssec.ValidationFailure):
        dns.dnssec.validate(rrset, sig, {dns.name.from_text(origin): other})


def test_zones_handed_over_at_run_time_are_served_and_replaced(fig2: Testbed) -> None:
    assert fig2.dns is not None
    origin = "psp.test."
    text = soa(origin, "ns.pc.test.", serial=1) + f"lookup.{origin} 60 IN A 198.18.10.2\n"
    fig2.dns.set_zone(origin, text)
    rc, out, _ = fig2.node("D").run(["kdig", "+short", f"@{fig2.dns.address}", f"lookup.{origin}"])
    assert rc == 0 and out.strip() == "198.18.10.2"
    fig2.dns.set_zone(origin, text.replace(" 1 3600", " 2 3600").replace(".10.2", ".10.3"))
    rc, out, _ = fig2.node("D").run(["kdig", "+short", f"@{fig2.dns.address}", f"lookup.{origin}"])
    assert rc == 0 and out.strip() == "198.18.10.3"
    with pytest.raises(ValueError):
        fig2.dns.set_zone("relative", text)


def test_signed_zone_handed_over_validates(fig2: Testbed) -> None:
    assert fig2.dns is not None
    origin = reverse_zone_name("198.18.10.0/24")
    text = soa(origin, "ns.pc.test.") + f'_pcowner.{origin} 300 IN TXT "psp=acme"\n'
    signed = fig2.dns.set_signed_zone(origin, text)
    msg = fig2.dns.query(f"_pcowner.{origin}", "TXT", dnssec=True, node=fig2.node("S"))
    rrset, sig = _rrsets(msg, f"_pcowner.{origin}", "TXT")
    dns.dnssec.validate(rrset, sig, {dns.name.from_text(origin): signed.dnskey})

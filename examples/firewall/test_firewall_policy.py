"""Pure parts of the firewall example: the packet decision and StopIt filter management."""

from __future__ import annotations

import ipaddress

import pytest
from hypothesis import given
from hypothesis import strategies as st
from scapy.layers.inet import ICMP, IP, TCP, UDP

from examples.firewall.policy import decide
from examples.firewall.stopit import FilterError, FilterManager, filter_key

WL = ipaddress.IPv4Network("198.18.50.0/24")


def _wl(src: int) -> bool:
    return ipaddress.IPv4Address(src) in WL


def _never(src: int, dst: int) -> bool:
    return False


@given(dport=st.integers(0, 65535), proto=st.sampled_from(["tcp", "udp", "icmp"]))
def test_only_tcp_80_443_passes_for_strangers(dport: int, proto: str) -> None:
    ip = IP(src="198.18.9.9", dst="198.19.0.80")
    l4 = {"tcp": TCP(dport=dport), "udp": UDP(dport=dport), "icmp": ICMP()}[proto]
    d = decide(bytes(ip / l4), whitelisted=_wl, blocked=_never)
    assert d.allow == (proto == "tcp" and dport in (80, 443))
    if not d.allow:
        assert d.reason == ("fw_port" if proto == "tcp" else "fw_not_tcp")


def test_whitelisted_sources_pass_anything_but_stopit_wins() -> None:
    pkt = bytes(IP(src="198.18.50.7", dst="198.19.0.80") / UDP(dport=53))
    assert decide(pkt, whitelisted=_wl, blocked=_never).reason == "whitelist"
    d = decide(pkt, whitelisted=_wl, blocked=lambda s, d: True)
    assert (d.allow, d.reason) == (False, "fw_stopit")


def test_malformed_and_fragments_are_dropped_with_reasons() -> None:
    assert decide(b"\x45\x00", whitelisted=_wl, blocked=_never).reason == "fw_malformed"
    frag = IP(src="198.18.9.9", dst="198.19.0.80", proto=6, frag=100) / (b"x" * 8)
    assert decide(bytes(frag), whitelisted=_wl, blocked=_never).reason == "fw_fragment"
    short = IP(src="198.18.9.9", dst="198.19.0.80", proto=6) / b"\x00\x50"
    assert decide(bytes(short), whitelisted=_wl, blocked=_never).reason == "fw_truncated"


def test_stopit_requests_respect_ownership_quota_and_expiry() -> None:
    m = FilterManager(quota=2, max_duration=100)
    m.add_owner("g", ["198.19.0.0/24"])
    m.add_owner("h", ["198.19.1.0/24"])
    f1 = m.request("g", src="198.18.66.1", dst="198.19.0.80", duration=10, now=0)
    assert f1.key == filter_key(
        int(ipaddress.IPv4Address("198.18.66.1")), int(ipaddress.IPv4Address("198.19.0.80"))
    )
    m.request("g", src="198.18.66.2", dst="198.19.0.80", duration=1000, now=0)
    assert max(f.until for f in m.live("g")) == 100  # duration capped
    with pytest.raises(FilterError) as e:
        m.request("g", src="198.18.66.3", dst="198.19.0.80", duration=10, now=1)
    assert e.value.reason == "quota"
    # renewing an existing filter does not count against the quota
    assert m.request("g", src="198.18.66.1", dst="198.19.0.80", duration=20, now=1).until == 21
    with pytest.raises(FilterError) as e:
        m.request("g", src="198.18.66.3", dst="198.19.1.9", duration=10, now=1)
    assert e.value.reason == "not_owner"
    with pytest.raises(FilterError) as e:
        m.request("x", src="198.18.66.3", dst="198.19.1.9", duration=10, now=1)
    assert e.value.reason == "unknown_owner"
    # h's quota is independent of g's
    m.request("h", src="198.18.66.3", dst="198.19.1.9", duration=10, now=1)
    gone = m.expire(21)
    assert {f.src for f in gone} == {
        int(ipaddress.IPv4Address("198.18.66.1")),
        int(ipaddress.IPv4Address("198.18.66.3")),
    }
    assert len(m.live("g")) == 1
    m.request("g", src="198.18.66.4", dst="198.19.0.80", duration=10, now=21)  # room again
    assert m.cancel("h", src="198.18.66.4", dst="198.19.0.80") is None  # not h's
    assert m.cancel("g", src="198.18.66.4", dst="198.19.0.80") is not None

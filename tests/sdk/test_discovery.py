"""DNS discovery of sites and PSP lookup services against a real knot server."""

from __future__ import annotations

import pytest

from pcsock.discovery import DiscoveryError, Resolver, psp_records, site_records
from tests.support import FakeClock
from tests.support.knot import knot
from tests.support.netns import call_in, netns

DNS = "198.18.201.53"
ISP = "isp.example."
PSP = "psp.example."

pytestmark = pytest.mark.netns


def _zone(origin: str, body: str, ttl: int = 300) -> str:
    return (
        f"$ORIGIN {origin}\n$TTL {ttl}\n"
        f"@ IN SOA ns.{origin} hostmaster.{origin} 1 3600 600 86400 {ttl}\n"
        f"@ IN NS ns.{origin}\nns IN A {DNS}\n" + body
    )


@pytest.fixture(scope="module")
def dns_ns():
    sites = [
        ("C1", "198.18.1.1", "198.18.250.1:8080"),
        ("C2", "198.18.2.1", "198.18.250.2:8080"),
        ("C3", "198.18.3.1", ""),
    ]
    zones = {
        ISP: _zone(ISP, site_records(ISP, sites, ttl=60)),
        PSP: _zone(PSP, psp_records(PSP, "acme", "198.18.240.10", 7053, ["srcroute"], ttl=60)),
    }
    with netns([DNS]) as ns, knot(ns, DNS, zones):
        yield ns


def test_sites_resolve_with_addresses_ports_and_attributes(dns_ns):
    r = Resolver([DNS])
    sites = call_in(dns_ns, lambda: r.sites(ISP))
    assert [s.name for s in sites] == ["C1", "C2", "C3"]
    c2 = sites[1]
    assert c2.addresses == ("198.18.2.1",) and c2.port == 6253
    assert c2.control == "198.18.250.2:8080" and c2.forms == (1, 2, 3)
    assert sites[2].control is None
    assert call_in(dns_ns, lambda: r.site(ISP, "c3")).address == "198.18.3.1"


def test_psp_lookup_service_resolves(dns_ns):
    r = Resolver([DNS])
    (rec,) = call_in(dns_ns, lambda: r.lookup_services(PSP))
    assert (rec.psp, rec.host, rec.port, rec.services) == (
        "acme", "198.18.240.10", 7053, ("srcroute",)
    )  # fmt: skip


def test_answers_are_cached_for_their_ttl(dns_ns):
    clock = FakeClock(1000.0)
    r = Resolver([DNS], clock=clock)
    call_in(dns_ns, lambda: r.sites(ISP))
    first = r.queries
    assert first == 1 + 2 * 3  # SRV, then A and TXT per site
    call_in(dns_ns, lambda: r.sites(ISP))
    assert r.queries == first  # all from the cache
    clock.now += 61  # past the 60 s TTL
    call_in(dns_ns, lambda: r.sites(ISP))
    assert r.queries == 2 * first


def test_unknown_domain_is_nxdomain(dns_ns):
    r = Resolver([DNS])
    with pytest.raises(DiscoveryError) as e:
        call_in(dns_ns, lambda: r.sites("nope.isp.example."))
    assert e.value.reason == "nxdomain"


def test_domain_without_sites_is_no_answer(dns_ns):
    r = Resolver([DNS])
    with pytest.raises(DiscoveryError) as e:
        call_in(dns_ns, lambda: r.lookup_services(ISP))
    assert e.value.reason in ("nxdomain", "no_answer")


def test_unknown_site_name_is_refused(dns_ns):
    r = Resolver([DNS])
    with pytest.raises(DiscoveryError) as e:
        call_in(dns_ns, lambda: r.site(ISP, "C9"))
    assert e.value.reason == "no_answer"


def test_unreachable_server_times_out(dns_ns):
    r = Resolver(["198.18.201.99"], timeout=0.3)
    with pytest.raises(DiscoveryError) as e:
        call_in(dns_ns, lambda: r.sites(ISP))
    assert e.value.reason == "timeout"


def test_sites_of_the_fig2_testbed_are_discovered_through_its_knot_server():
    from pcdemo.scenarios import TOPOLOGY
    from testbed.net import Testbed
    from testbed.topology import load

    with Testbed(load(TOPOLOGY), prefix="pcs") as tb:
        assert tb.dns is not None
        r = Resolver([tb.dns.address])
        sites = tb.node("S").call(lambda: r.sites("pc.test."))
        assert {s.name: s.address for s in sites} == {
            n: tb.site(n).public_ip for n in ("C1", "C2", "C3")
        }
        assert all(s.port == 6253 for s in sites)

"""open_circuit / open_circuit_async against a real lookup server (TCP, in a namespace)."""

from __future__ import annotations

import pytest
import trio

import pcsock
from pcsite_lite.site import Site
from pcsite_lite.table_control import TableSiteControl
from pcsock import wire
from pcsock.lookup import CircuitBroker, LookupServer, SiteEntry
from tests.support.netns import call_in, netns

S, SITE, D, PSP_IP = "198.18.204.1", "198.18.204.2", "198.18.204.3", "198.18.204.4"

pytestmark = pytest.mark.netns


@pytest.fixture
def env():
    site = Site("C1", SITE)
    control = TableSiteControl(site.circuits, psp="acme")
    broker = CircuitBroker("acme", [SiteEntry("C1", SITE, control)])
    with netns([S, SITE, D, PSP_IP]) as ns:
        srv = call_in(ns, lambda: LookupServer(broker, PSP_IP, 7053).start())
        try:
            yield ns, site, broker
        finally:
            srv.close()
            broker.close()


def test_open_circuit_sends_to_the_first_hop_with_its_label_and_key(env):
    ns, site, broker = env
    # the "site" is a raw receiver at the site's address: it sees what the sender sent
    first = call_in(ns, lambda: pcsock.listen(SITE, timeout=2))
    sock = call_in(ns, lambda: pcsock.open_circuit(D, "srcroute", lookup=(PSP_IP, 7053),
                                                   sites=["C1"], port=9, local_ip=S))  # fmt: skip
    with first:
        with sock as s:
            label = s.circuit.label
            assert label in site.circuits and len(broker) == 1
            s.send(b"hi", metadata=4)
            d = first.recv()
            assert (d.label, d.source, d.metadata, d.dport, d.payload) == (label, S, 4, 9, b"hi")
            # the MAC verifies under the key the site holds for that label
            raw, _ = pcsock.Session(S, mode="ip").encode_circuit(s.circuit, b"hi", dport=9)
            assert wire.parse(raw).verify_mac(site.circuits.get(label).in_key)
            old = s.circuit.expires
            call_in(ns, s.renew)
            assert s.circuit.expires >= old and s.renewals == 1
        # close() tore the circuit down at the site and at the PSP
        assert label not in site.circuits and len(broker) == 0


def test_open_circuit_with_an_unknown_site_raises_the_lookup_error(env):
    ns, _, _ = env
    with pytest.raises(pcsock.LookupServiceError) as e:
        call_in(ns, lambda: pcsock.open_circuit(D, "srcroute", lookup=(PSP_IP, 7053),
                                                sites=["C9"], local_ip=S))  # fmt: skip
    assert e.value.code == "unknown_site"


def test_open_circuit_needs_a_lookup_service():
    with pytest.raises(ValueError, match="lookup"):
        pcsock.open_circuit(D, "srcroute")


def test_async_circuit_round_trip(env):
    ns, site, _ = env

    async def main():
        first = pcsock.AsyncPacketCloudSocket(SITE)
        s = await pcsock.open_circuit_async(D, "srcroute", lookup=(PSP_IP, 7053), sites=["C1"],
                                            local_ip=S, port=9)  # fmt: skip
        async with first, s:
            await s.send(b"async")
            with trio.fail_after(10):  # a hang guard, not a timing claim
                d = await first.recv()
        return d, s.circuit.label

    d, label = call_in(ns, lambda: trio.run(main))
    assert d.payload == b"async" and d.label == label and d.source == S
    assert label not in site.circuits  # aclose tore it down


def test_async_lookup_calls_stay_in_the_callers_namespace(env):
    """trio caches its worker threads process-wide, and a cached worker stays in the network
    namespace it was started in: the lookup calls must not run on one (here one from a
    namespace without the lookup service's address, left idle just before)."""
    ns, site, _ = env

    async def main():
        s = await pcsock.open_circuit_async(D, "srcroute", lookup=(PSP_IP, 7053), sites=["C1"],
                                            local_ip=S, port=9)  # fmt: skip
        async with s:
            label = s.circuit.label
            assert label in site.circuits
            old = s.circuit.expires
            await s.renew()
            assert s.circuit.expires >= old
        return label

    with netns([]) as other:
        call_in(other, lambda: trio.run(trio.to_thread.run_sync, lambda: None))  # an idle worker
        label = call_in(ns, lambda: trio.run(main))
    assert label not in site.circuits  # aclose tore it down, through the right namespace

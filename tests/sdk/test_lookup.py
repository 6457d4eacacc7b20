"""The PSP lookup service: circuit creation over real site circuit tables and pipelines."""

from __future__ import annotations

import http.client
import json
import time

import pytest

from pcsite_lite.pipeline import Pipeline
from pcsite_lite.site import Site
from pcsite_lite.table_control import TableSiteControl
from pcsite_lite.verdicts import Deliver, Drop, Forward
from pcsock import wire
from pcsock.lookup import (
    BrokerClient,
    CircuitBroker,
    LookupClient,
    LookupServer,
    LookupServiceError,
    SiteEntry,
)
from pcsock.session import Session
from tests.support import FakeClock
from tests.support.netns import call_in, netns

S, D = "198.18.10.2", "198.18.64.2"
IPS = {"C1": "198.18.254.1", "C2": "198.18.254.2", "C3": "198.18.254.3"}
NOOP = "def process(pkt):\n    pass\n"


@pytest.fixture
def net():
    clock = FakeClock(1000.0)
    sites = {}
    for name, ip in IPS.items():
        site = Site(name, ip)
        site.deploy("acme", "srcroute", NOOP)
        sites[name] = site
    entries = [
        SiteEntry(n, IPS[n], TableSiteControl(s.circuits, psp="acme", clock=clock))
        for n, s in sites.items()
    ]
    broker = CircuitBroker("acme", entries, clock=clock)
    yield sites, broker, clock
    broker.close()


def walk(sites, raw, now):
    """Carry a packet through site pipelines until it is delivered or dropped."""
    by_ip = {s.public_ip: s for s in sites.values()}
    path = []
    while True:
        pkt = wire.parse(raw)
        site = by_ip[wire.int2ip(pkt.dst)]
        path.append(site.name)
        (v,) = Pipeline(site).process(raw, now)
        if isinstance(v, Forward):
            raw = v.data
            continue
        return path, v


def test_circuit_carries_packets_through_the_requested_sites_to_the_destination(net):
    sites, broker, clock = net
    c = broker.create(destination=D, service="srcroute", source=S, sites=["C2", "C3"])
    assert c.first_hop == IPS["C2"] and c.sites == ("C2", "C3") and c.psp == "acme"
    sess = Session(S, mode="ip")
    raw, addr = sess.encode_circuit(c, b"payload", metadata=9)
    assert addr == (IPS["C2"], wire.UDP_PORT)
    path, v = walk(sites, raw, clock.now)
    assert path == ["C2", "C3"] and isinstance(v, Deliver) and v.next_hop == D
    d = Session(D, mode="ip").decode(v.data)
    assert d is not None and (d.source, d.payload, d.metadata, d.via) == (
        S, b"payload", 9, IPS["C3"]
    )  # fmt: skip


def test_forged_key_is_dropped_by_the_first_site(net):
    sites, broker, clock = net
    c = broker.create(destination=D, service="srcroute", sites=["C2", "C3"])
    forged = type(c)(**{**c.__dict__, "key": wire.HopKey(bytes(16))})
    raw, _ = Session(S, mode="ip").encode_circuit(forged, b"x")
    _, v = walk(sites, raw, clock.now)
    assert isinstance(v, Drop) and v.reason == "bad_mac"


def test_teardown_removes_every_hop(net):
    sites, broker, clock = net
    c = broker.create(destination=D, service="srcroute", sites=["C1", "C2", "C3"])
    assert all(len(s.circuits) == 1 for s in sites.values())
    broker.teardown(c.circuit_id)
    assert all(len(s.circuits) == 0 for s in sites.values()) and len(broker) == 0
    raw, _ = Session(S, mode="ip").encode_circuit(c, b"x")
    _, v = walk(sites, raw, clock.now)
    assert isinstance(v, Drop) and v.reason == "unknown_label"
    with pytest.raises(LookupServiceError) as e:
        broker.teardown(c.circuit_id)
    assert e.value.code == "unknown_circuit"


def test_circuits_expire_unless_renewed(net):
    sites, broker, clock = net
    c = broker.create(destination=D, service="srcroute", sites=["C2"], lifetime=10)
    clock.now += 8
    c2 = broker.renew(c.circuit_id, 10)
    assert c2.expires == clock.now + 10
    clock.now += 8  # 16 s after creation: alive thanks to the renewal
    raw, _ = Session(S, mode="ip").encode_circuit(c2, b"x")
    assert isinstance(walk(sites, raw, clock.now)[1], Deliver)
    clock.now += 5
    assert isinstance(walk(sites, raw, clock.now)[1], Drop)
    assert broker.expire() == 1 and len(broker) == 0


def test_unknown_site_and_bad_destination_are_refused(net):
    _, broker, _ = net
    with pytest.raises(LookupServiceError) as e:
        broker.create(destination=D, service="srcroute", sites=["C9"])
    assert e.value.code == "unknown_site"
    with pytest.raises(LookupServiceError) as e:
        broker.create(destination="not-an-ip", service="srcroute")
    assert e.value.code == "bad_request"


def test_failed_install_rolls_back_allocated_labels(net):
    sites, broker, _ = net

    class Broken(TableSiteControl):
        def install(self, *a, **kw):
            raise LookupServiceError("site_refused", "boom")

    broker.sites["C3"].control = Broken(sites["C3"].circuits, psp="acme")
    with pytest.raises(LookupServiceError):
        broker.create(destination=D, service="srcroute", sites=["C2", "C3"])
    assert len(sites["C2"].circuits) == 0 and len(broker) == 0


def test_sites_are_chosen_by_measured_latency_when_not_named(net):
    sites, broker, _ = net

    class Slow(TableSiteControl):
        def __init__(self, table, delay):
            super().__init__(table, psp="acme")
            self.delay = delay

        def ping(self):
            time.sleep(self.delay)  # kept, the workload: the site's simulated latency

    for name, delay in (("C1", 0.03), ("C2", 0.0), ("C3", 0.015)):
        broker.sites[name].control = Slow(sites[name].circuits, delay)
    rtt = broker.measure(rounds=1)
    assert rtt["C2"] < rtt["C3"] < rtt["C1"]
    assert broker.create(destination=D, service="srcroute").sites == ("C2",)
    assert broker.create(destination=D, service="srcroute", hops=2).sites == ("C2", "C3")


def test_in_process_client_matches_the_protocol_client(net):
    _, broker, _ = net
    c = BrokerClient(broker).create(destination=D, service="srcroute", sites=["C1"])
    assert c.first_hop == IPS["C1"]


@pytest.mark.netns
def test_lookup_server_over_tcp(net):
    sites, broker, _ = net
    addr = "198.18.203.1"
    with netns([addr]) as ns:
        srv = call_in(ns, lambda: LookupServer(broker, addr, 7053))
        with srv:
            client = LookupClient(addr, 7053)
            c = call_in(
                ns, lambda: client.create(destination=D, service="srcroute", sites=["C2", "C3"])
            )
            assert c.first_hop == IPS["C2"] and len(sites["C3"].circuits) == 1
            c2 = call_in(ns, lambda: client.renew(c, 120))
            assert c2.label == c.label and c2.expires > c.expires
            with pytest.raises(LookupServiceError) as e:
                call_in(ns, lambda: client.create(destination=D, service="srcroute", sites=["X"]))
            assert e.value.code == "unknown_site"
            call_in(ns, lambda: client.teardown(c))
            assert len(sites["C2"].circuits) == 0
            client.close()

            def raw_posts():  # two requests on one connection, as any HTTP client sends them
                conn = http.client.HTTPConnection(addr, 7053, timeout=2)
                out = []
                for body in (b"{not json", json.dumps({"op": "fly"}).encode()):
                    conn.request("POST", "/v1/lookup", body=body)
                    resp = conn.getresponse()
                    out.append((resp.status, json.loads(resp.read())))
                conn.close()
                return out

            (bad_status, bad), (status, unknown) = call_in(ns, raw_posts)
            assert bad_status == 400 and status == 200
            assert bad["error"]["code"] == "bad_request" and not bad["ok"]
            assert (
                unknown["error"]["code"] == "bad_request" and "fly" in unknown["error"]["message"]
            )
        with pytest.raises(LookupServiceError) as e:
            call_in(ns, lambda: LookupClient(addr, 7053, timeout=0.5).create(
                destination=D, service="srcroute"))  # fmt: skip
        assert e.value.code == "unavailable"

"""Issue #13: errors that say what to do (items 2, 6, 7 and 11).

* an unreachable lookup service names the likely cause;
* ``pcsock send`` without ``--wait`` keeps the circuit while the packets cross the sites, and
  says when it tears it down;
* a second socket on a listening address (which would take the listener's datagrams) is
  refused with a clear error;
* the lookup service refuses a circuit for a service no chosen site runs, at setup.
"""

from __future__ import annotations

import socket
import threading
import time

import pytest

import pcsock
from pcsock.cli import main
from pcsock.lookup import (
    CircuitBroker,
    HopSetup,
    LookupClient,
    LookupServer,
    LookupServiceError,
    SiteEntry,
)
from pcsock.socket import AddressInUseError
from tests.support.netns import call_in, netns

A, B = "198.18.201.1", "198.18.201.2"


class RecordingControl:
    """A site control that hands out labels and records what the broker asks, with times."""

    def __init__(self, services: set[str] | None = None) -> None:
        self.offered = services
        self.calls: list[tuple[str, float]] = []
        self._next = 100

    def allocate(self, service: str, lifetime: float) -> int:
        self.calls.append(("allocate", time.monotonic()))
        self._next += 1
        return self._next

    def install(self, label: int, hop: HopSetup) -> None:
        self.calls.append(("install", time.monotonic()))

    def renew(self, label: int, lifetime: float) -> None:
        pass

    def teardown(self, label: int) -> None:
        self.calls.append(("teardown", time.monotonic()))

    def ping(self) -> None:
        pass


class ListingControl(RecordingControl):
    def services(self) -> set[str]:
        self.calls.append(("services", time.monotonic()))
        return set(self.offered or ())


# --- item 11 ---------------------------------------------------------------------------------


def test_unknown_service_is_refused_at_setup_naming_the_site():
    c1, c2 = ListingControl({"srcroute"}), ListingControl({"srcroute", "other"})
    broker = CircuitBroker("acme", [SiteEntry("C1", A, c1), SiteEntry("C2", B, c2)])
    try:
        with pytest.raises(LookupServiceError) as e:
            broker.create(destination=B, service="nosuch", sites=["C1", "C2"])
        assert e.value.code == "unknown_service"
        assert "C1" in e.value.message and "'nosuch'" in e.value.message
        assert "srcroute" in e.value.message  # what the site does run
        # refused before any label was taken at any site
        assert not [c for c, _ in c1.calls + c2.calls if c == "allocate"]
        # the same request for a deployed service succeeds, and over the protocol a refusal
        # is an error document the client raises
        assert broker.create(destination=B, service="srcroute", sites=["C1", "C2"]).label
        reply = broker.handle({"op": "create", "destination": B, "service": "nosuch"})
        assert reply["error"]["code"] == "unknown_service"
    finally:
        broker.close()


def test_a_service_deployed_later_is_accepted_without_restarting_the_broker():
    c1 = ListingControl(set())
    broker = CircuitBroker("acme", [SiteEntry("C1", A, c1)])
    try:
        with pytest.raises(LookupServiceError, match="active there: none"):
            broker.create(destination=B, service="srcroute", sites=["C1"])
        c1.offered = {"srcroute"}  # the PSP deploys it
        assert broker.create(destination=B, service="srcroute", sites=["C1"]).sites == ("C1",)
    finally:
        broker.close()


# --- item 2 ----------------------------------------------------------------------------------


@pytest.mark.netns
def test_unreachable_lookup_service_names_the_likely_cause():
    with netns([A]) as ns:  # only A on loopback: no route to the control network

        def connect(host: str) -> LookupServiceError:
            with pytest.raises(LookupServiceError) as e:
                LookupClient(host, 7053, timeout=2).call({"op": "sites"})
            return e.value

        err = call_in(ns, lambda: connect("198.19.0.6"))
        assert err.code == "unavailable"
        assert "198.19.0.6:7053" in err.message and "data link" in err.message
        err = call_in(ns, lambda: connect(A))  # reachable, nothing listening
        assert "is `pcsock lookupd` running" in err.message


# --- item 7 ----------------------------------------------------------------------------------


@pytest.mark.netns
def test_a_second_socket_on_a_listening_address_is_refused_and_the_listener_keeps_working():
    with netns([A, B]) as ns:
        rx = call_in(ns, lambda: pcsock.listen(B, timeout=3))
        with rx:
            with pytest.raises(AddressInUseError, match=r"pcsock\.listen\(\) on the same"):
                call_in(ns, lambda: pcsock.listen(B))
            # open_circuit from the listening address: refused, and the circuit torn down
            c = RecordingControl()
            broker = CircuitBroker("acme", [SiteEntry("C1", A, c)])
            with call_in(ns, lambda: LookupServer(broker, A, 0)) as srv:
                lookup = (A, srv.address[1])
                with pytest.raises(AddressInUseError):
                    call_in(ns, lambda: pcsock.open_circuit(B, "x", lookup=lookup, local_ip=B))
                assert [n for n, _ in c.calls] == ["allocate", "install", "teardown"]
            broker.close()
            # the listener still receives what is sent to it
            with call_in(ns, lambda: pcsock.listen(A)) as tx:
                from pcsock import wire
                from pcsock.session import Circuit

                key = wire.HopKey(bytes(16))
                tx.send_on(Circuit(first_hop=B, label=7, key=key, destination=B), b"hi")
            assert call_in(ns, rx.recv).payload == b"hi"


# --- item 6 ----------------------------------------------------------------------------------


@pytest.mark.netns
@pytest.mark.parametrize("linger", [0.6, 0.0])
def test_send_without_wait_keeps_the_circuit_while_packets_cross_and_says_so(capsys, linger):
    with netns([A, B]) as ns:
        c = RecordingControl()
        broker = CircuitBroker("acme", [SiteEntry("C1", A, c)])
        first_hop = call_in(ns, lambda: socket.socket(socket.AF_INET, socket.SOCK_DGRAM))
        first_hop.bind((A, 6253))  # the first site's data address (the sender is at B)
        first_hop.settimeout(5)
        try:
            with call_in(ns, lambda: LookupServer(broker, A, 0)) as srv:
                argv = ["send", "--lookup", f"{A}:{srv.address[1]}", "--service", "x",
                        "--to", B, "--linger", str(linger), "hello"]  # fmt: skip
                rc: dict[str, int] = {}
                t = threading.Thread(target=lambda: rc.update(r=call_in(ns, lambda: main(argv))))
                t.start()
                first_hop.recv(2048)
                arrived = time.monotonic()
                t.join(20)
        finally:
            first_hop.close()
            broker.close()
        assert rc == {"r": 0}
        out = capsys.readouterr().out
        [down] = [at for what, at in c.calls if what == "teardown"]
        if linger:
            assert down - arrived >= linger * 0.8
            assert "torn down after 0.6 s (--linger)" in out
        else:
            assert "torn down at once (--linger 0)" in out and "dropped by the sites" in out


def test_http_control_lists_active_services_or_says_it_cannot_tell():
    from types import SimpleNamespace

    from pcsock.lookup import HttpSiteControl

    c = HttpSiteControl("http://127.0.0.1:9", token="t" * 20, psp="acme")
    c.client = SimpleNamespace(  # type: ignore[assignment]
        list_services=lambda: [
            {"service": "srcroute", "active": "v1", "versions": ["v1"]},
            {"service": "uploaded_not_active", "active": None, "versions": ["v1"]},
        ]
    )
    assert c.services() == {"srcroute"}
    # no repository (or nothing uploaded): the site runs its `undeployed` policy, so the
    # broker does not refuse
    c.client = SimpleNamespace(list_services=lambda: [{"service": "srcroute"}])  # type: ignore[assignment]
    assert c.services() is None
    undecided = ListingControl()
    undecided.services = lambda: None  # type: ignore[method-assign]
    broker = CircuitBroker("acme", [SiteEntry("C1", A, undecided)])
    try:
        assert broker.create(destination=B, service="anything", sites=["C1"]).sites == ("C1",)
    finally:
        broker.close()

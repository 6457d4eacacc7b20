"""Paper §2.2: when sender and receiver both chose a service, the receiver's runs first, and
if it drops the packet the sender's never runs."""

from __future__ import annotations

from pcsite_lite.verdicts import Deliver, Drop, Forward
from pcsock.wire import build_service_packet, parse
from tests.support.site_topo import DEST, OUT_KEY, SENDER, circuit, circuit_packet, one_site

SENDER_SVC = """
def process(pkt):
    pkt.log("sender saw metadata %d" % pkt.shim.metadata)
"""
RECEIVER_PASS = """
def process(pkt):
    pkt.log("receiver")
    pkt.shim.update(metadata=9)
"""
RECEIVER_DROP = """
def process(pkt):
    pkt.log("receiver")
    pkt.drop("unwanted")
"""


def _setup(receiver_source: str):
    site, pipe, lines = one_site()
    site.deploy("alice", "sendersvc", SENDER_SVC)
    site.deploy("bob", "receiversvc", receiver_source)
    site.register_service_id(0x42, "alice", "sendersvc")
    site.register_destination("198.18.9.0/24", "bob", "receiversvc")
    return site, pipe, lines


def test_form2_plus_form3_receiver_runs_first_then_sender() -> None:
    site, pipe, lines = _setup(RECEIVER_PASS)
    data = build_service_packet(src=SENDER, dst=DEST, service_id=0x42, payload=b"p")
    [v] = pipe.process(data, 1.0)
    assert isinstance(v, Forward) and v.next_hop == DEST
    # the receiver's service ran first: the sender's saw the metadata it wrote
    assert lines == ["receiver", "sender saw metadata 9"]
    out = parse(v.data)
    assert out.metadata == 9 and out.verify_check()
    assert site.runtime.counters("bob", "receiversvc").packets == 1
    assert site.runtime.counters("alice", "sendersvc").packets == 1


def test_form2_plus_form3_receiver_drop_means_sender_never_runs() -> None:
    site, pipe, lines = _setup(RECEIVER_DROP)
    data = build_service_packet(src=SENDER, dst=DEST, service_id=0x42, payload=b"p")
    [v] = pipe.process(data, 1.0)
    assert isinstance(v, Drop)
    assert (v.reason, v.service, v.detail) == ("service_drop", "bob/receiversvc", "unwanted")
    assert lines == ["receiver"]
    assert site.runtime.counters("alice", "sendersvc").packets == 0
    assert site.runtime.counters("bob", "receiversvc").drops == 1


def test_form1_plus_form3_receiver_of_the_circuit_destination_runs_first() -> None:
    site, pipe, lines = _setup(RECEIVER_PASS)
    label = circuit(site, "sendersvc", psp="alice", destination=DEST)
    [v] = pipe.process(circuit_packet(label), 1.0)
    assert isinstance(v, Forward | Deliver)
    assert lines == ["receiver", "sender saw metadata 9"]
    out = parse(v.data)
    assert out.metadata == 9 and out.verify_mac(OUT_KEY)


def test_form1_plus_form3_receiver_drop_means_circuit_service_never_runs() -> None:
    site, pipe, lines = _setup(RECEIVER_DROP)
    label = circuit(site, "sendersvc", psp="alice", destination=DEST)
    [v] = pipe.process(circuit_packet(label), 1.0)
    assert isinstance(v, Drop) and v.service == "bob/receiversvc"
    assert lines == ["receiver"]
    assert site.runtime.counters("alice", "sendersvc").packets == 0

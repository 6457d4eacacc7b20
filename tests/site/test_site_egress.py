"""The pipeline's fused form-1 egress against the codec's individual setters (an independent
path through pcsock.wire), and transit circuit packets under form 3."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from pcsite_lite.circuits import OutHopEntry
from pcsite_lite.services import source
from pcsite_lite.verdicts import Drop, Forward
from pcsock.wire import HopKey, build_circuit_packet, int2ip, parse
from tests.support.site_topo import DEST, PSP, SITE_IP, circuit, circuit_packet, one_site

addresses = st.integers(0x01000000, 0xDFFFFFFF).map(int2ip)


@settings(max_examples=150, deadline=None)
@given(
    next_hop=addresses,
    out_label=st.integers(0, 2**32 - 1),
    hop_limit=st.integers(1, 255),
    metadata=st.integers(0, 255),
    payload=st.binary(max_size=64),
    udp=st.booleans(),
    key=st.binary(min_size=16, max_size=32),
)
def test_fused_egress_equals_the_codec_setters(
    next_hop: str,
    out_label: int,
    hop_limit: int,
    metadata: int,
    payload: bytes,
    udp: bool,
    key: bytes,
) -> None:
    site, pipe, _ = one_site()
    site.deploy(PSP, "noop", source("noop"))
    out_key = HopKey(key)
    hop = OutHopEntry(out_label, next_hop, out_key)
    label = circuit(site, "noop", out=[hop], destination=None, expires=10)
    data = circuit_packet(label, payload, metadata=metadata, hop_limit=hop_limit, udp=udp)
    expected = parse(bytes(data))
    expected.set_label(out_label)
    expected.set_hop_limit(hop_limit - 1)
    expected.set_dst(next_hop)
    expected.set_src(SITE_IP)
    expected.sign(out_key)
    [v] = pipe.process(data, 1.0)
    assert isinstance(v, Forward) and v.next_hop == next_hop
    assert v.data == bytes(expected.buf)
    parse(v.data)  # the IPv4 header checksum verifies


def test_transit_circuit_packet_diverted_by_prefix_keeps_its_mac() -> None:
    site, pipe, lines = one_site()
    site.deploy("bob", "fw", "def process(pkt):\n    pkt.log('seen %d' % pkt.form)\n")
    site.deploy("bob", "meddle", "def process(pkt):\n    pkt.shim.update(metadata=1)\n")
    site.register_destination("198.18.9.0/24", "bob", "fw")
    k = HopKey(b"next-site-key-016")
    data = build_circuit_packet(src="198.18.4.1", dst=DEST, label=5, key=k, payload=b"x")
    [v] = pipe.process(data, 1.0)
    assert isinstance(v, Forward) and lines == ["seen 1"]
    out = parse(v.data)
    assert out.verify_mac(k) and out.label == 5 and int2ip(out.src) == "198.18.4.1"
    site.register_destination("198.18.9.0/24", "bob", "meddle")
    [v] = pipe.process(data, 1.0)
    assert isinstance(v, Drop) and v.reason == "spoof_attempt"

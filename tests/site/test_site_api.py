"""The Packet API (paper Table 1) as services use it."""

from __future__ import annotations

import struct
import zlib

import pytest
from scapy.layers.inet import IP

from pcdemo.onesite import open_circuit
from pcsite_lite.verdicts import Drop, Forward
from pcsock.wire import build_ipv4, build_service_packet, parse
from tests.support.site_topo import (
    DEST,
    NEXT_IP,
    PSP,
    SENDER,
    SITE_IP,
    circuit,
    circuit_packet,
    one_site,
)


def _run(src: str, data: bytes | bytearray, *, form: int = 1, **site_kw):
    site, pipe, lines = one_site(**site_kw)
    site.deploy(PSP, "s", src)
    if form == 1:
        label = circuit(site, "s")
        data = circuit_packet(label, bytes(data))
    elif form == 2:
        site.register_service_id(9, PSP, "s", redirect_prefixes=["198.18.7.0/24"])
    else:
        site.register_destination("198.18.9.0/24", PSP, "s", redirect_prefixes=["198.18.7.0/24"])
    return site, pipe.process(data, 3.5), lines


def test_shim_read_per_form() -> None:
    src = "def process(pkt):\n    pkt.log(repr(pkt.shim.read().as_tuple()) + ' ' + str(pkt.now))\n"
    _, _, l1 = _run(src, b"x")
    assert l1[0].startswith("(1, ") and f"'{SENDER}', 16) 3.5" in l1[0]
    _, _, l2 = _run(
        src, build_service_packet(src=SENDER, dst=DEST, service_id=9, metadata=4), form=2
    )
    assert l2 == ["(2, None, 9, 4, None, None) 3.5"]
    _, _, l3 = _run(src, build_ipv4(src=SENDER, dst=DEST, proto=17, payload=b""), form=3)
    assert l3 == ["(0, None, None, None, None, None) 3.5"]


def test_read_write_and_set_payload_keep_the_packet_well_formed() -> None:
    src = """
def process(pkt):
    head = pkt.read(0, 3)
    pkt.log(repr(head) + " " + repr(pkt.read(3)) + " " + repr(pkt.read(100, 5)))
    pkt.set_payload(head + b"-grown-" * 10)
"""
    _, [v], lines = _run(src, b"abcdef")
    assert lines == ["b'abc' b'def' b''"]
    assert isinstance(v, Forward)
    out = parse(v.data)  # verifies the IPv4 checksum
    assert bytes(out.payload) == b"abc" + b"-grown-" * 10
    scapy = IP(v.data)
    assert scapy.len == len(v.data) and scapy.chksum == IP(bytes(scapy)).chksum


def test_set_payload_in_udp_encapsulation_fixes_the_udp_length() -> None:
    from pcsite_lite.circuits import OutHopEntry
    from pcsite_lite.pipeline import Pipeline
    from pcsite_lite.site import Site
    from pcsock.wire import HopKey, build_circuit_packet

    site = Site("c", SITE_IP)
    site.deploy(PSP, "s", "def process(pkt):\n    pkt.set_payload(b'z' * 40)\n")
    k = HopKey(b"k" * 16)
    hop = OutHopEntry(3, NEXT_IP, k)
    label = open_circuit(site, psp=PSP, service="s", in_key=k, out_hops=[hop], expires=10)
    data = build_circuit_packet(src=SENDER, dst=SITE_IP, label=label, key=k, payload=b"a", udp=True)
    [v] = Pipeline(site).process(data, 1.0)
    assert isinstance(v, Forward)
    out = parse(v.data)
    assert out.encap == "udp" and bytes(out.payload) == b"z" * 40 and out.verify_mac(k)


def test_aes_gcm_round_trip_between_two_services() -> None:
    key = bytes(range(16))
    enc = f"""
def process(pkt):
    pkt.set_payload(pkt.aes(pkt.read(), bytes.fromhex("{key.hex()}")))
"""
    dec = f"""
def process(pkt):
    pkt.set_payload(pkt.aes(pkt.read(), bytes.fromhex("{key.hex()}"), decrypt=True))
"""
    _, [v1], _ = _run(enc, b"secret payload")
    assert isinstance(v1, Forward)
    sealed = bytes(parse(v1.data).payload)
    assert b"secret" not in sealed and len(sealed) == 12 + 14 + 16
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    assert AESGCM(key).decrypt(sealed[:12], sealed[12:], None) == b"secret payload"
    _, [v2], _ = _run(dec, sealed)
    assert isinstance(v2, Forward) and bytes(parse(v2.data).payload) == b"secret payload"
    _, [v3], _ = _run(dec, sealed[:-1] + b"\0")
    assert isinstance(v3, Drop) and v3.reason == "api_misuse"


def test_compress_round_trip_and_decompression_bomb_is_refused() -> None:
    comp = "def process(pkt):\n    pkt.set_payload(pkt.compress(pkt.read()))\n"
    decomp = "def process(pkt):\n    pkt.set_payload(pkt.compress(pkt.read(), decompress=True))\n"
    _, [v], _ = _run(comp, b"a" * 500)
    assert isinstance(v, Forward)
    assert zlib.decompress(bytes(parse(v.data).payload)) == b"a" * 500
    _, [v], _ = _run(decomp, zlib.compress(b"b" * 300))
    assert isinstance(v, Forward) and bytes(parse(v.data).payload) == b"b" * 300
    _, [v], _ = _run(decomp, zlib.compress(b"\0" * 10_000_000))
    assert isinstance(v, Drop) and v.reason == "api_misuse"


def test_node_local_cache_is_best_effort_and_bounded() -> None:
    src = """
def process(pkt):
    n = pkt.read(0, 1)[0]
    pkt.cache(n, b"v" * 400)
    pkt.log("%s %s" % (pkt.cache_get(n) is not None, pkt.cache_get(0) is not None))
"""
    site, pipe, lines = one_site()
    site.deploy(PSP, "s", src)
    site.runtime.slot(PSP, "s").ctx.cache_limit = 1000  # room for two entries
    label = circuit(site, "s")
    for n in range(4):
        pipe.process(circuit_packet(label, bytes([n])), 1.0)
    assert lines == ["True True", "True True", "True False", "True False"]
    ctx = site.runtime.slot(PSP, "s").ctx
    assert ctx.cache_used <= 1000 and len(ctx.cache) == 2


def test_isp_published_congestion_table_is_readable_but_not_writable() -> None:
    src = """
def process(pkt):
    level = pkt.isp_lookup("congestion", pkt.dst)
    pkt.log("level %s" % (level["level"] if level else None))
"""
    site, pipe, lines = one_site()
    site.fis.lpm_put("isp", "congestion", "198.18.9.0/24", {"level": 0.75}, writer="isp")
    site.deploy(PSP, "s", src)
    site.register_service_id(9, PSP, "s")
    pipe.process(build_service_packet(src=SENDER, dst=DEST, service_id=9), 1.0)
    pipe.process(build_service_packet(src=SENDER, dst="198.18.8.1", service_id=9), 1.0)
    assert lines == ["level 0.75", "level None"]
    # a service writes only its own namespace, never the ISP's
    site.deploy(PSP, "w", "def process(pkt):\n    pkt.store('x', 1)\n")
    site.register_service_id(10, PSP, "w")
    pipe.process(build_service_packet(src=SENDER, dst=DEST, service_id=10), 1.0)
    assert site.fis.get(f"{PSP}/w", "x") == 1 and site.fis.get("isp", "x") is None


def test_form2_metadata_update_is_resealed_and_flag_cleared() -> None:
    src = "def process(pkt):\n    pkt.shim.update(metadata=200)\n"
    data = build_service_packet(src=SENDER, dst=DEST, service_id=9, metadata=1, payload=b"p")
    _, [v], _ = _run(src, data, form=2)
    assert isinstance(v, Forward) and v.next_hop == DEST
    out = parse(v.data)
    assert out.metadata == 200 and out.verify_check() and out.tos == 0 and out.ttl == 63


def test_form2_encapsulate_and_replicate_within_allowed_prefixes() -> None:
    data = build_service_packet(src=SENDER, dst=DEST, service_id=9, payload=b"p")
    _, [v], _ = _run("def process(pkt):\n    pkt.encapsulate('198.18.7.7')\n", data, form=2)
    assert isinstance(v, Forward) and v.next_hop == "198.18.7.7"
    outer = IP(v.data)
    assert (outer.src, outer.dst, outer.proto) == (SITE_IP, "198.18.7.7", 4)
    assert outer.chksum == IP(bytes(outer)).chksum and outer.tos == 0
    inner = parse(bytes(outer.payload))
    assert inner.service_id == 9 and bytes(inner.payload) == b"p"
    src = "def process(pkt):\n    pkt.replicate(['198.18.7.1', '198.18.7.2', '198.18.7.3'])\n"
    _, vs, _ = _run(src, data, form=2)
    assert [v.next_hop for v in vs] == ["198.18.7.1", "198.18.7.2", "198.18.7.3"]


@pytest.mark.parametrize(
    "call",
    [
        "pkt.forward_to(3.5)",
        "pkt.read(-1, 2)",
        "pkt.write(0, 'text')",
        "pkt.shim.update(metadata=300)",
        "pkt.cache('k', 'not bytes')",
        "pkt.aes(b'x', b'short')",
        "pkt.replicate('198.18.6.1')",
    ],
)
def test_api_misuse_drops_the_packet_with_a_reason(call: str) -> None:
    _, [v], _ = _run(f"def process(pkt):\n    {call}\n", b"payload")
    assert isinstance(v, Drop) and v.reason == "api_misuse"


def test_struct_parsing_of_transport_header_through_read() -> None:
    src = """
import struct
def process(pkt):
    sport, dport = struct.unpack("!HH", pkt.read(0, 4))
    pkt.log("%d>%d" % (sport, dport))
"""
    udp = struct.pack("!HHHH", 1234, 80, 8, 0)
    _, _, lines = _run(src, build_ipv4(src=SENDER, dst=DEST, proto=17, payload=udp), form=3)
    assert lines == ["1234>80"]


def test_the_last_out_hop_choice_wins() -> None:
    from pcsite_lite.circuits import OutHopEntry
    from tests.support.site_topo import OUT_KEY

    src = """
def process(pkt):
    pkt.forward_to("198.18.6.1")
    pkt.shim.update(label=78)
    pkt.log("label %d" % pkt.shim.label)
"""
    site, pipe, lines = one_site()
    site.deploy(PSP, "s", src)
    label = circuit(
        site, "s", out=[OutHopEntry(77, NEXT_IP, OUT_KEY), OutHopEntry(78, "198.18.6.2")]
    )
    [v] = pipe.process(circuit_packet(label), 1.0)
    assert isinstance(v, Forward) and v.next_hop == "198.18.6.2"
    assert parse(v.data).label == 78 and lines == ["label 78"]


def test_aes_associated_data_is_covered_by_the_tag() -> None:
    key = bytes(range(32))
    enc = f"""
def process(pkt):
    pkt.set_payload(pkt.aes(pkt.read(), bytes.fromhex("{key.hex()}"), aad=b"epoch:1"))
"""

    def dec(aad: str) -> str:
        return f"""
def process(pkt):
    pkt.set_payload(pkt.aes(pkt.read(), bytes.fromhex("{key.hex()}"), decrypt=True, aad={aad}))
"""

    _, [v1], _ = _run(enc, b"secret payload")
    sealed = bytes(parse(v1.data).payload)
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    assert AESGCM(key).decrypt(sealed[:12], sealed[12:], b"epoch:1") == b"secret payload"
    _, [ok], _ = _run(dec('b"epoch:1"'), sealed)
    assert isinstance(ok, Forward) and bytes(parse(ok.data).payload) == b"secret payload"
    for other in ('b"epoch:2"', 'b""', "'epoch:1'", 'b"x" * 257'):  # another AAD, or a bad one
        _, [v], _ = _run(dec(other), sealed)
        assert isinstance(v, Drop) and v.reason == "api_misuse", other

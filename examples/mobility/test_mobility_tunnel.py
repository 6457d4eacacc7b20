"""Pure parts of the mobility example: RFC 2003 tunnel codec and signed binding updates."""

from __future__ import annotations

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import given
from hypothesis import strategies as st
from scapy.layers.inet import IP, UDP

from examples.mobility.binding import (
    UPDATE_LEN,
    BindingError,
    BindingRegistry,
    sign_update,
)
from examples.mobility.ipip import TunnelError, decapsulate, encapsulate
from pcsock.wire import build_ipv4


@given(
    payload=st.binary(max_size=200),
    tos=st.integers(0, 255),
    ttl=st.integers(2, 255),
    df=st.booleans(),
)
def test_encapsulation_agrees_with_scapy(payload: bytes, tos: int, ttl: int, df: bool) -> None:
    inner = build_ipv4(
        src="198.18.9.1",
        dst="198.19.1.5",
        proto=17,
        payload=payload,
        tos=tos,
        ttl=ttl,
        dont_fragment=df,
    )
    outer = encapsulate(inner, src="198.18.0.1", dst="198.18.200.2")
    parsed = IP(bytes(outer))
    assert parsed.proto == 4 and parsed.src == "198.18.0.1" and parsed.dst == "198.18.200.2"
    assert parsed.tos == tos
    assert bool(parsed.flags & 2) == df
    # scapy recomputes checksums when asked: ours must equal its independent computation
    again = IP(bytes(outer))
    del again.chksum
    assert IP(bytes(again)).chksum == parsed.chksum
    inner_parsed = parsed.payload
    assert inner_parsed.ttl == ttl - 1
    fixed = inner_parsed.copy()
    del fixed.chksum
    assert IP(bytes(fixed)).chksum == inner_parsed.chksum
    back = decapsulate(outer)
    assert back[20:] == inner[20:]
    assert back[8] == ttl - 1


def test_scapy_built_ipip_decapsulates() -> None:
    pkt = IP(src="198.18.0.1", dst="198.18.200.2") / IP(src="198.18.9.1", dst="198.19.1.5")
    pkt = pkt / UDP(sport=1, dport=2) / b"x"
    inner = decapsulate(bytes(pkt))
    assert IP(inner).dst == "198.19.1.5"


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        (b"\x45" + bytes(5), "ipip_not_ipv4"),
        (bytes(build_ipv4(src="198.18.0.1", dst="198.18.0.2", proto=17, payload=b"")), None),
    ],
)
def test_decapsulate_rejects_junk(raw: bytes, reason: str | None) -> None:
    with pytest.raises(TunnelError) as e:
        decapsulate(raw)
    assert e.value.reason == (reason or "ipip_not_ipip")


def test_ttl_one_is_not_tunnelled_and_loops_are_refused() -> None:
    inner = build_ipv4(src="198.18.9.1", dst="198.19.1.5", proto=17, payload=b"", ttl=1)
    with pytest.raises(TunnelError) as e:
        encapsulate(inner, src="198.18.0.1", dst="198.18.200.2")
    assert e.value.reason == "ipip_ttl_exceeded"
    inner = build_ipv4(src="198.18.200.2", dst="198.19.1.5", proto=17, payload=b"")
    outer = encapsulate(inner, src="198.18.0.1", dst="198.18.200.2")
    with pytest.raises(TunnelError) as e:
        decapsulate(outer, local="198.18.200.2")
    assert e.value.reason == "ipip_loop"


def test_corrupted_outer_header_is_refused() -> None:
    inner = build_ipv4(src="198.18.9.1", dst="198.19.1.5", proto=17, payload=b"abc")
    outer = encapsulate(inner, src="198.18.0.1", dst="198.18.200.2")
    outer[15] ^= 1
    with pytest.raises(TunnelError) as e:
        decapsulate(outer)
    assert e.value.reason == "ipip_bad_checksum"


def test_binding_updates_are_authenticated_and_ordered() -> None:
    key = Ed25519PrivateKey.generate()
    reg = BindingRegistry()
    reg.register("198.19.1.0/24", key.public_key())
    u1 = sign_update(key, "198.19.1.0/24", "198.18.200.2", seq=1)
    assert len(u1) == UPDATE_LEN
    assert reg.apply(u1).care_of == "198.18.200.2"
    # replaying the same update, or an older one, is refused
    with pytest.raises(BindingError) as e:
        reg.apply(u1)
    assert e.value.reason == "replay"
    u3 = sign_update(key, "198.19.1.0/24", "198.18.201.2", seq=3)
    u2 = sign_update(key, "198.19.1.0/24", "198.18.202.2", seq=2)
    assert reg.apply(u3).seq == 3
    with pytest.raises(BindingError) as e:
        reg.apply(u2)
    assert e.value.reason == "replay"
    assert reg.last_seq("198.19.1.0/24") == 3


def test_forged_or_altered_updates_are_refused() -> None:
    key, other = Ed25519PrivateKey.generate(), Ed25519PrivateKey.generate()
    reg = BindingRegistry()
    reg.register("198.19.1.0/24", key.public_key())
    forged = sign_update(other, "198.19.1.0/24", "198.18.66.6", seq=9)
    with pytest.raises(BindingError) as e:
        reg.apply(forged)
    assert e.value.reason == "bad_signature"
    good = bytearray(sign_update(key, "198.19.1.0/24", "198.18.200.2", seq=9))
    good[12] ^= 0xFF  # redirect the care-of address
    with pytest.raises(BindingError) as e:
        reg.apply(bytes(good))
    assert e.value.reason == "bad_signature"
    unknown = sign_update(key, "198.19.2.0/24", "198.18.200.2", seq=1)
    with pytest.raises(BindingError) as e:
        reg.apply(unknown)
    assert e.value.reason == "unknown_prefix"
    with pytest.raises(BindingError) as e:
        reg.apply(b"short")
    assert e.value.reason == "bad_length"
    assert reg.last_seq("198.19.1.0/24") is None

"""The one form-1 hop (pcsock.wire.form1_out) as the pipeline uses it on its general path: a
circuit packet with IP options (which the fast path never takes) leaves with the same
rewrite as an option-less one, on the C accelerator and on the pure-Python reference; and a
drop's reason is a StrEnum whose value is the counter's and the JSON's token."""

from __future__ import annotations

import json

import pytest

from pcsite_lite.pipeline import Pipeline
from pcsite_lite.services import source
from pcsite_lite.verdicts import Drop, Forward, PipelineReason
from pcsock import wire
from tests.support.site_topo import (
    NEXT_IP,
    OUT_KEY,
    PSP,
    SITE_IP,
    circuit,
    circuit_packet,
    one_site,
)

ACCEL = [False, True] if wire.accelerator() is not None else [False]


def _with_options(raw: bytearray, n: int) -> bytearray:
    """``raw`` with ``n`` bytes of IPv4 options (NOPs), lengths and checksum fixed."""
    out = bytearray(raw)
    out[20:20] = b"\x01" * n
    out[0] = 0x45 + n // 4
    out[2:4] = len(out).to_bytes(2, "big")
    out[10:12] = b"\0\0"
    out[10:12] = wire.internet_checksum(out[: 20 + n]).to_bytes(2, "big")
    return out


@pytest.mark.parametrize("accel", ACCEL)
def test_a_packet_with_ip_options_gets_the_same_hop_on_the_general_path(accel: bool) -> None:
    site, _, _ = one_site()
    site.deploy(PSP, "noop", source("noop"))
    label = circuit(site, "noop", destination=None)
    pipe = Pipeline(site, accel=accel)
    plain = circuit_packet(label, b"payload")
    [a] = pipe.process(bytes(plain), 1.0)
    [b] = pipe.process(bytes(_with_options(plain, 8)), 1.0)
    assert isinstance(a, Forward) and isinstance(b, Forward)
    assert a.next_hop == b.next_hop == NEXT_IP
    pa, pb = wire.parse(a.data), wire.parse(b.data)  # parse verifies the IPv4 checksum
    assert pb.ihl == 28 and bytes(pb.payload) == bytes(pa.payload) == b"payload"
    for p in (pa, pb):
        assert (p.label, p.hop_limit, wire.int2ip(p.src), wire.int2ip(p.dst)) == (
            77, 15, SITE_IP, NEXT_IP)  # fmt: skip
        assert p.verify_mac(OUT_KEY)
    assert bytes(pa.buf[20:]) == bytes(pb.buf[28:])  # the same shim, MAC and payload


def test_drop_reasons_are_str_enums_whose_values_are_the_tokens() -> None:
    site, pipe, _ = one_site()
    [d] = pipe.process(bytes(circuit_packet(12345)), 1.0)
    assert isinstance(d, Drop) and d.reason is PipelineReason.UNKNOWN_LABEL
    assert d.reason == "unknown_label" and f"{d.reason}" == "unknown_label"
    assert json.dumps(dict(site.drops)) == '{"unknown_label": 1}'

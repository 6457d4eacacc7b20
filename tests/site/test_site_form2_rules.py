"""What a site does with a form-2 packet, as docs/protocol.md §4.3 states it: any ToS accepted,
TTL 1 and 0 dropped before the service runs, the flag cleared, TTL - 1, the shim kept."""

from __future__ import annotations

import pytest

from pcsite_lite.verdicts import Drop, Forward
from pcsock import wire
from tests.support.site_topo import DEST, PSP, SENDER, one_site

LOG = "def process(pkt):\n    pkt.log('ran')\n"


def _serve(**build: int) -> tuple[list[object], list[str]]:
    site, pipe, lines = one_site()
    site.deploy(PSP, "s", LOG)
    site.register_service_id(9, PSP, "s")
    data = wire.build_service_packet(
        src=SENDER, dst=DEST, service_id=9, payload=b"p", metadata=4, **build
    )
    return pipe.process(data, 1.0), lines


@pytest.mark.parametrize("ttl", [0, 1])
def test_ttl_1_and_0_are_dropped_before_the_service_runs(ttl: int) -> None:
    verdicts, lines = _serve(ttl=ttl)
    assert [type(v) for v in verdicts] == [Drop] and verdicts[0].reason == "ttl_exceeded"
    assert lines == []


@pytest.mark.parametrize(
    ("tos", "out_tos"),
    [(wire.TOS_SERVICE, 0), (wire.TOS_SERVICE | 0x03, 0x03), (0x00, 0x00), (0x10, 0x10)],
)
def test_any_tos_is_served_the_flag_cleared_and_the_shim_kept(tos: int, out_tos: int) -> None:
    verdicts, lines = _serve(tos=tos, ttl=2)
    [v] = verdicts
    assert isinstance(v, Forward) and v.next_hop == DEST and lines == ["ran"]
    out = wire.parse(v.data)  # verifies the IPv4 checksum after the ToS and TTL updates
    assert out.tos == out_tos and out.ttl == 1
    assert out.form == wire.FORM_SERVICE and out.service_id == 9 and out.verify_check()
    assert (wire.int2ip(out.src), bytes(out.payload)) == (SENDER, b"p")

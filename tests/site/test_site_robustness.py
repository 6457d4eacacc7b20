"""Malformed input never escapes the pipeline as an exception: it becomes a counted Drop."""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pcsite_lite.services import source
from pcsite_lite.verdicts import DROP_REASONS, Deliver, Drop, Forward
from pcsock.wire import build_ipv4, build_service_packet, parse
from tests.support.site_topo import DEST, PSP, SENDER, circuit, circuit_packet, one_site

SITE, PIPE, _ = one_site()
SITE.deploy(PSP, "sr", source("source_routing"))
SITE.deploy(PSP, "noop", source("noop"))
LABEL = circuit(SITE, "sr", expires=1e12)
SITE.fis.put(f"{PSP}/sr", str(LABEL), {"label": 77, "next_hop": "198.18.6.1"}, writer=PSP)
SITE.register_service_id(9, PSP, "noop")
SITE.register_destination("198.18.9.0/24", PSP, "noop")
VALID = [
    bytes(circuit_packet(LABEL, b"payload")),
    bytes(build_service_packet(src=SENDER, dst=DEST, service_id=9, payload=b"p")),
    bytes(build_ipv4(src=SENDER, dst=DEST, proto=17, payload=b"plain")),
    bytes(build_service_packet(src=SENDER, dst=DEST, service_id=9, payload=b"u", udp=True)),
]


def _check(verdicts: list) -> None:
    assert verdicts
    for v in verdicts:
        assert isinstance(v, Forward | Deliver | Drop)
        if isinstance(v, Drop):
            assert v.reason in DROP_REASONS
        else:
            parse(v.data)  # whatever the site sends is a well-formed packet


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=80))
def test_random_bytes_become_counted_drops(data: bytes) -> None:
    before = sum(SITE.drops.values())
    verdicts = PIPE.process(data, 1.0)
    _check(verdicts)
    if isinstance(verdicts[0], Drop):
        assert sum(SITE.drops.values()) == before + 1


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.sampled_from(VALID),
    st.lists(st.tuples(st.integers(0, 200), st.integers(0, 255)), min_size=1, max_size=4),
    st.integers(0, 120),
)
def test_mutated_valid_packets_never_raise(base: bytes, flips: list, cut: int) -> None:
    buf = bytearray(base)
    for pos, val in flips:
        if pos < len(buf):
            buf[pos] = val
    if cut:
        buf = buf[: max(0, len(buf) - cut)]
    _check(PIPE.process(bytes(buf), 1.0))


def test_valid_packets_of_every_form_pass() -> None:
    for data in VALID:
        [v] = PIPE.process(data, 1.0)
        assert isinstance(v, Forward), v


def test_a_platform_bug_is_a_counted_drop_not_an_exception() -> None:
    site, pipe, _ = one_site()
    site.register_service_id(9, PSP, "noop")

    class Broken(dict):
        def get(self, *a: object, **k: object) -> None:
            raise KeyError("simulated platform bug")

    site.service_ids = Broken()
    [v] = pipe.process(build_service_packet(src=SENDER, dst=DEST, service_id=9), 1.0)
    assert isinstance(v, Drop) and v.reason == "internal_error"
    assert site.drops["internal_error"] == 1
    assert site.runtime.events[-1].kind == "internal_error"

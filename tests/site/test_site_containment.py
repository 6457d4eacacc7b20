"""Containment: a failing, looping or misbehaving service loses only its own packets."""

from __future__ import annotations

import time

import pytest

from pcsite_lite.runtime import ACTIVE, DISABLED
from pcsite_lite.sandbox import Budget, ServiceLoadError, load_service
from pcsite_lite.services import source
from pcsite_lite.verdicts import Drop, Forward
from tests.support.site_topo import DEST, circuit, circuit_packet, one_site

RAISES = """
def process(pkt):
    raise ValueError("boom")
"""
SPINS = """
def process(pkt):
    while True:
        pass
"""
SPINS_AND_SWALLOWS = """
def process(pkt):
    while True:
        try:
            while True:
                pass
        except:
            pass
"""
SPINS_IN_COMPREHENSION = """
def process(pkt):
    return [x for x in iter(int, 1)]
"""
RECURSES = """
def process(pkt):
    return process(pkt)
"""
SWALLOWS_THEN_RETURNS = """
def process(pkt):
    try:
        while True:
            pass
    except:
        return
"""


def _two_services(bad_source: str):
    site, pipe, _ = one_site()
    site.deploy("evil", "bad", bad_source)
    site.deploy("good", "noop", source("noop"))
    bad = circuit(site, "bad", psp="evil")
    good = circuit(site, "noop", psp="good")
    return site, pipe, bad, good


def test_exception_drops_only_that_packet_and_is_logged_with_the_service_id() -> None:
    site, pipe, bad, good = _two_services(RAISES)
    [v] = pipe.process(circuit_packet(bad), 1.0)
    assert isinstance(v, Drop) and (v.reason, v.service) == ("service_error", "evil/bad")
    assert "ValueError: boom" in v.detail
    [ev] = site.runtime.events
    assert (ev.kind, ev.service) == ("service_error", "evil/bad") and "boom" in ev.detail
    [ok] = pipe.process(circuit_packet(good), 1.0)
    assert isinstance(ok, Forward)
    assert site.drops == {"service_error": 1}
    assert site.runtime.counters("evil", "bad").drops == 1
    assert site.runtime.counters("good", "noop").drops == 0


@pytest.mark.parametrize(
    "src", [SPINS, SPINS_AND_SWALLOWS, SPINS_IN_COMPREHENSION, SWALLOWS_THEN_RETURNS]
)
def test_service_over_its_cpu_budget_is_stopped_and_the_packet_dropped(src: str) -> None:
    _site, pipe, bad, good = _two_services(src)
    t0 = time.perf_counter()
    [v] = pipe.process(circuit_packet(bad), 1.0)
    elapsed = time.perf_counter() - t0
    assert isinstance(v, Drop) and v.reason == "service_timeout" and v.service == "evil/bad"
    assert elapsed < 1.0
    [ok] = pipe.process(circuit_packet(good), 1.0)
    assert isinstance(ok, Forward)


def test_unbounded_recursion_is_contained() -> None:
    _site, pipe, bad, _ = _two_services(RECURSES)
    [v] = pipe.process(circuit_packet(bad), 1.0)
    assert isinstance(v, Drop) and v.reason in ("service_error", "service_timeout")


def test_wall_clock_deadline_stops_a_slow_loop_with_few_iterations() -> None:
    fake_ns = [0]

    def clock() -> int:
        fake_ns[0] += 1_000_000  # every clock read: 1 ms passes
        return fake_ns[0]

    budget = Budget(max_ticks=10**9, max_ns=5_000_000, clock=clock)
    site, pipe, _ = one_site(budget=budget)
    pipe.clock = clock
    site.deploy("evil", "slow", SPINS)
    label = circuit(site, "slow", psp="evil")
    [v] = pipe.process(circuit_packet(label), 1.0)
    assert isinstance(v, Drop) and v.reason == "service_timeout"


def test_a_service_that_keeps_failing_is_disabled_with_a_visible_status() -> None:
    site, pipe, bad, _good = _two_services(RAISES)
    for _ in range(site.runtime.max_failures):
        [v] = pipe.process(circuit_packet(bad), 1.0)
        assert isinstance(v, Drop) and v.reason == "service_error"
    status = site.status()["services"]["evil/bad"]
    assert status["status"] == DISABLED and "failures in a row" in status["detail"]
    [v] = pipe.process(circuit_packet(bad), 1.0)
    assert isinstance(v, Drop) and v.reason == "service_disabled"
    assert any(e.kind == "disabled" and e.service == "evil/bad" for e in site.runtime.events)
    # the other service never noticed
    assert site.status()["services"]["good/noop"]["status"] == ACTIVE
    # a new version brings it back
    site.deploy("evil", "bad", source("noop"), version="2")
    [v] = pipe.process(circuit_packet(bad), 1.0)
    assert isinstance(v, Forward)
    assert site.runtime.slot("evil", "bad").version == "2"


def test_successes_reset_the_failure_streak() -> None:
    flaky = """
def process(pkt):
    if pkt.read(0, 1) == b"x":
        raise RuntimeError("flaky")
"""
    site, pipe, _ = one_site()
    site.deploy("p", "flaky", flaky)
    label = circuit(site, "flaky", psp="p")
    for _ in range(3 * site.runtime.max_failures):
        pipe.process(circuit_packet(label, b"x"), 1.0)
        pipe.process(circuit_packet(label, b"y"), 1.0)
    slot = site.runtime.slot("p", "flaky")
    assert slot.status == ACTIVE and slot.failures == 3 * site.runtime.max_failures


def test_services_do_not_share_module_state() -> None:
    writer = """
state = {"n": 0}
def process(pkt):
    state["n"] += 1
    pkt.log("writer %d" % state["n"])
"""
    reader = """
def process(pkt):
    pkt.log("reader sees state: %s" % ("state" in list(globals_copy)))
globals_copy = []
"""
    site, pipe, lines = one_site()
    site.deploy("a", "w", writer)
    site.deploy("b", "r", reader)
    lw, lr = circuit(site, "w", psp="a"), circuit(site, "r", psp="b")
    pipe.process(circuit_packet(lw), 1.0)
    pipe.process(circuit_packet(lw), 1.0)
    pipe.process(circuit_packet(lr), 1.0)
    assert lines == ["writer 1", "writer 2", "reader sees state: False"]


@pytest.mark.parametrize(
    ("src", "reason"),
    [
        ("def process(pkt):\n    pkt._d.pkt.buf[12] = 1\n", "forbidden_attribute"),
        ("def process(pkt):\n    pkt._d.allowed = ((0, 0),)\n", "forbidden_attribute"),
        ("def process(pkt):\n    return pkt.shim._d\n", "forbidden_attribute"),
        ("def process(pkt):\n    return pkt.read.__self__\n", "forbidden_attribute"),
        ("def process(pkt):\n    return getattr(pkt, '_d')\n", "forbidden_name"),
        ("def process(pkt):\n    return type(pkt)\n", "forbidden_name"),
        ("def process(pkt):\n    return '{0._d}'.format(pkt)\n", "forbidden_attribute"),
        ("def process(pkt):\n    return (x for x in []).gi_frame\n", "forbidden_attribute"),
        ("import os\ndef process(pkt):\n    pass\n", "forbidden_import"),
        ("from sys import modules\ndef process(pkt):\n    pass\n", "forbidden_import"),
        ("def process(pkt):\n    return __import__('os')\n", "forbidden_name"),
        ("def process(pkt):\n    open('/etc/passwd')\n", "forbidden_name"),
        ("def process(pkt):\n    eval('1')\n", "forbidden_name"),
        ("async def process(pkt):\n    pass\n", "forbidden_syntax"),
        (
            "def process(pkt):\n    match pkt:\n        case object(__class__=c):\n"
            "            pass\n",
            "forbidden_attribute",
        ),
        ("def handler(pkt):\n    pass\n", "no_process"),
        ("def process(pkt)\n    pass\n", "syntax"),
        ("x = 1 / 0\ndef process(pkt):\n    pass\n", "load_error"),
        ("while True:\n    pass\ndef process(pkt):\n    pass\n", "load_timeout"),
    ],
)
def test_loader_refuses_code_that_reaches_past_the_api(src: str, reason: str) -> None:
    with pytest.raises(ServiceLoadError) as info:
        load_service(src, "evil/x")
    assert info.value.reason == reason


def test_allowed_modules_lead_to_no_other_module() -> None:
    import types

    from pcsite_lite.sandbox import ALLOWED_IMPORTS

    for name in ALLOWED_IMPORTS:
        mod = __import__(name)
        public = [getattr(mod, a) for a in dir(mod) if not a.startswith("_")]
        assert not any(isinstance(v, types.ModuleType) for v in public), name


def test_allowed_import_works_and_forbidden_import_at_runtime_fails() -> None:
    ok = load_service("import struct\ndef process(pkt):\n    return struct.pack('!H', 1)\n")
    assert ok.process(None) == b"\x00\x01"


def test_unavailable_service_drops_with_reason() -> None:
    site, pipe, _ = one_site()
    label = circuit(site, "missing", psp="p")
    [v] = pipe.process(circuit_packet(label), 1.0)
    assert isinstance(v, Drop) and v.reason == "service_unavailable"
    assert DEST  # the circuit's destination is irrelevant here

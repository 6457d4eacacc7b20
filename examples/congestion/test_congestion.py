"""Congestion-aware forwarding in the simulator: the less congested gateway, within 10 ms."""

from __future__ import annotations

import functools
import struct
from pathlib import Path

import pytest

from examples.congestion.scenario import GATEWAYS, World, build_world
from examples.congestion.service import choose

ACCESS_DELAY = 0.001  # S -> R1 (the site is co-located with R1)


def _stream(w: World, n: int, interval: float, start: float = 0.0) -> None:
    for i in range(n):
        pkt = w.packet(struct.pack("!I", i) + b"x" * 100)
        w.net.schedule(start + i * interval, functools.partial(w.sender.send, pkt))


def _seqs(w: World) -> list[int]:
    return [struct.unpack("!I", r.payload[:4])[0] for r in w.dest.inbox]


def test_packets_take_the_less_congested_gateway_and_all_reach_the_destination(
    tmp_path: Path,
) -> None:
    w = build_world(tmp_path / "fis.sqlite")
    _stream(w, 10, 0.001)
    w.net.run()
    assert [g for _, g, _ in w.via] == ["A"] * 10  # nothing published: the first gateway
    w.isp.publish(f"{GATEWAYS['A']}/32", 0.9)
    w.isp.publish(f"{GATEWAYS['B']}/32", 0.2)
    w.via.clear()
    _stream(w, 10, 0.001, start=w.net.now + 0.010)
    w.net.run()
    assert [g for _, g, _ in w.via] == ["B"] * 10
    assert sorted(_seqs(w)) == sorted(list(range(10)) * 2)  # every packet delivered once
    assert not w.site.site.drops


def test_the_choice_follows_an_isp_change_within_10_ms(tmp_path: Path) -> None:
    w = build_world(tmp_path / "fis.sqlite")
    w.isp.publish(f"{GATEWAYS['A']}/32", 0.1)
    w.isp.publish(f"{GATEWAYS['B']}/32", 0.5)
    interval, n = 0.0005, 400
    _stream(w, n, interval)
    flip = 0.1003
    w.net.schedule(flip, lambda: w.isp.publish(f"{GATEWAYS['A']}/32", 0.95))
    w.net.run()
    by_seq = {struct.unpack("!I", inner[:4])[0]: g for _, g, inner in w.via}
    at_site = {s: s * interval + ACCESS_DELAY for s in by_seq}
    before = [g for s, g in by_seq.items() if at_site[s] < flip]
    after = [(at_site[s], g) for s, g in sorted(by_seq.items()) if at_site[s] >= flip]
    assert set(before) == {"A"}
    first_b = min(t for t, g in after if g == "B")
    switch = first_b - flip
    assert 0 <= switch <= 0.010  # the FIS cache's staleness bound is 5 ms
    assert all(g == "B" for t, g in after if t >= first_b)
    assert len(by_seq) == n


def test_the_service_may_not_tunnel_outside_the_gateways_the_isp_allowed(tmp_path: Path) -> None:
    w = build_world(tmp_path / "fis.sqlite")
    w.psp.route("198.19.9.0/24", ["198.18.99.1"])  # not a registered gateway
    _stream(w, 1, 0.001)
    w.net.run()
    assert w.via == [] and w.dest.inbox == []
    assert dict(w.site.site.drops) == {"spoof_attempt": 1}


@pytest.mark.parametrize(
    ("levels", "want"),
    [([0.0, 0.0], "a"), ([0.5, 0.4], "b"), ([0.4, 0.5], "a"), ([1.0, 1.0], "a")],
)
def test_choose_picks_the_lowest_level_first_listed_on_ties(levels: list[float], want: str):
    assert choose(["a", "b"], levels) == want


def test_congestion_levels_outside_0_1_are_refused(tmp_path: Path) -> None:
    w = build_world(tmp_path / "fis.sqlite")
    with pytest.raises(ValueError):
        w.isp.publish("198.18.21.2/32", 1.5)

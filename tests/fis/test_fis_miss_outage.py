"""A cache miss while the FIS engine is away costs the packet loop little and bounded time.

A worker forwards from its node cache while Redis is down; a packet whose entry the cache
never held cannot be answered and is dropped as ``fis_unavailable`` (a site drop, counted in
the site's metrics). The tests freeze the server (SIGSTOP: a primary that hangs, so
connections neither answer nor fail), kill it (connections refused) or, root, cut the link to
it over TCP (nftables drops everything: a machine that vanished, connects time out),
send packets of many circuits whose entries were never cached through a site pipeline, and
check that the time spent in the pipeline stays a small share of the outage, that no single
packet blocks for long, that every uncached packet is counted, that a cached circuit keeps
forwarding, and that the cache reads the engine again once it is back.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import redis

from pcsite_lite.fis import CachedFIS, namespace, open_engine
from pcsite_lite.fis.redis_engine import READ_TIMEOUT, RedisFIS
from pcsite_lite.pipeline import Pipeline
from pcsite_lite.site import Site
from pcsite_lite.verdicts import Drop, Forward, Verdict
from tests.fis.conftest import REDIS_SERVER
from tests.support import stop_process, wait_until
from tests.support.netns import call_in, netns
from tests.support.site_topo import PSP, circuit, circuit_packet, one_site

FETCHES = """
def process(pkt):
    hop = pkt.fetch(pkt.shim.read().label)
    if hop is None:
        return pkt.drop("no route")
"""

StartRedis = Callable[..., contextlib.AbstractContextManager[str]]
OUTAGE = 2.5  #: seconds of packets during the outage (several engine retry periods)


def _server_pid(url: str) -> int:
    return int(redis.Redis.from_url(url).info("server")["process_id"])


@contextlib.contextmanager
def _frozen(pid: int) -> Iterator[None]:
    os.kill(pid, signal.SIGSTOP)
    try:
        yield
    finally:
        os.kill(pid, signal.SIGCONT)


def _site_over(url: str) -> tuple[RedisFIS, CachedFIS, Site, Pipeline, int, list[int]]:
    """A site pipeline over a cache of the Redis at ``url``, its service fetching each
    circuit's entry: one circuit whose entry the cache holds, 50 whose entries are in the
    store but were never read by this cache."""
    engine = open_engine(url)
    assert isinstance(engine, RedisFIS)
    cache = CachedFIS(engine)
    site, pipe, _ = one_site(fis=cache)
    site.deploy(PSP, "fetches", FETCHES)
    ns = namespace(PSP, "fetches")
    cached = circuit(site, "fetches", expires=1e12)
    uncached = [circuit(site, "fetches", expires=1e12) for _ in range(50)]
    for label in (cached, *uncached):
        engine.put(ns, str(label), {"next": 1}, writer=PSP)
    [v] = pipe.process(circuit_packet(cached), now=time.monotonic())
    assert isinstance(v, Forward) and cache.cached(ns, str(cached)) == {"next": 1}
    return engine, cache, site, pipe, cached, uncached


def _drive(
    pipe: Pipeline, cached: int, uncached: list[int], seconds: float
) -> tuple[float, float, list[Verdict]]:
    """Alternate a cached and an uncached circuit's packets for ``seconds`` of wall time;
    returns (time spent in the pipeline, the longest single packet, verdicts of uncached)."""
    spent = longest = 0.0
    verdicts: list[Verdict] = []
    t_end = time.monotonic() + seconds
    i = 0
    while time.monotonic() < t_end:
        for label in (cached, uncached[i % len(uncached)]):
            t0 = time.perf_counter()
            [v] = pipe.process(circuit_packet(label), now=time.monotonic())
            dt = time.perf_counter() - t0
            spent += dt
            longest = max(longest, dt)
            if label == cached:
                assert isinstance(v, Forward), v
            else:
                verdicts.append(v)
        i += 1
        time.sleep(0.002)  # a packet rate, not a busy loop (the machine is shared)
    return spent, longest, verdicts


@pytest.mark.parametrize("fault", ["frozen", "killed"])
def test_a_miss_during_an_outage_is_dropped_fast_and_counted(
    tmp_path: Path, start_redis: StartRedis, fault: str
) -> None:
    with start_redis(tmp_path) as url:
        engine, cache, site, pipe, cached, uncached = _site_over(url)
        pid = _server_pid(url)
        with contextlib.ExitStack() as outage:
            if fault == "frozen":
                outage.enter_context(_frozen(pid))
            else:
                os.kill(pid, signal.SIGKILL)
            spent, longest, verdicts = _drive(pipe, cached, uncached, OUTAGE)
        n = len(verdicts)
        assert n > 50  # the loop ran at its rate: nothing blocked it for long
        assert all(isinstance(v, Drop) and v.reason == "fis_unavailable" for v in verdicts)
        assert site.drops["fis_unavailable"] == n  # counted, under its reason
        assert site.status()["drops"]["fis_unavailable"] == n
        # bounded: no packet waits out the client's 2 s socket timeout (twice, with its retry:
        # 4 s before), and the outage costs the loop a bounded share of its wall time: one
        # READ_TIMEOUT for the first miss, then only the change feed's attempts, each followed
        # by PROBE_RATIO times as long without one (generous bounds: the machine is shared)
        assert longest < 2 * READ_TIMEOUT + 0.1, f"one packet blocked {longest:.3f} s"
        assert spent < 0.6 * OUTAGE, f"{spent:.3f} s of {OUTAGE} s spent in the pipeline"
        assert engine.fast_failures > n / 2  # failed fast, without trying the server
        if fault == "frozen":  # thawed: the cache reads the engine again, misses fill
            assert wait_until(lambda: _forwards(pipe, uncached[0]), 10, 0.05)
            assert cache.available
        cache.close()
        engine.close()


def _forwards(pipe: Pipeline, label: int) -> bool:
    [v] = pipe.process(circuit_packet(label), now=time.monotonic())
    return isinstance(v, Forward)


CUT = """table inet pcfm {
  chain inp {
    type filter hook input priority 0; policy accept;
    tcp dport 6390 drop
    tcp sport 6390 drop
  }
}
"""


def _nft(ns: str, script: str) -> None:
    subprocess.run(["ip", "netns", "exec", ns, "nft", "-f", "-"], input=script, text=True,
                   check=True, capture_output=True)  # fmt: skip


def _cut_link_outage(ns: str, url: str) -> None:
    """In ``ns`` (every connection of the cache is made from this thread): misses while every
    packet to and from the server is dropped, then the link restored."""
    assert wait_until(lambda: _answers(url), 10, 0.05), "redis-server did not start"
    engine, cache, site, pipe, cached, uncached = _site_over(url)
    _nft(ns, CUT)
    try:
        spent, longest, verdicts = _drive(pipe, cached, uncached, OUTAGE)
    finally:
        _nft(ns, "delete table inet pcfm\n")
    n = len(verdicts)
    assert n > 50 and site.drops["fis_unavailable"] == n
    assert all(isinstance(v, Drop) and v.reason == "fis_unavailable" for v in verdicts)
    # before: 4 uncached packets in 4 s, one of them 2.4 s (socket timeout + connect timeout)
    assert longest < 2 * READ_TIMEOUT + 0.1, f"one packet blocked {longest:.3f} s"
    assert spent < 0.6 * OUTAGE, f"{spent:.3f} s of {OUTAGE} s spent in the pipeline"
    assert wait_until(lambda: _forwards(pipe, uncached[0]), 10, 0.05)  # the link is back
    cache.close()
    engine.close()


def _answers(url: str) -> bool:
    try:
        return bool(redis.Redis.from_url(url, socket_connect_timeout=0.2).ping())
    except redis.ConnectionError:
        return False


@pytest.mark.netns
def test_a_miss_while_the_link_to_the_server_is_cut_costs_bounded_time(tmp_path: Path) -> None:
    with netns(["198.18.77.1"], prefix="pcfm") as ns:
        proc = subprocess.Popen(
            ["ip", "netns", "exec", ns, REDIS_SERVER, "--port", "6390",
             "--bind", "198.18.77.1", "--protected-mode", "no", "--save", "",
             "--appendonly", "no",
             "--dir", str(tmp_path)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        try:
            call_in(ns, lambda: _cut_link_outage(ns, "redis://198.18.77.1:6390/0"), timeout=60)
        finally:
            stop_process(proc)

"""Link shaping is accurate: rate within ±10 %, delay within ±1.5 ms (measured with packets)."""

from __future__ import annotations

import re
import socket
import statistics
import threading
import time

import pytest

from testbed import Testbed, scenarios, topology
from tests.support.topologies import link, node, topology_toml

pytestmark = pytest.mark.netns

TOPO = topology_toml(
    "shaping",
    node("a", "host"),
    node("r", "router"),
    node("b", "host"),
    link("a", "r", delay="10ms"),
    link("r", "b", rate="20mbit"),
    node("c", "host"),
    link("c", "r", delay="5ms", jitter="2ms", loss=20),
)


@pytest.fixture(scope="module")
def shaped() -> Testbed:
    with Testbed(topology.parse(TOPO, "shaping.toml"), prefix="pct") as tb:
        yield tb


def _rtts(out: str) -> list[float]:
    return [float(x) for x in re.findall(r"time=([\d.]+) ms", out)]


def test_delay_is_within_1_5_ms(shaped: Testbed) -> None:
    gw = shaped.node("a").plan.ifaces[0].peer_address
    shaped.node("a").run(f"ping -c1 -W2 {gw}")  # ARP out of the way
    rc, out, _ = shaped.node("a").run(f"ping -c30 -i0.03 -W2 {gw}")
    rtts = _rtts(out)
    assert rc == 0 and len(rtts) == 30, out
    one_way = statistics.median(rtts) / 2
    assert abs(one_way - 10.0) <= 1.5, out


def test_unshaped_link_has_no_delay(shaped: Testbed) -> None:
    gw = shaped.node("b").plan.ifaces[0].peer_address
    rc, out, _ = shaped.node("b").run(f"ping -c5 -i0.05 -W2 {gw}")
    assert rc == 0 and statistics.median(_rtts(out)) < 3.0, out


def test_rate_is_within_10_percent(shaped: Testbed) -> None:
    rate_bps = 20e6
    r_addr = shaped.node("b").plan.ifaces[0].peer_address

    def listen() -> socket.socket:
        s = socket.socket()
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind((r_addr, 5201))
        s.listen(1)
        return s

    server = shaped.node("r").call(listen)

    def connect() -> socket.socket:
        return socket.create_connection((r_addr, 5201), timeout=5)

    client = shaped.node("b").call(connect)
    conn, _ = server.accept()
    stop = time.monotonic() + 2.5
    marks: list[tuple[float, int]] = []

    def sender() -> None:
        buf = b"x" * 65536
        try:
            while time.monotonic() < stop:
                client.sendall(buf)
        except OSError:
            pass

    t = threading.Thread(target=sender, daemon=True)
    t.start()
    total = 0
    conn.settimeout(1)
    while time.monotonic() < stop:
        try:
            total += len(conn.recv(1 << 20))
        except TimeoutError:
            break
        marks.append((time.monotonic(), total))
    client.close()
    conn.close()
    server.close()
    t.join(2)
    # skip the first half second (slow start, tbf burst)
    t0 = marks[0][0] + 0.5
    first = next(m for m in marks if m[0] >= t0)
    last = marks[-1]
    goodput = (last[1] - first[1]) * 8 / (last[0] - first[0])
    # tbf counts whole frames: 1448 bytes of payload travel in a 1514-byte frame
    wire = goodput * 1514 / 1448
    print(f"measured {wire / 1e6:.2f} Mbit/s on the wire")
    assert abs(wire - rate_bps) / rate_bps <= 0.10, f"{wire / 1e6:.2f} Mbit/s on the wire"


def test_loss_and_jitter_are_applied(shaped: Testbed) -> None:
    # 600 datagrams each way through a 20 % loss link: P(arrive) = 0.8 per direction
    n = 600
    # resolve the neighbours first: a burst waiting for ARP overflows the kernel's queue of
    # unresolved packets (unres_qlen_bytes), which would add loss of its own
    a_addr = shaped.node("a").address
    for _ in range(10):
        if shaped.node("c").run(f"ping -c1 -W1 {a_addr}").returncode == 0:
            break
    got = scenarios.udp_exchange(shaped, "c", "a", n=n, port=5301)
    assert abs(got / n - 0.8) < 0.07, got  # > 4 sigma of a binomial(600, 0.8)
    gw = shaped.node("c").plan.ifaces[0].peer_address
    _rc, out, _ = shaped.node("c").run(f"ping -c100 -i0.02 -W2 {gw}")
    rtts = _rtts(out)
    assert len(rtts) > 40, out  # ~64 % of echo round trips survive
    # RTT = two one-way delays of 5 ms plus normal jitter (sd 2 ms each way, clipped at 0):
    # the median of ~64 samples has a standard error of about 0.45 ms
    assert 7.5 <= statistics.median(rtts) <= 12.5, rtts
    assert statistics.stdev(rtts) > 1.0, rtts

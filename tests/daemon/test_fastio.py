"""Batched I/O (C helper and pure-Python fallback give the same results) and the worker's
adaptive busy-poll window."""

from __future__ import annotations

import os
import socket
import struct
import threading
import time
from collections.abc import Iterator
from types import ModuleType, SimpleNamespace

import pytest

from pcsite_lite import fastio
from pcsite_lite.daemon.tunpump import TunPump
from pcsite_lite.metrics import WorkerStats
from pcsite_lite.verdicts import Drop, Forward


def _impls() -> list[object]:
    py = SimpleNamespace(
        read_batch=fastio._py_read_batch,
        write_batch=fastio._py_write_batch,
        recv_batch=fastio._py_recv_batch,
        send_batch=fastio._py_send_batch,
        send_ip_batch=fastio._py_send_ip_batch,
    )
    out: list[object] = [pytest.param(py, id="python")]
    try:
        from pcsite_lite import _fastio  # type: ignore[attr-defined]
    except ImportError:
        pass
    else:
        out.append(pytest.param(_fastio, id="c"))
    return out


@pytest.fixture
def pair() -> Iterator[tuple[socket.socket, socket.socket]]:
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)  # one datagram = one packet
    b.setblocking(False)
    yield a, b
    a.close()
    b.close()


@pytest.mark.parametrize("io", _impls())
def test_read_batch_returns_whole_packets_up_to_the_limit(io: ModuleType, pair: tuple) -> None:
    a, b = pair
    pkts = [bytes([i]) * (i + 1) for i in range(10)]
    for p in pkts:
        a.send(p)
    assert io.read_batch(b.fileno(), 4) == pkts[:4]
    assert io.read_batch(b.fileno(), 100) == pkts[4:]
    assert io.read_batch(b.fileno(), 100) == []  # empty: returns at once, never blocks


@pytest.mark.parametrize("io", _impls())
def test_read_batch_spin_catches_a_packet_arriving_within_the_window(
    io: ModuleType, pair: tuple
) -> None:
    a, b = pair
    t = threading.Timer(0.05, lambda: a.send(b"late"))
    t.start()
    got = io.read_batch(b.fileno(), 8, 5_000_000_000)  # window far longer than the delay
    t.join()
    assert got == [b"late"]
    start = time.monotonic()
    assert io.read_batch(b.fileno(), 8, 20_000_000) == []  # nothing comes: gives up
    assert time.monotonic() - start >= 0.015


@pytest.mark.parametrize("io", _impls())
def test_write_batch_counts_written_bytes_and_errors(io: ModuleType, pair: tuple) -> None:
    a, b = pair
    assert tuple(io.write_batch(b.fileno(), [b"ab", b"cde"])) == (2, 0, 5)
    assert [a.recv(10), a.recv(10)] == [b"ab", b"cde"]
    a.close()
    assert tuple(io.write_batch(b.fileno(), [b"x", b"y"]))[:2] == (0, 2)  # peer gone


@pytest.mark.parametrize("io", _impls())
def test_send_batch_and_recv_batch_over_udp(io: ModuleType) -> None:
    rx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    tx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        rx.bind(("127.0.0.1", 0))
        pkts = [bytes([i]) * 30 for i in range(50)]
        assert io.send_batch(tx.fileno(), pkts, rx.getsockname()) == 50
        got: list[bytes] = []
        deadline = time.monotonic() + 5
        while len(got) < 50 and time.monotonic() < deadline:
            got += io.recv_batch(rx.fileno(), 16)
        assert got == pkts
        assert io.recv_batch(rx.fileno(), 16) == []
        with pytest.raises(ValueError):
            io.send_batch(tx.fileno(), pkts, ("not-an-ip", 1))
        with pytest.raises(TypeError):
            io.send_batch(tx.fileno(), [b"ok", 5], rx.getsockname())
    finally:
        rx.close()
        tx.close()


@pytest.mark.netns  # a raw socket needs root
@pytest.mark.parametrize("io", _impls())
def test_send_ip_batch_sends_each_packet_to_its_header_destination(io: ModuleType) -> None:
    from pcsock import wire

    rx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    raw = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)
    try:
        rx.bind(("127.0.0.1", 0))
        rx.settimeout(5)
        port = rx.getsockname()[1]
        pkts = [
            bytes(wire.build_ipv4(src="127.0.0.1", dst="127.0.0.1", proto=17,
                                  payload=struct.pack("!HHHH", 4000, port, 9, 0) + bytes([i])))
            for i in range(5)
        ]  # fmt: skip
        sent, errors, nbytes = io.send_ip_batch(raw.fileno(), [*pkts[:2], b"short", *pkts[2:]])
        assert (sent, errors, nbytes) == (5, 1, sum(map(len, pkts)))
        assert [rx.recv(100) for _ in range(5)] == [bytes([i]) for i in range(5)]
    finally:
        rx.close()
        raw.close()


def test_pure_mode_uses_the_python_functions() -> None:
    import subprocess
    import sys

    code = "from pcsite_lite import fastio; print(fastio.ACCELERATED, fastio.read_batch.__name__)"
    env = {**os.environ, "PACKETCLOUD_PURE": "1"}
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert proc.stdout.split() == ["False", "_py_read_batch"]
    assert proc.stderr.count("PACKETCLOUD_PURE=1") == 1  # said once


def test_without_the_c_helper_batched_io_falls_back_and_says_so_once() -> None:
    import subprocess
    import sys

    code = (
        "import sys; sys.modules['pcsite_lite._fastio'] = None\n"  # as if it was never built
        "from pcsite_lite import fastio; import pcsite_lite.fastio\n"
        "print(fastio.ACCELERATED, fastio.write_batch.__name__)"
    )
    env = {k: v for k, v in os.environ.items() if k != "PACKETCLOUD_PURE"}
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert proc.stdout.split() == ["False", "_py_write_batch"]
    assert proc.stderr.count("C helper is not built") == 1


def _pump(fd: int, busy_poll_us: int) -> tuple[TunPump, WorkerStats]:
    stats = WorkerStats()

    def process(data: bytes, _now: float) -> list[object]:
        return [Drop("bad")] if data == b"bad" else [Forward(data[::-1], "198.18.0.1")]

    return TunPump(fd, process, time.time, stats, busy_poll_us=busy_poll_us), stats  # type: ignore[arg-type]


def test_pump_forwards_a_batch_back_and_counts_drops(pair: tuple) -> None:
    a, b = pair
    pump, stats = _pump(b.fileno(), 0)
    for p in (b"abc", b"bad", b"xy"):
        a.send(p)
    assert pump.drain() is False
    assert [a.recv(10), a.recv(10)] == [b"cba", b"yx"]
    assert (stats.rx_packets, stats.tx_packets, stats.tx_bytes) == (3, 2, 5)
    assert stats.drops == {"bad": 1}


def test_busy_poll_window_catches_dense_traffic_and_closes_on_sparse(pair: tuple) -> None:
    a, b = pair
    window_us = 300_000  # generous: a loaded CI machine still delivers within it
    pump, stats = _pump(b.fileno(), window_us)
    a.send(b"1")
    t = threading.Timer(0.02, lambda: a.send(b"2"))
    t.start()
    pump.drain()  # reads 1, spins, catches 2, spins again and gives up
    t.join()
    assert stats.rx_packets == 2
    assert pump.spin_hits == 1 and pump.spin_misses == 1
    assert pump.window_ns == window_us * 1000 // 2
    # a sparse stream: each packet comes after the window ended; four empty windows close it
    pump.max_window_ns = pump.window_ns = 20_000_000
    for i in range(4):
        time.sleep(0.03)  # kept, the workload: a gap longer than the full window (sparse)
        a.send(b"s")
        pump.drain()
        assert pump.spin_misses == 2 + i
    assert pump.window_ns == 0
    time.sleep(0.03)  # kept, the workload: one more sparse gap
    a.send(b"s")
    start = time.monotonic()
    pump.drain()
    assert pump.spin_misses == 5 and time.monotonic() - start < 0.015  # no spin any more
    # dense again: a wake-up within the window of the last batch restores it
    a.send(b"d")
    pump.drain()
    assert pump.window_ns in (20_000_000, 10_000_000)  # restored (then maybe one miss)
    assert stats.rx_packets == 8


@pytest.mark.netns  # a raw socket needs root
def test_pump_with_raw_tx_sends_every_result_by_sendmmsg_even_past_one_call(pair: tuple) -> None:
    from pcsock import wire

    a, b = pair
    rx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    rx.bind(("127.0.0.1", 0))
    rx.settimeout(5)
    port = rx.getsockname()[1]
    fanout = fastio.MAX_BATCH + 5  # more results than one send call takes

    def process(data: bytes, _now: float) -> list[object]:
        udp = struct.pack("!HHHH", 4000, port, 8 + len(data), 0) + data
        out = bytes(wire.build_ipv4(src="127.0.0.1", dst="127.0.0.1", proto=17, payload=udp))
        return [Forward(out, "127.0.0.1")] * (fanout if data == b"many" else 1)

    rx.setsockopt(socket.SOL_SOCKET, 33, 8 << 20)  # SO_RCVBUFFORCE (root): past rmem_max
    stats = WorkerStats()
    pump = TunPump(b.fileno(), process, time.time, stats, tx="raw")  # type: ignore[arg-type]
    try:
        a.send(b"one")
        a.send(b"many")
        pump.drain()
        got = [rx.recv(100) for _ in range(1 + fanout)]
        assert got == [b"one"] + [b"many"] * fanout
        assert (stats.tx_packets, stats.tx_errors) == (1 + fanout, 0)
        with pytest.raises(BlockingIOError):  # nothing went back into the "TUN" side
            a.recv(10, socket.MSG_DONTWAIT)
    finally:
        pump.close()
        rx.close()

"""Fault injection: the FIS Redis is SIGKILLed under traffic and started again.

A live site (``pcsite run``, source-routing code uploaded through the API, its FIS on Redis)
forwards a circuit whose entry its worker has cached. While Redis is down, forwarding goes on
from the cache, a worker killed and restarted meanwhile starts from its cache snapshot, and
FIS writes answer 503 ``unavailable`` naming the FIS; once Redis is back (its append-only file
kept the entries) writes succeed and take effect, with no provider action (no re-upload, no
re-enable)."""

from __future__ import annotations

import os
import signal
import socket
import struct
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from pcsite_lite.control.client import ControlError, OutHop
from pcsock import wire
from tests.support import wait_until
from tests.support.sites import ADMIN, Chain, acme_public_hex, deploy_source_routing

pytestmark = [pytest.mark.netns, pytest.mark.timeout(150)]

KA, KB = bytes(range(16)), bytes(range(1, 17))


def _until(pred: Callable[[], bool], timeout: float, what: str) -> None:
    assert wait_until(pred, timeout), f"timed out waiting for {what}"


@contextmanager
def redis_server(workdir: Path) -> Iterator[subprocess.Popen[bytes]]:
    """A redis-server on ``workdir/redis.sock`` with an fsync-always append-only file."""
    proc = subprocess.Popen(
        ["redis-server", "--port", "0", "--unixsocket", str(workdir / "redis.sock"),
         "--save", "", "--appendonly", "yes", "--appendfsync", "always",
         "--dir", str(workdir)], stdout=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        _until(lambda: _pingable(workdir / "redis.sock"), 10, "redis-server")
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(5)


def _pingable(sock: Path) -> bool:
    s = socket.socket(socket.AF_UNIX)
    try:
        s.connect(str(sock))
        s.sendall(b"PING\r\n")
        return s.recv(16).startswith(b"+PONG")
    except OSError:
        return False
    finally:
        s.close()


class Traffic:
    """Numbered packets S -> site A at a steady rate; what D1 and D2 receive, by number."""

    def __init__(self, ch: Chain, label: int, rate: float = 400.0) -> None:
        self.tx = ch.raw_sender()
        self.rx = {
            Chain.D: ch.udp_receiver(9999, Chain.D),
            Chain.D2: ch.udp_receiver(9999, Chain.D2),
        }
        self.label, self.rate = label, rate
        self.sent: list[float] = []  # send time of packet i
        self.got: dict[str, set[int]] = {Chain.D: set(), Chain.D2: set()}
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._send)] + [
            threading.Thread(target=self._recv, args=(d,)) for d in self.rx
        ]

    def __enter__(self) -> Traffic:
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(10)

    def _send(self) -> None:
        t0 = time.monotonic()
        while not self._stop.is_set():
            i = len(self.sent)
            body = struct.pack("!I", i)
            udp = struct.pack("!HHHH", 5555, 9999, 8 + len(body), 0) + body
            pkt = wire.build_circuit_packet(src=Chain.S, dst=Chain.SITE_A, label=self.label,
                                            key=KA, payload=udp)  # fmt: skip
            self.sent.append(time.monotonic())
            self.tx.sendto(bytes(pkt), (Chain.SITE_A, 0))
            time.sleep(max(0.0, t0 + (i + 1) / self.rate - time.monotonic()))  # pacing

    def _recv(self, dst: str) -> None:
        while not self._stop.is_set():
            try:
                data = self.rx[dst].recv(64)
            except TimeoutError:
                continue
            self.got[dst].add(struct.unpack("!I", data[:4])[0])

    def mark(self) -> int:
        return len(self.sent)

    def run_for(self, seconds: float) -> int:
        """Wait until ``seconds`` worth of packets (at the set rate) more were sent; the mark
        then (a loaded machine that sends late makes the wait longer, not the window shorter)."""
        want = self.mark() + int(seconds * self.rate)
        _until(lambda: self.mark() >= want, 10 + 4 * seconds, f"{seconds} s of traffic")
        return self.mark()

    def delivered(self, lo: int, hi: int, dst: str = Chain.D) -> float:
        """Share of packets lo..hi-1 that reached ``dst``."""
        return sum(1 for i in range(lo, hi) if i in self.got[dst]) / max(1, hi - lo)


def test_redis_killed_and_restarted_under_traffic(tmp_path: Path) -> None:
    rdir = tmp_path / "redis"
    rdir.mkdir()
    fis = f"unix://{rdir / 'redis.sock'}"
    with Chain(tmp_path) as ch:
        redis = redis_server(rdir)
        redis.__enter__()
        try:
            ch.start_site("a", 1, fis=fis, signing_key=acme_public_hex())
            ch.start_site("b", 1)
            cb, ca = ch.client("b"), ch.client("a")
            lb1 = cb.allocate_circuit("srcroute")["label"]
            cb.install_hop(lb1, in_key=KB, deliver=Chain.D, strip=True)
            lb2 = cb.allocate_circuit("srcroute")["label"]
            cb.install_hop(lb2, in_key=KB, deliver=Chain.D2, strip=True)
            deploy_source_routing(ca)
            la = ca.allocate_circuit("srcroute")["label"]
            ca.install_hop(la, in_key=KA, out=[OutHop(lb1, Chain.SITE_B, KB),
                                              OutHop(lb2, Chain.SITE_B, KB)])  # fmt: skip
            ca.fis_put("srcroute", str(la), {"label": lb1, "next_hop": Chain.SITE_B})
            snapshot = tmp_path / "state-a" / "fis-cache-0.json"
            with Traffic(ch, la) as tr:
                _until(lambda: len(tr.got[Chain.D]) > 50, 10, "the circuit to deliver")
                before = tr.mark()
                _until(snapshot.exists, 10, "the worker's FIS cache snapshot")
                tr.run_for(0.3)

                # Redis crashes: forwarding goes on from the cache
                redis.__exit__(None, None, None)
                down = tr.mark()
                tr.run_for(1.0)
                with pytest.raises(ControlError) as err:  # writes fail clearly
                    ca.fis_put("srcroute", str(la), {"label": lb2, "next_hop": Chain.SITE_B})
                assert err.value.status == 503 and err.value.code == "unavailable"
                assert "FIS engine unavailable" in err.value.message
                # the worker crashes too, and starts again from its snapshot
                admin = ch.client("a", token=ADMIN, psp=None)
                [worker] = admin.status()["workers"]
                killed = tr.mark()
                os.kill(worker["pid"], signal.SIGKILL)

                def back() -> bool:
                    w = admin.status()["workers"][0]
                    return bool(w["restarts"] == 1 and w["up"])

                _until(back, 15, "the worker restart")
                restarted = tr.mark()
                # the restarted worker forwards again from its snapshot (Redis still down):
                # its window opens at the first packet sent after the restart that arrives,
                # which must come within 1 s of traffic (its tenant lane starts on demand)
                _until(lambda: any(i >= restarted for i in tr.got[Chain.D]), 10,
                       "the restarted worker to forward")  # fmt: skip
                resumed = min(i for i in tr.got[Chain.D] if i >= restarted)
                assert resumed - restarted <= tr.rate, (restarted, resumed)
                outage_end = tr.run_for(1.0)
                # the outage costs nothing against the same traffic before it (a loaded
                # machine loses a few packets in the test's own sender and receivers too)
                baseline = tr.delivered(before, down)
                assert baseline >= 0.9
                bar = min(0.95, baseline - 0.03)
                assert tr.delivered(down, killed - 5) >= bar  # from the cache
                assert tr.delivered(resumed, outage_end) >= bar  # after its restart

                # Redis is back with its data: writes succeed and take effect, no provider action
                redis = redis_server(rdir)
                redis.__enter__()

                def write() -> bool:
                    try:
                        ca.fis_put("srcroute", str(la), {"label": lb2, "next_hop": Chain.SITE_B})
                    except ControlError as exc:
                        assert exc.code == "unavailable"
                        return False
                    return True

                _until(write, 10, "FIS writes to succeed again")
                switched = tr.mark()
                _until(lambda: any(i >= switched for i in tr.got[Chain.D2]), 10,
                       "the new entry to steer packets")  # fmt: skip
                end = tr.run_for(0.5)
            assert tr.delivered(end - 100, end - 20, Chain.D2) >= bar  # service still active
            metrics = admin.metrics()
            assert 'reason="service_disabled"' not in metrics
            assert ca.fis_get("srcroute", str(la))["label"] == lb2
            log = ch.logs["a"].read_text()  # the operator is told, once each way
            assert "serving from the FIS cache: FIS change feed unavailable" in log
            assert "FIS reachable again" in log
        finally:
            redis.__exit__(None, None, None)

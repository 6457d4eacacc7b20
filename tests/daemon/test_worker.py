"""The worker loop in process: a SOCK_DGRAM socketpair stands in for the TUN queue (one
datagram per packet, as a TUN fd reads), a SOCK_SEQPACKET pair for the control socket."""

from __future__ import annotations

import json
import socket
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from pcsite_lite.circuits import CircuitError
from pcsite_lite.daemon import channel, worker
from pcsite_lite.daemon.config import SiteConfig, parse
from pcsite_lite.daemon.state import SiteState, WorkerSite
from pcsock import wire

SITE = "198.18.9.1"
SRC = "198.18.9.2"
NEXT = "198.18.9.3"
K_IN, K_OUT = bytes(range(16)), bytes(range(3, 19))


def _cfg(tmp: Path) -> SiteConfig:
    return parse({"site": {"name": "pcd2-t", "public_ip": SITE,
                           "fis": f"sqlite://{tmp / 'fis.db'}", "state_dir": str(tmp)},
                  "control": {"admin_token": "pcd2-admin-token-0123456789abcdef"}})  # fmt: skip


def _circuit_op(label: int = 77) -> dict[str, Any]:
    return {
        "op": "circuit", "label": label, "psp": "acme", "service": "relay",
        "in_key": K_IN.hex(), "expires": time.time() + 600, "destination": None,
        "out": [{"label": 4242, "next_hop": NEXT, "key": K_OUT.hex(), "final": False,
                 "strip": False}],
    }  # fmt: skip


def _packet(label: int = 77, size: int = 100) -> bytes:
    return bytes(
        wire.build_circuit_packet(src=SRC, dst=SITE, label=label, key=K_IN, payload=bytes(size))
    )


class Loop:
    """``worker.run`` in a thread over socketpairs; ``stats()`` waits for a stats message."""

    def __init__(self, cfg: SiteConfig, *, sync: bool = True) -> None:
        self.tun, tun_worker = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.ctl, ctl_worker = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        self._keep = (tun_worker, ctl_worker)
        self.ctl.settimeout(10)
        self.tun.settimeout(10)
        self.thread = threading.Thread(
            target=worker.run, args=(cfg, 0, tun_worker.fileno(), ctl_worker)
        )
        self.thread.start()
        assert json.loads(self.ctl.recv(1 << 20))["ready"] == 0
        if sync:  # an empty snapshot: the worker may read its TUN queue now
            self.apply({"op": "synced"}, seq=0)

    def send(self, doc: dict[str, Any]) -> None:
        for frame in channel.frames(doc):
            self.ctl.send(frame)

    def apply(self, op: dict[str, Any], seq: int) -> None:
        self.send({**op, "seq": seq})
        while json.loads(self.ctl.recv(1 << 20)).get("ack") != seq:
            pass

    def stats_until(self, packets: int) -> dict[str, Any]:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            doc = json.loads(self.ctl.recv(1 << 20))
            if "stats" in doc and doc["worker"]["rx_packets"] >= packets:
                return doc
        raise AssertionError("no stats with every packet")

    def close(self) -> None:
        try:
            self.send({"op": "stop"})
        finally:
            self.thread.join(10)
            for s in (self.tun, self.ctl, *self._keep):
                s.close()


def test_usage_intervals_start_at_start_up_not_in_1970(tmp_path: Path) -> None:
    cfg = _cfg(tmp_path)
    ws = WorkerSite(cfg, clock=lambda: 1_800_000_000.0)
    assert ws.site.interval_start == 1_800_000_000.0
    t0 = time.time()
    st = SiteState(cfg)
    assert st.site.interval_start is not None and t0 - 1 <= st.site.interval_start <= time.time()


def test_worker_site_account_scales_service_time_by_thread_cpu(tmp_path: Path) -> None:
    ws = WorkerSite(_cfg(tmp_path), clock=time.time)
    ws.apply(_circuit_op())
    cpu = iter([1_000, 1_000])  # window open, account: this thread used no CPU at all
    ws.pipeline.thread_clock = lambda: next(cpu)
    for _ in range(5):
        (v,) = ws.process(_packet())
        assert type(v).__name__ == "Forward"
    before = ws.usage_json()["acme/relay"]
    assert before["packets"] == 5 and before["cpu_ns"] > 0
    assert ws.account() == 0.0
    assert ws.usage_json()["acme/relay"]["cpu_ns"] == 0


def test_replica_installs_the_masters_hop_but_never_moves_a_label_to_another_psp(
    tmp_path: Path,
) -> None:
    ws = WorkerSite(_cfg(tmp_path))
    ws.apply(_circuit_op(label=9))
    ws.apply({**_circuit_op(label=9), "expires": time.time() + 900})  # the owner replaces it
    c = ws.site.circuits.get(9)
    assert c is not None and c.psp == "acme"
    with pytest.raises(CircuitError) as err:
        ws.apply({**_circuit_op(label=9), "psp": "evil"})
    assert err.value.code == "not_owner"
    c = ws.site.circuits.get(9)
    assert c is not None and c.psp == "acme"
    (v,) = ws.process(_packet(label=9))  # and acme's hop still forwards
    assert type(v).__name__ == "Forward"


def test_worker_loop_closes_the_metering_window_after_each_batch(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # a thread clock that never advances: a closed window bills zero CPU, an open one the
    # (positive) wall time of every service call
    monkeypatch.setattr(time, "thread_time_ns", lambda: 5)
    loop = Loop(_cfg(tmp_path))
    try:
        _run_traffic(loop)
    finally:
        loop.close()


def test_worker_reads_no_packet_before_its_state_snapshot_is_applied(tmp_path: Path) -> None:
    # packets that wait in the TUN queue while the worker starts are processed with the
    # state, not dropped as unknown labels (ready means ready)
    loop = Loop(_cfg(tmp_path), sync=False)
    try:
        for _ in range(10):
            loop.tun.send(_packet())
        # two stats reports apart (STATS_INTERVAL, 0.25 s) the running loop has read none
        # of them: a worker that read its queue before its snapshot would have dropped all ten
        reports = 0
        while reports < 2:
            doc = json.loads(loop.ctl.recv(1 << 20))
            if "stats" in doc:
                reports += 1
                assert doc["worker"]["rx_packets"] == 0, doc["worker"]
        loop.tun.settimeout(0)
        with pytest.raises(BlockingIOError):
            loop.tun.recv(65536)
        loop.send(_circuit_op())  # a snapshot op (no seq), then the end of the snapshot
        loop.apply({"op": "synced"}, seq=7)
        loop.tun.settimeout(10)
        out = [loop.tun.recv(65536) for _ in range(10)]
        assert all(wire.parse(o).label == 4242 for o in out)
        doc = loop.stats_until(10)
        assert doc["worker"]["drops"] == {}
    finally:
        loop.close()


def test_a_hop_with_5000_out_hops_reaches_the_worker_in_frames(tmp_path: Path) -> None:
    op = _circuit_op()
    op["out"] = [{"label": 10_000 + i, "next_hop": NEXT, "key": K_OUT.hex(), "final": False,
                  "strip": False} for i in range(5000)]  # fmt: skip
    frames = channel.frames({**op, "seq": 1})
    assert len(frames) > 10 and all(len(f) <= channel.FRAME for f in frames)
    loop = Loop(_cfg(tmp_path))
    try:
        loop.apply(op, seq=1)  # acked: applied whole
        loop.tun.send(_packet())
        doc = loop.stats_until(1)
        # the hop is installed (the label is known); the relay does not pick one of 5,000
        assert "unknown_label" not in doc["worker"]["drops"], doc["worker"]["drops"]
    finally:
        loop.close()


def test_reassembler_refuses_bad_frames_and_recovers() -> None:
    r = channel.Reassembler(max_message=100)
    with pytest.raises(channel.ChannelError):
        r.feed(b'{"op": "x"}')  # no header
    with pytest.raises(channel.ChannelError):
        r.feed(channel.MORE + b"x" * 60 + b"")
        r.feed(channel.MORE + b"x" * 60)  # over the bound
    with pytest.raises(channel.ChannelError):
        r.feed(channel.LAST + b"[" * 50_000)  # too deep / not JSON
    assert r.feed(channel.frames({"a": 1})[0]) == {"a": 1}
    big = {"k": "v" * 100_000}
    r = channel.Reassembler()
    got = [r.feed(f) for f in channel.frames(big)]
    assert got[:-1] == [None] * (len(got) - 1) and got[-1] == big


def _run_traffic(loop: Loop) -> None:
    loop.apply(_circuit_op(), seq=1)
    n = 20
    for _ in range(n):
        loop.tun.send(_packet())
    out = [loop.tun.recv(65536) for _ in range(n)]
    assert all(wire.parse(o).label == 4242 for o in out)
    doc = loop.stats_until(n)
    usage = doc["usage"]["acme/relay"]
    assert usage["packets"] == n
    assert usage["cpu_ns"] == 0
    assert doc["worker"]["tx_packets"] == n


def _csum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    s = sum(int.from_bytes(data[i : i + 2], "big") for i in range(0, len(data), 2))
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return s


def test_bare_forwarder_keeps_ip_and_udp_checksums_valid() -> None:
    import struct

    payload = bytes(range(37))
    udp = struct.pack("!HHHH", 5555, 6253, 8 + len(payload), 0) + payload
    pkt = bytearray(wire.build_ipv4(src=SRC, dst=SITE, proto=17, payload=udp))
    pseudo = wire.ip2int(SRC).to_bytes(4, "big") + wire.ip2int(SITE).to_bytes(4, "big")
    pseudo += struct.pack("!HH", 17, len(udp))
    c = ~_csum(pseudo + bytes(pkt[20:])) & 0xFFFF
    pkt[26:28] = (c or 0xFFFF).to_bytes(2, "big")
    (v,) = worker.bare_processor(NEXT)(bytes(pkt), 0.0)
    out = v.data  # type: ignore[union-attr]
    assert out[16:20] == wire.ip2int(NEXT).to_bytes(4, "big")
    assert _csum(out[:20]) == 0xFFFF  # the IPv4 header checksum verifies
    pseudo = out[12:20] + struct.pack("!HH", 17, len(udp))
    assert _csum(pseudo + out[20:]) == 0xFFFF  # and so does the UDP checksum
    assert out[20:26] == pkt[20:26] and out[28:] == pkt[28:]


def test_a_worker_tells_its_services_which_site_and_worker_they_run_on(tmp_path: Path) -> None:
    replica = WorkerSite(_cfg(tmp_path), index=3)
    src = "def process(pkt):\n    pkt.set_payload((pkt.site_id + ' ' + pkt.node_id).encode())\n"
    replica.site.deploy("acme", "relay", src)
    replica.apply(_circuit_op())
    [v] = replica.pipeline.process(_packet(), time.time())
    assert bytes(wire.parse(v.data).payload) == b"pcd2-t 3"  # type: ignore[union-attr]


#: a confined service that calls back to the worker for a FIS read 60 times per packet
FIS_HEAVY = "def process(pkt):\n    for _ in range(60):\n        pkt.lookup('t', pkt.dst)\n"


@pytest.mark.netns  # root: the confined process's UID, namespaces and cgroups
def test_a_confined_services_fis_calls_wake_the_worker_not_its_timer(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The worker waits on its confined services' channels with its device: every FIS read
    # of the service (a call back to the worker) wakes it at once. Its timer is made 5 s
    # here, so a worker that found the calls only when its timer fired (every millisecond)
    # would take minutes for these packets' 1,200 calls.
    from pcsite_lite.control.site_backend import SiteBackend
    from pcsite_lite.repository import generate_key, public_key_bytes, sign_service

    key = generate_key()
    cfg = parse({
        "site": {"name": "pcd2-t", "public_ip": SITE, "fis": f"sqlite://{tmp_path / 'fis.db'}",
                 "state_dir": str(tmp_path), "repository": str(tmp_path / "repo")},
        "control": {"admin_token": "pcd2-admin-token-0123456789abcdef",
                    "psps": {"acme": {"token": "acme-token-0123456789abcdef",
                                      "signing_key": public_key_bytes(key).hex()}}},
        "services": {"deadline_ms": 5000},  # the calls' CPU is not what is tested here
    })  # fmt: skip
    backend = SiteBackend(cfg)
    code = FIS_HEAVY.encode()
    backend.upload_service("acme", "relay", "1", code,
                           sign_service(key, "acme", "relay", "1", code))  # fmt: skip
    backend.activate_service("acme", "relay", "1")
    real_poll = worker.select.poll
    timeouts: list[int] = []

    class SlowTimer:
        def __init__(self) -> None:
            self._p = real_poll()
            self.register, self.unregister = self._p.register, self._p.unregister

        def poll(self, ms: int) -> list[tuple[int, int]]:
            timeouts.append(ms)
            return self._p.poll(5000 if ms == 1 else ms)

    monkeypatch.setattr(worker.select, "poll", SlowTimer)
    loop = Loop(cfg)
    try:
        loop.apply(_circuit_op(), seq=1)  # the service's process is started before the ack
        for _ in range(20):
            loop.tun.send(_packet())
        out = [loop.tun.recv(65536) for _ in range(20)]  # each within the socket's 10 s
        assert all(wire.parse(o).label == 4242 for o in out)
        doc = loop.stats_until(20)
        assert doc["worker"]["drops"] == {}
        assert 1 in timeouts  # the packets were in the service's process while it waited
    finally:
        loop.close()
        backend.close()

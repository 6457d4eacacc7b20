"""A live site forwards the same traffic natively (C switch), through the Python pipeline
(``[dataplane] native = false``) and on the pure-Python path (``PACKETCLOUD_PURE=1``): the
packets that arrive downstream are byte-identical, and so are the site's drop counters and
its services' metering."""

from __future__ import annotations

import os
import re
import select
import socket
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from pcsite_lite.control.client import OutHop
from pcsock import wire
from tests.support import sites, wait_until
from tests.support.sites import Chain

pytestmark = [pytest.mark.netns, pytest.mark.timeout(150)]

KA, KD = bytes(range(16)), bytes(range(3, 19))
N_GOOD = 120


def _start(ch: Chain, tmp: Path, native: bool, pure: bool) -> None:
    state = tmp / "state-a"
    state.mkdir(exist_ok=True)
    text = sites.site_config("site-a", Chain.SITE_A, 1, state, signing_key=sites.acme_public_hex())
    text = text.replace("[dataplane]\n", f"[dataplane]\nnative = {str(native).lower()}\n")
    # srcroute in the operator's trusted lane (a confined service is never run natively)
    text = text.replace("[control]\n", '[services]\ntrusted = ["acme/srcroute"]\n\n[control]\n')
    cfg = tmp / "site-a.toml"
    cfg.write_text(text)
    old = os.environ.get("PACKETCLOUD_PURE")
    os.environ["PACKETCLOUD_PURE"] = "1" if pure else "0"
    try:
        ch.start_site_config("a", cfg)
    finally:
        if old is None:
            del os.environ["PACKETCLOUD_PURE"]
        else:
            os.environ["PACKETCLOUD_PURE"] = old


def _capture(ch: Chain) -> tuple[socket.socket, socket.socket]:
    def mk() -> tuple[socket.socket, socket.socket]:
        ip = socket.socket(socket.AF_INET, socket.SOCK_RAW, wire.IPPROTO_PACKETCLOUD)
        udp = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_UDP)
        for s in (ip, udp):
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
            s.setblocking(False)
        return ip, udp

    return sites.in_ns(ch.ns["d"], mk)


def _drain(socks: tuple[socket.socket, ...], want: int, timeout: float) -> list[list[bytes]]:
    got: list[list[bytes]] = [[] for _ in socks]
    end = time.monotonic() + timeout
    while sum(map(len, got)) < want and (left := end - time.monotonic()) > 0:
        readable, _, _ = select.select(socks, [], [], left)  # waits for a packet
        for s in readable:
            data = s.recv(4096)
            # only what the site sent (not the ICMP errors D's kernel answers UDP with)
            if data[12:16] == socket.inet_aton(Chain.SITE_A):
                got[socks.index(s)].append(data)
    return got


def _traffic(labels: dict[str, int]) -> list[bytes]:
    out = []
    for i in range(N_GOOD):
        name = ("sr", "sr_udp", "noop")[i % 3]
        out.append(bytes(wire.build_circuit_packet(
            src=Chain.S, dst=Chain.SITE_A, label=labels[name], key=KA, ident=i,
            payload=b"payload-%d" % i, udp=name == "sr_udp", metadata=i & 0xFF)))  # fmt: skip
    for i, bad in enumerate((dict(key=bytes(16)), dict(hop_limit=0), dict(label=4242))):
        args: dict[str, Any] = dict(src=Chain.S, dst=Chain.SITE_A, label=labels["sr"], key=KA,
                                    ident=1000 + i, payload=b"bad")  # fmt: skip
        args.update(bad)
        out.append(bytes(wire.build_circuit_packet(**args)))
    return out


def _metrics(ch: Chain) -> dict[str, float]:
    text = ch.client("a", token=sites.ADMIN, psp=None).metrics()
    out = {}
    for line in text.splitlines():
        m = re.match(r"(pcsite_(?:drops|native_packets|service_\w+)_total)\{(.*)\} (\S+)$", line)
        if m and "cpu" not in m.group(1):
            labels = re.sub(r'worker="\d+",?', "", m.group(2))
            out[f"{m.group(1)}{{{labels}}}"] = float(m.group(3))
    return out


def _delta(ch: Chain, before: dict[str, float]) -> dict[str, float]:
    after = _metrics(ch)
    return {k: v - before.get(k, 0) for k, v in after.items() if v - before.get(k, 0)}


def _accounted(delta: dict[str, float]) -> int:
    """Packets the metrics account for: metered by a service or dropped with a reason."""
    counted = ("pcsite_service_packets_total", "pcsite_drops_total")
    return int(sum(v for k, v in delta.items() if k.startswith(counted)))


def test_native_python_and_pure_paths_forward_identical_packets(tmp_path: Path) -> None:
    with Chain(tmp_path) as ch:
        # B only forwards here (no site on it): A's out hop is D itself
        subprocess.run(["ip", "netns", "exec", ch.ns["b"], "sysctl", "-qw",
                        "net.ipv4.ip_forward=1"], check=True)  # fmt: skip
        _start(ch, tmp_path, native=True, pure=False)
        ca = ch.client("a")
        sites.deploy_source_routing(ca)
        labels = {}
        for name, svc in (("sr", "srcroute"), ("sr_udp", "srcroute"), ("noop", "plainnoop")):
            la = ca.allocate_circuit(svc, lifetime=3600)["label"]
            ca.install_hop(la, in_key=KA, out=[OutHop(77, Chain.D, KD)])
            if svc == "srcroute":
                ca.fis_put("srcroute", str(la), {"label": 77, "next_hop": Chain.D})
            labels[name] = la
        traffic = _traffic(labels)
        tx = ch.raw_sender()
        # the routes are in effect in the workers: a probe on each source-routed circuit
        # reaches D, and is accounted before the first run reads its counters
        base = _metrics(ch)
        socks = _capture(ch)
        try:
            for i, name in enumerate(("sr", "sr_udp")):
                tx.sendto(bytes(wire.build_circuit_packet(
                    src=Chain.S, dst=Chain.SITE_A, label=labels[name], key=KA, ident=5000 + i,
                    payload=b"probe", udp=name == "sr_udp")), (Chain.SITE_A, 0))  # fmt: skip
            assert sum(map(len, _drain(socks, 2, 10.0))) == 2
        finally:
            for s in socks:
                s.close()
        assert wait_until(lambda: _accounted(_delta(ch, base)) >= 2, 10, 0.1)
        runs = []
        for native, pure in ((True, False), (False, False), (False, True)):
            if ch.procs.get("a") is None:
                _start(ch, tmp_path, native, pure)  # the durable site restores its state
            before = _metrics(ch)
            socks = _capture(ch)
            try:
                for i, p in enumerate(traffic):
                    tx.sendto(p, (Chain.SITE_A, 0))
                    if i % 20 == 19:
                        time.sleep(0.005)  # kept, pacing the sender: within the TUN queue
                got = _drain(socks, N_GOOD, 10.0)
            finally:
                for s in socks:
                    s.close()
            # the workers' stats reach the supervisor every 0.25 s: until every packet sent
            # shows up as metered or dropped
            assert wait_until(lambda b=before: _accounted(_delta(ch, b)) >= len(traffic), 10,
                              0.1), _delta(ch, before)  # fmt: skip
            runs.append((got, _delta(ch, before)))
            ch.stop_site("a")
        (nat, d_nat), (py, d_py), (pure_, d_pure) = runs
        assert len(nat[0]) == 2 * N_GOOD // 3 and len(nat[1]) == N_GOOD // 3
        assert nat == py == pure_
        native_key = next(k for k in d_nat if k.startswith("pcsite_native_packets_total"))
        assert d_nat.pop(native_key) >= N_GOOD // 2  # most good packets were switched in C
        assert not any(k.startswith("pcsite_native") for k in d_py)
        assert not any(k.startswith("pcsite_native") for k in d_pure)
        assert d_nat == d_py == d_pure
        assert any("bad_mac" in k for k in d_nat) and any("unknown_label" in k for k in d_nat)

"""Site forwarding throughput and added hop latency, measured in namespaces in one run.

Topology (tests/daemon/netns_util.Chain): sender S -- A -- B -- receiver D; A is the device
under test, B forwards in the kernel. One load generator for every mode: ``--senders``
processes in S each sending UDP datagrams in a tight ``socket.sendto`` loop for ``--seconds``;
the receiver counts at its kernel's ``Ip: InReceives`` (/proc/net/snmp in D's namespace).

Modes on A:
  kernel   plain IPv4 forwarding (no daemon), datagrams addressed to D
  bare     the daemon with a bare TUN read/rewrite-destination/write forwarder, 1 worker
  site     the daemon's form-1 path (MAC verify, FIS-cache-chosen out hop, label swap, re-MAC),
           UDP-encapsulated circuit packets addressed to A, at 1 and 2 workers

Latency: 300 probes at 200/s per mode carry their send time (CLOCK_MONOTONIC is one clock for
all namespaces); D's socket stamps arrival. ``hop_latency_added_us_median`` is the median
one-way time through the site (1 worker) minus the median through kernel forwarding.

    .venv/bin/python -m benchmarks.site_forwarding --json /tmp/site_forwarding.json
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

PAYLOAD = 64  # bytes after the shim (datagrams of ~110 bytes on the wire)
PROBES = 300  # latency probes per mode (--probes)
CIRCUITS = 16  # circuits the load spreads over (one circuit always lands on one worker)


def _in_receives(ns: str) -> int:
    out = subprocess.run(["ip", "netns", "exec", ns, "cat", "/proc/net/snmp"],
                         capture_output=True, text=True, check=True).stdout  # fmt: skip
    lines = [ln.split() for ln in out.splitlines() if ln.startswith("Ip:")]
    return int(lines[1][lines[0].index("InReceives")])


def _sender(dst: str, port: int, payload_hex: str, seconds: float) -> None:
    # port 0: IP mode, the payloads are shim + payload of IP protocol 253 (the kernel adds the
    # IPv4 header, as it adds the UDP and IPv4 headers in UDP mode)
    if port:
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    else:
        s = socket.socket(socket.AF_INET, socket.SOCK_RAW, 253)
    datas = [bytes.fromhex(h) for h in payload_hex.split(",")]
    addr = (dst, port)
    end = time.monotonic() + seconds
    send = s.sendto
    n = 0
    while True:
        for data in datas * (256 // len(datas)):
            try:
                send(data, addr)
            except OSError:
                pass
        n += 256
        if time.monotonic() >= end:
            break
    print(n)


def _load(
    ch: Any, dst: str, payloads: list[bytes], seconds: float, senders: int, port: int = 6253
) -> dict[str, float]:
    procs = [
        subprocess.Popen(
            [
                "ip",
                "netns",
                "exec",
                ch.ns["s"],
                sys.executable,
                "-m",
                "benchmarks.site_forwarding",
                "--send",
                dst,
                str(port),
                ",".join(p.hex() for p in payloads),
                str(seconds),
            ],
            stdout=subprocess.PIPE,
            text=True,
        )
        for _ in range(senders)
    ]
    time.sleep(0.3)  # warm-up: skip the ramp
    r0, t0 = _in_receives(ch.ns["d"]), time.monotonic()
    time.sleep(max(0.5, seconds - 0.6))
    r1, t1 = _in_receives(ch.ns["d"]), time.monotonic()
    sent = sum(int(p.communicate()[0].strip() or 0) for p in procs)
    return {"rx_pps": (r1 - r0) / (t1 - t0), "offered_pps": sent / seconds}


def _latency(ch: Any, dst: str, make: Any, probes: int = PROBES) -> float:
    from tests.daemon.netns_util import in_ns

    rx = in_ns(ch.ns["d"], lambda: _bound(6253))
    tx = in_ns(ch.ns["s"], lambda: socket.socket(socket.AF_INET, socket.SOCK_DGRAM))
    samples: list[float] = []
    for _ in range(probes):
        t = time.monotonic()
        tx.sendto(make(struct.pack("!d", t) + bytes(PAYLOAD - 8)), (dst, 6253))
        try:
            while True:  # skip datagrams left over from the load phase (send time 0)
                data = rx.recv(2048)
                sent = struct.unpack("!d", data[-PAYLOAD:][:8])[0]
                if sent == t:
                    samples.append(time.monotonic() - sent)
                    break
        except TimeoutError:
            pass
        time.sleep(0.005)
    rx.close()
    tx.close()
    return statistics.median(samples) * 1e6 if samples else float("nan")


def _bound(port: int) -> socket.socket:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("0.0.0.0", port))
    s.settimeout(0.5)
    return s


def _round(ch: Any, tmp: Path, seconds: float, senders: int, probes: int) -> dict[str, Any]:
    """One measurement of every mode (the modes of a round run back to back)."""
    from pcsite_lite.control.client import OutHop
    from pcsock import wire
    from tests.daemon.netns_util import (
        ADMIN,
        Chain,
        acme_public_hex,
        deploy_source_routing,
        site_config,
    )

    res: dict[str, Any] = {}
    ka, kd = bytes(range(16)), bytes(range(2, 18))
    plain = bytes(PAYLOAD)
    res["kernel"] = _load(ch, Chain.D, [plain], seconds, senders)
    res["kernel_latency_us"] = _latency(ch, Chain.D, lambda p: p, probes)

    # bare TUN forwarder on A (1 worker)
    cfg = tmp / "bare.toml"
    text = site_config("bench-bare", Chain.SITE_A, 1, tmp).replace(
        "[dataplane]", f'mode = "bare"\nbare_next_hop = "{Chain.D}"\n\n[dataplane]'
    )
    cfg.write_text(text)
    ch.start_site_config("a", cfg)
    res["bare_1w"] = _load(ch, Chain.SITE_A, [plain], seconds, senders)
    res["bare_latency_us"] = _latency(ch, Chain.SITE_A, lambda p: p, probes)
    ch.stop_site("a")
    # the same with results sent by a raw IP socket instead of written back into TUN
    cfg.write_text(text.replace('tx = "tun"', 'tx = "raw"'))
    ch.start_site_config("a", cfg)
    res["bare_raw_1w"] = _load(ch, Chain.SITE_A, [plain], seconds, senders)
    ch.stop_site("a")

    for workers, tx in ((1, "tun"), (2, "tun"), (1, "raw")):
        ch.start_site("a", workers, signing_key=acme_public_hex(), tx=tx)
        ca = ch.client("a")
        # the shipped source-routing service, uploaded signed: per packet the site verifies the
        # MAC, the service fetches the next label and hop from the FIS (a node-local cache
        # hit), the site swaps the label and re-MACs
        deploy_source_routing(ca)
        labels = []
        for _ in range(CIRCUITS):
            la = ca.allocate_circuit("srcroute")["label"]
            ca.install_hop(la, in_key=ka, out=[OutHop(1, Chain.D, kd), OutHop(2, Chain.D, kd)])
            ca.fis_put("srcroute", str(la), {"label": 2, "next_hop": Chain.D})
            labels.append(la)

        def circuit(payload: bytes, la: int = labels[0]) -> bytes:
            pkt = wire.build_circuit_packet(
                src=Chain.S, dst=Chain.SITE_A, label=la, key=ka, payload=payload, udp=True
            )
            return bytes(pkt[28:])  # the UDP payload: shim + payload

        time.sleep(0.2)
        pkts = [circuit(plain, la) for la in labels]
        mode = f"site_{workers}w" + ("_raw" if tx == "raw" else "")
        res[mode] = _load(ch, Chain.SITE_A, pkts, seconds, senders)
        if mode == "site_1w":
            # the same circuits in IP mode (protocol 253): the pipeline's form-1 fast path,
            # which UDP-encapsulated packets do not take
            ip_pkts = [
                bytes(
                    wire.build_circuit_packet(
                        src=Chain.S, dst=Chain.SITE_A, label=la, key=ka, payload=plain
                    )[20:]
                )
                for la in labels
            ]
            res["site_ip_1w"] = _load(ch, Chain.SITE_A, ip_pkts, seconds, senders, port=0)
        if mode == "site_1w":
            res["site_latency_us"] = _latency(ch, Chain.SITE_A, circuit, probes)
        stats = ch.client("a", token=ADMIN, psp=None).metrics()
        res[f"{mode}_counters"] = [
            ln
            for ln in stats.splitlines()
            if ln.startswith(("pcsite_drops_total", "pcsite_rx_packets", "pcsite_tx_packets"))
        ]
        ch.stop_site("a")
    k = res["kernel"]["rx_pps"]
    res["figures"] = {
        "site_vs_kernel_1w": res["site_1w"]["rx_pps"] / k,
        "site_vs_bare_tun_1w": res["site_1w"]["rx_pps"] / res["bare_1w"]["rx_pps"],
        # IP mode (form-1 fast path) against the same circuits UDP-encapsulated (not an issue
        # figure)
        "site_ip_vs_udp_1w": res["site_ip_1w"]["rx_pps"] / res["site_1w"]["rx_pps"],
        "scaling_2w_vs_1w": res["site_2w"]["rx_pps"] / res["site_1w"]["rx_pps"],
        "hop_latency_added_us_median": res["site_latency_us"] - res["kernel_latency_us"],
        # the TUN-or-raw-socket choice for sending results (not an issue figure)
        "bare_raw_vs_tun_1w": res["bare_raw_1w"]["rx_pps"] / res["bare_1w"]["rx_pps"],
        "site_raw_vs_tun_1w": res["site_1w_raw"]["rx_pps"] / res["site_1w"]["rx_pps"],
    }
    return res


def run(seconds: float, senders: int, rounds: int = 3, probes: int = PROBES) -> dict[str, Any]:
    """``rounds`` rounds on one topology; each figure is the median over the rounds."""
    from tests.daemon.netns_util import Chain, sh

    tmp = Path(tempfile.mkdtemp(prefix="pcdbench"))
    res: dict[str, Any] = {"seconds": seconds, "senders": senders, "payload": PAYLOAD,
                           "circuits": CIRCUITS, "rounds": []}  # fmt: skip
    with Chain(tmp) as ch:
        for n in ("a", "b"):
            sh("ip", "netns", "exec", ch.ns[n], "sysctl", "-qw", "net.ipv4.ip_forward=1")
        for _ in range(rounds):
            res["rounds"].append(_round(ch, tmp, seconds, senders, probes))
    names = res["rounds"][0]["figures"]
    res["figures"] = {n: statistics.median(r["figures"][n] for r in res["rounds"]) for n in names}
    return res


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="site_forwarding")
    ap.add_argument("--json", help="write results to this path")
    ap.add_argument("--seconds", type=float, default=3.0)
    ap.add_argument("--senders", type=int, default=1)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--probes", type=int, default=PROBES, help="latency probes per mode")
    ap.add_argument("--send", nargs=4, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.send:
        _sender(args.send[0], int(args.send[1]), args.send[2], float(args.send[3]))
        return 0
    if os.geteuid() != 0:
        print("site_forwarding: needs root (namespaces, TUN, nftables)", file=sys.stderr)
        return 2
    res = run(args.seconds, args.senders, args.rounds, max(1, args.probes))
    print(json.dumps(res["figures"], indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(res, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())

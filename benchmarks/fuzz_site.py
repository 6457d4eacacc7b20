"""Fuzzed packets at a live site: no crash, every packet accounted for in the site's metrics.

One site (:mod:`benchmarks._site_rig`, 2 workers) with a form-1 circuit (last hop, delivering
to D), a form-2 service ID and a form-3 destination registration. The load is ``--packets``
packets (CI: 10^5; ``--packets 1000000`` for the long run) made by :func:`mutants` from valid
packets of each kind the site takes in: form 1 in IP mode (protocol 253 to the site) and UDP
mode (port 6253), form 2 in both modes (flagged DSCP, addressed to D, crossing the site) and
form 3 (a plain UDP packet to a prefix behind D whose owner signed up with a DNSSEC proof, so
the site diverts it). Each is sent unchanged (1 in 10) or with random bytes flipped after the
IP (and UDP) header, truncated, its shim overwritten with random bytes, or replaced by random
bytes of random length. The IPv4 header is the kernel's business (a raw socket's kernel fixes
length and checksum) and is not fuzzed.

Figures:

* ``fuzz_packets``: packets sent;
* ``fuzz_crashes``: worker restarts + daemon exits + pipeline exceptions (``internal_error``
  drops) during the run (goal 0);
* ``fuzz_unaccounted``: ``sent - (tx + Σ drops)`` from the site's ``/metrics`` (deltas over
  the run; drops include the kernel's TUN-queue and interface drops), goal 0. Negative would
  mean the site counted more than was sent (other traffic).

The daemon runs on vCPU 1, the sender on vCPU 0, paced at ``--rate`` packets/s.

    .venv/bin/python -m benchmarks.fuzz_site --json /tmp/fuzz_site.json [--packets 1000000]
"""

from __future__ import annotations

import random
import re
import struct
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from benchmarks._report import options_main
from benchmarks._site_rig import SiteRig, pin

KEY = bytes(range(16))
PORT = 9999


def mutants(valid: list[tuple[bytes, int]], n: int, seed: int = 17) -> Iterator[bytes]:
    """``n`` packets from ``valid`` ``(packet, fuzz_from)`` pairs; bytes before ``fuzz_from``
    (the IPv4 header, and the UDP header in UDP mode) are kept."""
    rng = random.Random(seed)
    for _ in range(n):
        pkt, keep = rng.choice(valid)
        kind = rng.randrange(10)
        if kind == 0:
            yield pkt
        elif kind <= 3:  # flip a few bytes
            buf = bytearray(pkt)
            for _ in range(rng.randint(1, 4)):
                buf[rng.randrange(keep, len(buf))] ^= rng.randint(1, 255)
            yield bytes(buf)
        elif kind <= 5:  # truncate
            yield pkt[: rng.randint(keep, len(pkt) - 1)]
        elif kind <= 7:  # a random shim (and the rest kept)
            yield pkt[:keep] + rng.randbytes(16) + pkt[keep + 16 :]
        else:  # random bytes
            yield pkt[:keep] + rng.randbytes(rng.randint(0, 300))


def _families(metrics: str) -> dict[str, int]:
    out: dict[str, int] = {}
    for line in metrics.splitlines():
        if line.startswith("pcsite_") and "{" in line:
            name = line.split("{", 1)[0]
            out[name] = out.get(name, 0) + int(float(line.rsplit(" ", 1)[1]))
        m = re.match(r'pcsite_drops_total\{.*reason="([^"]*)"', line)
        if m:
            key = f"reason:{m.group(1)}"
            out[key] = out.get(key, 0) + int(line.rsplit(" ", 1)[1])
    return out


def run(*, packets: int = 100_000, rate: float = 20_000, workers: int = 2,
        seed: int = 17) -> dict[str, Any]:  # fmt: skip
    from pcsock import wire
    from pcsock.ownership import OwnershipClaim, ZoneKey, build_proof, reverse_zone

    pin(0)
    tmp = Path(tempfile.mkdtemp(prefix="pcfuzz"))
    # form 3 needs a destination sign-up: a DNSSEC chain from a trust anchor to the owner
    root, own = ZoneKey.generate("in-addr.arpa."), ZoneKey.generate(reverse_zone(SiteRig.OWNED))
    with SiteRig(tmp, workers=workers, daemon_cpus="1", trust_anchor=root.ds_text()) as rig:
        acme = rig.client()
        admin = rig.client(admin=True)
        label = acme.allocate_circuit("relay")["label"]
        acme.install_hop(label, in_key=KEY, deliver=SiteRig.D, strip=True)
        sid = acme.register_service_id("relay")["service_id"]
        now = time.time()
        claim = OwnershipClaim(SiteRig.OWNED, "acme", "guard", now - 60, now + 3600)
        proof = build_proof([claim], own, chain=[root], inception=now - 60,
                            expiration=now + 3600)  # fmt: skip
        acme.register_destination(SiteRig.OWNED, "guard", str(proof))
        sink = rig.udp_receiver(PORT)  # D takes the delivered datagrams (never read)
        body = bytes(range(64))
        udp = struct.pack("!HHHH", 5555, PORT, 8 + len(body), 0) + body
        valid: list[tuple[bytes, int]] = []
        for mode in (False, True):
            c = wire.build_circuit_packet(src=SiteRig.S, dst=SiteRig.SITE, label=label,
                                          key=KEY, payload=udp, udp=mode)  # fmt: skip
            s = wire.build_service_packet(src=SiteRig.S, dst=SiteRig.D, service_id=sid,
                                          payload=udp, udp=mode)  # fmt: skip
            valid += [(bytes(c), 28 if mode else 20), (bytes(s), 28 if mode else 20)]
        plain = wire.build_ipv4(src=SiteRig.S, dst=SiteRig.OWNED_HOST, proto=17, payload=udp)
        valid.append((bytes(plain), 20))  # form 3: diverted because of its destination
        before = _families(admin.metrics())
        daemon_pid = rig.proc.pid if rig.proc else -1
        tx = rig.raw_sender()
        sent = 0
        t0 = time.monotonic()
        for pkt in mutants(valid, packets, seed):
            dst = wire.int2ip(int.from_bytes(pkt[16:20], "big"))
            while sent >= (time.monotonic() - t0) * rate:
                time.sleep(0.0005)
            tx.sendto(pkt, (dst, 0))
            sent += 1
        send_s = time.monotonic() - t0
        tx.close()
        # wait until the site has accounted for everything (or stops changing)
        deadline = time.monotonic() + 60
        last, still = -1, 0
        while time.monotonic() < deadline:
            now = _families(admin.metrics())
            acc = sum(now.get(k, 0) - before.get(k, 0)
                      for k in ("pcsite_tx_packets_total", "pcsite_drops_total"))  # fmt: skip
            if acc >= sent:
                break
            still = still + 1 if acc == last else 0
            if still >= 10:
                break
            last = acc
            time.sleep(0.2)
        after = _families(admin.metrics())
        sink.close()
        alive = rig.proc is not None and rig.proc.poll() is None and rig.proc.pid == daemon_pid

    def d(k: str) -> int:
        return after.get(k, 0) - before.get(k, 0)

    accounted = d("pcsite_tx_packets_total") + d("pcsite_drops_total")
    return {
        "fuzz_packets": sent,
        "fuzz_crashes": d("pcsite_worker_restarts_total")
        + (0 if alive else 1)
        + d("reason:internal_error"),
        "fuzz_unaccounted": sent - accounted,
        "fuzz_worker_restarts": d("pcsite_worker_restarts_total"),
        "fuzz_internal_errors": d("reason:internal_error"),
        "fuzz_rx": d("pcsite_rx_packets_total"),
        "fuzz_tx": d("pcsite_tx_packets_total"),
        "fuzz_drops": d("pcsite_drops_total"),
        "fuzz_drops_by_reason": {
            k.split(":", 1)[1]: d(k) for k in sorted(after) if k.startswith("reason:") and d(k)
        },
        "fuzz_send_pps": sent / send_s if send_s else 0.0,
        "seed": seed,
    }


def main(argv: list[str] | None = None) -> int:
    return options_main(argv, "fuzz_site", __doc__, {
        "--packets": (int, 100_000, "10^5 in CI; 10^6 long run"),
        "--rate": (float, 20_000.0, "packets/s sent"), "--workers": (int, 2, "site workers"),
        "--seed": (int, 17, "the fuzzer's seed"),
    }, run, root="namespaces, TUN, nftables")  # fmt: skip


if __name__ == "__main__":
    sys.exit(main())

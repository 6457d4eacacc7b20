"""A live run: the real site daemon in namespaces, its usage collected into a ledger, invoiced.

Conservation on the daemon: the bytes the ledger bills a PSP's service equal the dataplane
counters of the site's workers (bytes received from / sent to the TUN queues) exactly.

CPU: the time a worker spends in service code is not visible from outside the worker, so the
5 % conservation check against it runs in process (tests/site, the pipeline's account()).
Here the billed CPU is checked against what the kernel measured: it is positive and at most
the CPU time the workers' main threads (the packet loops, whose thread CPU clock account()
reads) used over the traffic, from ``/proc/<pid>/schedstat`` (nanoseconds).
"""

from __future__ import annotations

import json
import os
import re
import struct
from pathlib import Path

import pytest

from pcsite_lite.billing.cli import main
from pcsite_lite.billing.collect import parse_service_counters
from pcsite_lite.billing.ledger import Ledger
from pcsite_lite.control.client import OutHop
from pcsock import wire
from tests.support import wait_until
from tests.support.sites import ADMIN, LiveSite, have_tools, in_ns

pytestmark = [pytest.mark.netns, pytest.mark.timeout(120)]

K1, K2 = bytes(range(16)), bytes(range(2, 18))


def _worker_counter(metrics: str, name: str) -> int:
    """The sum over workers (and reasons) of a dataplane counter in the metrics text."""
    return sum(
        int(line.rsplit(" ", 1)[1])
        for line in metrics.splitlines()
        if line.startswith(f"pcsite_{name}_total{{")
    )


def _worker_pids(log: Path) -> list[int]:
    return [int(p) for p in re.findall(r"worker \d+ ready \(pid (\d+)\)", log.read_text())]


def _thread_cpu_ns(pids: list[int]) -> int:
    """The CPU time the main threads of ``pids`` have run, from the scheduler's accounting."""
    return sum(int(Path(f"/proc/{pid}/schedstat").read_text().split()[0]) for pid in pids)


def test_live_daemon_usage_is_collected_billed_and_equals_the_dataplane_bytes(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    if os.geteuid() != 0 or not have_tools():
        pytest.skip("needs root, ip, nft and /dev/net/tun")
    ledger = tmp_path / "central.ledger"
    with LiveSite(tmp_path, workers=2) as site:
        admin = site.client(token=ADMIN, psp=None)
        collect = [
            "collect",
            "--url",
            "http://127.0.0.1:8080",
            "--token",
            ADMIN,
            "--ledger",
            str(ledger),
            "--count",
            "1",
            "--name",
            "site-a",
        ]
        assert in_ns(site.ns["a"], lambda: main(collect)) == 0  # nothing to collect yet

        acme = site.client()
        deliver = acme.allocate_circuit("relay")["label"]
        acme.install_hop(deliver, in_key=K1, deliver=LiveSite.D, strip=False)
        onward = acme.allocate_circuit("relay")["label"]
        acme.install_hop(onward, in_key=K2, out=[OutHop(4242, LiveSite.FAR, K2)])

        pids = _worker_pids(site.log)
        assert len(pids) == 2, site.log.read_text()
        cpu_before = _thread_cpu_ns(pids)
        tx = site.raw_sender()
        sent = sent_local = sent_far = 0
        n = 60
        for i in range(n):
            label, key = (deliver, K1) if i % 2 else (onward, K2)
            body = bytes(i * 13 % 900)
            udp = struct.pack("!HHHH", 5555, 9999, 8 + len(body), 0) + body
            pkt = bytes(
                wire.build_circuit_packet(
                    src=LiveSite.S, dst=LiveSite.SITE, label=label, key=key, payload=udp
                )
            )
            tx.sendto(pkt, (LiveSite.SITE, 0))
            sent += len(pkt)
            # a label switch keeps the length: to D is local, to FAR (another ISP) inter-domain
            if i % 2:
                sent_local += len(pkt)
            else:
                sent_far += len(pkt)
        tx.close()

        # wait until the workers have reported every packet (stats every 0.25 s)
        # wait until one scrape shows every packet metered (workers report every 0.25 s; a
        # worker's stats and usage arrive together, so one scrape is self-consistent)
        def all_metered() -> bool:
            nonlocal text
            text = admin.metrics()
            metered = parse_service_counters(text).get((f"{site.id}-site", "acme", "relay"))
            return metered is not None and metered.packets == n

        text = ""
        assert wait_until(all_metered, 10, 0.2), text
        worker_cpu = _thread_cpu_ns(pids) - cpu_before
        assert acme.usage()["services"]["relay"]["packets"] == n  # the PSP's own view agrees
        rx_bytes = _worker_counter(text, "rx_bytes")
        rx_packets = _worker_counter(text, "rx_packets")
        dropped = _worker_counter(text, "drops")  # packets no service saw (e.g. not_ipv4)
        tx_bytes = _worker_counter(text, "tx_bytes")

        # the collection after the traffic: the site appends its usage to its own ledger every
        # metering.interval (0.5 s), so collect until the central ledger has every packet
        def all_collected() -> bool:
            assert in_ns(site.ns["a"], lambda: main(collect)) == 0
            with Ledger(ledger, create=False) as led:
                return sum(r.counters.packets for r in led.records("acme")) >= n

        assert wait_until(all_collected, 10, 0.2)
        capsys.readouterr()

    with Ledger(ledger, create=False) as led:
        records = led.records("acme")
        assert {(r.site, r.service) for r in records} == {(f"{site.id}-site", "relay")}
        billed_in = sum(r.counters.bytes_in for r in records)
        billed_out = sum(r.counters.bytes_out for r in records)
        billed_local = sum(r.counters.bytes_local for r in records)
        billed_far = sum(r.counters.bytes_interdomain for r in records)
        assert sum(r.counters.packets for r in records) == n
        billed_cpu = sum(r.counters.cpu_ns for r in records)
    # CPU: the service ran, and is billed no more CPU than the worker threads used meanwhile
    assert 0 < billed_cpu <= worker_cpu, (billed_cpu, worker_cpu)
    # conservation: what the service was billed for is what the workers sent, byte for byte;
    # on input, every packet the workers read is either the service's or a counted drop
    assert billed_out == tx_bytes
    assert billed_in == sent <= rx_bytes
    assert rx_packets == n + dropped
    if dropped == 0:
        assert billed_in == rx_bytes
    # the inter-domain surcharge applies to exactly the bytes that left for another ISP
    assert (billed_local, billed_far) == (sent_local, sent_far)
    assert billed_local + billed_far == billed_out

    # and the invoice prices those counters (the daemon meters packets and bytes today)
    sheet = tmp_path / "p.toml"
    sheet.write_text(
        '[bandwidth]\ningress_per_gb = "0.05"\n[packets]\nper_million = "1"\n'
        '[invoice]\nquantum = "0.000001"\n'
    )
    rc = main(
        [
            "invoice",
            "--ledger",
            str(ledger),
            "--psp",
            "acme",
            "--from",
            "2000-01-01",
            "--to",
            "2100-01-01",
            "--prices",
            str(sheet),
            "--format",
            "json",
        ]
    )
    doc = json.loads(capsys.readouterr().out)
    assert rc == 0
    lines = {li["resource"]: li for li in doc["lines"]}
    assert lines["bandwidth_ingress"]["usage"] == sent
    assert lines["packets"]["usage"] == n

"""Test helper: a real knot DNS server in a throw-away namespace, serving zone texts."""

from __future__ import annotations

import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import dns.exception
import dns.message
import dns.query
from sdk_nsutil import call_in


@contextmanager
def knot(ns: str, address: str, zones: dict[str, str]) -> Iterator[None]:
    """Run knotd in namespace ``ns`` on ``address``:53 serving ``zones`` (name -> zone text,
    served as is: DNSSEC signing off, so pre-signed zones keep their RRSIGs)."""
    with tempfile.TemporaryDirectory(prefix="pcs-knot-") as tmp:
        d = Path(tmp)
        conf = [
            "server:",
            f"    listen: {address}@53",
            f"    rundir: {d}",
            "database:",
            f"    storage: {d}",
            "template:",
            "  - id: default",
            f"    storage: {d}",
            "    dnssec-signing: off",
            "    semantic-checks: off",
            "    zonefile-sync: -1",
            "    journal-content: none",
            "zone:",
        ]
        for i, (name, text) in enumerate(zones.items()):
            (d / f"z{i}.zone").write_text(text)
            conf += [f"  - domain: {name}", f"    file: z{i}.zone"]
        (d / "knot.conf").write_text("\n".join(conf) + "\n")
        proc = subprocess.Popen(
            ["ip", "netns", "exec", ns, "knotd", "-c", str(d / "knot.conf")],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        try:
            first = next(iter(zones))
            deadline = time.monotonic() + 10
            while True:
                try:
                    q = dns.message.make_query(first, "SOA")
                    call_in(ns, lambda q=q: dns.query.udp(q, address, timeout=0.2))
                    break
                except (dns.exception.DNSException, OSError):
                    if proc.poll() is not None or time.monotonic() > deadline:
                        err = proc.stderr.read().decode() if proc.stderr else ""
                        raise RuntimeError(f"knotd did not start: {err}") from None
                    time.sleep(0.05)
            yield
        finally:
            proc.terminate()
            try:
                proc.wait(5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()

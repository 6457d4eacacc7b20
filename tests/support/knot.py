"""A real knot DNS server in a throw-away namespace, serving zone texts (the SDK tests)."""

from __future__ import annotations

import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import dns.exception
import dns.message
import dns.query

from testbed.netns import call_in
from tests.support import stop_process, wait_until


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

            def answers() -> bool:
                q = dns.message.make_query(first, "SOA")
                try:
                    call_in(ns, lambda: dns.query.udp(q, address, timeout=0.2))
                except (dns.exception.DNSException, OSError):
                    return proc.poll() is not None  # stop waiting for a dead server
                return True

            if not wait_until(answers, 10, 0.05) or proc.poll() is not None:
                err = proc.stderr.read().decode() if proc.stderr else ""
                raise RuntimeError(f"knotd did not start: {err}")
            yield
        finally:
            stop_process(proc)

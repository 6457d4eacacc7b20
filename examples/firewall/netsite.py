"""A minimal site process for the examples' namespace demos (real packets, real pipeline).

It stands in for the site daemon (``pcsite run``) where the examples need what the daemon's
control API does not offer yet (repository-loaded services, redirect prefixes, circuits with
several delivering hops): it runs inside a testbed site's namespace, reads the IPv4 packets
arriving on the site's data interface with an ``AF_PACKET`` socket, runs them through the real
:class:`pcsite_lite.pipeline.Pipeline` over a :class:`pcsite_lite.site.Site`, and sends what
the pipeline forwards with a raw IP socket (the namespace's routes lead to the co-located
router). The kernel's own handling of those packets is switched off by one nftables rule (no
ICMP for the public IP) and by the namespace not forwarding.

The FIS is a SQLite (WAL) file shared with the PSP's control script, which writes it through
its own connection: the site's node-local ``CachedFIS`` sees those writes within its staleness
bound (5 ms), exactly as across the daemon's processes. Counters (drops by reason, service
counters, and when the first packet was sent to each next hop, in ``time.monotonic()``) are
written to ``stats`` as JSON every 100 ms and at exit, each time atomically (temp file +
rename), so a reader never sees a half-written file.

Config (JSON)::

    {"name": "CA", "public_ip": "198.18.254.1", "iface": "eth0", "fis": "/path/fis.sqlite",
     "stats": "/path/stats.json", "psp": "webco",
     "deploy": [{"service": "firewall", "source": "/path/service.py"}],
     "destinations": [{"prefix": "198.19.80.0/24", "service": "firewall",
                       "redirect_prefixes": []}],
     "circuits": [{"label": 7, "service": "multicast", "in_key": "<hex>",
                   "out": [{"label": 9, "next_hop": "198.18.254.2", "key": "<hex>|null"}]}]}

Run: ``python -m examples.firewall.netsite CONFIG.json`` (inside the site's namespace).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import sys
import tempfile
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

ETH_P_IP = 0x0800
PACKET_OUTGOING = 4
NFT_TABLE = "pce_netsite"

__all__ = ["NetSite", "main", "write_atomic", "write_config"]


def write_atomic(path: Path, text: str) -> None:
    """Replace ``path``'s content at once (temp file + rename): a process polling the file
    reads the old content or the new, never a truncated or half-written one."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def write_config(path: Path, config: dict[str, Any]) -> Path:
    write_atomic(path, json.dumps(config, indent=2))
    return path


def _nft_silence(public_ip: str, iface: str) -> None:
    import subprocess

    script = (
        f"table ip {NFT_TABLE} {{\n"
        "  chain input { type filter hook input priority -10; policy accept;\n"
        f'    iifname "{iface}" ip daddr {public_ip} drop\n'
        "  }\n}\n"
    )
    subprocess.run(["nft", "-f", "-"], input=script.encode(), check=True)


def build_site(cfg: dict[str, Any]) -> Any:
    """The Site object the config describes (services deployed, circuits installed)."""
    from pcsite_lite.circuits import OutHop
    from pcsite_lite.fis import CachedFIS, SqliteFIS
    from pcsock.wire import HopKey

    labels = [int(c["label"]) for c in cfg.get("circuits", [])]
    queue = list(labels)

    def randbits(n: int) -> int:  # hand the configured labels out in order
        return queue.pop(0) if queue else int.from_bytes(os.urandom(4), "big")

    from pcsite_lite.site import Site

    fis = CachedFIS(SqliteFIS(cfg["fis"]), clock=time.monotonic)
    site = Site(cfg["name"], cfg["public_ip"], fis=fis, randbits=randbits)
    psp = cfg["psp"]
    for d in cfg.get("deploy", []):
        site.deploy(psp, d["service"], Path(d["source"]).read_text())
    for r in cfg.get("destinations", []):
        site.register_destination(
            r["prefix"], psp, r["service"], redirect_prefixes=r.get("redirect_prefixes", [])
        )
    for c in cfg.get("circuits", []):
        label = site.circuits.allocate(psp, now=0.0)
        assert label == int(c["label"]), "label allocation out of order"
        hops = [
            OutHop(
                label=int(o["label"]),
                next_hop=o["next_hop"],
                key=None if o.get("key") is None else HopKey(bytes.fromhex(o["key"])),
            )
            for o in c["out"]
        ]
        site.circuits.install(
            label,
            psp=psp,
            service=c["service"],
            in_key=bytes.fromhex(c["in_key"]),
            out_hops=hops,
            expires=1e12,
            now=0.0,
        )
    return site


def _stats(site: Any, processed: int, first: dict[str, float] | None = None) -> dict[str, Any]:
    return {
        "processed": processed,
        "first_sent_to": first or {},
        "drops": dict(site.drops),
        "services": {slot.ctx.name: slot.ctx.counters.as_dict() for slot in site.runtime.slots()},
    }


class NetSite:
    """The PSP's handle on a stand-in site process in a testbed site (examples not yet on
    ``pcsite run``)."""

    def __init__(self, tb: Any, site: str, psp: str, workdir: Path) -> None:
        from pcsite_lite.fis import SqliteFIS

        self.tb = tb
        self.info = tb.site(site)
        self.public_ip: str = self.info.public_ip
        self.psp = psp
        self.workdir = workdir
        self.fis_path = workdir / f"{site}-fis.sqlite"
        self.fis = SqliteFIS(str(self.fis_path))  # the PSP's own connection
        self.config: dict[str, Any] = {
            "name": site,
            "public_ip": self.info.public_ip,
            "iface": self.info.data_iface,
            "fis": str(self.fis_path),
            "stats": str(workdir / f"{site}-stats.json"),
            "psp": psp,
            "deploy": [],
            "destinations": [],
            "circuits": [],
        }
        self.process: Any = None

    def _ns(self, service: str) -> str:
        from pcsite_lite.fis import namespace

        return namespace(self.psp, service)

    # --- SiteHandle
    def deploy(self, service: str, source: str) -> None:
        path = self.workdir / f"{service}.py"
        path.write_text(source)
        self.config["deploy"].append({"service": service, "source": str(path)})

    def register_destination(
        self, prefix: str, service: str, redirect_prefixes: Iterable[str] | str = ()
    ) -> None:
        """Register ``prefix``; the third argument is the mobility service's redirect prefixes,
        or the firewall's ownership proof (a str: this stand-in trusts the PSP's validation)."""
        if isinstance(redirect_prefixes, str):
            redirect_prefixes = ()
        self.config["destinations"].append(
            {"prefix": prefix, "service": service, "redirect_prefixes": list(redirect_prefixes)}
        )
        self.tb.divert(self.info.router, prefix)  # the ISP's part, after the proof

    def fis_put(self, service: str, key: str, value: Any) -> None:
        self.fis.put(self._ns(service), key, value, writer=self.psp)

    def fis_delete(self, service: str, key: str) -> None:
        self.fis.delete(self._ns(service), key, writer=self.psp)

    def fis_lpm_put(self, service: str, table: str, prefix: str, value: Any) -> None:
        self.fis.lpm_put(self._ns(service), table, prefix, value, writer=self.psp)

    def fis_lpm_delete(self, service: str, table: str, prefix: str) -> None:
        self.fis.lpm_delete(self._ns(service), table, prefix, writer=self.psp)

    def allocate_label(self, service: str) -> int:
        """A fresh incoming label for this site (chosen here; the site installs it at start)."""
        import secrets

        taken = {c["label"] for c in self.config["circuits"]}
        while True:
            label = secrets.randbits(32)
            if label and label not in taken:
                self.config["circuits"].append({"label": label, "service": service})
                return label

    def install(
        self, label: int, service: str, in_key: bytes, out: list[tuple[int, str, bytes | None]]
    ) -> None:
        """Set a circuit's hop (before :meth:`start`; afterwards the hop must not change)."""
        entry = next(c for c in self.config["circuits"] if c["label"] == label)
        hop = {
            "label": label,
            "service": service,
            "in_key": in_key.hex(),
            "out": [
                {"label": lb, "next_hop": nh, "key": None if k is None else k.hex()}
                for lb, nh, k in out
            ],
        }
        if self.process is not None and entry != hop:
            raise RuntimeError("the namespace site installs circuits at start only")
        entry.update(hop)

    # --- process
    def start(self) -> None:
        cfg = write_config(self.workdir / f"{self.info.name}.json", self.config)
        self.process = self.tb.node(self.info.name).start(
            [sys.executable, "-m", "examples.firewall.netsite", str(cfg)],
            name="netsite",
            ready=lambda: "netsite up" in self.process_log(),
            timeout=20,
        )

    def process_log(self) -> str:
        logs = sorted((self.tb.run_state.dir / "logs").glob(f"{self.info.name}-netsite-*.log"))
        return logs[-1].read_text() if logs else ""

    def stats(self) -> dict[str, Any]:
        data: dict[str, Any] = json.loads(Path(self.config["stats"]).read_text())
        return data

    def stats_after(self, processed: int, timeout: float = 10.0) -> dict[str, Any]:
        """The stats once the site process has processed ``processed`` packets in all (it
        writes them every 100 ms), or as they stand after ``timeout`` seconds."""
        end = time.monotonic() + timeout
        while True:
            data = self.stats()
            if data["processed"] >= processed or time.monotonic() >= end:
                return data
            time.sleep(0.02)

    def close(self) -> None:
        if self.process is not None:
            self.process.stop()
        self.fis.close()


def main(argv: list[str] | None = None) -> int:
    from pcsite_lite.pipeline import Pipeline
    from pcsite_lite.verdicts import Deliver, Drop, Forward
    from pcsock.wire import TOS_SERVICE, ip2int

    args = sys.argv[1:] if argv is None else argv
    cfg = json.loads(Path(args[0]).read_text())
    site = build_site(cfg)
    pipe = Pipeline(site)
    public = ip2int(cfg["public_ip"])
    stats_path = Path(cfg["stats"])
    _nft_silence(cfg["public_ip"], cfg["iface"])
    rx = socket.socket(socket.AF_PACKET, socket.SOCK_DGRAM, socket.htons(ETH_P_IP))
    rx.bind((cfg["iface"], ETH_P_IP))
    rx.settimeout(0.1)
    tx = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)
    running = True

    def stop(*_: object) -> None:
        nonlocal running
        running = False

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    processed = 0
    first: dict[str, float] = {}  # next hop -> when the first packet was sent there
    next_dump = 0.0
    write_atomic(stats_path, json.dumps(_stats(site, 0)))
    print("netsite up", flush=True)
    while running:
        now = time.monotonic()
        if now >= next_dump:
            write_atomic(stats_path, json.dumps(_stats(site, processed, first)))
            next_dump = now + 0.1
        try:
            data, addr = rx.recvfrom(65535)
        except TimeoutError:
            continue
        except OSError:
            continue
        if addr[2] == PACKET_OUTGOING or len(data) < 20:
            continue
        dst = int.from_bytes(data[16:20], "big")
        if not (
            dst == public or data[1] == TOS_SERVICE or site.destinations.lookup(dst) is not None
        ):
            continue
        processed += 1
        for v in pipe.process(data, time.time()):  # the daemon's packet clock: wall time
            if isinstance(v, Forward | Deliver):
                try:
                    tx.sendto(v.data, (v.next_hop, 0))
                    if v.next_hop not in first and len(first) < 256:
                        first[v.next_hop] = time.monotonic()
                except OSError as exc:
                    print(f"send to {v.next_hop} failed: {exc}", flush=True)
            elif isinstance(v, Drop):
                pass
    write_atomic(stats_path, json.dumps(_stats(site, processed, first)))
    return 0


if __name__ == "__main__":
    sys.exit(main())

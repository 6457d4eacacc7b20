"""The firewall demo with real packets in a namespace testbed (and its simulator twin).

:func:`run_testbed` builds ``firewall.toml`` (prefix ``pce`` + a run id; always torn down),
starts a site process in CA (:mod:`.netsite`: the real pipeline and sandboxed service), signs up
the server's prefix with a DNSSEC ownership proof, has RA divert it to CA, and sends a seeded
mix of packets from the attacker A and the client G to the web server S. It counts the packets
crossing the core link RA -> RC (captured on RC's interface, plus the kernel's interface
counter) and what reaches S, then changes the whitelist on line and installs a StopIt filter.

``python -m examples.firewall.demo`` runs it as root (else the simulator test's network) and
prints the figures as JSON. :func:`register` adds it to ``pcdemo``'s scenario registry.
"""

from __future__ import annotations

import json
import random
import socket
import sys
import tempfile
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .control import SERVICE, FirewallPSP
from .netsite import write_config

TOPOLOGY = Path(__file__).with_name("firewall.toml")
PREFIX = "198.19.80.0/24"
SERVER = "198.19.80.2"
OWNER = "webco"
SIGNUP_TIME = 1_795_000_000.0
ETH_P_IP = 0x0800

__all__ = ["NetSite", "register", "run_testbed"]


class NetSite:
    """A :class:`.control.SiteHandle` for a :mod:`.netsite` process in a testbed site."""

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


class DaemonSite:
    """A :class:`.control.SiteHandle` for a real site daemon (``pcsite run``) in a testbed
    site: services go through the repository (signed upload, activate), the sign-up through the
    control API (the daemon validates the proof against its trust anchor), FIS writes through
    the control API; the testbed plays the ISP's router part (diverting the prefix)."""

    TOKEN = "webco-token-0123456789abcdef"
    ADMIN = "isp-admin-token-0123456789"

    def __init__(
        self, tb: Any, site: str, psp: str, workdir: Path, trust_anchor: str | None = None
    ) -> None:
        from pcsite_lite.repository import generate_key, public_key_bytes

        self.tb = tb
        self.info = tb.site(site)
        self.public_ip: str = self.info.public_ip
        self.psp = psp
        self.key = generate_key()
        state = workdir / f"{site}-state"
        state.mkdir()
        anchor_line = ""
        if trust_anchor is not None:
            anchor_file = workdir / f"{site}-anchor.txt"
            anchor_file.write_text(trust_anchor + "\n")
            anchor_line = f'trust_anchor_file = "{anchor_file}"'
        self.cfg = workdir / f"{site}-daemon.toml"
        self.cfg.write_text(
            f"""[site]
name = "{site}"
public_ip = "{self.info.public_ip}"
workers = 1
state_dir = "{state}"
repository = "{state / "repo"}"

[dataplane]
tun_prefix = "pcew"

[control]
listen = "127.0.0.1:8080"
admin_token = "{self.ADMIN}"
{anchor_line}

[control.psps.{psp}]
token = "{self.TOKEN}"
signing_key = "{public_key_bytes(self.key).hex()}"
"""
        )
        self.process = tb.node(site).start(
            [sys.executable, "-m", "pcsite_lite.cli", "run", "--config", str(self.cfg)],
            name="pcsite",
            ready=lambda: "site up" in self._log(),
            timeout=30,
        )

    def _log(self) -> str:
        logs = sorted((self.tb.run_state.dir / "logs").glob(f"{self.info.name}-pcsite-*.log"))
        return logs[-1].read_text() if logs else ""

    def _call(self, method: str, *args: Any) -> Any:
        from pcsite_lite.control.client import ControlClient

        client = ControlClient("http://127.0.0.1:8080", token=self.TOKEN, psp=self.psp)
        return self.tb.node(self.info.name).call(lambda: getattr(client, method)(*args))

    def deploy(self, service: str, source: str) -> None:
        from pcsite_lite.repository import sign_service

        code = source.encode()
        self._call(
            "upload_service",
            service,
            "1",
            code,
            sign_service(self.key, self.psp, service, "1", code),
        )
        self._call("activate_service", service, "1")

    def register_destination(self, prefix: str, service: str, proof: str) -> None:
        self._call("register_destination", prefix, service, proof)
        self.tb.divert(self.info.router, prefix)

    def fis_put(self, service: str, key: str, value: Any) -> None:
        self._call("fis_put", service, key, value)

    def fis_delete(self, service: str, key: str) -> None:
        self._call("fis_delete", service, key)

    def fis_lpm_put(self, service: str, table: str, prefix: str, value: Any) -> None:
        self._call("fis_lpm_put", service, table, prefix, value)

    def fis_lpm_delete(self, service: str, table: str, prefix: str) -> None:
        self._call("fis_lpm_delete", service, table, prefix)

    def allocate_label(self, service: str) -> int:
        return int(self._call("allocate_circuit", service, 3600.0)["label"])

    def install(
        self, label: int, service: str, in_key: bytes, out: list[tuple[int, str, bytes | None]]
    ) -> None:
        """Install a circuit hop; out hops without a key (receivers) leave the check zero."""
        body = {
            "in_key": in_key.hex(),
            "lifetime": 3600.0,
            "out": [
                {"label": lb, "next_hop": nh, "key": None if k is None else k.hex()}
                for lb, nh, k in out
            ],
        }
        path = f"/v1/psps/{self.psp}/circuits/{label}"
        self._call("request", "PUT", path, body)

    def start(self) -> None:  # the daemon is running already
        pass

    def stats(self, service: str = SERVICE) -> dict[str, Any]:
        """Drops and the service's counters, in :mod:`.netsite`'s stats layout."""
        usage = self._call("usage")["services"].get(service, {})
        return {
            "drops": {"service_drop": usage.get("drops", 0)},
            "services": {f"{self.psp}/{service}": usage},
        }

    def close(self) -> None:
        self.process.stop()


def _proof(now: float = SIGNUP_TIME) -> tuple[str, str]:
    from pcsock.ownership import OwnershipClaim, ZoneKey, build_proof, reverse_zone

    root = ZoneKey.generate("in-addr.arpa.")
    own = ZoneKey.generate(reverse_zone(PREFIX))
    claim = OwnershipClaim(PREFIX, OWNER, SERVICE, now - 3600, now + 86400)
    proof = build_proof([claim], own, chain=[root], inception=now - 60, expiration=now + 3600)
    return proof.text, root.ds_text()


@dataclass
class Capture:
    """IPv4 packets seen on an interface (an AF_PACKET socket opened in the node's netns)."""

    sock: socket.socket
    seen: list[bytes] = field(default_factory=list)

    @classmethod
    def open(cls, node: Any, iface: str) -> Capture:
        def mk() -> socket.socket:
            s = socket.socket(socket.AF_PACKET, socket.SOCK_DGRAM, socket.htons(ETH_P_IP))
            s.bind((iface, ETH_P_IP))
            s.settimeout(0.05)
            return s

        return cls(node.call(mk))

    def drain(self, quiet: float = 0.3) -> list[bytes]:
        deadline = time.monotonic() + quiet
        while time.monotonic() < deadline:
            try:
                data, addr = self.sock.recvfrom(65535)
            except TimeoutError:
                continue
            if addr[2] != 4:  # not PACKET_OUTGOING
                self.seen.append(data)
                deadline = time.monotonic() + quiet
        return self.seen

    def count(self, *, dst: str, srcs: set[str]) -> int:
        n = 0
        for d in self.drain():
            if socket.inet_ntoa(d[16:20]) == dst and socket.inet_ntoa(d[12:16]) in srcs:
                n += 1
        self.seen.clear()
        return n


def iface(tb: Any, node: str, peer: str) -> str:
    """The name of ``node``'s interface toward ``peer``."""
    plan = tb.node(node).plan.iface_to(peer)
    if plan is None:
        raise KeyError(f"{node} has no link to {peer}")
    return str(plan.name)


def _tx_packets(node: Any, iface: str) -> int:
    rc, out, _ = node.run(["ip", "-s", "-j", "link", "show", "dev", iface])
    return int(json.loads(out)[0]["stats64"]["tx"]["packets"]) if rc == 0 else -1


def _sender(node: Any) -> socket.socket:
    def mk() -> socket.socket:
        return socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)

    return node.call(mk)


def _mix(n: int, a: str, g: str, seed: int = 7) -> list[tuple[bytes, bool]]:
    """(packet, wanted) pairs: 3/4 unwanted from ``a``, 1/4 web from ``g``."""
    from scapy.layers.inet import IP, TCP, UDP

    rng = random.Random(seed)
    out = []
    for i in range(n):
        if i % 4 == 0:
            p = IP(src=g, dst=SERVER) / TCP(sport=40000 + i, dport=rng.choice([80, 443]))
            out.append((bytes(p), True))
        else:
            l4 = rng.choice(
                [
                    UDP(sport=40000 + i, dport=rng.randrange(1, 65535)),
                    TCP(sport=40000 + i, dport=rng.choice([22, 25, 3389, 8080])),
                ]
            )
            out.append((bytes(IP(src=a, dst=SERVER) / l4), False))
    return out


def run_testbed(
    *, prefix: str = "pce", n: int = 200, progress: Any = None, site: str = "daemon"
) -> dict[str, Any]:
    """Build the testbed, run the firewall demo with real packets, return the figures.

    ``site``: ``"daemon"`` runs the real site daemon (``pcsite run``: repository upload,
    control-API sign-up and FIS); ``"netsite"`` the in-namespace stand-in (:mod:`.netsite`).
    """
    from testbed.net import Testbed

    res: dict[str, Any] = {}
    with (
        tempfile.TemporaryDirectory(prefix="pce-fw-") as tmp,
        Testbed.from_file(TOPOLOGY, prefix=prefix, progress=progress) as tb,
    ):
        now = time.time()
        proof, anchor = _proof(now)
        handle: NetSite | DaemonSite
        if site == "daemon":
            handle = DaemonSite(tb, "CA", OWNER, Path(tmp), anchor)
        else:
            handle = NetSite(tb, "CA", OWNER, Path(tmp))
        res["site"] = site
        try:
            psp = FirewallPSP(OWNER, [handle], quota=4)
            psp.sign_up(PREFIX, proof, anchor, now=now)
            handle.start()
            a, g = tb.node("A").address, tb.node("G").address
            assert a is not None and g is not None
            rc_in = iface(tb, "RC", "RA")
            ra_out = iface(tb, "RA", "RC")
            core = Capture.open(tb.node("RC"), rc_in)
            at_s = Capture.open(tb.node("S"), iface(tb, "S", "RD"))
            senders = {a: _sender(tb.node("A")), g: _sender(tb.node("G"))}
            mix = _mix(n, a, g)
            tx0 = _tx_packets(tb.node("RA"), ra_out)
            for pkt, _wanted in mix:
                senders[socket.inet_ntoa(pkt[12:16])].sendto(pkt, (SERVER, 0))
            wanted = sum(w for _, w in mix)
            res["sent"] = n
            res["wanted"] = wanted
            res["core_link_packets"] = core.count(dst=SERVER, srcs={a, g})
            res["server_packets"] = at_s.count(dst=SERVER, srcs={a, g})
            res["core_iface_tx_delta"] = _tx_packets(tb.node("RA"), ra_out) - tx0
            time.sleep(0.2)
            res["site_drops"] = handle.stats()["drops"]
            # on line: whitelist the attacker's host, then stop it with a StopIt filter
            from scapy.layers.inet import IP, UDP

            probe = bytes(IP(src=a, dst=SERVER) / UDP(sport=999, dport=5000))
            psp.allow_source(f"{a}/32")
            time.sleep(0.05)  # > the 5 ms FIS staleness bound
            senders[a].sendto(probe, (SERVER, 0))
            res["whitelisted_probe_at_server"] = at_s.count(dst=SERVER, srcs={a})
            psp.stopit(a, SERVER, duration=60, now=time.time())  # sites' clock: wall time
            time.sleep(0.05)
            senders[a].sendto(probe, (SERVER, 0))
            res["stopped_probe_at_server"] = at_s.count(dst=SERVER, srcs={a})
            time.sleep(0.2)
            res["site_drops_after"] = handle.stats()["drops"]
            for s in senders.values():
                s.close()
        finally:
            handle.close()
    return res


def passed(res: dict[str, Any]) -> bool:
    return bool(
        res["core_link_packets"] == res["wanted"]
        and res["server_packets"] == res["wanted"]
        and res["site_drops"].get("service_drop", 0) == res["sent"] - res["wanted"]
        and res["whitelisted_probe_at_server"] == 1
        and res["stopped_probe_at_server"] == 0
    )


def register() -> None:
    """Add the firewall to ``pcdemo``'s scenarios (testbed as root, else simulator)."""
    from pcdemo.scenarios import Outcome, World, scenario

    @scenario("firewall", "destination-controlled firewall near the sources (§2.6.2)")
    def firewall_scenario(world: World) -> Outcome:
        out = Outcome("firewall")
        if world.kind == "testbed":
            res = run_testbed()
        else:
            res = run_simulator()
        out.sent, out.received = res["sent"], res["server_packets"]
        out.dropped = res["sent"] - res["server_packets"]
        out.check("only wanted traffic crossed the core", res["core_link_packets"] == res["wanted"])
        out.check(
            "the server got exactly the wanted traffic", res["server_packets"] == res["wanted"]
        )
        out.detail = f"{res['core_link_packets']}/{res['sent']} packets crossed the core"
        return out


def run_simulator(n: int = 200) -> dict[str, Any]:
    """The same mix in the simulator (``pcsite_lite.sim``), for machines without root."""
    from .scenario import build_world, traffic_mix

    wanted, core, got = traffic_mix(build_world(), n)
    return {"sent": n, "wanted": wanted, "core_link_packets": core, "server_packets": got}


if __name__ == "__main__":
    import os

    result = run_testbed(progress=print) if os.geteuid() == 0 else run_simulator()
    print(json.dumps(result, indent=2))
    sys.exit(0)

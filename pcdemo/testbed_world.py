"""The demo's real world: a topology built as a testbed, with site daemons, a lookupd and knot.

Built with the testbed's API (``testbed.net.Testbed``, names ``pcs<run id>-...``) from the
topology the demo was given (default Fig. 2) and always torn down. What runs where:

* hosts: pcsock sockets (UDP-encapsulation mode: no privileges needed by the SDK) created in
  the namespaces of the hosts the scenarios use (:meth:`pcdemo.roles.Roles.hosts_used`);
  receivers also have ordinary UDP sockets (form 3 needs nothing from the sender);
* every site on the control network: ``pcsite run`` (the site daemon) with its control API
  on the control network and the demo's DNSSEC trust anchor; the API is HTTPS (``tls=True``,
  the default): the world makes a CA for the run (``pcsite_lite.pki``), a certificate per
  site for its control address, and every client (lookupd, the world's own calls) verifies
  against that CA;
* the PSP node (:attr:`Roles.psp`: one with a data link): ``pcsock lookupd`` listening on its
  **data** address (hosts never reach the control network), talking to the sites' control
  APIs over the control network; its address is published in DNS as
  ``_pcpsp._tcp.acme.psp.test.`` and the sender finds it there;
* the DNS node (:attr:`Roles.dns`): knot serving the testbed's zones plus ``in-addr.arpa.``
  (the demo's trust anchor zone) and each signed-up receiver's reverse zone with the
  ownership record, both signed by :mod:`pcsock.ownership`.

A topology without a PSP or DNS node still builds; the scenarios that need them say so.
"""

from __future__ import annotations

import json
import select
import shutil
import socket
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pcdemo.roles import Roles
from pcdemo.scenarios import PSP, SRCROUTE, Missing, World, load_topology, resolve_topology
from pcsock import ownership, wire
from pcsock.discovery import Resolver, psp_records
from pcsock.lookup import LookupClient, find_lookup
from pcsock.session import Circuit, Datagram
from pcsock.socket import PacketCloudSocket, ServiceSocket

__all__ = ["TestbedWorld"]

ADMIN_TOKEN = "pcs-demo-isp-admin-0123456789abcdef"
PSP_TOKEN = "pcs-demo-acme-token-0123456789abcdef"
CONTROL_PORT = 8080
LOOKUP_PORT = 7053
PSP_ZONE = "acme.psp.test."
PLAIN_PORTS = (7, 9)


class TestbedWorld(World):
    """A topology in Linux namespaces (needs root)."""

    kind = "testbed"

    def __init__(self, topology: str | Path | None = None, roles: Roles | None = None, *,
                 prefix: str = "pcs", progress: Callable[[str], None] = print,
                 tls: bool = True, scenarios: list[str] | None = None,
                 nodes: int = 1, fis_replicas: int = 0) -> None:  # fmt: skip
        from testbed.net import Testbed

        self.topology_path = resolve_topology(topology)
        self.roles = roles or load_topology(self.topology_path)[1]
        sites = list(self.roles.topo.of_kind("site"))
        if nodes > 1:  # each site spans machines: an LB + ``nodes`` compute nodes (cluster.md)
            for spec in sites:
                spec.nodes = nodes
                spec.fis_replicas = fis_replicas  # the site's FIS on that many machines
        #: compute nodes per site: ``nodes`` if given, else the most the topology's sites
        #: have (``nodes = N``); the example scenarios, which build their own networks, give
        #: their sites as many
        self.site_nodes = max([nodes, *(s.nodes for s in sites)])
        self.progress = progress
        self.tmp = Path(tempfile.mkdtemp(prefix="pcs-demo-"))
        self.tb = Testbed(self.roles.topo, prefix=prefix)
        self.sockets: dict[str, list[socket.socket | PacketCloudSocket]] = {}
        self.endpoints: dict[str, PacketCloudSocket] = {}
        self.procs: list[Any] = []
        self._serial = int(time.time())
        self._built = False
        self.tls = tls  #: control APIs over HTTPS, with a CA made for this run
        self.ca_file: Path | None = None
        self._lookups: dict[str, LookupClient] = {}  #: sender host -> its lookup client
        self._circuits: dict[int, str] = {}  #: circuit label -> the host that opened it
        self._owners: dict[str, ownership.ZoneKey] = {}  #: prefix -> its reverse zone's key
        from pcdemo.scenarios import CORE_SCENARIOS

        self._used = self.roles.hosts_used(scenarios or list(CORE_SCENARIOS))
        try:
            self._build()
        except BaseException:
            self.close()
            raise

    # --- building
    def _build(self) -> None:
        t0 = time.monotonic()
        self.tb.up()
        self._built = True
        tb, roles = self.tb, self.roles
        self.hosts = {h: str(tb.node(h).address) for h in roles.hosts}
        self.sites = {n: tb.site(n).public_ip for n in roles.sites if roles.topo.nodes[n].control}
        self.routers = {n: tb.site(n).router for n in self.sites}
        self.psp = tb.node(roles.psp) if roles.psp else None
        self.progress(f"testbed {tb.run} ({roles.topo.name}) up in {time.monotonic() - t0:.1f}s")
        from pcsite_lite.repository import generate_key

        self.psp_key = generate_key()  # signs the PSP's service code
        self.root = ownership.ZoneKey.generate("in-addr.arpa.")
        self.dns = tb.dns if roles.dns else None
        self.nameserver = f"ns.{roles.topo.nodes[roles.dns].zone}" if roles.dns else "ns."
        if self.dns is not None:  # DNSSEC: the demo's anchor zone (replacing the testbed's)
            self._publish_anchor_zone()
        anchor = self.tmp / "anchor.txt"
        anchor.write_text(self.root.ds_text() + "\n")
        if self.tls:  # this run's CA: it signs every site's control API certificate
            from pcsite_lite import pki

            self._ca = pki.make_ca(f"PacketCloud testbed {tb.run} CA", days=2)
            self.ca_file = self._ca.write(self.tmp / "pki", "ca")[0]
        # a site daemon at every site on the control network (the PSP's lookupd and the
        # world's own control calls reach them there)
        for name in self.sites:
            self._start_site(name, anchor)
        self.progress(f"site daemons up ({', '.join(self.sites) or 'none'})")
        if self.psp is not None:
            self._start_lookupd()
        # endpoints of the hosts the scenarios use
        for h in self._used:
            ip = self.hosts[h]

            def mk_ep(ip: str = ip) -> PacketCloudSocket:
                return PacketCloudSocket(ip)

            ep = tb.node(h).call(mk_ep)
            self.endpoints[h] = ep
            self.sockets[h] = [ep]
            for port in PLAIN_PORTS:

                def mk(port: int = port, ip: str = ip) -> socket.socket:
                    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
                    s.bind((ip, port))
                    return s

                self.sockets[h].append(tb.node(h).call(mk))
        self.progress(f"ready in {time.monotonic() - t0:.1f}s")

    def _start_lookupd(self) -> None:
        """The PSP's lookup service on the PSP node's data address, published in DNS."""
        assert self.psp is not None
        psp_ip = self.psp.address
        assert psp_ip is not None
        if self.dns is not None:
            self.dns.set_zone(
                PSP_ZONE,
                f"$TTL 300\n{PSP_ZONE} 300 IN SOA {self.nameserver} hostmaster.{PSP_ZONE} 1 3600 "
                f"600 86400 60\n{PSP_ZONE} 300 IN NS {self.nameserver}\n"
                + psp_records(PSP_ZONE, PSP, psp_ip, LOOKUP_PORT, ["srcroute"]),
            )
        cfg = {
            "psp": PSP,
            "listen": f"{psp_ip}:{LOOKUP_PORT}",
            "measure": True,
            "sites": [
                {
                    "name": n,
                    "address": ip,
                    "control": self._control_url(n),
                    "token": PSP_TOKEN,
                    **({"ca_file": str(self.ca_file)} if self.ca_file else {}),
                }
                for n, ip in self.sites.items()
            ],
        }
        path = self.tmp / "lookupd.json"
        path.write_text(json.dumps(cfg))
        psp = self.psp
        self.procs.append(
            psp.start(
                [sys.executable, "-m", "pcsock.cli", "lookupd", "--config", str(path)],
                name="lookupd",
                ready=lambda: psp.tcp_open(psp_ip, LOOKUP_PORT),
                timeout=20,
            )
        )
        self.progress(f"lookup service on {psp.name} at {psp_ip}:{LOOKUP_PORT} (data network)")

    @property
    def lookup(self) -> LookupClient:
        """The lookup service as the default sender (Fig. 2: S) finds it through DNS."""
        return self._lookup(self.roles.pair()[0])

    def _lookup(self, host: str) -> LookupClient:
        """The PSP's lookup service as ``host`` finds it: through DNS (SRV/A/TXT)."""
        if host not in self._lookups:
            if self.psp is None or self.dns is None:
                lacks = "no PSP" if self.psp is None else "no DNS"
                raise Missing(f"a PSP node and a DNS node (the topology has {lacks} node to use)")
            resolver = Resolver([self.dns.address])
            self._lookups[host] = self.tb.node(host).call(
                lambda: find_lookup(resolver, PSP_ZONE, "srcroute")
            )
            lk = self._lookups[host]
            self.progress(f"{host} found the lookup service in DNS at {lk.host}:{lk.port}")
        return self._lookups[host]

    def _next_serial(self) -> int:
        self._serial += 1
        return self._serial

    def _publish_anchor_zone(self) -> None:
        """``in-addr.arpa.``, signed with the demo's root key, delegating to every owner zone."""
        assert self.dns is not None
        now = time.time()
        self.dns.set_zone(
            "in-addr.arpa.",
            ownership.signed_zone_text(
                self.root, children=list(self._owners.values()), inception=now - 3600,
                expiration=now + 86400, nameserver=self.nameserver, serial=self._next_serial(),
            ),
        )  # fmt: skip

    def _owner(self, prefix: str) -> ownership.ZoneKey:
        """The key of ``prefix``'s reverse zone (made, and delegated to, on first use)."""
        if prefix not in self._owners:
            self._owners[prefix] = ownership.ZoneKey.generate(ownership.reverse_zone(prefix))
            self._publish_anchor_zone()
        return self._owners[prefix]

    def _publish_owner_zone(self, prefix: str, claims: list[ownership.OwnershipClaim]) -> None:
        assert self.dns is not None
        owner = self._owner(prefix)
        now = time.time()
        records = [ownership.ownership_rrset(claims)] if claims else []
        self.dns.set_zone(
            owner.zone.to_text(),
            ownership.signed_zone_text(
                owner, records=records, inception=now - 3600, expiration=now + 86400,
                nameserver=self.nameserver, serial=self._next_serial(),
            ),
        )  # fmt: skip

    def _control_node(self) -> Any:
        """Where the world's own control calls come from: the PSP node, else the DNS node
        (both on the control network)."""
        node = self.psp or (self.tb.node(self.roles.dns) if self.roles.dns else None)
        if node is None or node.control_address is None:
            raise Missing("a PSP or DNS node on the control network (to reach the sites' "
                          "control APIs)")  # fmt: skip
        return node

    def _start_site(self, name: str, anchor: Path) -> None:
        info = self.tb.site(name)
        state = self.tmp / f"state-{name}"
        state.mkdir()
        cfg = self.tmp / f"{name}.toml"
        cfg.write_text(
            f'[site]\nname = "{name}"\npublic_ip = "{info.public_ip}"\nworkers = 1\n'
            f'state_dir = "{state}"\n\n[dataplane]\ntun_prefix = "pcsw"\n\n'
            f'[control]\nlisten = "{info.control_address}:{CONTROL_PORT}"\n'
            f'admin_token = "{ADMIN_TOKEN}"\ntrust_anchor_file = "{anchor}"\n\n'
            f'[control.psps.{PSP}]\ntoken = "{PSP_TOKEN}"\n'
        )
        node = self.tb.node(name)
        addr = info.control_address
        from pcsite_lite.repository import public_key_bytes

        repo = self.tmp / f"repo-{name}"
        repo.mkdir()
        text = cfg.read_text().replace(
            f'state_dir = "{state}"\n', f'state_dir = "{state}"\nrepository = "{repo}"\n'
        )
        text += f'signing_key = "{public_key_bytes(self.psp_key).hex()}"\n'
        if self.tls:
            from pcsite_lite import pki

            assert addr is not None
            crt, key = pki.issue(self._ca, [addr], days=2).write(self.tmp / "pki", name)
            text += f'\n[tls]\ncert = "{crt}"\nkey = "{key}"\n'
        cfg.write_text(text)
        assert addr is not None
        if name in self.tb.clusters:
            self._start_cluster(name, cfg, addr)
            return
        self.procs.append(
            node.start(
                [sys.executable, "-m", "pcsite_lite.cli", "run", "--config", str(cfg)],
                name="pcsite",
                ready=lambda: self._control_node().tcp_open(addr, CONTROL_PORT),
                timeout=30,
            )
        )
        # so that `testbed graph RUN` / `testbed top RUN` can read what this site installed
        self.tb.register_control(name, f"http://{addr}:{CONTROL_PORT}", ADMIN_TOKEN, [PSP])

    def _start_cluster(self, name: str, cfg: Path, addr: str) -> None:
        """A site of ``nodes`` machines (:func:`pcdemo.rig.start_cluster_site`): LB +
        controller in the site's namespace (the control API where a one-machine site has it),
        ``pcsite run --role node`` in each node's; one FIS for the site's machines."""
        import tomllib

        from pcdemo.rig import start_cluster_site

        config = tomllib.loads(cfg.read_text())

        def ready() -> bool:
            return bool(self._control_node().tcp_open(addr, CONTROL_PORT))

        start_cluster_site(self.tb, name, config, self.tmp, secret=ADMIN_TOKEN,
                           procs=self.procs, ready=ready)  # fmt: skip
        self.tb.register_control(name, f"http://{addr}:{CONTROL_PORT}", ADMIN_TOKEN, [PSP])

    def _control_url(self, site: str) -> str:
        scheme = "https" if self.tls else "http"
        return f"{scheme}://{self.tb.site(site).control_address}:{CONTROL_PORT}"

    def _control(self, site: str, admin: bool = False) -> Any:
        from pcsite_lite.control.client import ControlClient

        c = ControlClient(self._control_url(site), token=ADMIN_TOKEN if admin else PSP_TOKEN,
                          psp=None if admin else PSP,
                          ca_file=str(self.ca_file) if self.ca_file else None)  # fmt: skip
        psp = self._control_node()

        class InPsp:  # every call from the PSP's namespace (the control network)
            def __getattr__(self, attr: str) -> Any:
                fn = getattr(c, attr)
                return lambda *a, **k: psp.call(lambda: fn(*a, **k))

        return InPsp()

    # --- World
    def now(self) -> float:
        return time.monotonic()

    def deploy(self, sites: list[str], service: str, source: str) -> None:
        import hashlib
        import inspect

        from pcsite_lite.control.client import ControlClient, ControlError
        from pcsite_lite.repository import sign_service

        code = source.encode()
        version = "v" + hashlib.sha256(code).hexdigest()[:12]
        sig = sign_service(self.psp_key, PSP, service, version, code)
        versioned = "version" in inspect.signature(ControlClient.upload_service).parameters
        for site in sites:
            c = self._control(site)
            try:
                if versioned:
                    try:
                        c.upload_service(service, version, code, sig)
                    except ControlError as exc:
                        if exc.code != "conflict":  # this version is already there
                            raise
                    c.activate_service(service, version)
                else:
                    c.upload_service(service, code, sig)
            except ControlError as exc:
                if exc.code == "not_configured" and source == SRCROUTE:
                    # the daemon's circuit fast path follows the installed out hop: what the
                    # pass-through srcroute service does
                    continue
                raise Missing(
                    f"running the {service!r} service on site daemon {site} (upload answered "
                    f"{exc.code}: {exc.message})"
                ) from exc

    def circuit(self, src: str, dst: str, service: str, sites: list[str]) -> Circuit:
        lookup = self._lookup(src)
        c = self.tb.node(src).call(
            lambda: lookup.create(
                destination=self.hosts[dst], service=service, source=self.hosts[src],
                sites=sites,
            )
        )  # fmt: skip
        self._circuits[c.label] = src
        return c

    def teardown(self, circuit: Circuit) -> None:
        src = self._circuits.pop(circuit.label)
        lookup = self._lookup(src)
        self.tb.node(src).call(lambda: lookup.teardown(circuit))

    def register_service_id(self, site: str, service_id: int, service: str) -> None:
        self._control(site).register_service_id(service, service_id)

    def signup(self, prefix: str, service: str, sites: list[str], *, forged: bool = False) -> None:
        from pcsite_lite.control.client import ControlError

        if self.dns is None:
            raise Missing("a DNS node for the ownership proof")
        now = time.time()
        claim = ownership.OwnershipClaim(prefix, PSP, service, now - 60, now + 86400)
        self._publish_owner_zone(prefix, [claim])
        dns_ip = self.dns.address
        owner = self._prefix_host(prefix)  # the prefix's owner fetches its proof
        proof = (
            self.tb.node(owner)
            .call(lambda: ownership.fetch_proof(prefix, server=dns_ip, anchor_zone="in-addr.arpa."))
            .text
        )
        if forged:  # stretch the validity without the zone's key: the RRSIG no longer matches
            proof = proof.replace("not-after=", "not-after=2", 1)
        for site in sites:
            try:
                self._control(site).register_destination(prefix, service, proof)
            except ControlError as exc:
                raise RuntimeError(f"{exc.code}: {exc.message}") from exc
            self.tb.divert(self.routers[site], prefix)  # the ISP configures its router

    def withdraw(self, prefix: str, sites: list[str]) -> None:
        for site in sites:
            if prefix in self.tb.diversions(self.routers[site]):
                self.tb.divert(self.routers[site], prefix, remove=True)

    def _prefix_host(self, prefix: str) -> str:
        return next(h for h in self.roles.hosts if self.roles.receiver_prefix(h) == prefix)

    def send_circuit(
        self, host: str, circuit: Circuit, payload: bytes, *, metadata: int = 0, dport: int = 0
    ) -> None:
        self.endpoints[host].send_on(circuit, payload, metadata=metadata, dport=dport)

    def send_service(
        self, host: str, dst: str, service_id: int, payload: bytes, *, metadata: int = 0,
        dport: int = 0,
    ) -> None:  # fmt: skip
        key = f"svc-{host}"
        if key not in self.endpoints:
            ip = self.hosts[host]
            # a second endpoint with the ToS flag set, on its own encapsulation source port
            self.endpoints[key] = self.tb.node(host).call(
                lambda: ServiceSocket(self.hosts[dst], service_id, ip, bind=False)
            )
        self.endpoints[key].sendto_service(
            payload, self.hosts[dst], service_id, metadata=metadata, dport=dport
        )

    def send_plain(self, host: str, dst: str, dport: int, payload: bytes) -> None:
        key = f"plain-{host}"
        if key not in self.sockets:
            self.sockets[key] = [
                self.tb.node(host).call(lambda: socket.socket(socket.AF_INET, socket.SOCK_DGRAM))
            ]
        s = self.sockets[key][0]
        assert isinstance(s, socket.socket)
        s.sendto(payload, (self.hosts[dst], dport))

    def reply(self, host: str, to: Datagram, payload: bytes) -> None:
        self.endpoints[host].reply(to, payload)

    def collect(self, host: str, want: int, timeout: float = 1.0) -> list[tuple[Datagram, float]]:
        socks = self.sockets[host]
        fds = {s.fileno(): s for s in socks}
        out: list[tuple[Datagram, float]] = []
        deadline = time.monotonic() + timeout
        while not want or len(out) < want:
            left = deadline - time.monotonic()
            if left <= 0:
                break
            ready, _, _ = select.select(list(fds), [], [], left)
            for fd in ready:
                s = fds[fd]
                if isinstance(s, PacketCloudSocket):
                    try:
                        d = s.recv(timeout=0)
                    except TimeoutError:
                        continue
                    out.append((d, time.monotonic()))
                else:
                    data, (src, sport) = s.recvfrom(65535)
                    t = time.monotonic()
                    out.append(
                        (
                            Datagram(payload=data, source=src, destination=self.hosts[host],
                                     form=wire.FORM_NONE, via=src, sport=sport,
                                     dport=s.getsockname()[1]),
                            t,
                        )
                    )  # fmt: skip
        return out

    def service_packets(self, site: str, service: str, at_least: int = 0) -> int:
        from pcdemo.rig import wait_until

        c = self._control(site)
        last: list[float] = []  # [count, when it was read]

        def count() -> int:
            n = int(c.usage().get("services", {}).get(service, {}).get("packets", 0))
            last[:] = [n, time.monotonic()]
            return n

        def settled() -> bool:  # unchanged over a report interval (and more)
            prev, when = last
            return time.monotonic() - when >= 0.3 and count() == prev

        # workers (and a multi-machine site's nodes) report usage every 0.25 s: wait until the
        # count covers what the caller sent, then until it holds across a report
        wait_until(lambda: count() >= at_least, timeout=15, interval=0.1)
        wait_until(settled, timeout=5, interval=0.1)
        return int(last[0])

    def site_drops(self, site: str) -> dict[str, int]:
        return {}

    def close(self) -> None:
        for socks in self.sockets.values():
            for s in socks:
                try:
                    s.close()
                except OSError:
                    pass
        for ep in self.endpoints.values():
            ep.close()
        for lookup in self._lookups.values():
            try:
                lookup.close()
            except (AttributeError, OSError):
                pass
        for p in reversed(self.procs):
            try:
                p.stop()
            except Exception:
                pass
        if self._built:
            self.tb.down()
        shutil.rmtree(self.tmp, ignore_errors=True)

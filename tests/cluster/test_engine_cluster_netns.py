"""A site spanning namespaces whose roles meet on the FIS engine (a real redis-server), root.

Each role connects as its own Redis user (``acl_file``: the default user is off).

The LB (``--role lb``), the controller (``--role controller``) and two compute nodes
(``--role node``) share ``site.fis = "unix://.../redis.sock"``: circuits and deployments reach
the nodes through the engine's state stream, a node restarted while the controller is down
converges from the engine alone, nodes keep forwarding while the engine is away, and every
node's usage reaches the controller's ledger exactly once, across a node SIGKILL.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import signal
import time
from collections import Counter
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
import redis

from benchmarks import _cluster_rig as rig
from benchmarks._cluster_rig import ClusterSite, Load
from pcsite_lite.billing.cluster import UsageBatch
from pcsite_lite.billing.invoice import PriceSheet, build_invoice
from pcsite_lite.billing.ledger import Ledger
from pcsite_lite.cluster.engine import acl_file
from pcsite_lite.metering import Counters
from pcsite_lite.repository import Repository, sign_service
from pcsock.control import ControlClient
from testbed.netns import call_in
from tests.fis.conftest import redis_server
from tests.support import wait_until
from tests.support.sites import ACME_KEY, acme_public_hex

pytestmark = [pytest.mark.netns, pytest.mark.timeout(300)]

K = 12  #: circuits (with two nodes, each gets some: all on one has odds 2 ** -11)
BLOCKER = b'def process(pkt):\n    return pkt.drop("blocked by the deployed code")\n'


class EngineSite(ClusterSite):
    """The rig's site with ``site.fis`` on a redis-server and a repository per machine."""

    def __init__(self, tmp: Path, url: str, **kw: Any) -> None:
        self.url = url
        super().__init__(tmp, **kw)

    def restart_controller(self) -> None:
        cp = self.tb.cluster("s1")
        cfg = rig._config(self.tmp, self.public_ip, cp.lb_address, cp.lb_address, "ctl", 1,
                          self.fis)  # fmt: skip
        self.procs["ctl"] = self.tb.node("s1").start(
            self._cmd(cfg, "controller"), name="pcsite-ctl",
            ready=lambda: self.tb.node("s1").tcp_open(cp.lb_address, 8080), timeout=20,
        )  # fmt: skip


@pytest.fixture(scope="module")
def es(tmp_path_factory: pytest.TempPathFactory):
    tmp = tmp_path_factory.mktemp("pcl15f")
    (tmp / "redis").mkdir()
    orig = rig._config

    nodes = [f"s1_n{i}" for i in (1, 2)]
    users = {"ctl": "controller", "lb": "lb", **{n: f"node-{n}" for n in nodes}}
    pw = {user: secrets.token_hex(16) for user in users.values()}

    def config(
        tmp: Path, public_ip: str, lb: str, me: str, node: str, workers: int, fis: str
    ) -> Path:
        """The rig's configuration on the engine (each role as its own Redis user), with a
        repository per machine (``fis``, the rig's own, is replaced by the role's URL)."""
        path = orig(tmp, public_ip, lb, me, node, workers, fis)
        user = users[node]
        fis = url.replace("unix://", f"unix://{user}:{pw[user]}@")
        text = re.sub(r"(?m)^fis = .*$",
                      f'fis = "{fis}"\nrepository = "{tmp / node / "repo"}"',
                      path.read_text())  # fmt: skip
        text = text.replace(
            f'token = "{rig.PSP}"', f'token = "{rig.PSP}"\nsigning_key = "{acme_public_hex()}"'
        )
        path.write_text(text)
        return path

    with redis_server(tmp / "redis", acl_text=acl_file("pcfis", pw, nodes)) as url:
        rig._config = config  # type: ignore[assignment]
        try:
            with EngineSite(tmp, url, nodes=2, split=True, prefix="pcl15f") as site:
                # the test reads as the controller (it may read every key)
                sock = url.removeprefix("unix://")
                site.redis = redis.Redis(
                    unix_socket_path=sock, username="controller", password=pw["controller"]
                )
                site.redis_pid = int((tmp / "redis" / "redis.log").read_text().split(":", 1)[0])
                site.labels = site.circuits(K)
                yield site
        finally:
            rig._config = orig  # type: ignore[assignment]


def _kill(es: EngineSite, name: str) -> None:
    p = es.procs[name]
    p.popen.send_signal(signal.SIGKILL)
    p.popen.wait(10)


def _delivers(es: EngineSite, labels: list[int], timeout: float = 10.0) -> bool:
    """Every circuit in ``labels`` delivers a packet sent from now on."""
    load = Load(es, labels, rate=50)
    with load:
        return wait_until(lambda: {i for i, _ in load.got} == set(range(len(labels))), timeout)


def test_state_and_deployments_reach_the_nodes_through_the_engine(es: EngineSite) -> None:
    assert _delivers(es, es.labels)

    # the controller saw every node acknowledge the stream (no TCP feed: none listens)
    def acked() -> set[str]:
        keys = es.redis.scan_iter("pcfis:state:node:*")
        return {k.decode().rpartition(":")[2] for k in keys}

    assert wait_until(lambda: acked() == set(es.node_names()), 5), acked()
    # a service deployed at the controller runs on the nodes: its circuit's packets are dropped
    c = es.client()
    c.upload_service("blocker", "1", BLOCKER, sign_service(ACME_KEY, "acme", "blocker", "1",
                                                           BLOCKER))  # fmt: skip
    c.activate_service("blocker", "1")
    for n in es.node_names():
        repo = Repository(es.tmp / n / "repo")
        assert wait_until(lambda r=repo: r.active("acme", "blocker") == "1", 10), n
        assert repo.get("acme", "blocker").code == BLOCKER  # verified against acme's key
    label = c.allocate_circuit("blocker", lifetime=600)["label"]
    c.install_hop(label, in_key=rig.KEY, deliver=es.tb.node("h2").address, strip=True)
    load = Load(es, [es.labels[0], label], rate=50)
    with load:
        assert wait_until(lambda: len([k for k in load.got if k[0] == 0]) >= 20, 10)
    assert not [k for k in load.got if k[0] == 1], "the deployed code did not run"


def test_a_node_restarted_while_the_controller_is_down_converges_from_the_engine(
    es: EngineSite,
) -> None:
    _kill(es, "ctl")
    victim = es.node_names()[0]
    (es.tmp / victim / "cluster-state.json").unlink()  # nothing saved: only the engine
    _kill(es, victim)
    es.wait_table(set(es.node_names()) - {victim}, timeout=10)
    es.start_node(victim)
    es.wait_table(set(es.node_names()), timeout=20)
    assert _delivers(es, es.labels)
    saved = json.loads((es.tmp / victim / "cluster-state.json").read_text())
    assert {f"circuit:{label}" for label in es.labels} <= set(saved["state"])


def test_nodes_forward_from_their_copy_while_the_engine_is_away(es: EngineSite) -> None:
    pid = es.redis_pid  # from our server's own log: check it is that server
    assert str(es.tmp) in Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
    nodes = es.node_names()
    away = "state feed: engine away"
    noticed = {n: es.procs[n].log_text().count(away) for n in nodes}
    os.kill(pid, signal.SIGSTOP)  # the engine stops answering (a partition, a hung server)
    try:
        # every node noticed (its feed timed out) and forwards from its copy
        assert wait_until(
            lambda: all(es.procs[n].log_text().count(away) > noticed[n] for n in nodes), 15
        ), {n: es.procs[n].log_text()[-500:] for n in nodes}
        assert _delivers(es, es.labels)
        # a node restarted meanwhile starts from its saved copy and forwards again
        victim = es.node_names()[1]
        _kill(es, victim)
        es.wait_table(set(es.node_names()) - {victim}, timeout=10)
        es.start_node(victim)
        es.wait_table(set(es.node_names()), timeout=30)
        before = es.tun_rx(victim)
        assert _delivers(es, es.labels)
        assert es.tun_rx(victim) > before  # its share of the circuits went through it
        assert "starting from the saved copy" in es.procs[victim].log_text()
    finally:
        os.kill(pid, signal.SIGCONT)


def test_usage_of_every_node_reaches_the_ledger_exactly_once_across_a_sigkill(
    es: EngineSite,
) -> None:
    """Each node journals its metered usage as numbered batches and ships them to the engine;
    the controller bills each (node, seq) once. After a node's SIGKILL and restart, what the
    ledger holds is exactly the sum of every batch the nodes journaled (none lost, none
    twice), and an invoice conserves those bytes."""
    if not es.procs["ctl"].alive:  # the previous test stopped it
        es.restart_controller()
    victim = es.node_names()[1]
    with Load(es, es.labels, rate=100):
        # the victim dies with usage journaled (and maybe some not yet)
        first = es.journaled(victim)
        assert wait_until(lambda: es.journaled(victim) > first, 10), "no batch journaled"
        _kill(es, victim)
        killed_at = es.journaled(victim)
        es.start_node(victim)
        es.wait_table(set(es.node_names()), timeout=20)
        # its next incarnation meters its circuits' traffic too
        assert wait_until(lambda: es.journaled(victim) > killed_at, 10), "no batch after"
    for n in es.node_names():  # a clean stop journals and ships the last interval
        es.procs[n].stop(grace=15)

    def shipped() -> dict[str, list[UsageBatch]]:
        out = {}
        for n in es.node_names():
            raw = es.redis.xrange(f"pcfis:usage:{n}")
            out[n] = [UsageBatch.from_json(f[b"b"]) for _, f in raw]
        return out

    def billed() -> dict[str, int]:
        return {k.decode(): int(v) for k, v in es.redis.hgetall("pcfis:usage-billed").items()}

    batches = shipped()
    assert wait_until(lambda: billed() == {n: b[-1].seq for n, b in batches.items() if b}, 10)
    for n, bs in batches.items():  # every batch a node journaled reached the engine, in order
        assert [b.seq for b in bs] == list(range(1, len(bs) + 1)), n
        assert bs, f"node {n} journaled no usage"

    def total(records: list[Any]) -> Counters:
        c = Counters()
        for r in records:
            c.add(r.counters)
        return c

    journaled = total([r for bs in batches.values() for b in bs for r in b.records])
    assert journaled.packets > 0 and journaled.bytes_in > 0
    with Ledger(es.tmp / "ctl" / "usage.ledger", create=False) as led:
        records = led.records(psp="acme")
    assert total(records) == journaled  # every counter: nothing lost, nothing twice
    admin = ControlClient(f"http://{es.tb.cluster('s1').lb_address}:8080", token=rig.ADMIN,
                          psp=None)  # fmt: skip
    st = call_in(es.tb.node("s1").ns, admin.status, timeout=None)["usage_collection"]
    assert st["last_seq"] == {n: b[-1].seq for n, b in batches.items()}
    assert st["refused"] == {} and st["skipped"] == {}
    prices = PriceSheet(ingress_per_gb=Decimal(1), packets_per_million=Decimal(1))
    inv = build_invoice(records, "acme", 0, time.time() + 1, prices)
    billed_as = Counter[str]()
    for li in inv.lines:  # one line per (service, resource)
        billed_as[li.resource] += li.usage
    assert billed_as["bandwidth_ingress"] == journaled.bytes_in
    assert billed_as["packets"] == journaled.packets

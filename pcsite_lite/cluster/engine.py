"""A multi-machine site's roles meeting on the FIS engine (Redis): state, deployments, usage.

When ``site.fis`` names a Redis engine (``redis://``, ``rediss://``, ``unix://``,
``redis+sentinel://``), the controller and its compute nodes exchange everything through it,
so a node that joins or restarts converges without the controller:

* **state** (circuits, service IDs, destinations): the controller's accepted changes go to the
  state stream (:mod:`pcsite_lite.statestream`), signed with ``cluster.secret``; each node
  follows it into its replica and its workers, and keeps a copy in
  ``<state_dir>/cluster-state.json`` so it forwards from it while the engine is away, even
  after a restart;
* **deployments**: the controller publishes each active service version (code, the PSP's
  signature and key: :func:`deploy_ops`) as a ``deploy`` op of the same stream; a node stores
  it in its own repository (:func:`apply_deploy`, which verifies the PSP's signature again) and
  its workers run it confined as on a one-machine site;
* **acknowledgements**: after its workers applied the stream up to version V a node writes
  :func:`ack` (``{state}:node:<name>`` = V, expiring); the controller's API call waits for them
  (bounded) as it waits for its own workers;
* **usage**: each node journals what its workers metered, one numbered batch per metering
  interval (:class:`~pcsite_lite.billing.cluster.NodeUsageLog`, durable before it counts as
  taken), copies the journal to its stream on the engine, and the controller bills every
  node's batches exactly once (:class:`~pcsite_lite.billing.cluster.ClusterCollector`); it
  writes back how far it billed, and the node prunes its journal up to there.

Without a Redis engine (the testbed's shared SQLite file) the controller's TCP feed
(:mod:`pcsite_lite.cluster.feed`) carries state and usage instead.
"""

from __future__ import annotations

import base64
import json
import os
import re
import time
from collections.abc import Callable, Iterable
from typing import Any, Final

import redis
import trio
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from pcsite_lite.billing.cluster import fetch_batches, push_batches
from pcsite_lite.billing.ledger import LedgerError
from pcsite_lite.fis import FISUnavailableError
from pcsite_lite.repository import RepositoryError
from pcsite_lite.statestream import (
    SAVED_STATE,
    EngineFeedClient,
    EngineFeedServer,
    StatePublisher,
)

from .usage import Collector, NodeJournal

__all__ = [
    "REDIS_SCHEMES",
    "ack",
    "acl_file",
    "apply_deploy",
    "billed",
    "deploy_ops",
    "known_nodes",
    "live_acks",
    "set_billed",
    "uses_engine",
]

Op = dict[str, Any]
REDIS_SCHEMES: Final = ("redis:", "rediss:", "unix:", "redis+sentinel:")
REPORT_INTERVAL: Final = 0.25  #: s between a node's live usage reports
ACK_TTL_MS: Final = 2000  #: a node's acknowledgement expires (it counts as gone) after this
MAX_NODES: Final = 256  #: nodes read from the engine at most


def uses_engine(fis_url: str) -> bool:
    """Whether the site's FIS is a network engine the roles can meet on."""
    return fis_url.startswith(REDIS_SCHEMES)


# --- who may write what on the engine ---------------------------------------------------------
_NAME = re.compile(r"^[A-Za-z0-9_.-]{1,32}$")


def acl_file(prefix: str, passwords: dict[str, str], nodes: Iterable[str]) -> str:
    """A Redis ACL file for a site whose roles meet on the engine under ``prefix``: one user
    per role, so a machine holds only its own role's password and can do only its role's
    writes. ``passwords``: ``controller``, ``lb`` and ``node-<name>`` for each node.

    * ``controller``: everything under the prefix (FIS, state stream, usage);
    * ``node-<name>``: reads everything under the prefix; writes the FIS (its services may),
      and of the cluster's keys only its own acknowledgement, live report and usage stream:
      not the state stream (it cannot publish circuits) nor another node's usage;
    * ``lb``: reads the state stream (its divert set), writes nothing;
    * ``default``: off.
    """
    if not re.fullmatch(r"[A-Za-z0-9_.:-]{1,64}", prefix):
        raise ValueError(f"prefix {prefix!r}: letters, digits and _.:- only")
    for user, pw in passwords.items():
        if not isinstance(pw, str) or len(pw) < 16 or not re.fullmatch(r"[!-~]+", pw):
            raise ValueError(f"password of {user}: at least 16 printable characters, no spaces")
    p = prefix
    base = "+@connection +ping -@dangerous"
    common = f"resetchannels &{p}:changes -@all +@read +@pubsub {base}"
    lines = [f"user default off resetkeys ~{p}:* {common} +@write +@scripting"]
    lines.append(
        f"user controller on >{passwords['controller']} resetkeys ~{p}:* {common} "
        "+@write +@scripting"
    )
    lines.append(f"user lb on >{passwords['lb']} resetkeys %R~{p}:state:* {common}")
    fis = f"~{p}:kv:* ~{p}:lpm:* ~{p}:version ~{p}:log ~{p}:epoch"
    for node in nodes:
        if not _NAME.match(node):
            raise ValueError(f"node name {node!r} cannot be a Redis user name")
        own = f"~{p}:usage:{node} ~{p}:state:node:{node} ~{p}:state:live:{node} ~{p}:state:nodes"
        lines.append(
            f"user node-{node} on >{passwords[f'node-{node}']} resetkeys %R~{p}:* {fis} {own} "
            f"{common} +@write +@scripting"
        )
    return "\n".join(lines) + "\n"


# --- acknowledgements -------------------------------------------------------------------------
def ack(client: Any, state_prefix: str, node: str, version: int) -> None:
    """Node ``node`` applied the state stream up to ``version`` (expires after ACK_TTL_MS)."""
    pipe = client.pipeline(transaction=False)
    pipe.sadd(f"{state_prefix}:nodes", node)
    pipe.set(f"{state_prefix}:node:{node}", int(version), px=ACK_TTL_MS)
    pipe.execute()


def live_acks(client: Any, state_prefix: str) -> dict[str, int]:
    """Per node whose acknowledgement has not expired: the version it applied."""
    names = sorted(n.decode() for n in client.smembers(f"{state_prefix}:nodes"))[:MAX_NODES]
    if not names:
        return {}
    raw = client.mget([f"{state_prefix}:node:{n}" for n in names])
    out = {}
    for name, v in zip(names, raw, strict=True):
        if v is not None:
            try:
                out[name] = int(v)
            except ValueError:
                continue
    return out


def known_nodes(client: Any, state_prefix: str) -> list[str]:
    """Every node that ever acknowledged (its usage is collected even while it is away)."""
    return sorted(n.decode() for n in client.smembers(f"{state_prefix}:nodes"))[:MAX_NODES]


def set_billed(client: Any, prefix: str, last_seq: dict[str, int]) -> None:
    """The controller billed each node's batches up to ``last_seq[node]``."""
    if last_seq:
        client.hset(f"{prefix}:usage-billed", mapping={k: int(v) for k, v in last_seq.items()})


def billed(client: Any, prefix: str, node: str) -> int:
    """How far the controller billed ``node``'s batches (the node prunes its journal to it)."""
    v = client.hget(f"{prefix}:usage-billed", node)
    return int(v) if v is not None else 0


# --- deployments ------------------------------------------------------------------------------
def deploy_ops(repo: Any) -> dict[str, Op]:
    """The ``deploy`` op of every active service version in ``repo`` (entity -> op); a
    version that no longer verifies is left out (nodes would refuse it)."""

    out: dict[str, Op] = {}
    for psp in repo.psps():
        try:
            key = repo.public_key(psp).public_bytes(Encoding.Raw, PublicFormat.Raw)
            services = repo.services(psp)
        except RepositoryError:
            continue
        for service in services:
            version = repo.active(psp, service)
            if version is None:
                continue
            try:
                code = repo.get(psp, service, version)
                sv = repo.version(psp, service, version)
            except RepositoryError:
                continue
            out[f"deploy:{psp}/{service}"] = {
                "op": "deploy", "psp": psp, "service": service, "version": version,
                "digest": sv.digest, "signature": sv.signature.hex(), "key": key.hex(),
                "code": base64.b64encode(code.code).decode(),
            }  # fmt: skip
    return out


def apply_deploy(repo: Any, op: Op) -> str:
    """Make a node's repository run what a ``deploy`` op carries (the PSP's key, then the
    version, whose signature the repository verifies, then activation), or stop running the
    service of an ``undeploy`` op. Returns what was done; raises
    :class:`~pcsite_lite.repository.RepositoryError` or ``ValueError`` for a bad op."""
    psp, service = str(op["psp"]), str(op["service"])
    if op["op"] == "undeploy":
        repo.deactivate(psp, service)
        return f"{psp}/{service} undeployed"
    version = str(op["version"])
    key = bytes.fromhex(str(op["key"]))
    code = base64.b64decode(str(op["code"]), validate=True)
    repo.register_psp(psp, key, replace=True)
    repo.upload(psp, service, version, code, bytes.fromhex(str(op["signature"])))
    if repo.active(psp, service) != version:
        repo.activate(psp, service, version)
    return f"{psp}/{service} version {version} active"


# --- the roles, for a supervisor --------------------------------------------------------------
def _strip(op: Op) -> Op:
    return {k: v for k, v in op.items() if k != "seq"}


class ControllerSide:
    """The controller's part: publishes the master state and the deployments, waits for the
    nodes' acknowledgements, bills the nodes' usage. ``sup`` is the supervisor."""

    def __init__(self, sup: Any, engine: Any, secret: bytes, interval: float) -> None:

        self.sup = sup
        self.engine = engine
        self.interval = interval
        self.secret = secret
        self.publisher = StatePublisher(engine, key=secret)
        self.state_prefix = self.publisher.keys.version.rpartition(":")[0]
        self.deploys: dict[str, Op] = {}  #: what nodes were told to run (entity -> op)
        self.feed = EngineFeedServer(self.publisher, self._snapshot, sup.log)
        self.acks: dict[str, int] = {}  #: node -> version it applied (live ones)
        self.acks_at = 0.0
        self._settled_seq = 0
        self.collector: Any = None  #: cluster.usage.Collector, while running
        self.collect_skipped: dict[str, str] = {}  #: node -> why its batches were not read

    def publish(self, op: Op) -> None:
        self.feed.publish(_strip(op))

    def _snapshot(self) -> list[Op]:
        for _ in range(5):  # a change may land while the feed thread reads the master copy
            try:
                ops = [_strip(op) for op in self.sup.backend.iter_snapshot_ops()]
                return ops + list(self.deploys.values())
            except RuntimeError:
                continue
        raise RuntimeError("the master state kept changing while it was read")

    async def run(self) -> None:

        self.deploys = await trio.to_thread.run_sync(self._read_deploys)
        self.feed.start()
        try:
            async with trio.open_nursery() as n:
                n.start_soon(self._deployments)
                n.start_soon(self._collect)
                n.start_soon(self._live)
        finally:
            self.feed.close(timeout=2.0)

    def _read_deploys(self) -> dict[str, Op]:
        repo = self.sup.backend.repo
        return {} if repo is None else deploy_ops(repo)

    async def _deployments(self) -> None:
        """Publish what changed whenever the repository's active versions change."""

        repo = self.sup.backend.repo
        if repo is None:
            return
        gen = repo.generation()
        while True:
            await trio.sleep(0.2)
            now = repo.generation()
            if now == gen:
                continue
            gen = now
            try:
                ops = await trio.to_thread.run_sync(deploy_ops, repo)
            except Exception as exc:  # a broken repository must not stop the controller
                self.sup.log(f"deployments: {type(exc).__name__}: {exc}")
                continue
            for entity in sorted(set(self.deploys) - set(ops)):
                psp, _, service = entity.partition(":")[2].partition("/")
                self.feed.publish({"op": "undeploy", "psp": psp, "service": service})
            for entity, op in sorted(ops.items()):
                if self.deploys.get(entity) != op:
                    self.feed.publish(op)
                    self.sup.log(f"deploying {op['psp']}/{op['service']} version "
                                 f"{op['version']} to the nodes")  # fmt: skip
            self.deploys = ops

    async def _live(self) -> None:
        """Fold the nodes' live usage reports into the supervisor's view, as the TCP feed's
        reports are (``Supervisor._node_report``)."""

        def read() -> list[Any]:
            def mget(r: Any) -> list[Any]:
                names = known_nodes(r, self.state_prefix)
                if not names:
                    return []
                return list(r.mget([f"{self.state_prefix}:live:{n}" for n in names]))

            return self.engine.call(mget)

        while True:
            try:
                raw = await trio.to_thread.run_sync(read)
            except FISUnavailableError:
                raw = []
            for doc in raw:
                if doc is None:
                    continue
                try:
                    self.sup._node_report(json.loads(doc))
                except ValueError:
                    self.sup.log("usage: malformed live report dropped")
            await trio.sleep(REPORT_INTERVAL)

    def _gather(self, last_seq: dict[str, int]) -> list[Any]:
        """The nodes' batches past what was billed, from their streams on the engine (a node
        that cannot be read now is read next round); also refreshes :attr:`acks`."""

        try:
            self.acks = self.engine.call(lambda r: live_acks(r, self.state_prefix))
            nodes = self.engine.call(lambda r: known_nodes(r, self.state_prefix))
        except FISUnavailableError:
            return []
        self.acks_at = time.monotonic()
        out: list[Any] = []
        for node in nodes:
            try:
                got = self.engine.call(
                    lambda r, n=node: fetch_batches(
                        r, self.engine.prefix, n, last_seq.get(n, 0), key=self.secret
                    )
                )
            except (FISUnavailableError, LedgerError) as exc:
                self.collect_skipped[node] = f"{type(exc).__name__}: {exc}"[:300]
                continue
            self.collect_skipped.pop(node, None)
            out += [b for b in got if b.node == node]
        return out

    def _billed(self, last_seq: dict[str, int]) -> None:

        try:
            self.engine.call(lambda r: set_billed(r, self.engine.prefix, last_seq))
        except FISUnavailableError:
            pass  # nodes prune later

    async def _collect(self) -> None:

        self.collector = Collector(self.sup.cfg.metering.ledger, self.sup.cfg.name)
        await self.collector.run(self.interval, self.sup.log, self._gather, self._billed)

    async def settle(self, seq: int, timeout: float) -> None:
        """Wait (bounded) until every live node applied the state published up to ``seq``."""

        if seq <= self._settled_seq:
            return
        with trio.move_on_after(timeout):
            while not self.feed.idle():
                await trio.sleep(0.005)
            want = self.feed.version
            while True:
                acks = await trio.to_thread.run_sync(self._read_acks)
                if all(v >= want for v in acks.values()):
                    break
                await trio.sleep(0.02)
        self._settled_seq = seq

    def _read_acks(self) -> dict[str, int]:

        try:
            return self.engine.call(lambda r: live_acks(r, self.state_prefix))
        except FISUnavailableError:
            return {}

    def status(self) -> dict[str, Any]:
        """Per live node: the state version it applied (as of the last collection round)."""
        return {name: {"acked_version": v} for name, v in sorted(self.acks.items())}


class NodeSide:
    """A compute node's part: follows the state stream (``client``), acknowledges, journals
    its usage and ships it to the engine."""

    def __init__(
        self, sup: Any, engine: Any, cl: Any, interval: float, report: Callable[[], Op]
    ) -> None:

        self.sup = sup
        self.engine = engine
        self.node = cl.node
        self.secret = cl.secret
        self.interval = interval
        state_dir = sup.cfg.state_dir
        self.client = EngineFeedClient(
            engine, on_op=sup._remote_op, on_synced=lambda: None, log=sup.log,
            state_file=os.path.join(state_dir, SAVED_STATE), key=cl.secret,
            applied=self._applied,
        )  # fmt: skip
        self.state_prefix = self.client.replica.keys.version.rpartition(":")[0]
        self.journal = NodeJournal(os.path.join(state_dir, "usage-journal.db"), cl.node)
        self.sink = self.journal.sink
        self.report = report  #: this node's cumulative usage report (the live view)
        self.shipped = 0  #: batches copied to the engine by this process

    @property
    def synced(self) -> bool:
        return self.client.synced

    @property
    def replica(self) -> Any:
        return self.client.replica

    def worker_snapshot(self) -> Any:
        return (op for op in self.client.replica.iter_snapshot_ops() if op["op"] != "deploy")

    async def _applied(self, version: int) -> None:

        await self.sup.settle()  # this node's workers hold what was handed over
        try:
            await trio.to_thread.run_sync(
                lambda: self.engine.call(lambda r: ack(r, self.state_prefix, self.node, version))
            )
        except FISUnavailableError:
            pass

    def ship(self) -> int:
        """Copy the journal's new batches to the engine, forget what was billed."""

        n: int = self.engine.call(
            lambda r: push_batches(r, self.engine.prefix, self.journal.log, key=self.secret)
        )
        self.shipped += n
        self.journal.mark_billed(
            self.engine.call(lambda r: billed(r, self.engine.prefix, self.node))
        )
        return n

    async def run(self) -> None:

        async with trio.open_nursery() as n:
            n.start_soon(self.client.run)
            n.start_soon(self._live)
            failing = ""
            while True:
                try:
                    await trio.to_thread.run_sync(self.ship)
                    failing = ""
                except FISUnavailableError:
                    pass  # the journal keeps the batches
                except redis.RedisError as exc:  # e.g. a journal numbered below its stream
                    if str(exc) != failing:
                        self.sup.log(f"usage journal: cannot ship: {exc}")
                    failing = str(exc)
                await trio.sleep(self.interval)

    async def _live(self) -> None:
        """The node's cumulative usage, for the controller's live view (``usage``, metrics)
        every ``REPORT_INTERVAL`` s; billing does not use it (the journal is billed)."""

        key = f"{self.state_prefix}:live:{self.node}"
        while True:
            doc = json.dumps(self.report(), separators=(",", ":"))

            def put(r: Any, d: str = doc) -> None:
                r.set(key, d, px=ACK_TTL_MS)

            try:
                await trio.to_thread.run_sync(self.engine.call, put)
            except FISUnavailableError:
                pass
            await trio.sleep(REPORT_INTERVAL)

    def close(self) -> None:
        """At a clean stop, after the final usage was journaled: ship it and close."""

        try:
            self.ship()
        except (FISUnavailableError, redis.RedisError) as exc:
            self.sup.log(f"usage journal: final batches stay in the journal ({exc})")
        finally:
            self.journal.close()

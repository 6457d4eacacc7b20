"""Site state reaches compute nodes through the FIS engine (a real redis-server), not pipes:
nodes converge from the log or the versioned snapshot, keep forwarding while the engine is
away, and a restarted node catches up without the controller."""

from __future__ import annotations

import contextlib
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from pcsite_lite.daemon.config import SiteConfig, parse
from pcsite_lite.daemon.state import WorkerSite
from pcsite_lite.fis import FISUnavailableError, FISValueError, RedisFIS, open_engine
from pcsite_lite.statestream import MAX_BLOCK_S, MAX_OP_BYTES, StatePublisher, StateSubscriber
from pcsite_lite.verdicts import Forward
from pcsock import wire

SITE = "198.18.9.1"
SRC = "198.18.9.2"
NEXT = "198.18.9.3"
K_IN, K_OUT = bytes(range(16)), bytes(range(3, 19))
StartRedis = Callable[..., contextlib.AbstractContextManager[str]]


def _cfg(tmp: Path) -> SiteConfig:
    tmp.mkdir(parents=True, exist_ok=True)
    return parse({"site": {"name": "st-t", "public_ip": SITE,
                           "fis": f"sqlite://{tmp / 'fis.db'}", "state_dir": str(tmp)},
                  "control": {"admin_token": "st-admin-token-0123456789abcdef"}})  # fmt: skip


def _circuit(label: int, psp: str = "acme", expires: float | None = None) -> dict[str, Any]:
    return {
        "op": "circuit", "label": label, "psp": psp, "service": "relay",
        "in_key": K_IN.hex(), "expires": expires or time.time() + 600, "destination": None,
        "out": [{"label": 4242, "next_hop": NEXT, "key": K_OUT.hex(), "final": False,
                 "strip": False}],
    }  # fmt: skip


def _forwards(ws: WorkerSite, label: int) -> bool:
    pkt = wire.build_circuit_packet(src=SRC, dst=SITE, label=label, key=K_IN, payload=bytes(64))
    verdicts = ws.process(bytes(pkt))
    return len(verdicts) == 1 and isinstance(verdicts[0], Forward)


def _engine(url: str, prefix: str) -> RedisFIS:
    fis = open_engine(f"{url}?prefix={prefix}")
    assert isinstance(fis, RedisFIS)
    return fis


@pytest.fixture
def prefix() -> str:
    return f"st-{uuid.uuid4().hex[:10]}"


Rig = tuple[StatePublisher, WorkerSite, StateSubscriber]


@pytest.fixture
def rig(redis_url: str, prefix: str, tmp_path: Path) -> Rig:
    """A controller's publisher and one node (a real WorkerSite) following it."""
    node = WorkerSite(_cfg(tmp_path))
    return (
        StatePublisher(_engine(redis_url, prefix)),
        node,
        StateSubscriber(_engine(redis_url, prefix), node.apply),
    )


def test_nodes_converge_from_the_log_and_a_late_node_from_the_snapshot(
    redis_url: str, prefix: str, tmp_path: Path
) -> None:
    pub = StatePublisher(_engine(redis_url, prefix))
    node1 = WorkerSite(_cfg(tmp_path / "n1"))
    sub1 = StateSubscriber(_engine(redis_url, prefix), node1.apply)
    assert sub1.poll() == 0 and sub1.available  # nothing published yet
    pub.publish({"op": "service_id", "id": 5000, "psp": "acme", "service": "relay"})
    assert sub1.poll() == 1 and sub1.snapshots == 1  # a node's first contact: the snapshot
    pub.publish_many([_circuit(11), _circuit(12)])
    pub.publish({"op": "destination", "prefix": "198.18.7.0/24", "psp": "acme",
                 "service": "relay", "redirect_prefixes": []})  # fmt: skip
    later = time.time() + 3600
    version = pub.publish_many([{"op": "renew", "label": 11, "expires": later},
                                {"op": "teardown", "label": 12}])  # fmt: skip
    assert version == 6
    assert sub1.poll() == 5 and sub1.version == 6 and sub1.snapshots == 1  # from the log
    c11 = node1.site.circuits.get(11)
    assert c11 is not None and c11.expires == later
    assert node1.site.circuits.get(12) is None and _forwards(node1, 11)
    assert 5000 in node1.site.service_ids and "198.18.7.0/24" in node1.site.destinations
    # a node that joins now has no log to read from the start: the snapshot rebuilds it
    node2 = WorkerSite(_cfg(tmp_path / "n2"))
    sub2 = StateSubscriber(_engine(redis_url, prefix), node2.apply)
    assert sub2.poll() == 3 and sub2.version == 6 and sub2.snapshots == 1
    assert sub2.state == sub1.state
    c11b = node2.site.circuits.get(11)
    assert c11b is not None and c11b.expires == later and node2.site.circuits.get(12) is None
    assert _forwards(node2, 11) and not sub1.errors and not sub2.errors


def test_a_pruned_log_falls_back_to_the_snapshot_and_removes_what_went_away(rig: Rig) -> None:
    pub, node, sub = rig
    pub.publish_many([_circuit(21), _circuit(22)])
    assert sub.poll() == 2 and node.site.circuits.get(22) is not None
    pub.publish_many([{"op": "teardown", "label": 22}, _circuit(23)])
    pub.engine.client.delete(pub.keys.log)  # the log no longer reaches back to the node
    pub.publish(_circuit(24))
    assert sub.poll() > 0 and sub.snapshots == 2 and sub.version == pub.version() == 5
    assert node.site.circuits.get(22) is None  # removed by the snapshot difference
    assert all(node.site.circuits.get(x) is not None for x in (21, 23, 24))


def test_refused_ops_are_counted_and_bad_ops_refused_before_publishing(rig: Rig) -> None:
    pub, node, sub = rig
    pub.publish(_circuit(31))
    assert sub.poll() == 1
    pub.publish_many([_circuit(31, psp="evil"), _circuit(32)])  # the replica refuses the first
    assert sub.poll() == 2
    assert sum(sub.errors.values()) == 1 and "circuit" in sub.last_error
    c = node.site.circuits.get(31)
    assert c is not None and c.psp == "acme" and node.site.circuits.get(32) is not None
    with pytest.raises(FISValueError):
        pub.publish({**_circuit(33), "blob": "x" * MAX_OP_BYTES})
    with pytest.raises(FISValueError):
        pub.publish({"op": "teardown"})  # names no circuit
    assert pub.version() == 3


def test_a_poll_can_wait_for_the_next_op(redis_url: str, prefix: str, tmp_path: Path) -> None:
    pub = StatePublisher(_engine(redis_url, prefix))
    seen: list[dict[str, Any]] = []
    sub = StateSubscriber(_engine(redis_url, prefix), seen.append)
    pub.publish(_circuit(51))
    assert sub.poll() == 1 and sub.version == 1
    t = time.monotonic()
    assert sub.poll(block=0.3) == 0 and time.monotonic() - t >= 0.25
    enable = {"op": "enable", "psp": "acme", "service": "relay"}  # no lasting state
    timer = threading.Timer(0.1, pub.publish, args=(enable,))
    timer.start()
    t = time.monotonic()
    try:
        assert sub.poll(block=MAX_BLOCK_S) == 1 and seen[-1] == enable
    finally:
        timer.join()
    assert time.monotonic() - t < MAX_BLOCK_S  # woken by the op, not by the timeout
    assert list(sub.state) == ["circuit:51"]
    sub.close()


def test_nodes_forward_from_their_replica_while_the_engine_is_away_and_a_restart_catches_up(
    start_redis: StartRedis, prefix: str, tmp_path: Path
) -> None:
    data = tmp_path / "redis"
    data.mkdir()
    saved = tmp_path / "state.json"
    with start_redis(data, persist=True) as url:
        pub = StatePublisher(_engine(url, prefix))
        node = WorkerSite(_cfg(tmp_path / "n"))
        sub = StateSubscriber(_engine(url, prefix), node.apply)
        pub.publish_many([_circuit(41), _circuit(42)])
        assert sub.poll() == 2
        sub.save(saved)
        assert oct(saved.stat().st_mode & 0o777) == "0o600"
    # the engine is away: the controller's writes fail clearly, the node keeps forwarding
    with pytest.raises(FISUnavailableError, match="unavailable"):
        pub.publish({"op": "teardown", "label": 42})
    assert sub.poll() == 0 and not sub.available
    assert _forwards(node, 41) and _forwards(node, 42)
    # the node restarts while the engine is still away: it starts from its file
    node_b = WorkerSite(_cfg(tmp_path / "n"))
    sub_b = StateSubscriber(_engine(url, prefix), node_b.apply)
    assert sub_b.load(saved) == 2 and sub_b.poll() == 0 and not sub_b.available
    assert _forwards(node_b, 41)
    with start_redis(data, persist=True) as url2:  # the same store comes back
        assert url2 == url
        pub2 = StatePublisher(_engine(url, prefix))
        pub2.publish({"op": "teardown", "label": 42})
        assert sub_b.poll() == 1 and sub_b.available
        assert sub_b.snapshots == 0  # caught up from the log: same epoch, log reaches back
        assert node_b.site.circuits.get(42) is None and _forwards(node_b, 41)
        assert sub.poll() == 1 and node.site.circuits.get(42) is None

"""The supervisor-facing feeds over the FIS engine (a real redis-server): the controller's
``EngineFeedServer`` never blocks and holds changes while the engine is away; its first act
is to make the published state equal its master copy; a node's ``EngineFeedClient`` hands
every change to the node in order and keeps forwarding from its copy meanwhile."""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import trio

from pcsite_lite.fis import RedisFIS, open_engine
from pcsite_lite.statestream import (
    EngineFeedClient,
    EngineFeedServer,
    StatePublisher,
    StateSubscriber,
)
from tests.support import Changes, wait_until

Op = dict[str, Any]
StartRedis = Callable[..., contextlib.AbstractContextManager[str]]


def _engine(url: str, prefix: str) -> RedisFIS:
    fis = open_engine(f"{url}?prefix={prefix}")
    assert isinstance(fis, RedisFIS)
    return fis


def _circuit(label: int) -> Op:
    return {"op": "circuit", "label": label, "psp": "acme", "service": "relay", "in_key": "00",
            "expires": 1e10, "destination": None, "out": []}  # fmt: skip


class Node:
    """What a node's supervisor keeps: the ops it was handed, applied to a dict."""

    def __init__(self) -> None:
        self.ops: list[Op] = []
        self.circuits: set[int] = set()
        self.synced = 0

    def on_op(self, op: Op) -> None:
        self.ops.append(op)
        if op["op"] == "circuit":
            self.circuits.add(op["label"])
        elif op["op"] == "teardown":
            self.circuits.discard(op["label"])


def test_the_controller_publishes_its_master_copy_first_and_nodes_follow(
    redis_url: str, tmp_path: Path
) -> None:
    prefix = f"sf-{uuid.uuid4().hex[:8]}"
    # what an earlier controller left on the engine: circuits 1 and 3
    StatePublisher(_engine(redis_url, prefix)).publish_many([_circuit(1), _circuit(3)])
    master = [_circuit(1), _circuit(2)]  # the master copy now: 3 went away, 2 came
    server = EngineFeedServer(
        StatePublisher(_engine(redis_url, prefix)), lambda: list(master), print
    ).start()
    node = Node()
    changes = Changes()  # woken by every op handed to a node
    client = EngineFeedClient(
        _engine(redis_url, prefix),
        on_op=changes.wrap(node.on_op),
        on_synced=lambda: setattr(node, "synced", node.synced + 1),
        log=print,
        block=0.2,
        state_file=tmp_path / "replica.json",
        save_interval=0.0,
    )

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(client.run)
            # circuit 2 is only in the master copy: the node holds it once it was published
            await changes.until(
                lambda: node.circuits == {1, 2},
                20,
                lambda: f"the master copy at the node: {node.circuits}",
            )
            for label in (4, 5):
                server.publish(_circuit(label))  # from the supervisor: never blocks
            server.publish({"op": "teardown", "label": 1})
            await changes.until(
                lambda: node.circuits == {2, 4, 5},
                20,
                lambda: f"the changes at the node: {node.circuits}",
            )
            nursery.cancel_scope.cancel()

    trio.run(main)
    server.close()
    assert server.resyncs == 1 and server.published == 3 and server.idle()
    assert client.synced and client.connected and node.synced >= 1
    labels = [op["label"] for op in client.replica.iter_snapshot_ops()]
    assert sorted(labels) == [2, 4, 5]

    # the node restarts while the engine is unreachable: it forwards from its saved copy
    restarted = Node()
    away = EngineFeedClient(
        _engine(f"unix://{tmp_path / 'no-such.sock'}", prefix),
        on_op=changes.wrap(restarted.on_op),
        on_synced=lambda: None,
        log=print,
        block=0.05,
        state_file=tmp_path / "replica.json",
    )
    assert away.synced and restarted.circuits == set()  # handed over when it runs

    async def restart() -> None:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(away.run)
            await changes.until(
                lambda: restarted.circuits == {2, 4, 5},
                10,
                lambda: f"the saved copy at the node: {restarted.circuits}",
            )
            nursery.cancel_scope.cancel()

    trio.run(restart)
    assert not away.connected


def test_changes_wait_on_the_controller_while_the_engine_is_away(
    start_redis: StartRedis, tmp_path: Path
) -> None:
    prefix = "sf-away"
    data = tmp_path / "redis"
    data.mkdir()
    logs: list[str] = []
    with start_redis(data, persist=True) as url:
        server = EngineFeedServer(StatePublisher(_engine(url, prefix)), list, logs.append)
        server.start()
        server.publish(_circuit(7))
        assert wait_until(server.idle, 10), "the first op never reached the engine"
        node = StateSubscriber(_engine(url, prefix), lambda op: None)
        assert node.poll() == 1
    server.publish(_circuit(8))  # the engine is away: held, in order
    server.publish({"op": "teardown", "label": 7})
    assert wait_until(lambda: not server.available, 10), "the feed never noticed"
    assert not server.idle() and node.poll() == 0 and "circuit:7" in node.state
    with start_redis(data, persist=True):
        assert wait_until(server.idle, 20), "the held ops never reached the engine"
        # resync + 3
        assert wait_until(lambda: (node.poll(), node.version)[1] == 4, 10), node.version
        assert list(node.state) == ["circuit:8"] and node.snapshots == 1
    server.close()
    assert any("engine away" in line for line in logs)
    assert any("reachable" in line for line in logs)

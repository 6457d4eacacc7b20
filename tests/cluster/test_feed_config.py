"""The state feed (OpReplica, server and client over loopback), [cluster] and --role."""

from __future__ import annotations

import pytest
import trio

from pcsite_lite.cluster.config import parse_cluster, parse_roles
from pcsite_lite.cluster.feed import FeedClient, FeedServer, OpReplica
from pcsite_lite.daemon.config import ConfigError
from tests.support import Changes

SECRET = b"feed-secret-0123456789"


def circuit(label: int, expires: float = 100.0) -> dict:
    return {"op": "circuit", "label": label, "psp": "acme", "service": "relay", "in_key": "00",
            "expires": expires, "destination": None, "out": []}  # fmt: skip


async def _synced_client(
    nursery: trio.Nursery, port: int, got: list[dict], logs: list[str], changes: Changes
) -> FeedClient:
    """A node following the feed on ``port`` (loopback), once it holds the snapshot (its
    callbacks wake ``changes``)."""
    client = FeedClient("127.0.0.1", port, SECRET, on_op=changes.wrap(got.append),
                        on_synced=changes.wrap(lambda: None),
                        log=changes.wrap(logs.append))  # fmt: skip
    nursery.start_soon(client.run)
    await changes.until(lambda: client.synced, 10, "the first snapshot")
    return client


def test_replica_applies_changes_and_diffs() -> None:
    r = OpReplica()
    r.apply(circuit(1))
    r.apply(circuit(2))
    r.apply({"op": "renew", "label": 2, "expires": 500.0, "seq": 9})
    r.apply({"op": "service_id", "id": 7, "psp": "acme", "service": "relay"})
    r.apply({"op": "destination", "prefix": "198.18.9.0/24", "psp": "acme", "service": "fw",
             "redirect_prefixes": []})  # fmt: skip
    r.apply({"op": "teardown", "label": 1})
    r.apply({"op": "synced", "seq": 3})  # not state: ignored
    ops = list(r.iter_snapshot_ops())
    assert [o["op"] for o in ops] == ["circuit", "service_id", "destination"]
    assert ops[0]["expires"] == 500.0 and "seq" not in ops[0]
    assert r.divert_prefixes() == ["198.18.9.0/24"]
    newer = OpReplica()
    newer.apply(circuit(2))
    assert sorted(map(str, r.removal_ops(newer))) == sorted(map(str, [
        {"op": "release_id", "id": 7},
        {"op": "release_destination", "prefix": "198.18.9.0/24"},
    ]))  # fmt: skip


def test_feed_snapshot_then_changes_then_resync() -> None:
    state = OpReplica()
    state.apply(circuit(1))
    got: list[dict] = []
    logs: list[str] = []
    changes = Changes()

    async def main() -> None:
        server = FeedServer(state.iter_snapshot_ops, SECRET, changes.wrap(logs.append))
        async with trio.open_nursery() as n:
            port = await n.start(server.serve, "127.0.0.1", 0)
            client = await _synced_client(n, port, got, logs, changes)
            assert [o["label"] for o in got] == [1]  # the snapshot is news the first time
            for op in (circuit(2), {"op": "teardown", "label": 1}):
                state.apply(op)
                server.publish(op)
            await changes.until(
                lambda: len(client.replica) == 1 and 2 in [k[1] for k in client.replica.ops],
                10, lambda: f"the node to hold circuit 2 alone: {got}",
            )  # fmt: skip
            assert [o["op"] for o in got] == ["circuit", "circuit", "teardown"]
            # a wrong secret is refused and sees nothing
            bad: list[dict] = []
            intruder = FeedClient("127.0.0.1", port, b"wrong-secret-000000", on_op=bad.append,
                                  on_synced=lambda: None, log=logs.append)  # fmt: skip
            n.start_soon(intruder.run)
            await changes.until(lambda: any("failed authentication" in m for m in logs), 10,
                                lambda: f"the server to refuse the intruder: {logs}")  # fmt: skip
            assert not bad and not intruder.synced
            n.cancel_scope.cancel()

    trio.run(main)


def test_cluster_section_errors_name_the_key() -> None:
    good = {"internal_dev": "int0", "internal_ip": "198.19.128.2", "lb": "198.19.128.1",
            "controller": "198.19.128.1:7000", "secret": "s" * 16}  # fmt: skip
    cl = parse_cluster(good, ConfigError)
    assert cl.lb == ("198.19.128.1", 6254) and cl.controller[1] == 7000
    assert cl.node == "n-198.19.128.2" and cl.table_size == 4093
    assert parse_cluster(None, ConfigError) is None
    for change, key in [
        ({"secret": "short"}, "cluster.secret"),
        ({"lb": "nowhere:1"}, "cluster.lb"),
        ({"controller": "198.19.128.1:70000"}, "cluster.controller"),
        ({"table_size": 4096}, "cluster.table_size"),
        ({"heartbeat": 1.0, "ttl": 1.5}, "cluster.ttl"),
        ({"colour": "red"}, "cluster.colour"),
        ({"internal_ip": "x"}, "cluster.internal_ip"),
    ]:
        with pytest.raises(ConfigError) as ei:
            parse_cluster({**good, **change}, ConfigError)
        assert ei.value.key == key
    with pytest.raises(ConfigError) as ei:
        parse_cluster({k: v for k, v in good.items() if k != "lb"}, ConfigError)
    assert ei.value.key == "cluster.lb"


def test_roles() -> None:
    assert parse_roles("lb,controller") == {"lb", "controller"}
    assert parse_roles("node") == {"node"}
    for bad, msg in [("gateway", "not one of"), ("", "empty"), ("lb,node", "cannot share")]:
        with pytest.raises(ValueError, match=msg):
            parse_roles(bad)


def test_pcsite_run_role_without_cluster_is_a_clear_error(tmp_path, capsys) -> None:
    from pcsite_lite.cli import main

    cfg = tmp_path / "s.toml"
    cfg.write_text(f"""
[site]
name = "s"
public_ip = "198.18.254.1"
state_dir = "{tmp_path}"
[control]
admin_token = "isp-admin-token-0123456789"
""")
    assert main(["run", "--config", str(cfg), "--role", "bogus"]) == 2
    assert "not one of" in capsys.readouterr().err
    # refused before anything is touched
    assert main(["run", "--config", str(cfg), "--role", "node"]) == 2
    assert "needs a [cluster] section" in capsys.readouterr().err


def test_a_line_injected_into_the_feed_is_refused_with_a_counted_reason() -> None:
    """A host on the path between controller and node (it sees the lines, not the secret)
    injects a circuit and replays a genuine line: the node refuses both, counts ``forged``,
    reconnects and resynchronises; the injected circuit never reaches it."""
    state = OpReplica()
    state.apply(circuit(1))
    got: list[dict] = []
    logs: list[str] = []
    inject: list[bytes] = []
    changes = Changes()

    async def proxy(server_port: int, task_status=trio.TASK_STATUS_IGNORED) -> None:
        async def handle(down: trio.SocketStream) -> None:
            up = await trio.open_tcp_stream("127.0.0.1", server_port)
            async with down, up, trio.open_nursery() as n:

                async def pump(a: trio.SocketStream, b: trio.SocketStream, tamper: bool) -> None:
                    try:
                        await copy(a, b, tamper)
                    finally:  # one side closed: close the other (as a TCP relay does)
                        n.cancel_scope.cancel()

                async def copy(a: trio.SocketStream, b: trio.SocketStream, tamper: bool) -> None:
                    seen = bytearray()
                    while data := await a.receive_some(65536):
                        await b.send_all(data)
                        seen += data
                        if tamper and inject and seen.count(b"\n") >= 3:
                            line = inject.pop()
                            if line == b"replay":  # a genuine sealed line, sent again
                                line = bytes(seen).splitlines()[2] + b"\n"
                            await b.send_all(line)

                n.start_soon(pump, up, down, True)
                n.start_soon(pump, down, up, False)

        async def guarded(down: trio.SocketStream) -> None:
            try:
                await handle(down)
            except* (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
                pass  # the node dropped the connection it found forged

        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        task_status.started(listeners[0].socket.getsockname()[1])
        await trio.serve_listeners(guarded, listeners)

    async def main() -> None:
        # the server logs each node it serves and each it loses (after counting it)
        server = FeedServer(state.iter_snapshot_ops, SECRET, changes.wrap(logs.append))
        async with trio.open_nursery() as n:
            port = await n.start(server.serve, "127.0.0.1", 0)
            pport = await n.start(proxy, port)
            client = await _synced_client(n, pport, got, logs, changes)
            forged = b'{"op":"circuit","label":66,"psp":"acme","service":"relay","in_key":"00",'
            forged += b'"expires":100.0,"destination":null,"out":[]}\t' + b"0" * 32 + b"\n"
            for line in (forged, b"replay"):
                await changes.until(
                    lambda: client.connected and client.synced and server.nodes == 1, 10,
                    lambda: f"the node (re)connected and synchronised: {logs}",
                )  # fmt: skip
                before = client.refused["forged"]
                inject.append(line)
                server.publish(circuit(len(got) + 10))  # a line for the proxy to follow
                await changes.until(lambda b=before: client.refused["forged"] > b, 10,
                                    lambda ln=line: f"{ln!r} refused: {logs}")  # fmt: skip
            await changes.until(
                lambda: client.connected and client.synced,
                10,
                lambda: f"the node reconnected and resynchronised: {logs}",
            )
            assert client.refused["forged"] == 2
            assert 66 not in {o.get("label") for o in got}
            assert 66 not in [k[1] for k in client.replica.ops]
            n.cancel_scope.cancel()

    trio.run(main)

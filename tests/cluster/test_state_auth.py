"""The state stream is signed with ``cluster.secret``: a host that can write to the FIS
engine but lacks the secret cannot inject circuits; what it writes is refused and counted."""

from __future__ import annotations

import hashlib
import hmac
import json
import time
from pathlib import Path

import pytest

from pcsite_lite.fis import FISAuthError, RedisFIS, open_engine
from pcsite_lite.statestream import StatePublisher, StateSubscriber, check_op, sign_op
from tests.fis.conftest import redis_server

KEY = b"cluster-secret-0123456789"


def _circuit(label: int) -> dict:
    return {"op": "circuit", "label": label, "psp": "acme", "service": "relay", "in_key": "00",
            "expires": time.time() + 600, "destination": None, "out": []}  # fmt: skip


def _engine(url: str) -> RedisFIS:
    fis = open_engine(f"{url}?prefix=pcl15f-auth")
    assert isinstance(fis, RedisFIS)
    return fis


def test_sign_and_check() -> None:
    op = sign_op(KEY, _circuit(7))
    assert check_op(KEY, op) == (_circuit(7) | {"expires": op["expires"]}, "")
    assert check_op(KEY, {**op, "label": 8}) == (None, "forged")
    assert check_op(KEY, _circuit(7)) == (None, "unsigned")
    assert check_op(KEY, sign_op(b"another-secret-0123456789", _circuit(7)))[1] == "forged"
    assert check_op(KEY, "not an op") == (None, "malformed")
    logged = sign_op(KEY, _circuit(7), at=5)  # bound to its position in the log
    assert check_op(KEY, logged, at=5)[1] == ""
    assert check_op(KEY, logged, at=6)[1] == "forged"
    assert check_op(KEY, logged)[1] == "forged"


def test_forged_log_and_snapshot_entries_are_refused_with_a_counted_reason(tmp_path: Path) -> None:
    with redis_server(tmp_path) as url:
        pub = StatePublisher(_engine(url), key=KEY)
        held: dict[int, dict] = {}

        def apply(op: dict) -> None:
            if op["op"] == "circuit":
                held[op["label"]] = op
            elif op["op"] == "teardown":
                held.pop(op["label"], None)

        sub = StateSubscriber(_engine(url), apply, key=KEY)
        pub.publish(_circuit(1))
        sub.poll()
        assert set(held) == {1}
        # a host on the internal network writes to the engine directly, without the secret
        r = _engine(url).client
        k = pub.keys
        pub.publish({"op": "teardown", "label": 1})
        sub.poll()
        assert held == {}
        genuine = [json.loads(f[b"op"]) for _, f in r.xrange(k.log)]
        assert genuine[-2]["label"] == 1 and genuine[-2]["op"] == "circuit"
        for forged in (
            _circuit(66),
            sign_op(b"guessed-secret-000000000", _circuit(67)),
            {**genuine[-2], "label": 68},
            genuine[-2],  # a replay: the genuine circuit op at a later position
            sign_op(KEY, _circuit(1)),
        ):  # a snapshot entry copied into the log
            v = r.incr(k.version)
            r.xadd(k.log, {"op": json.dumps(forged)}, id=f"{v}-0")
        pub.publish(_circuit(2))  # the controller goes on publishing
        sub.poll()
        assert set(held) == {2}, "a forged circuit was installed"
        assert sub.refused == {"unsigned": 1, "forged": 4}
        # forged snapshot entries: a node that (re)loads the snapshot skips them too
        r.hset(k.state, "circuit:69", json.dumps(_circuit(69)))
        mac = hmac.new(b"x" * 20, b"y", hashlib.sha256).hexdigest()
        r.hset(k.state, "circuit:70", json.dumps({**_circuit(70), "mac": mac}))
        held.clear()
        fresh = StateSubscriber(_engine(url), apply, key=KEY)
        fresh.poll()
        assert set(held) == {2}
        assert fresh.refused == {"unsigned": 1, "forged": 1}


def test_a_forged_usage_batch_is_not_billed_and_the_reason_is_given(tmp_path: Path) -> None:
    from pcsite_lite.billing.cluster import (
        ClusterCollector,
        NodeUsageLog,
        UsageBatch,
        fetch_batches,
        push_batches,
    )
    from pcsite_lite.billing.ledger import Ledger
    from pcsite_lite.metering import Counters, UsageRecord

    with redis_server(tmp_path) as url:
        r = _engine(url).client
        log = NodeUsageLog(tmp_path / "n1.db", "n1")
        log.append([UsageRecord("s1", "acme", "relay", 1.0, 2.0, Counters(packets=5))])
        assert push_batches(r, "pcl15f", log, key=KEY) == 1
        forged = UsageBatch("n1", 2, (UsageRecord("s1", "acme", "relay", 2.0, 3.0,
                                                  Counters(packets=10**9)),))  # fmt: skip
        r.xadd("pcl15f:usage:n1", {"b": forged.to_json(), "m": "0" * 64}, id="2-0")
        with Ledger(tmp_path / "site.ledger") as led:
            col = ClusterCollector(led, "s1")
            res = col.collect_from(
                {"n1": lambda after: fetch_batches(r, "pcl15f", "n1", after, key=KEY)}, 10.0
            )
            assert res.taken == 0 and "forged" in res.skipped["n1"]
            assert led.records() == []
            r.xdel("pcl15f:usage:n1", "2-0")  # the operator removes it: billing resumes
            res = col.collect_from(
                {"n1": lambda after: fetch_batches(r, "pcl15f", "n1", after, key=KEY)}, 11.0
            )
            assert res.taken == 1
            assert sum(rec.counters.packets for rec in led.records()) == 5
        log.close()


def test_per_role_redis_users_confine_each_machine_to_its_own_writes(tmp_path: Path) -> None:
    """With :func:`acl_file`, a node's Redis user follows the state stream, acknowledges,
    reports and ships its own usage, but cannot publish a circuit or write another node's
    usage; the LB's user only reads; the controller publishes."""
    import redis as redislib

    from pcsite_lite.billing.cluster import NodeUsageLog, push_batches
    from pcsite_lite.cluster.engine import ack, acl_file
    from pcsite_lite.metering import Counters, UsageRecord

    pw = {"controller": "c" * 20, "lb": "l" * 20, "node-n1": "a" * 20, "node-n2": "b" * 20}
    with redis_server(tmp_path, acl_text=acl_file("pcfis", pw, ["n1", "n2"])) as url:
        sock = url.removeprefix("unix://")

        def as_user(user: str) -> RedisFIS:
            c = redislib.Redis(unix_socket_path=sock, username=user, password=pw[user])
            return RedisFIS(client=c)

        ctl, n1, lb = as_user("controller"), as_user("node-n1"), as_user("lb")
        pub = StatePublisher(ctl, key=KEY)
        pub.publish(_circuit(1))
        held: list[int] = []
        sub = StateSubscriber(n1, lambda op: held.append(op["label"]), key=KEY)
        assert sub.poll() == 1 and held == [1] and sub.available, (sub.last_error, sub.refused)
        ack(n1.client, "pcfis:state", "n1", sub.version)
        n1.client.set("pcfis:state:live:n1", "{}")
        log = NodeUsageLog(tmp_path / "n1.db", "n1")
        log.append([UsageRecord("s1", "acme", "relay", 1.0, 2.0, Counters(packets=5))])
        assert push_batches(n1.client, "pcfis", log, key=KEY) == 1
        n1.put("acme/relay", "k", "v", writer="acme")  # the FIS: its services may write
        assert n1.get("acme/relay", "k") == "v"
        # what the node's user may not do
        with pytest.raises(FISAuthError, match="refused access"):
            StatePublisher(n1, key=KEY).publish(_circuit(66))
        with pytest.raises(redislib.exceptions.NoPermissionError):
            n1.client.hset("pcfis:state:state", "circuit:66", "{}")
        with pytest.raises(redislib.exceptions.NoPermissionError):
            n1.client.xadd("pcfis:usage:n2", {"b": "{}"})
        with pytest.raises(redislib.exceptions.NoPermissionError):
            ack(n1.client, "pcfis:state", "n2", 99)
        # the LB reads the state stream and writes nothing
        lb_held: list[int] = []
        assert StateSubscriber(lb, lambda op: lb_held.append(op["label"]), key=KEY).poll() == 1
        with pytest.raises(redislib.exceptions.NoPermissionError):
            lb.client.set("pcfis:state:version", 0)
        with pytest.raises(redislib.exceptions.AuthenticationError):
            redislib.Redis(unix_socket_path=sock).ping()  # default user off
        log.close()


def test_pcsite_cluster_acl_prints_the_file_and_names_mistakes(tmp_path: Path, capsys) -> None:
    from pcsite_lite.cli import main
    from pcsite_lite.cluster.engine import acl_file

    pw = {"controller": "c" * 20, "lb": "l" * 20, "node-n1": "a" * 20}
    f = tmp_path / "roles.json"
    f.write_text(json.dumps(pw))
    assert main(["cluster-acl", "--nodes", "n1", "--passwords", str(f)]) == 0
    assert capsys.readouterr().out == acl_file("pcfis", pw, ["n1"])
    assert main(["cluster-acl", "--nodes", "n1,n2", "--passwords", str(f)]) == 2
    assert "no password for 'node-n2'" in capsys.readouterr().err
    assert main(["cluster-acl", "--nodes", "n 1", "--passwords", str(f)]) == 2
    assert "cannot be a Redis user name" in capsys.readouterr().err
    f.write_text(json.dumps({**pw, "lb": "short"}))
    assert main(["cluster-acl", "--nodes", "n1", "--passwords", str(f)]) == 2
    assert "at least 16" in capsys.readouterr().err
    assert main(["cluster-acl", "--nodes", "n1", "--passwords", str(tmp_path / "nope")]) == 2

"""The FIS engine contract, run against SQLite and a real Redis server alike (``store_url``)."""

from __future__ import annotations

import ipaddress
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pcsite_lite.fis import (
    CONGESTION,
    ISP,
    CachedFIS,
    Change,
    FISEngine,
    FISPermissionError,
    FISUnavailableError,
    FISValueError,
    SqliteFIS,
    label_key,
    namespace,
    open_engine,
)
from pcsite_lite.lpm import LpmTable

NS = namespace("acme", "srouting")
OTHER = namespace("globex", "fw")


@pytest.fixture
def fis(store_url: str) -> Iterator[FISEngine]:
    engine = open_engine(store_url)
    try:
        yield engine
    finally:
        engine.close()


JSON_VALUES = [
    {"out_label": 9, "next_hop": "198.18.2.1"},
    [1, 2.5, "x", True, False, None, {"a": [None]}],
    "text ü",
    0,
    -(2**53),
    3.25,
    True,
    {"nested": {"deep": [[], {}]}},
]


@pytest.mark.parametrize("value", JSON_VALUES, ids=range(len(JSON_VALUES)))
def test_put_get_roundtrips_json_values(fis: FISEngine, value: object) -> None:
    fis.put(NS, "k", value, writer="acme")
    assert fis.get(NS, "k") == value


def test_missing_key_namespace_and_table_read_as_none(fis: FISEngine) -> None:
    assert fis.get(NS, "nope") is None
    assert fis.lookup(NS, "routes", "198.18.0.1") is None
    assert fis.lpm_get(NS, "routes", "198.18.0.0/15") is None
    assert list(fis.items(NS)) == []


def test_delete_reports_whether_the_key_existed(fis: FISEngine) -> None:
    fis.put(NS, label_key(7), {"out": 1}, writer="acme")
    assert fis.delete(NS, "7", writer="acme") is True
    assert fis.get(NS, "7") is None
    assert fis.delete(NS, "7", writer="acme") is False


def test_namespaces_are_separate(fis: FISEngine) -> None:
    fis.put(NS, "k", 1, writer="acme")
    fis.put(OTHER, "k", 2, writer="globex")
    assert (fis.get(NS, "k"), fis.get(OTHER, "k")) == (1, 2)
    assert fis.namespaces() == sorted([NS, OTHER])


@pytest.mark.parametrize(
    "value",
    [None, float("nan"), float("inf"), {1: "int key"}, b"bytes", {1, 2}, object()],
    ids=["none", "nan", "inf", "int-key", "bytes", "set", "object"],
)
def test_values_that_are_not_json_are_rejected(fis: FISEngine, value: object) -> None:
    with pytest.raises(FISValueError):
        fis.put(NS, "k", value, writer="acme")
    assert fis.get(NS, "k") is None


@pytest.mark.parametrize("key", [7, "", "x" * 1025, None])
def test_bad_keys_are_rejected_with_a_hint(fis: FISEngine, key: object) -> None:
    with pytest.raises(FISValueError, match="label_key"):
        fis.put(NS, key, 1, writer="acme")  # type: ignore[arg-type]


@pytest.mark.parametrize("ns", ["acme", "acme/", "/x", "a/b/c", "isp/x", "", "a b/c", "acme/é"])
def test_bad_namespaces_are_rejected(fis: FISEngine, ns: str) -> None:
    with pytest.raises(FISValueError):
        fis.get(ns, "k")
    with pytest.raises(FISValueError):
        fis.put(ns, "k", 1, writer=ISP)


def test_psp_writes_only_its_own_namespaces(fis: FISEngine) -> None:
    fis.put(NS, "k", 1, writer="acme")
    fis.put(namespace("acme", "other-service"), "k", 1, writer="acme")
    for ns in (OTHER, ISP):
        with pytest.raises(FISPermissionError):
            fis.put(ns, "k", 1, writer="acme")
        with pytest.raises(FISPermissionError):
            fis.lpm_put(ns, CONGESTION, "198.18.0.0/16", {"level": 1.0}, writer="acme")
        with pytest.raises(FISPermissionError):
            fis.delete(ns, "k", writer="acme")
        with pytest.raises(FISPermissionError):
            fis.drop_namespace(ns, writer="acme")
    assert fis.namespaces() == sorted([NS, namespace("acme", "other-service")])


def test_isp_publishes_congestion_that_services_read(fis: FISEngine) -> None:
    fis.lpm_put(ISP, CONGESTION, "198.18.0.0/15", {"level": 0.1}, writer=ISP)
    fis.lpm_put(ISP, CONGESTION, "198.18.4.0/24", {"level": 0.9}, writer=ISP)
    assert fis.lookup(ISP, CONGESTION, "198.18.4.200") == {"level": 0.9}
    assert fis.lookup(ISP, CONGESTION, "198.19.0.1") == {"level": 0.1}
    assert fis.tables(ISP) == [CONGESTION]
    # the ISP (operator) may also write a PSP's namespace, e.g. to clean up
    fis.put(NS, "k", 1, writer=ISP)


def test_psp_named_isp_cannot_exist() -> None:
    with pytest.raises(FISValueError):
        namespace(ISP, "svc")


def test_lpm_longest_match_exact_get_delete_and_listing(fis: FISEngine) -> None:
    rows = {
        "0.0.0.0/0": "default",
        "198.18.0.0/15": "testnet",
        "198.18.1.0/24": "b",
        "198.18.1.128/25": "b-hi",
        "198.18.1.5/32": "host",
    }
    fis.lpm_put_many(NS, "routes", list(rows.items()), writer="acme")
    assert fis.lookup(NS, "routes", "198.18.1.5") == "host"
    assert fis.lookup(NS, "routes", int(ipaddress.IPv4Address("198.18.1.200"))) == "b-hi"
    assert fis.lookup(NS, "routes", "198.18.1.6") == "b"
    assert fis.lookup(NS, "routes", "198.19.255.255") == "testnet"
    assert fis.lookup(NS, "routes", "10.0.0.1") == "default"
    assert fis.lpm_get(NS, "routes", "198.18.1.0/24") == "b"
    assert fis.lpm_get(NS, "routes", "198.18.0.0/16") is None  # exact, not longest
    assert fis.lpm_delete(NS, "routes", "198.18.1.5/32", writer="acme") is True
    assert fis.lpm_delete(NS, "routes", "198.18.1.5/32", writer="acme") is False
    assert fis.lookup(NS, "routes", "198.18.1.5") == "b"
    listed = dict(fis.lpm_items(NS, "routes"))
    del rows["198.18.1.5/32"]
    assert listed == rows
    assert fis.tables(NS) == ["routes"]


@pytest.mark.parametrize("prefix", ["198.18.1.1/24", "198.18.0.0/33", "300.0.0.0/8", "x/8", ""])
def test_bad_prefixes_are_rejected(fis: FISEngine, prefix: str) -> None:
    with pytest.raises(FISValueError):
        fis.lpm_put(NS, "routes", prefix, 1, writer="acme")


def test_bad_lookup_address_is_rejected(fis: FISEngine) -> None:
    with pytest.raises(FISValueError):
        fis.lookup(NS, "routes", "not-an-ip")


def test_drop_namespace_removes_keys_and_tables(fis: FISEngine) -> None:
    fis.put_many(NS, [("a", 1), ("b", 2)], writer="acme")
    fis.lpm_put(NS, "routes", "198.18.0.0/15", 1, writer="acme")
    fis.put(OTHER, "a", 1, writer="globex")
    assert fis.drop_namespace(NS, writer="acme") == 3
    assert list(fis.items(NS)) == [] and fis.tables(NS) == []
    assert fis.namespaces() == [OTHER]


def test_listeners_hear_writes_made_through_the_engine(fis: FISEngine) -> None:
    heard: list[Change] = []
    fis.add_listener(heard.append)
    fis.put(NS, "a", 1, writer="acme")
    fis.lpm_put(NS, "routes", "198.18.0.0/15", 1, writer="acme")
    fis.delete(NS, "a", writer="acme")
    fis.delete(NS, "a", writer="acme")  # no-op: nothing to hear
    assert heard == [
        Change("kv", NS, "", "a"),
        Change("lpm", NS, "routes", "198.18.0.0/15"),
        Change("kv", NS, "", "a"),
    ]
    fis.remove_listener(heard.append)
    fis.put(NS, "b", 1, writer="acme")
    assert len(heard) == 3


def test_watch_reports_writes_of_another_engine_object(store_url: str) -> None:
    reader, writer = open_engine(store_url), open_engine(store_url)
    try:
        feed = reader.watch()
        assert feed.poll() == []
        writer.put(NS, "a", 1, writer="acme")
        writer.lpm_put(ISP, CONGESTION, "198.18.0.0/24", {"level": 0.5}, writer=ISP)
        seen: list[Change] = []
        for _ in range(200):  # Redis: allow pub/sub delivery
            got = feed.poll()
            assert got is not None
            seen += got
            if len(seen) >= 2:
                break
        assert seen == [Change("kv", NS, "", "a"), Change("lpm", ISP, CONGESTION, "198.18.0.0/24")]
        feed.close()
    finally:
        reader.close()
        writer.close()


# --- parity with an independent model (dict + brute-force prefix scan) ------------------------
_addr = st.integers(0, 2**32 - 1)
_prefix = st.tuples(_addr, st.integers(0, 32)).map(
    lambda t: str(ipaddress.IPv4Network((t[0] >> (32 - t[1]) << (32 - t[1]) if t[1] else 0, t[1])))
)
_op = st.one_of(
    st.tuples(st.just("put"), st.sampled_from("abc"), st.integers(-5, 5)),
    st.tuples(st.just("del"), st.sampled_from("abc"), st.none()),
    st.tuples(st.just("lpm_put"), _prefix, st.integers(0, 9)),
    st.tuples(st.just("lpm_del"), _prefix, st.none()),
)


@settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(ops=st.lists(_op, max_size=25), probes=st.lists(_addr, min_size=1, max_size=10))
def test_engine_matches_a_brute_force_model(
    fis: FISEngine, ops: list[tuple[str, str, int | None]], probes: list[int]
) -> None:
    fis.drop_namespace(NS, writer="acme")
    kv: dict[str, int] = {}
    lpm: dict[str, int] = {}
    for op, key, value in ops:
        if op == "put":
            assert value is not None
            fis.put(NS, key, value, writer="acme")
            kv[key] = value
        elif op == "del":
            assert fis.delete(NS, key, writer="acme") == (kv.pop(key, None) is not None)
        elif op == "lpm_put":
            fis.lpm_put(NS, "t", key, value, writer="acme")
            lpm[key] = value  # type: ignore[assignment]
        else:
            assert fis.lpm_delete(NS, "t", key, writer="acme") == (lpm.pop(key, None) is not None)
    assert dict(fis.items(NS)) == kv
    assert dict(fis.lpm_items(NS, "t")) == lpm
    for a in probes:
        ip = ipaddress.IPv4Address(a)
        best = max(
            (ipaddress.IPv4Network(p) for p in lpm if ip in ipaddress.IPv4Network(p)),
            key=lambda n: n.prefixlen,
            default=None,
        )
        assert fis.lookup(NS, "t", a) == (None if best is None else lpm[str(best)])


def test_lpm_table_and_engine_agree_on_items_order(fis: FISEngine) -> None:
    t: LpmTable[int] = LpmTable()
    for i, p in enumerate(["198.18.0.0/16", "10.0.0.0/8", "198.18.0.0/15", "10.0.0.0/24"]):
        t.insert(p, i)
        fis.lpm_put(NS, "t", p, i, writer="acme")
    assert list(fis.lpm_items(NS, "t")) == list(t.items())


def test_unopenable_stores_raise_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(FISUnavailableError, match="cannot open FIS database"):
        open_engine(f"sqlite://{tmp_path}/no/such/dir/fis.db")
    # a cache opens while its Redis is away (a worker restarted in an outage) ...
    cache = CachedFIS(open_engine(f"unix://{tmp_path}/no-redis.sock"))
    cache.refresh()  # ... polls without raising ...
    assert not cache.available and cache.outages == 1
    with pytest.raises(FISUnavailableError, match=r"FIS engine unavailable: Redis at .*no-redis"):
        cache.get("acme/s", "k")  # ... and a miss names the store it cannot reach
    cache.close()
    with pytest.raises(FISValueError, match="scheme"):
        open_engine("postgres://x")
    with pytest.raises(FISValueError, match="scheme"):
        open_engine("no-scheme")


def test_a_locked_sqlite_store_is_a_platform_fault_and_reads_go_on(tmp_path: Path) -> None:
    path = tmp_path / "fis.db"
    fis = SqliteFIS(str(path), timeout=0.05)
    fis.put(NS, "k", 1, writer="acme")
    holder = sqlite3.connect(path, isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")  # someone holds the write lock
    try:
        with pytest.raises(FISUnavailableError, match=r"SQLite .*locked"):
            fis.put(NS, "k", 2, writer="acme")
        assert fis.get(NS, "k") == 1  # WAL: readers are not blocked
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    fis.put(NS, "k", 2, writer="acme")
    assert fis.get(NS, "k") == 2
    fis.close()

"""The circuit table's control-plane API (what the daemon's control API calls)."""

from __future__ import annotations

import pytest

from pcsite_lite.circuits import CircuitError, CircuitTable, OutHopEntry
from pcsock.wire import HopKey

K = HopKey(b"k" * 16)
HOP = OutHopEntry(5, "198.18.6.1", K)


def test_install_requires_a_reservation_by_the_same_psp() -> None:
    t = CircuitTable()
    with pytest.raises(CircuitError) as e:
        t.install(1234, psp="a", service="s", in_key=K, out_hops=[HOP], expires=10)
    assert e.value.code == "unknown_label"
    label = t.allocate("a", now=0)
    with pytest.raises(CircuitError) as e:
        t.install(label, psp="b", service="s", in_key=K, out_hops=[HOP], expires=10)
    assert e.value.code == "not_owner"
    c = t.install(label, psp="a", service="s", in_key=b"x" * 16, out_hops=[HOP], expires=10)
    assert t.get(label) is c and c.default is HOP and c.in_key == HopKey(b"x" * 16)
    # the owner may replace it (new out hops), others may not touch it
    t.install(
        label,
        psp="a",
        service="s",
        in_key=K,
        out_hops=[HOP, OutHopEntry(6, "198.18.6.2")],
        expires=10,
    )
    assert t.get(label).default is None and len(t) == 1
    for op in (lambda: t.renew(label, psp="b", expires=99), lambda: t.teardown(label, psp="b")):
        with pytest.raises(CircuitError) as e:
            op()
        assert e.value.code == "not_owner"


def test_renew_teardown_and_expiry() -> None:
    t = CircuitTable()
    a = t.allocate("a", now=0)
    b = t.allocate("a", now=0)
    t.install(a, psp="a", service="s", in_key=K, out_hops=[HOP], expires=10)
    t.install(b, psp="a", service="s", in_key=K, out_hops=[HOP], expires=10)
    t.renew(a, psp="a", expires=100)
    assert t.expire(50) == 1 and a in t and b not in t
    t.teardown(a, psp="a")
    assert len(t) == 0
    with pytest.raises(CircuitError):
        t.teardown(a, psp="a")


def test_reservations_expire() -> None:
    t = CircuitTable()
    label = t.allocate("a", now=0, hold=5)
    with pytest.raises(CircuitError) as e:
        t.install(label, psp="a", service="s", in_key=K, out_hops=[HOP], expires=10, now=6)
    assert e.value.code == "unknown_label"
    label = t.allocate("a", now=0, hold=5)
    t.expire(6)
    with pytest.raises(CircuitError):
        t.install(label, psp="a", service="s", in_key=K, out_hops=[HOP], expires=10)


@pytest.mark.parametrize(
    "make",
    [
        lambda: OutHopEntry(-1, "198.18.6.1"),
        lambda: OutHopEntry(2**32, "198.18.6.1"),
        lambda: OutHopEntry(1, "not-an-ip"),
        lambda: OutHopEntry(1, "198.18.6.1", b"short"),
        lambda: OutHopEntry(1, "198.18.6.1", strip=True),
    ],
)
def test_malformed_out_hops_are_refused(make) -> None:
    with pytest.raises(CircuitError) as e:
        make()
    assert e.value.code == "bad_hop"


def test_table_full() -> None:
    t = CircuitTable(max_circuits=2)
    t.allocate("a", now=0)
    t.allocate("a", now=0)
    with pytest.raises(CircuitError) as e:
        t.allocate("a", now=0)
    assert e.value.code == "table_full"


def test_install_validates_its_arguments() -> None:
    t = CircuitTable()
    label = t.allocate("a", now=0)
    for kw in ({"out_hops": []}, {"service": ""}, {"destination": "nope"}):
        args = {"psp": "a", "service": "s", "in_key": K, "out_hops": [HOP], "expires": 1.0}
        args.update(kw)
        with pytest.raises(CircuitError) as e:
            t.install(label, **args)
        assert e.value.code == "bad_request"


def test_replica_reserves_the_label_its_master_allocated() -> None:
    master, replica = CircuitTable(), CircuitTable()
    label = master.allocate("a", now=0)
    master.install(label, psp="a", service="s", in_key=K, out_hops=[HOP], expires=10)
    replica.reserve(label, "a")
    c = replica.install(label, psp="a", service="s", in_key=K, out_hops=[HOP], expires=10)
    assert replica.get(label) is c
    replica.reserve(label, "a")  # idempotent for the owner
    with pytest.raises(CircuitError) as e:
        replica.reserve(label, "b")
    assert e.value.code == "not_owner"
    with pytest.raises(CircuitError) as e:
        replica.reserve(0, "a")
    assert e.value.code == "bad_request"


def test_replica_follows_a_label_torn_down_and_reallocated_to_another_psp() -> None:
    replica = CircuitTable()
    replica.reserve(77, "a")
    replica.install(77, psp="a", service="s", in_key=K, out_hops=[HOP], expires=10)
    replica.teardown(77, psp="a")  # the master's teardown op, then its new owner's hop
    replica.reserve(77, "b")
    c = replica.install(77, psp="b", service="s", in_key=K, out_hops=[HOP], expires=10)
    assert replica.get(77) is c and c.psp == "b"
    replica.reserve(78, "a", until=5.0)  # a bounded hold lapses like an allocation
    replica.expire(5.0)
    replica.reserve(78, "b")
    with pytest.raises(CircuitError) as e:
        replica.install(78, psp="a", service="s", in_key=K, out_hops=[HOP], expires=10)
    assert e.value.code == "not_owner"

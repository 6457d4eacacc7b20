"""LpmTable against an independent brute-force implementation (``ipaddress`` scan)."""

from __future__ import annotations

import ipaddress

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pcsite_lite.lpm import (
    BACKEND,
    LpmTable,
    PrefixError,
    format_prefix,
    parse_address,
    parse_prefix,
)

# both longest-prefix searches: the pytricia C radix tree (if installed) and the pure-Python one
SEARCHES = [
    pytest.param(
        True,
        id="pytricia",
        marks=pytest.mark.skipif(BACKEND != "pytricia", reason="pytricia not installed"),
    ),
    pytest.param(False, id="python"),
]

addresses = st.integers(0, 2**32 - 1)
networks = st.tuples(addresses, st.integers(0, 32)).map(
    lambda t: ipaddress.IPv4Network((t[0], t[1]), strict=False)
)
# clustered prefixes so that nesting (the interesting case) is common
clustered = st.tuples(st.integers(0, 3), st.integers(0, 255), st.integers(0, 32)).map(
    lambda t: ipaddress.IPv4Network(((198 << 24) | (18 + t[0] % 2) << 16 | t[1] << 8, t[2]), False)
)
any_network = st.one_of(networks, clustered)
ops = st.lists(st.tuples(st.booleans(), any_network, st.integers(0, 1000)), max_size=60)


def brute_force(model: dict[ipaddress.IPv4Network, int], addr: int) -> int | None:
    ip = ipaddress.IPv4Address(addr)
    hits = [net for net in model if ip in net]
    return model[max(hits, key=lambda n: n.prefixlen)] if hits else None


@pytest.mark.parametrize("accelerated", SEARCHES)
@settings(max_examples=120, deadline=None)
@given(
    ops=ops,
    probes=st.lists(st.one_of(addresses, clustered.map(lambda n: int(n[-1]))), max_size=30),
)
def test_lookup_matches_brute_force_after_inserts_and_deletes(
    accelerated: bool, ops: list[tuple[bool, ipaddress.IPv4Network, int]], probes: list[int]
) -> None:
    table: LpmTable[int] = LpmTable(accelerated=accelerated)
    model: dict[ipaddress.IPv4Network, int] = {}
    for insert, net, value in ops:
        if insert:
            table.insert(str(net), value)
            model[net] = value
        else:
            assert table.discard((int(net.network_address), net.prefixlen)) == (net in model)
            model.pop(net, None)
    assert len(table) == len(model)
    for net in model:
        assert table.get(str(net)) == model[net]
        assert str(net) in table
        probes.append(int(net.network_address))
        probes.append(int(net.broadcast_address))
    for addr in probes:
        expect = brute_force(model, addr)
        assert table.lookup(addr) == expect
        assert table.search(addr) == expect
        assert table.lookup(str(ipaddress.IPv4Address(addr))) == expect
        found = table.lookup_prefix(addr)
        if expect is None:
            assert found is None
        else:
            assert found is not None and model[ipaddress.IPv4Network(found[0])] == expect
    assert sorted(table) == sorted(str(n) for n in model)


@given(any_network)
def test_prefix_text_round_trips(net: ipaddress.IPv4Network) -> None:
    parsed = parse_prefix(str(net))
    assert parsed == (int(net.network_address), net.prefixlen)
    assert format_prefix(*parsed) == str(net)


def test_bare_address_is_a_host_route() -> None:
    assert parse_prefix("198.18.0.1") == (parse_address("198.18.0.1"), 32)


@pytest.mark.parametrize(
    "bad",
    ["198.18.0.1/24", "198.18.0.0/33", "198.18.0.0/-1", "198.18.0.0/", "1.2.3/8", "x", "",
     (1, 33), (2**32, 0), ("a", 8), 7, None],
)  # fmt: skip
def test_bad_prefixes_raise_prefix_error(bad: object) -> None:
    with pytest.raises(PrefixError):
        parse_prefix(bad)  # type: ignore[arg-type]


@pytest.mark.parametrize("accelerated", SEARCHES)
@pytest.mark.parametrize("bad", ["1.2.3.4.5", "256.0.0.1", -1, 2**32, True, b"1.2.3.4"])
def test_bad_addresses_raise_prefix_error(accelerated: bool, bad: object) -> None:
    t: LpmTable[int] = LpmTable(accelerated=accelerated)
    t.insert("0.0.0.0/0", 1)
    with pytest.raises(PrefixError):
        t.lookup(bad)  # type: ignore[arg-type]


@pytest.mark.parametrize("accelerated", SEARCHES)
def test_delete_missing_prefix_raises_key_error_and_none_values_are_refused(
    accelerated: bool,
) -> None:
    t: LpmTable[int | None] = LpmTable(accelerated=accelerated)
    with pytest.raises(KeyError):
        t.delete("10.0.0.0/8")
    with pytest.raises(ValueError):
        t.insert("10.0.0.0/8", None)
    t.insert("10.0.0.0/8", 1)
    t.clear()
    assert len(t) == 0 and t.lookup("10.1.1.1") is None
    t.insert("10.0.0.0/8", 2)  # usable after clear
    assert t.lookup("10.1.1.1") == 2

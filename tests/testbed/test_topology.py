"""Topology files: the shipped ones load; mistakes are reported with file, line and field."""

from __future__ import annotations

import ipaddress

import pytest

from testbed import plan, topology
from testbed.cli import TOPOLOGIES
from testbed.topology import TESTBED_SPACE, TopologyError
from tests.support.topologies import link, node, topology_toml


@pytest.mark.parametrize("name", ["fig2", "multidomain"])
def test_shipped_topologies_validate_and_stay_in_the_testbed_space(name: str) -> None:
    topo = topology.load(TOPOLOGIES / f"{name}.toml")
    p = plan.make(topo)
    addrs = [i.address for n in p.nodes.values() for i in n.ifaces]
    addrs += [n.public_ip for n in p.nodes.values() if n.public_ip]
    assert addrs and all(ipaddress.IPv4Address(a) in TESTBED_SPACE for a in addrs)
    assert len(set(addrs)) == len(addrs)
    for n in p.nodes.values():
        for r in n.routes:
            assert ipaddress.IPv4Network(r.dst).subnet_of(TESTBED_SPACE)  # no default route


def test_fig2_is_the_papers_isp() -> None:
    topo = topology.load(TOPOLOGIES / "fig2.toml")
    assert {n.name for n in topo.of_kind("router")} == {"R1", "R2", "R3", "R4"}
    assert {(s.name, s.router) for s in topo.of_kind("site")} == {
        ("C1", "R1"),
        ("C2", "R2"),
        ("C3", "R3"),
    }
    assert {h.name for h in topo.of_kind("host")} == {"S", "D"}
    assert topo.of_kind("dns") and topo.of_kind("psp") and topo.of_kind("fis")


def _err(text: str) -> TopologyError:
    with pytest.raises(TopologyError) as info:
        topology.parse(text, source="t.toml")
    return info.value


GOOD = topology_toml("t", node("h", "host"), node("r", "router"), link("h", "r"))


def test_unknown_link_endpoint_names_file_line_and_field() -> None:
    e = _err(GOOD.replace('b = "r"', 'b = "x"'))
    assert e.line == 10 and str(e).startswith('t.toml:10: link #1 field "b"')
    assert "'x' is not a node" in str(e)


@pytest.mark.parametrize(
    ("change", "line", "words"),
    [
        (('kind = "host"', 'kind = "hots"'), 4, 'field "kind"'),
        (('b = "r"', 'b = "r"\ndelay = "10 parsecs"'), 11, "not a duration"),
        (('b = "r"', 'b = "r"\nrate = "fast"'), 11, "not a rate"),
        (('b = "r"', 'b = "r"\nloss = 120'), 11, "percentage"),
        (('b = "r"', 'b = "r"\nsubnet = "10.0.0.0/24"'), 11, "outside the testbed space"),
        (('kind = "host"', 'kind = "host"\ncolour = "red"'), 5, 'field "colour": unknown'),
        (('name = "r"', 'name = "h"'), 6, "duplicate node name"),
    ],
)
def test_validation_errors_point_at_the_field(
    change: tuple[str, str], line: int, words: str
) -> None:
    e = _err(GOOD.replace(*change, 1))
    assert e.line == line, str(e)
    assert words in str(e)


def test_site_must_name_a_router() -> None:
    e = _err(GOOD + '[[node]]\nname = "c"\nkind = "site"\nrouter = "h"\n')
    assert e.line == 14 and "'h' is not a router node" in str(e)


def test_overlapping_addresses_are_refused() -> None:
    text = GOOD.replace('kind = "host"', 'kind = "host"\nprefix = "198.19.0.0/25"')
    assert "overlaps" in str(_err(text))  # the default control network is 198.19.0.0/24


def test_not_toml_is_reported_with_its_line() -> None:
    e = _err(GOOD + "[[link]\n")
    assert e.line == 11 and "not TOML" in str(e)


def test_line_generator_matches_mininet_linear_counts_and_aggregates_routes() -> None:
    topo = topology.line(200)
    assert len(topo.nodes) == 400 and len(topo.links) == 399
    p = plan.make(topo)
    # shortest-path routes to 399 subnets collapse to a few prefixes per router
    assert max(len(n.routes) for n in p.nodes.values()) < 40
    # r1 reaches h200's subnet through r2
    h200 = p.nodes["h200"].ifaces[0]
    net = ipaddress.IPv4Network(f"{h200.address}/30", strict=False)
    r1 = p.nodes["r1"]
    hop = [r for r in r1.routes if net.subnet_of(ipaddress.IPv4Network(r.dst))]
    assert len(hop) == 1 and hop[0].gateway == p.nodes["r2"].iface_to("r1").address


def test_site_nodes_and_fis_replicas_plan_an_internal_network() -> None:
    from testbed import cluster

    text = """
name = "c"
[[node]]
name = "r"
kind = "router"
[[node]]
name = "a"
kind = "site"
router = "r"
nodes = 3
fis_replicas = 2
[[node]]
name = "b"
kind = "site"
router = "r"
[[link]]
a = "a"
b = "r"
[[link]]
a = "b"
b = "r"
"""
    topo = topology.parse(text)
    plans = cluster.plan(topo)
    assert list(plans) == ["a"]  # b has one node: a one-machine site as before
    cp = plans["a"]
    assert cp.lb_address == "198.19.128.1" and cp.fis_replicas == 2
    assert [(m.name, m.address) for m in cp.members] == [
        ("a_n1", "198.19.128.2"), ("a_n2", "198.19.128.3"), ("a_n3", "198.19.128.4"),
    ]  # fmt: skip
    assert cp.subnet.subnet_of(TESTBED_SPACE)
    for bad, key in [("nodes = 0", "nodes"), ("nodes = 17", "nodes"),
                     ("fis_replicas = 5", "fis_replicas"), ('nodes = "3"', "nodes")]:  # fmt: skip
        err = _err(text.replace("nodes = 3", bad) if "fis" not in bad
                   else text.replace("fis_replicas = 2", bad))  # fmt: skip
        assert f'"{key}"' in str(err)
    err = _err(text.replace('kind = "router"', 'kind = "router"\nnodes = 2'))
    assert "only allowed for site nodes" in str(err)
    err = _err(text.replace("nodes = 3", "nodes = 1"))  # FIS machines need the internal network
    assert '"fis_replicas"' in str(err) and "needs nodes > 1" in str(err)
    assert [(m.name, m.address) for m in cp.fis] == [
        ("a_f1", "198.19.128.201"), ("a_f2", "198.19.128.202"),
    ]  # fmt: skip
    assert cluster.sentinel_url(cp, "site", "pw") == (
        "redis+sentinel://site:pw@198.19.128.201:26379,198.19.128.202:26379/pcfis"
        "?wait=1&wait_ms=1000"
    )

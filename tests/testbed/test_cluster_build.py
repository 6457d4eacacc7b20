"""A site with ``nodes = 3``: the testbed builds the LB's bridge and three compute-node
namespaces, ``inspect`` shows them, ``testbed fail`` / ``recover`` cut and restore a node."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.support.topologies import link, node, topology_toml

pytestmark = pytest.mark.netns

TOPO = topology_toml(
    "clb",
    node("r", "router"),
    node("s", "site", router="r", control=False, nodes=3),
    link("s", "r"),
)


def tb(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "testbed", *args], capture_output=True,
                          text=True, timeout=120)  # fmt: skip


def ping(ns: str, addr: str) -> bool:
    return subprocess.run(["ip", "netns", "exec", ns, "ping", "-c1", "-W1", addr],
                          capture_output=True).returncode == 0  # fmt: skip


def test_three_node_site_builds_inspects_fails_and_recovers(tmp_path) -> None:
    topo = tmp_path / "clb.toml"
    topo.write_text(TOPO)
    up = tb("up", str(topo), "--prefix", "pcy", "--json")
    assert up.returncode == 0, up.stderr
    run = json.loads(up.stdout)["run"]
    try:
        doc = json.loads(tb("inspect", run, "--json").stdout)
        c = doc["clusters"]["s"]
        assert c["lb_address"] == "198.19.128.1"
        assert [n["name"] for n in c["nodes"]] == ["s_n1", "s_n2", "s_n3"]
        ns2 = c["netns"]["s_n2"]
        assert ping(ns2, c["lb_address"])
        assert "s_n2" in tb("inspect", run).stdout
        assert tb("fail", "--run", run, "s_n2").returncode == 0
        assert not ping(ns2, c["lb_address"])
        assert ping(c["netns"]["s_n1"], c["lb_address"])  # the others are untouched
        assert tb("recover", "--run", run, "s_n2").returncode == 0
        assert ping(ns2, c["lb_address"])
        routes = subprocess.run(["ip", "-n", ns2, "route"], capture_output=True, text=True)
        assert f"default via {c['lb_address']}" in routes.stdout  # put back after the cut
        bad = tb("fail", "--run", run, "r")
        assert bad.returncode != 0 and "not a compute node" in bad.stderr
    finally:
        tb("down", run)
    left = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    assert run not in left

"""The examples' shared harness: one topology file drives the simulator and the testbed."""

from __future__ import annotations

from pathlib import Path

import pytest

from examples.encryption import demo as encryption
from examples.rbf import demo as rbf
from pcdemo.example_testbed import (
    Needs,
    TopologyLacks,
    addresses,
    load_topology,
    run_simulator,
    sim_network,
)
from pcdemo.example_testbed import main as example_main

#: the chain of examples/encryption/chain.toml, written differently: other prefixes and public
#: IPs, other link delays, and one more router (with a host) off the core
OTHER_CHAIN = """
name = "chain-variant"
[[node]]
name = "S"
kind = "host"
prefix = "198.18.131.0/24"
[[node]]
name = "D"
kind = "host"
prefix = "198.18.132.0/24"
[[node]]
name = "R1"
kind = "router"
[[node]]
name = "RX"
kind = "router"
[[node]]
name = "X"
kind = "host"
prefix = "198.18.133.0/24"
[[node]]
name = "RC"
kind = "router"
[[node]]
name = "R2"
kind = "router"
[[node]]
name = "C1"
kind = "site"
router = "R1"
public_ip = "198.18.250.11"
[[node]]
name = "C2"
kind = "site"
router = "R2"
public_ip = "198.18.250.12"
[[link]]
a = "S"
b = "R1"
[[link]]
a = "R1"
b = "RC"
delay = "1ms"
[[link]]
a = "RX"
b = "RC"
delay = "1ms"
[[link]]
a = "RX"
b = "X"
[[link]]
a = "RC"
b = "R2"
delay = "3ms"
[[link]]
a = "R2"
b = "D"
"""


@pytest.fixture
def other_chain(tmp_path: Path) -> Path:
    path = tmp_path / "variant.toml"
    path.write_text(OTHER_CHAIN)
    return path


def test_the_simulator_builds_the_topology_file_with_the_testbeds_addresses(
    other_chain: Path,
) -> None:
    sn = sim_network(other_chain)
    want = addresses(other_chain)
    assert want["C1"] == "198.18.250.11" and want["S"].startswith("198.18.131.")
    for name, node in sn.nodes.items():
        assert node.ip == want[name], name
    assert sn.links["RC", "R2"] is sn.links["R2", "RC"]
    assert sn.links["RC", "R2"].delay == pytest.approx(0.003)
    assert ("S", "R2") not in sn.links


def test_examples_run_on_another_topology_file_with_the_same_roles(other_chain: Path) -> None:
    res = run_simulator(encryption, n=10, topology=other_chain)
    assert res["received_plaintext_ok"] == 10 and encryption.passed(res)
    res = run_simulator(rbf, n=3, topology=other_chain)
    assert res["bound"]["via_c2_meta7"] == 3 and rbf.passed(res)


def test_a_topology_lacking_what_an_example_needs_names_every_missing_part(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = tmp_path / "bad.toml"
    c2_site = 'name = "C2"\nkind = "site"\nrouter = "R2"\npublic_ip = "198.18.250.12"'
    bad.write_text(OTHER_CHAIN.replace(c2_site, 'name = "C2"\nkind = "router"'))
    with pytest.raises(TopologyLacks) as exc:
        load_topology(bad, Needs(hosts=("S", "Q"), sites=("C1", "C2"), links=(("S", "D"),)))
    msg = str(exc.value)
    assert "a host named 'Q'" in msg and "'C2' to be a site (it is a router)" in msg
    assert "a link S -- D" in msg
    assert example_main(encryption, ["--topology", str(bad), "--world", "simulator"]) == 2
    assert "C2" in capsys.readouterr().err
    # a file that is not a valid topology: its errors, no traceback
    broken = tmp_path / "broken.toml"
    broken.write_text(OTHER_CHAIN.replace('kind = "host"', 'kind = "hots"', 1))
    assert example_main(encryption, ["--topology", str(broken), "--world", "simulator"]) == 2
    assert "broken.toml" in capsys.readouterr().err

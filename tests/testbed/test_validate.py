"""``testbed validate``: a topology is checked without building it, and every mistake is
reported with its line (issue #13 item 12), from a table of fields one row per key."""

from __future__ import annotations

import pytest

from testbed import topology
from testbed.cli import main
from testbed.topology import LINK_FIELDS, NODE_FIELDS, TopologyError

BAD = """\
name = "x"
[[node]]
name = "h"
kind = "host"
colour = "red"
[[node]]
name = "C1"
kind = "site"
router = "R9"
compute_nodes = 0
[[node]]
name = "r"
kind = "router"
zone = "pc.test."
[[link]]
a = "h"
b = "zz"
[[link]]
a = "h"
b = "r"
delay = "3 parsecs"
loss = 120
"""


def test_every_error_is_reported_with_its_line() -> None:
    with pytest.raises(TopologyError) as info:
        topology.parse(BAD, source="bad.toml")
    found = [(e.line, e.where, e.message) for e in info.value.errors]
    assert [line for line, _, _ in found] == [5, 9, 10, 14, 17, 21, 22]
    assert 'field "colour": unknown' in str(info.value.errors[0])
    assert "'R9' is not a router node" in found[1][2]
    assert found[2][2] == "must be 1..64"
    assert found[3][2] == "only allowed for dns nodes"
    assert found[4][2] == "'zz' is not a node"
    assert "not a duration" in found[5][2] and "percentage" in found[6][2]
    # the message starts with the first error and lists them all
    text = str(info.value)
    assert text.startswith('bad.toml:5: node "h" field "colour"') and "(7 errors)" in text


def test_validate_command_checks_without_building(tmp_path, capsys) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text(BAD)
    assert main(["validate", str(bad)]) == 2
    err = capsys.readouterr().err.splitlines()
    assert err[-1] == f"{bad}: 7 error(s)"
    assert sum(line.startswith(f"{bad}:") for line in err) == 8
    assert main(["validate", "fig2", "multidomain"]) == 0
    out = capsys.readouterr().out
    assert "fig2: ok: topology fig2, 12 nodes" in out and "multidomain: ok" in out


def test_addresses_a_plan_cannot_give_are_caught_by_validate(tmp_path, capsys) -> None:
    text = 'name = "t"\n[control]\nsubnet = "198.19.0.0/30"\n'
    for i in range(4):
        text += f'[[node]]\nname = "d{i}"\nkind = "dns"\n'
    (tmp_path / "t.toml").write_text(text)
    assert main(["validate", str(tmp_path / "t.toml")]) == 2
    assert "t.toml" in capsys.readouterr().err


def test_each_key_is_one_row() -> None:
    keys = [f.key for f in NODE_FIELDS]
    assert len(keys) == len(set(keys)) and {"name", "kind", "router", "prefix"} <= set(keys)
    assert {f.key for f in LINK_FIELDS} == {"a", "b", "delay", "jitter", "loss", "rate",
                                             "subnet", "name"}  # fmt: skip

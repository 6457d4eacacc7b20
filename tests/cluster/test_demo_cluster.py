"""The whole demo on sites of three compute nodes (root), in one command as a user runs it:
``python -m pcdemo --topology FILE`` on Fig. 2 written with ``nodes = 3`` at every site. Every
site of the topology is an LB + controller and three ``pcsite run --role node`` machines; C1
(form 2's and form 3's site) also has ``fis_replicas = 3``: its FIS replicated on three
machines (a Redis primary, two replicas, three Sentinels) that every machine of the site
reaches by its Sentinel URL; C2 and C3 (the circuits' sites) share one SQLite FIS among their
machines (a replicated FIS at every site made the run ~55 s longer: 173 s against 117 s). The
seven example scenarios build their own networks, whose sites get three compute nodes too.
Every scenario must pass, with its figures."""

from __future__ import annotations

import json
import re
import time
from pathlib import Path
from typing import Any

import pytest

from pcdemo import example_testbed, rig
from pcdemo import scenarios as demo

pytestmark = [pytest.mark.netns, pytest.mark.timeout(600)]

FIG2 = Path(demo.TOPOLOGY)

#: (sent, received) of the scenarios whose figures are exact
EXACT = {
    "form1": (20, 20), "form2": (20, 20), "form3": (40, 20), "form1+3": (40, 20),
    "multicast": (20, 80), "firewall": (200, 50), "encrypt": (100, 100), "re": (300, 300),
    "rbf": (120, 60), "congest": (600, 600),
}  # fmt: skip
SCENARIOS = sorted(set(EXACT) | {"mobility"})


def test_every_scenario_passes_on_three_node_sites(tmp_path: Path, monkeypatch: Any) -> None:
    text, subs = re.subn(r"(?m)^compute_nodes = 2$", "compute_nodes = 2\nnodes = 3",
                         FIG2.read_text())  # fmt: skip
    assert subs == 3  # C1, C2, C3
    text = text.replace('router = "R1"\n', 'router = "R1"\nfis_replicas = 3\n', 1)  # C1
    topo = tmp_path / "fig2-three-nodes.toml"
    topo.write_text(text.replace('name = "fig2"', 'name = "fig2-3n"', 1))

    built: list[dict[str, Any]] = []  # every multi-machine site started, by whom
    real = rig.start_cluster_site

    def spy(tb: Any, site: str, config: dict[str, Any], tmp: Path, **kw: Any) -> None:
        real(tb, site, config, tmp, **kw)
        cp = tb.cluster(site)
        configs = [p.read_text() for p in tmp.glob(f"{site}-*.toml")]
        built.append({"topology": tb.topo.name, "site": site, "nodes": len(cp.members),
                      "fis_machines": len(cp.fis), "configs": configs,
                      "sentinels": ",".join(f"{m.address}:26379" for m in cp.fis)})  # fmt: skip

    monkeypatch.setattr(rig, "start_cluster_site", spy)
    monkeypatch.setattr(example_testbed, "start_cluster_site", spy)
    out = tmp_path / "demo.json"
    t0 = time.monotonic()
    only = [a for n in SCENARIOS for a in ("--only", n)]
    rc = demo.main(["--world", "testbed", "--topology", str(topo), "--prefix", "h15d",
                    "--json", str(out), "--require-all", *only])  # fmt: skip
    wall = time.monotonic() - t0
    doc = json.loads(out.read_text())
    results = {r["name"]: r for r in doc["results"]}
    failed = [
        f"{n}: {r['status']} {r['detail']}" for n, r in results.items() if r["status"] != "pass"
    ]
    assert rc == 0 and not failed, failed
    assert sorted(results) == SCENARIOS
    for name, (sent, received) in EXACT.items():
        assert (results[name]["sent"], results[name]["received"]) == (sent, received), name
    mob = results["mobility"]  # only the packets in flight at the handoff are lost
    assert mob["sent"] > 0 and 0 <= mob["dropped"] <= mob["sent"] // 10, mob
    # the topology's sites: 3 nodes each; C1 with 3 FIS machines, every machine of it given
    # the Sentinel URL; C2's and C3's machines one SQLite FIS file each
    core = {b["site"]: b for b in built if b["topology"] == "fig2-3n"}
    assert sorted(core) == ["C1", "C2", "C3"]
    for name, b in core.items():
        machines = (3, 3, 4) if name == "C1" else (3, 0, 4)
        assert (b["nodes"], b["fis_machines"], len(b["configs"])) == machines, name
        fis = f"@{b['sentinels']}/pcfis?" if name == "C1" else f'/fis-{name}.db"'
        assert all(fis in c for c in b["configs"]), name
    examples = [b for b in built if b["topology"] != "fig2-3n"]
    assert {b["nodes"] for b in examples} == {3}
    # every site the examples started (multicast 3, mobility 2, firewall 1, encrypt 2, re 2,
    # rbf 2, congest 1)
    assert len(examples) == 13, [(b["topology"], b["site"]) for b in examples]
    for r in doc["results"]:
        if r["name"] not in demo.CORE_SCENARIOS:
            assert "(3-node sites)" in r["detail"], r["name"]
    print(f"whole demo on 3-node sites: {wall:.0f} s")

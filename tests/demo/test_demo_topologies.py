"""``--topology FILE``: the core scenarios on any topology, by role (issue #13).

Every shipped topology runs the four core scenarios (in the simulator here, in namespaces in
the ``netns`` test); a topology that lacks something says what, per scenario, and counts it.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from pcdemo import scenarios as demo
from pcdemo.roles import HintError, NotApplicable, Roles
from testbed.topology import load, parse

ROOT = Path(__file__).resolve().parents[2]
SHIPPED = sorted(p.stem for p in demo.TOPOLOGIES.glob("*.toml"))

#: a two-ISP network written from docs/testbed.md's "Topology format" alone, no [demo] hints
TWO_ISPS = """
name = "my-two-isps"
[[node]]
name = "alice"
kind = "host"
prefix = "198.18.30.0/24"
[[node]]
name = "bob"
kind = "host"
prefix = "198.18.40.0/24"
[[node]]
name = "isp1a"
kind = "router"
[[node]]
name = "isp1b"
kind = "router"
[[node]]
name = "isp2a"
kind = "router"
[[node]]
name = "isp2b"
kind = "router"
[[node]]
name = "site1a"
kind = "site"
router = "isp1a"
[[node]]
name = "site1b"
kind = "site"
router = "isp1b"
[[node]]
name = "site2a"
kind = "site"
router = "isp2a"
[[node]]
name = "site2b"
kind = "site"
router = "isp2b"
[[node]]
name = "ns"
kind = "dns"
[[node]]
name = "redis"
kind = "fis"
engine = "redis"
[[node]]
name = "psp"
kind = "psp"
[[link]]
a = "alice"
b = "isp1a"
[[link]]
a = "isp1a"
b = "isp1b"
[[link]]
a = "isp1b"
b = "isp2a"
delay = "3ms"
[[link]]
a = "isp2a"
b = "isp2b"
[[link]]
a = "bob"
b = "isp2b"
[[link]]
a = "ns"
b = "isp1b"
[[link]]
a = "psp"
b = "isp2a"
"""


def _write(tmp_path: Path, text: str, name: str = "topo.toml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def _run(argv: list[str], capsys) -> tuple[int, dict[str, dict], str, str]:
    out = Path(argv[argv.index("--json") + 1])
    rc = demo.main(argv)
    cap = capsys.readouterr()
    rows = {r["name"]: r for r in json.loads(out.read_text())["results"]}
    return rc, rows, cap.out, cap.err


def test_the_shipped_topologies_include_a_two_domain_one_and_a_ring() -> None:
    assert {"fig2", "twodomain", "ring", "multidomain"} <= set(SHIPPED)
    two = load(demo.TOPOLOGIES / "twodomain.toml")
    assert len(two.of_kind("site")) == 4 and two.of_kind("psp") and two.of_kind("dns")
    assert [n.engine for n in two.of_kind("fis")] == ["redis"]
    # the domains A and B are joined by exactly one link
    cross = [lk for lk in two.links if {lk.a[1], lk.b[1]} == {"A", "B"}]
    assert [(lk.a, lk.b) for lk in cross] == [("RA2", "RB1")]
    ring = load(demo.TOPOLOGIES / "ring.toml")
    routers = {r.name for r in ring.of_kind("router")}
    assert all(len([n for n in ring.neighbours(r) if n in routers]) == 2 for r in routers)


def test_roles_are_chosen_from_each_topology() -> None:
    fig2 = Roles(load(demo.TOPOLOGIES / "fig2.toml"))
    assert fig2.cast("form1").sites == ("C2", "C3")  # the hint keeps the paper's detour
    assert fig2.cast("form2").sites == fig2.cast("form3").sites == ("C1",)
    assert (fig2.psp, fig2.dns) == ("PSP", "DNS")
    two = Roles(load(demo.TOPOLOGIES / "twodomain.toml"))
    c = two.cast("form1")  # no hints: sender in A, receiver in B, a site near each
    assert (c.sender, c.receiver, c.sites) == ("SA", "DB", ("CA1", "CB2"))
    assert c.path == ("SA", "RA1", "RA2", "RB1", "RB2", "DB")
    assert two.cast("form2").sites == ("CA1",)  # the first router with a site on the path
    ring = Roles(load(demo.TOPOLOGIES / "ring.toml"))
    assert ring.cast("form2").path == ("H1", "R1", "R2", "R3", "H2")
    assert ring.cast("form2").sites == ("C2",) and ring.cast("form1+3").sites == ("C5", "C4")
    mine = Roles(parse(TWO_ISPS, "mine.toml"))
    c = mine.cast("form1+3")
    assert (c.sender, c.receiver, c.sites) == ("alice", "bob", ("site1a", "site2b"))
    assert c.prefix == "198.18.40.0/24"


@pytest.mark.parametrize("name", SHIPPED)
def test_core_scenarios_pass_on_each_shipped_topology_in_the_simulator(name, tmp_path, capsys):
    out = tmp_path / "demo.json"
    rc, rows, text, _ = _run(["--world", "simulator", "--core", "--topology", name,
                              "--json", str(out)], capsys)  # fmt: skip
    assert rc == 0, text
    assert list(rows) == list(demo.CORE_SCENARIOS)
    assert {r["status"] for r in rows.values()} == {"pass"}, text
    assert f"topology {load(demo.TOPOLOGIES / f'{name}.toml').name}" in text
    assert "4/4 scenarios passed (simulator)" in text
    assert (
        json.loads(out.read_text())["topology"]["name"]
        == load(demo.TOPOLOGIES / f"{name}.toml").name
    )


def test_a_two_isp_topology_written_from_the_docs_passes_from_the_command_line(tmp_path):
    topo = _write(tmp_path, TWO_ISPS)
    out = tmp_path / "demo.json"
    proc = subprocess.run(
        [sys.executable, "-m", "pcdemo", "--world", "simulator", "--core", "--topology",
         str(topo), "--json", str(out)],
        cwd=tmp_path, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    rows = {r["name"]: r for r in json.loads(out.read_text())["results"]}
    assert {r["status"] for r in rows.values()} == {"pass"}
    assert "alice->site1a->site2b->bob" in rows["form1"]["detail"]
    assert "isp1a diverted to site1a" in rows["form2"]["detail"]


def test_what_a_topology_lacks_is_reported_per_scenario_and_counted(tmp_path, capsys):
    # Fig. 2 as it was before the PSP got a data link: hosts cannot reach the lookup service
    text = (demo.TOPOLOGIES / "fig2.toml").read_text()
    cut = text.index('[[link]]\na = "R4"\nb = "PSP"')
    topo = _write(tmp_path, text[:cut] + text[text.index("[demo]") :])
    out = tmp_path / "demo.json"
    argv = ["--world", "simulator", "--core", "--topology", str(topo), "--json", str(out)]
    rc, rows, stdout, stderr = _run(argv, capsys)
    assert rc == 0  # nothing failed; what could not run is said, not hidden
    assert {n: r["status"] for n, r in rows.items()} == {
        "form1": "n/a", "form2": "pass", "form3": "pass", "form1+3": "n/a"
    }  # fmt: skip
    for name in ("form1", "form1+3"):
        assert "the PSP node PSP has no data link" in rows[name]["detail"]
        assert "add a [[link]] from PSP to a router" in rows[name]["detail"]
        assert f"{name}: not applicable" in stderr
    assert "N/A" in stdout and "2/4 scenarios passed, 2 not applicable (simulator)" in stdout
    rc, _, _, _ = _run([*argv, "--require-all"], capsys)
    assert rc == 1


def test_form2_needs_a_site_on_the_path_and_uses_the_first_one(tmp_path, capsys):
    # a sender whose path has no router with a site: forms 2 and 3 say why they cannot run
    text = TWO_ISPS.replace('[[node]]\nname = "site1a"\nkind = "site"\nrouter = "isp1a"\n', "")
    text = text.replace('a = "bob"\nb = "isp2b"', 'a = "bob"\nb = "isp1a"')
    roles = Roles(parse(text, "nosite.toml"))
    for name in ("form2", "form3"):
        with pytest.raises(NotApplicable, match=r"needs a router with a site on the sender's "
                           r"path \(alice -> isp1a -> bob has none\)"):  # fmt: skip
            roles.cast(name)
    assert roles.cast("form1").sites == ("site1b", "site2a")  # circuits go anywhere
    # hinting a later site for form 2: the first site serves and clears the flag
    hinted = TWO_ISPS + '[demo.form2]\nsite = "site2a"\n'
    out = tmp_path / "demo.json"
    _, rows, _, _ = _run(["--world", "simulator", "--only", "form2", "--topology",
                           str(_write(tmp_path, hinted)), "--json", str(out)], capsys)  # fmt: skip
    assert rows["form2"]["status"] == "n/a"
    assert "site1a's router is the first with a site" in rows["form2"]["detail"]
    assert "clears the flag, so site2a never sees them" in rows["form2"]["detail"]
    # a form-3 site off the path catches nothing
    off = Roles(parse(TWO_ISPS + '[demo.form3]\nsite = "site1b"\n', "x.toml"))
    assert off.cast("form3").sites == ("site1b",)  # isp1b is on alice's path
    ring = (demo.TOPOLOGIES / "ring.toml").read_text() + '[demo.form3]\nsite = "C5"\n'
    with pytest.raises(NotApplicable, match="R5 is not on the path H1 -> R1 -> R2 -> R3 -> H2"):
        Roles(parse(ring, "ring.toml")).cast("form3")


@pytest.mark.parametrize(
    ("demo_table", "message"),
    [
        ('[demo]\nsendr = "alice"\n', 'unknown field "sendr"'),
        ('[demo]\nsender = "carol"\n', "field \"sender\": 'carol' is not a node"),
        ('[demo]\nsender = "isp1a"\n', "field \"sender\": 'isp1a' is a router, not a host"),
        ('[demo.form2]\nsites = ["site1a"]\n', '[demo.form2]: unknown field "sites"'),
        ('[demo.form1]\nsites = ["site1a", "site1a"]\n', "names a site twice"),
        ('[demo.frm1]\nsender = "alice"\n', "[demo.frm1]: no such scenario"),
    ],
)
def test_bad_hints_name_the_file_and_field(tmp_path, capsys, demo_table, message):
    topo = _write(tmp_path, TWO_ISPS + demo_table)
    with pytest.raises(HintError, match=None) as info:
        Roles(load(topo))
    assert message in str(info.value) and str(topo) in str(info.value)
    assert demo.main(["--world", "simulator", "--core", "--topology", str(topo)]) == 2
    assert message in capsys.readouterr().err


def test_an_unknown_topology_lists_the_shipped_ones(capsys):
    assert demo.main(["--world", "simulator", "--core", "--topology", "nosuch"]) == 2
    err = capsys.readouterr().err
    assert "nosuch" in err and "twodomain" in err and "ring" in err


def test_quickstart_help_prints_usage_and_exits_0():
    for arg in ("--help", "-h", "help"):
        proc = subprocess.run([str(ROOT / "quickstart"), arg], capture_output=True, text=True,
                              timeout=30)  # fmt: skip
        assert proc.returncode == 0, proc.stderr
        assert "./quickstart demo [--topology FILE]" in proc.stdout
        assert "set -euo" not in proc.stdout
    proc = subprocess.run([str(ROOT / "quickstart"), "bogus"], capture_output=True, text=True,
                          timeout=30)  # fmt: skip
    assert proc.returncode == 2 and "unknown command 'bogus'" in proc.stderr


@pytest.mark.netns
@pytest.mark.timeout(300)
@pytest.mark.parametrize("name", [n for n in SHIPPED if n != "fig2"])  # fig2: test_demo_scenarios
def test_core_scenarios_pass_on_each_shipped_topology_in_namespaces(name, tmp_path, capsys):
    out = tmp_path / "demo.json"
    rc, rows, text, _ = _run(["--world", "testbed", "--core", "--topology", name, "--json",
                              str(out), "--prefix", "pcq"], capsys)  # fmt: skip
    assert "(testbed)" in text and "lookup service on PSP" in text, text
    assert {n: r["status"] for n, r in rows.items()} == dict.fromkeys(demo.CORE_SCENARIOS, "pass")
    assert rc == 0
    assert rows["form1"]["received"] == demo.N and rows["form3"]["dropped"] == demo.N

"""The ``testbed`` command: up, status, inspect --json, exec, down; errors exit 2 with the place."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from testbed import state
from tests.support.topologies import link, node, topology_toml

TOPO = topology_toml(
    "cli",
    node("h1", "host"),
    node("r", "router"),
    node("h2", "host"),
    link("h1", "r"),
    link("h2", "r"),
    node("c", "site", router="r"),
)


def tb(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "testbed", *args], capture_output=True, text=True, timeout=timeout
    )


def test_bad_topology_exits_2_naming_file_line_field(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text(TOPO.replace('b = "r"\n[[link]]', 'b = "q"\n[[link]]'))
    out = tb("up", str(bad))
    assert out.returncode == 2
    assert f"{bad}:13: link #1 field \"b\": 'q' is not a node" in out.stderr


@pytest.mark.netns
def test_up_inspect_exec_down(tmp_path: Path) -> None:
    topo = tmp_path / "cli.toml"
    topo.write_text(TOPO)
    out = tb("up", str(topo), "--prefix", "pcw", "--json")
    assert out.returncode == 0, out.stderr
    summary = json.loads(out.stdout)
    run = summary["run"]
    try:
        assert "ready" in out.stderr and "creating 5 namespaces" in out.stderr
        assert {n["name"] for n in summary["nodes"]} == {"h1", "r", "h2", "c"}
        h2 = next(n for n in summary["nodes"] if n["name"] == "h2")
        addr = h2["interfaces"][0]["address"].split("/")[0]
        ex = tb("exec", "--run", run, "h1", "ping", "-c1", "-W2", addr)
        assert ex.returncode == 0, ex.stdout + ex.stderr
        st = json.loads(tb("status", "--json").stdout)
        mine = next(r for r in st if r["run"] == run)
        assert mine["phase"] == "up" and mine["namespaces"] == 5 and not mine["stale"]
        ins = json.loads(tb("inspect", run, "--json").stdout)
        assert ins["run"] == run and len(ins["links"]) == 3
        assert "ip rule add fwmark 0x2b table 43" in ins["attachments"]["r"]
        # form-3 diversion from another process, as a site daemon would do it
        assert tb("divert", "--run", run, "r", "198.18.77.0/24").returncode == 0
        listed = tb(
            "exec", "--run", run, "r", "nft", "list", "set", "ip", "packetcloud", "divert_dst"
        ).stdout
        assert "198.18.77.0/24" in listed
        assert tb("divert", "--run", run, "--remove", "r", "198.18.77.0/24").returncode == 0
        listed = tb(
            "exec", "--run", run, "r", "nft", "list", "set", "ip", "packetcloud", "divert_dst"
        ).stdout
        assert "198.18.77.0/24" not in listed
        assert tb("divert", "--run", run, "h1", "198.18.77.0/24").returncode != 0
        assert tb("exec", "--run", run, "nosuch", "true").returncode != 0
        # capture a link while h1 pings across it
        pcap = tmp_path / "h1r.pcap"
        cap = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "testbed",
                "capture",
                "--run",
                run,
                "h1-r",
                "-w",
                str(pcap),
                "-c",
                "4",
                "--duration",
                "20",
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(40):
            tb("exec", "--run", run, "h1", "ping", "-c1", "-W1", addr)
            if cap.poll() is not None:
                break
        assert cap.wait(20) == 0
        dump = subprocess.run(["tcpdump", "-nr", str(pcap)], capture_output=True, text=True)
        assert dump.stdout.count("ICMP echo") >= 2, dump.stdout + dump.stderr
    finally:
        down = tb("down", run)
    assert down.returncode == 0, down.stderr
    assert state.run_namespaces(run) == []


@pytest.mark.netns
def test_demo_runs_the_testbed_scenarios() -> None:
    # --testbed-only: the end-to-end demo (pcdemo) has its own tests
    out = tb("demo", "fig2", "--prefix", "pcw", "--testbed-only", timeout=120)
    assert out.returncode == 0, out.stdout + out.stderr
    assert out.stdout.count("[ok]") == 4 and "[FAIL]" not in out.stdout


def test_line_generator_is_available_from_the_command_line() -> None:
    out = tb("up", "line:0")
    assert out.returncode == 2 and "k must be" in out.stderr

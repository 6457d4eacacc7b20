"""Isolation and cleanup: parallel runs do not interfere; SIGKILL + clean leaves nothing."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from testbed import Testbed, scenarios, state, topology
from testbed.cli import TOPOLOGIES

pytestmark = pytest.mark.netns


def _root_links() -> set[str]:
    return set(os.listdir("/sys/class/net"))


def test_two_testbeds_in_parallel_do_not_interfere() -> None:
    before = _root_links()
    topo = topology.load(TOPOLOGIES / "fig2.toml")
    a, b = Testbed(topo, prefix="pct"), Testbed(topo, prefix="pcu")
    with ThreadPoolExecutor(2) as pool:  # built at the same time
        list(pool.map(lambda tb: tb.up(), (a, b)))
    try:
        assert a.run != b.run
        assert set(state.run_namespaces(a.run)).isdisjoint(state.run_namespaces(b.run))
        # the same addresses live in both, each in its own namespaces
        assert a.site("C2").public_ip == b.site("C2").public_ip
        assert scenarios.udp_exchange(a, "S", "D", n=10) == 10
        assert scenarios.udp_exchange(b, "S", "D", n=10) == 10
        # a packet sent in a is not received in b
        rx = scenarios.udp_receiver(b.node("D"), 5700)
        assert scenarios.udp_exchange(a, "S", "D", n=5, port=5700) == 5
        assert scenarios.drain(rx, 1, timeout=0.3) == []
        rx.close()
        # a diversion in one run does not exist in the other
        a.divert("R1", "198.18.64.0/24")
        assert a.diversions("R1") == ["198.18.64.0/24"]
        assert b.diversions("R1") == []
        a_down = a.down()
        assert a_down.namespaces == 13
        # b is untouched by a's teardown
        assert len(state.run_namespaces(b.run)) == 13
        assert scenarios.ping_all(b).ok
        assert b.dns is not None and b.dns.serial("pc.test.") == 1
    finally:
        a.down()
        b.down()
    assert _root_links() == before


def _big_topology(path: Path) -> None:
    """A line of 60 routers with hosts plus delay-line links and a DNS node (processes)."""
    lines = ['name = "killme"']
    for i in range(1, 61):
        lines += [
            f'[[node]]\nname = "r{i}"\nkind = "router"',
            f'[[node]]\nname = "h{i}"\nkind = "host"',
        ]
        lines.append(f'[[link]]\na = "h{i}"\nb = "r{i}"')
        if i > 1:
            delay = '\ndelay = "1ms"' if i <= 6 else ""
            lines.append(f'[[link]]\na = "r{i - 1}"\nb = "r{i}"{delay}')
    lines.append('[[node]]\nname = "DNS"\nkind = "dns"\n[[link]]\na = "DNS"\nb = "r1"')
    path.write_text("\n".join(lines) + "\n")


def test_sigkill_mid_build_then_clean_leaves_nothing_of_that_run(tmp_path: Path) -> None:
    before = _root_links()
    topo = tmp_path / "killme.toml"
    _big_topology(topo)
    with Testbed(topology.load(TOPOLOGIES / "fig2.toml"), prefix="pcv") as bystander:
        proc = subprocess.Popen(
            [sys.executable, "-m", "testbed", "up", str(topo), "--prefix", "pck"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        # kill it once the delay lines (background processes) are running
        deadline = time.monotonic() + 30
        run = None
        assert proc.stderr is not None
        for line in proc.stderr:
            if "addresses" in line:  # printed once the delay lines are up, before DNS
                break
            assert time.monotonic() < deadline
        runs = [r for r in state.list_runs() if r.name.startswith("pck")]
        assert len(runs) == 1
        run = runs[0]
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        run = state.Run.load(run.name)
        assert run.data["phase"] == "building"
        assert state.run_namespaces(run.name), "the build had created namespaces"
        recorded = [(p["pid"], p["start"]) for p in run.data["processes"]]
        assert any(state.alive(*p) for p in recorded), "killed while processes ran"
        assert run.stale
        out = subprocess.run(
            [sys.executable, "-m", "testbed", "clean", "--run", run.name],
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert out.returncode == 0, out.stdout + out.stderr
        assert state.run_namespaces(run.name) == []
        assert not any(state.alive(*p) for p in recorded)
        assert not (state.STATE_ROOT / run.name).exists()
        # the bystander run is intact
        assert len(state.run_namespaces(bystander.run)) == 13
        assert scenarios.udp_exchange(bystander, "S", "D", n=5) == 5
        status = json.loads(
            subprocess.run(
                [sys.executable, "-m", "testbed", "status", "--json"],
                capture_output=True,
                text=True,
            ).stdout
        )
        assert bystander.run in [r["run"] for r in status]
        assert not any(r["stale"] for r in status if r["run"] == bystander.run)
    assert _root_links() == before


def test_clean_refuses_what_is_not_a_run_name() -> None:
    with pytest.raises(ValueError):
        state.clean("../etc")
    with pytest.raises(ValueError):
        state.clean("pct")  # a bare prefix would match every run

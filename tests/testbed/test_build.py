"""Shipped topologies built for real: packets cross them, attachments divert, nothing is left."""

from __future__ import annotations

import os
import subprocess

import pytest

from testbed import Testbed, netns, scenarios, state
from testbed.cli import TOPOLOGIES

pytestmark = pytest.mark.netns


def _root_links() -> set[str]:
    return set(os.listdir("/sys/class/net"))


def test_fig2_hosts_reach_every_node_by_real_packets(fig2: Testbed) -> None:
    outcome = scenarios.ping_all(fig2)
    assert outcome.ok, outcome.detail
    # S -> D UDP, and D answers across the ring
    assert scenarios.udp_exchange(fig2, "S", "D", n=10) == 10
    assert scenarios.udp_exchange(fig2, "D", "S", n=10) == 10


def test_form2_dscp43_goes_through_the_colocated_site_and_plain_traffic_does_not(
    fig2: Testbed,
) -> None:
    outcome = scenarios.form2_diversion(fig2, "S", "D", "C1", n=20)
    assert outcome.ok, outcome.detail


def test_form3_registered_prefix_is_diverted_once_without_loop_and_removal_stops_it(
    fig2: Testbed,
) -> None:
    outcome = scenarios.form3_diversion(fig2, "S", "D", "R1", "C1", n=20)
    assert outcome.ok, outcome.detail
    assert fig2.diversions("R1") == []


def test_divert_api_lists_what_it_installed(fig2: Testbed) -> None:
    fig2.divert("R2", "198.18.64.0/24")
    try:
        assert fig2.diversions("R2") == ["198.18.64.0/24"]
    finally:
        fig2.divert("R2", "198.18.64.0/24", remove=True)
    with pytest.raises(KeyError):
        fig2.divert("R4", "198.18.64.0/24")  # R4 has no site


def test_site_is_reachable_at_its_public_ip_and_knows_its_place(fig2: Testbed) -> None:
    info = fig2.site("C3")
    assert info.public_ip == "198.18.254.3" and info.router == "R3"
    rc, out, _ = fig2.node("S").run(f"ping -c1 -W2 {info.public_ip}")
    assert rc == 0, out
    rc, out, _ = fig2.node("C3").run(["ip", "-o", "addr", "show", "dev", info.data_iface])
    assert info.public_ip in out and info.data_address in out
    assert info.control_address and info.fis_redis and info.dns


def test_control_network_is_separate_from_the_data_network(fig2: Testbed) -> None:
    c1, fis = fig2.site("C1"), fig2.node("FIS")
    assert fig2.node("C1").run(f"ping -c1 -W1 {fis.control_address}").returncode == 0
    # hosts and routers have no way onto the control network
    assert fig2.node("S").run(f"ping -c1 -W1 {c1.control_address}").returncode != 0
    assert fig2.node("R1").run(f"ping -c1 -W1 {c1.control_address}").returncode != 0


def test_redis_fis_answers_on_the_control_network_only(fig2: Testbed) -> None:
    import redis

    url = fig2.site("C2").fis_redis
    assert url is not None

    def roundtrip() -> bytes | None:
        # connect inside the namespace: a redis client connects lazily, on first use
        client = redis.Redis.from_url(url, socket_timeout=2)
        client.set("pcfis:pct-key", "v")  # the site user may touch the FIS keys only
        value = client.get("pcfis:pct-key")
        client.close()
        return value

    assert fig2.node("C2").call(roundtrip) == b"v"
    host, port = url.rpartition("@")[2].split("/")[0].split(":")
    assert not fig2.node("S").tcp_open(host, int(port))


def test_node_run_returns_code_and_both_streams_without_pipe_deadlock(fig2: Testbed) -> None:
    # 1 MiB on each stream would block a naive implementation reading one pipe at a time
    rc, out, err = fig2.node("S").run(
        "head -c 1048576 /dev/zero | tr '\\0' a; head -c 1048576 /dev/zero | tr '\\0' b >&2; exit 3"
    )
    assert (rc, len(out), len(err)) == (3, 1 << 20, 1 << 20)
    rc, _, err = fig2.node("S").run("sleep 5", timeout=0.3)
    assert rc == -9 and "timed out" in err


def test_background_process_readiness_and_failure_is_reported(fig2: Testbed) -> None:
    node = fig2.node("D")
    addr = node.address
    assert addr
    proc = node.start(
        ["python3", "-m", "http.server", "--bind", addr, "8099"],
        name="http",
        ready=lambda: node.tcp_open(addr, 8099),
    )
    try:
        assert fig2.node("S").tcp_open(addr, 8099)
        assert any(p["pid"] == proc.pid for p in fig2.run_state.data["processes"])
    finally:
        proc.stop()
    assert not proc.alive
    with pytest.raises(RuntimeError, match="exited"):
        node.start(["sh", "-c", "echo boom; exit 4"], ready=lambda: False)


def test_multidomain_up_down_with_diversions_and_nothing_left() -> None:
    before = _root_links()
    with Testbed.from_file(TOPOLOGIES / "multidomain.toml", prefix="pct") as tb:
        run = tb.run
        assert len(state.run_namespaces(run)) == 16  # 15 nodes (with the PSP) + control
        for outcome in scenarios.run_all(tb):
            assert outcome.ok, f"{outcome.name}: {outcome.detail}"
        procs = [(p.pid, p.start_time) for p in tb.processes]
        assert procs
    assert state.run_namespaces(run) == []
    assert not any(state.alive(pid, start) for pid, start in procs)
    assert _root_links() == before
    assert not (state.STATE_ROOT / run).exists()


def test_build_failure_tears_everything_down(tmp_path) -> None:
    bad = tmp_path / "bad.toml"
    # knot cannot serve a zone whose origin is broken: force a failure late in the build
    bad.write_text((TOPOLOGIES / "fig2.toml").read_text())
    tb = Testbed.from_file(bad, prefix="pct")
    tb.topo.nodes["DNS"].zone = "pc.test."

    def boom() -> None:
        raise RuntimeError("injected")

    tb._start_dns = lambda name: boom()  # type: ignore[method-assign]
    with pytest.raises(RuntimeError, match="injected"):
        tb.up()
    assert state.run_namespaces(tb.run) == []
    assert not any(netns.exists(n) for n in tb.run_state.data["namespaces"])


def test_ip_rule_tos_cannot_express_dscp43_so_nftables_marks_are_used(fig2: Testbed) -> None:
    # the reason for the nftables mark: the kernel rejects ToS 0xac in an ip rule
    out = fig2.node("R4").run("ip rule add tos 0xac table 43")
    assert out.returncode != 0
    assert subprocess.run(["true"]).returncode == 0

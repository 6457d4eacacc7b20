"""The testbed's FIS Redis is reachable only by sites, with per-role ACL users, and keeps its
data across a crash (append-only file)."""

from __future__ import annotations

import subprocess

import pytest
import redis

from testbed import Testbed, netns

pytestmark = pytest.mark.netns


def _client(tb: Testbed, url: str) -> redis.Redis:
    return redis.Redis.from_url(url, socket_timeout=2, socket_connect_timeout=1)


def _ask(tb: Testbed, node: str, url: str, *cmd: str) -> object:
    """Run one Redis command from ``node``'s namespace; the error class name if it fails."""

    def go() -> object:
        client = _client(tb, url)
        try:
            return client.execute_command(*cmd)
        except redis.RedisError as exc:
            return type(exc).__name__
        finally:
            client.close()

    return tb.node(node).call(go)


def test_only_sites_reach_the_fis_and_only_with_their_credentials(fig2: Testbed) -> None:
    site_url, isp_url = fig2.fis_url("site"), fig2.fis_url("isp")
    assert site_url and isp_url and fig2.redis_url
    host, port = fig2.redis_url.removeprefix("redis://").split("/")[0].split(":")
    # every site connects and authenticates as the site user
    for site in ("C1", "C2", "C3"):
        assert fig2.node(site).tcp_open(host, int(port))
        assert _ask(fig2, site, site_url, "SET", "pcfis:probe", site) is True
    # the PSP's namespace shares the control network, but cannot even connect
    assert fig2.node("PSP").control_address
    assert not fig2.node("PSP").tcp_open(host, int(port))
    assert _ask(fig2, "PSP", site_url, "GET", "pcfis:probe") == "TimeoutError"
    # nor by taking a site's control address (the filter is by bridge port)
    psp = fig2.node("PSP")
    c1_addr = fig2.node("C1").control_address
    psp.run(["ip", "addr", "add", f"{c1_addr}/32", "dev", "ctl0"], check=True)
    try:
        code = (
            "import socket, sys; s = socket.socket(); s.settimeout(1); "
            f"s.bind(('{c1_addr}', 0)); print('bound', flush=True); "
            f"sys.exit(s.connect_ex(('{host}', {port})))"
        )
        rc, out, _ = psp.run(["python3", "-c", code])
        assert out.strip() == "bound" and rc != 0
    finally:
        psp.run(["ip", "addr", "del", f"{c1_addr}/32", "dev", "ctl0"])
    # from a site: wrong password, the disabled default user, and a site's limits are refused
    wrong = site_url.replace(fig2.redis_passwords["site"], "0" * 32)
    assert _ask(fig2, "C1", wrong, "GET", "pcfis:probe") == "AuthenticationError"
    assert _ask(fig2, "C1", fig2.redis_url, "GET", "pcfis:probe") == "AuthenticationError"
    assert _ask(fig2, "C1", site_url, "FLUSHALL") == "NoPermissionError"
    assert _ask(fig2, "C1", site_url, "GET", "other:key") == "NoPermissionError"
    # the ISP user reads everything but writes only the ISP namespace
    assert _ask(fig2, "C1", isp_url, "GET", "pcfis:probe") == b"C3"
    assert _ask(fig2, "C1", isp_url, "HSET", "pcfis:kv:isp", "mtu", "1500") == 1
    assert _ask(fig2, "C1", isp_url, "HSET", "pcfis:kv:acme/s", "k", "1") == "NoPermissionError"
    # the ruleset lives in the control namespace only
    assert fig2.control_ns
    out = subprocess.run(
        ["nsenter", f"--net={netns.path(fig2.control_ns)}", "--", "nft", "list", "ruleset"],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    assert "pctb_fis" in out


def test_the_fis_keeps_its_data_when_redis_is_killed_and_restarted(fig2: Testbed) -> None:
    url = fig2.fis_url("site")
    assert url

    # a script, as every FIS write is (the append-only file logs it as MULTI/EXEC)
    script = "redis.call('HSET', KEYS[1], 'tx', 'v2') return redis.call('INCR', KEYS[2])"
    keys = ("pcfis:kv:acme/persist", "pcfis:persist-version")
    assert _ask(fig2, "C2", url, "HSET", "pcfis:kv:acme/persist", "k", "v") == 1
    assert _ask(fig2, "C2", url, "EVAL", script, "2", *keys) == 1
    fig2.kill_fis()
    assert _ask(fig2, "C2", url, "PING") == "ConnectionError"
    fig2.start_fis()
    assert _ask(fig2, "C2", url, "HGET", "pcfis:kv:acme/persist", "k") == b"v"
    assert _ask(fig2, "C2", url, "HGET", "pcfis:kv:acme/persist", "tx") == b"v2"
    assert _ask(fig2, "C2", url, "DEL", "pcfis:kv:acme/persist", "pcfis:persist-version") == 2

"""The running daemon serves its control API over TLS with the ``[limits]`` of its config, and a
SIGHUP changes the limits in place while a changed ``[tls]`` waits for a restart."""

from __future__ import annotations

import signal
from pathlib import Path

import pytest

from pcsite_lite import pki
from pcsite_lite.control.client import ControlClient, ControlError, OutHop
from tests.support import wait_until
from tests.support.sites import PSP_TOKEN, Chain, have_tools, in_ns, site_config

pytestmark = [
    pytest.mark.netns,
    pytest.mark.skipif(not have_tools(), reason="needs ip and nft"),
]


def _config(tmp: Path, out_hops: int, cert: Path, key: Path) -> str:
    return site_config("site-a", Chain.SITE_A, 1, tmp / "state-a") + (
        f'\n[limits]\nmax_out_hops = {out_hops}\nmax_connections_per_client = 8\n'
        f'\n[tls]\ncert = "{cert}"\nkey = "{key}"\n'
    )  # fmt: skip


def _wait_log(ch: Chain, text: str, timeout: float = 10.0) -> bool:
    return wait_until(lambda: ch.log_has("a", text), timeout)


def test_daemon_serves_https_with_config_limits_and_reloads_them(tmp_path: Path) -> None:
    ca = pki.make_ca()
    ca_file, _ = ca.write(tmp_path / "pki", "ca")
    crt, key = pki.issue(ca, ["127.0.0.1"]).write(tmp_path / "pki", "site")
    (tmp_path / "state-a").mkdir()
    cfg = tmp_path / "site-a.toml"
    cfg.write_text(_config(tmp_path, 2, crt, key))
    with Chain(tmp_path) as ch:
        ch.start_site_config("a", cfg)
        assert "control API on 127.0.0.1:8080, https" in ch.logs["a"].read_text()
        ns = ch.ns["a"]
        c = ControlClient("https://127.0.0.1:8080", token=PSP_TOKEN, psp="acme",
                          ca_file=str(ca_file))  # fmt: skip
        hops = [OutHop(7 + i, "198.18.62.2", bytes(16)) for i in range(3)]

        def install(n: int) -> object:
            label = c.allocate_circuit("srcroute")["label"]
            try:
                return c.install_hop(label, in_key=bytes(16), out=hops[:n])
            except ControlError as exc:
                return (exc.status, exc.code, exc.message)

        assert in_ns(ns, c.whoami) == {"role": "psp", "name": "acme"}
        got = in_ns(ns, lambda: install(3))
        assert got[:2] == (400, "limit_exceeded") and "limits.max_out_hops" in got[2]  # type: ignore[index]
        assert len(in_ns(ns, lambda: install(2))["out"]) == 2  # type: ignore[index]
        plain = ControlClient("http://127.0.0.1:8080", token=PSP_TOKEN)
        with pytest.raises(ControlError) as e:
            in_ns(ns, plain.whoami)
        assert e.value.code == "connection"  # no plain HTTP on a TLS port

        # SIGHUP: a changed limit applies in place
        cfg.write_text(_config(tmp_path, 3, crt, key))
        ch.procs["a"].send_signal(signal.SIGHUP)
        assert _wait_log(ch, "reloaded configuration")
        assert len(in_ns(ns, lambda: install(3))["out"]) == 3  # type: ignore[index]
        # ... a changed [tls] does not (it needs a restart)
        crt2, key2 = pki.issue(ca, ["127.0.0.1"]).write(tmp_path / "pki", "site2")
        cfg.write_text(_config(tmp_path, 3, crt2, key2))
        ch.procs["a"].send_signal(signal.SIGHUP)
        assert _wait_log(ch, "reload refused: tls need a restart")
        assert in_ns(ns, c.whoami)["name"] == "acme"
        assert ch.stop_site("a") == 0

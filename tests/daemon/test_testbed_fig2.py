"""The daemon runs the shipped topology's sites: paper Fig. 2 built by the testbed (prefix
"pcd"), ``pcsite run`` in sites C2 and C3 with the topology's Redis FIS on the control network,
and a form-1 circuit S -> C2 -> C3 -> D through the legacy routers with real packets."""

from __future__ import annotations

import socket
import struct
import time
from pathlib import Path

import pytest

from pcdemo.rig import start_pcsite
from pcsite_lite.control.client import ControlClient, OutHop
from pcsock import wire
from tests.support.sites import ADMIN, PSP_TOKEN

pytestmark = [pytest.mark.netns, pytest.mark.timeout(180)]

TOPOLOGY = Path(__file__).resolve().parents[2] / "testbed" / "topologies" / "fig2.toml"
K2, K3 = bytes(range(16)), bytes(range(5, 21))


def _config(info: object, state: Path) -> str:
    fis = getattr(info, "fis_redis", None)
    fis_line = f'fis = "{fis}"' if fis else ""
    return f"""[site]
name = "{info.name}"
public_ip = "{info.public_ip}"
workers = {info.compute_nodes}
state_dir = "{state}"
{fis_line}

[dataplane]
tun_prefix = "pcdw"

[control]
listen = "127.0.0.1:8080"
admin_token = "{ADMIN}"

[control.psps.acme]
token = "{PSP_TOKEN}"
"""  # type: ignore[attr-defined]


def test_fig2_sites_forward_a_form1_circuit_through_legacy_routers(tmp_path: Path) -> None:
    from testbed import Testbed

    with Testbed.from_file(TOPOLOGY, prefix="pcd") as tb:
        sites = {}
        for name in ("C2", "C3"):
            info = tb.site(name)
            assert info.fis_redis, "fig2 runs a Redis FIS on the control network"
            state = tmp_path / name
            state.mkdir()
            cfg = tmp_path / f"{name}.toml"
            cfg.write_text(_config(info, state))
            sites[name] = (info, start_pcsite(tb.node(name), cfg))

        def client(name: str) -> ControlClient:
            return ControlClient("http://127.0.0.1:8080", token=PSP_TOKEN, psp="acme")

        d_addr = tb.node("D").address
        assert d_addr is not None
        c3 = client("C3")
        l3 = tb.node("C3").call(lambda: c3.allocate_circuit("srcroute")["label"])
        tb.node("C3").call(lambda: c3.install_hop(l3, in_key=K3, deliver=d_addr, strip=True))
        c2 = client("C2")
        l2 = tb.node("C2").call(lambda: c2.allocate_circuit("srcroute")["label"])
        c3_ip = sites["C3"][0].public_ip
        tb.node("C2").call(lambda: c2.install_hop(l2, in_key=K2, out=[OutHop(l3, c3_ip, K3)]))

        def bind() -> socket.socket:
            s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            s.bind((d_addr, 9999))
            s.settimeout(0.3)
            return s

        rx = tb.node("D").call(bind)
        tx = tb.node("S").call(
            lambda: socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)
        )
        s_addr = tb.node("S").address
        c2_ip = sites["C2"][0].public_ip
        for i in range(20):
            body = b"fig2-%02d" % i
            udp = struct.pack("!HHHH", 5555, 9999, 8 + len(body), 0) + body
            pkt = wire.build_circuit_packet(src=s_addr, dst=c2_ip, label=l2, key=K2, payload=udp)
            tx.sendto(bytes(pkt), (c2_ip, 0))
        got = []
        end = time.monotonic() + 5
        while len(got) < 20 and time.monotonic() < end:
            try:
                data, peer = rx.recvfrom(2048)
                got.append((data, peer[0]))
            except TimeoutError:
                pass
        assert sorted(d for d, _ in got) == [b"fig2-%02d" % i for i in range(20)]
        assert {p for _, p in got} == {s_addr}  # stripped at C3: the original source again
        for _, proc in sites.values():
            proc.stop()

"""The real daemon in namespaces: a form-1 circuit through two sites, a worker killed
mid-stream, FIS-chosen out hops on the SQLite and Redis engines, clean shutdown."""

from __future__ import annotations

import os
import shutil
import socket
import struct
import subprocess
import threading
import time
from pathlib import Path

import pytest

from pcsite_lite.control.client import ControlError, OutHop
from pcsock import wire
from testbed.scenarios import drain as _drain
from tests.support import wait_until
from tests.support.sites import (
    ADMIN,
    OTHER_TOKEN,
    Chain,
    acme_public_hex,
    deploy_source_routing,
    in_ns,
)

pytestmark = [pytest.mark.netns, pytest.mark.timeout(120)]

KA, KB = bytes(range(16)), bytes(range(1, 17))


def _udp(sport: int, dport: int, payload: bytes) -> bytes:
    return struct.pack("!HHHH", sport, dport, 8 + len(payload), 0) + payload


def _circuit(ch: Chain, deliver: str = Chain.D) -> int:
    """Install S -> A -> B -> deliver (shim stripped at B); the label at A."""
    cb = ch.client("b")
    lb = cb.allocate_circuit("srcroute")["label"]
    cb.install_hop(lb, in_key=KB, deliver=deliver, strip=True)
    ca = ch.client("a")
    la = ca.allocate_circuit("srcroute")["label"]
    ca.install_hop(la, in_key=KA, out=[OutHop(lb, Chain.SITE_B, KB)])
    return la


@pytest.mark.parametrize("tx", ["tun", "raw"])
def test_form1_circuit_through_two_sites_delivers_and_forgeries_are_dropped(
    tmp_path: Path, tx: str
) -> None:
    with Chain(tmp_path) as ch:
        ch.start_site("a", 2, tx=tx)
        ch.start_site("b", 1)
        la = _circuit(ch)
        rx = ch.udp_receiver(9999)
        tx = ch.raw_sender()
        for i in range(20):
            pkt = wire.build_circuit_packet(src=Chain.S, dst=Chain.SITE_A, label=la, key=KA,
                                            payload=_udp(5555, 9999, b"m%02d" % i))  # fmt: skip
            tx.sendto(bytes(pkt), (Chain.SITE_A, 0))
        got = _drain(rx, 20)
        assert sorted(got) == [b"m%02d" % i for i in range(20)]
        # a forged MAC and an unknown label never reach D and are counted by reason
        bad = wire.build_circuit_packet(src=Chain.S, dst=Chain.SITE_A, label=la, key=bytes(16),
                                        payload=_udp(5555, 9999, b"forged"))  # fmt: skip
        unknown = wire.build_circuit_packet(src=Chain.S, dst=Chain.SITE_A, label=la ^ 1, key=KA,
                                            payload=_udp(5555, 9999, b"guess"))  # fmt: skip
        tx.sendto(bytes(bad), (Chain.SITE_A, 0))
        tx.sendto(bytes(unknown), (Chain.SITE_A, 0))
        assert _drain(rx, 1, timeout=0.6) == []
        admin = ch.client("a", token=ADMIN, psp=None)
        assert wait_until(  # the workers publish their counters periodically
            lambda: all(f'reason="{r}"' in admin.metrics() for r in ("bad_mac", "unknown_label"))
        ), admin.metrics()
        client = ch.client("a")
        assert wait_until(lambda: client.usage()["services"]["srcroute"]["packets"] >= 20)
        assert client.usage()["services"]["srcroute"]["packets"] == 20
        # another PSP cannot see or tear down acme's circuit
        evil = ch.client("a", token=OTHER_TOKEN, psp="evil")
        with pytest.raises(ControlError) as e:
            evil.request("DELETE", f"/v1/psps/acme/circuits/{la}")
        assert e.value.code == "forbidden"
        # clean shutdown leaves no kernel state behind
        assert ch.stop_site("a") == 0
        rules = subprocess.run(["ip", "-n", ch.ns["a"], "rule"], capture_output=True,
                               text=True).stdout  # fmt: skip
        assert "fwmark" not in rules and "0:\tfrom all lookup local" in rules
        nft = subprocess.run(["ip", "netns", "exec", ch.ns["a"], "nft", "list", "ruleset"],
                             capture_output=True, text=True).stdout  # fmt: skip
        assert "pcsite" not in nft
        links = subprocess.run(["ip", "-n", ch.ns["a"], "link"], capture_output=True,
                               text=True).stdout  # fmt: skip
        assert "pcdw" not in links


def test_worker_killed_mid_stream_its_circuits_resume_within_a_second(tmp_path: Path) -> None:
    with Chain(tmp_path) as ch:
        ch.start_site("a", 2)
        ch.start_site("b", 1)
        labels = [_circuit(ch) for _ in range(12)]
        rx = ch.udp_receiver(9999)
        tx = ch.raw_sender()
        pkts = [
            [
                bytes(
                    wire.build_circuit_packet(
                        src=Chain.S,
                        dst=Chain.SITE_A,
                        label=la,
                        key=KA,
                        payload=_udp(5555, 9999, struct.pack("!Bd", i, 0.0)),
                    )
                )
            ]
            for i, la in enumerate(labels)
        ]
        arrivals: list[tuple[int, float]] = []
        stop = threading.Event()

        def receive() -> None:
            while not stop.is_set():
                try:
                    data = rx.recv(2048)
                except TimeoutError:
                    continue
                arrivals.append((data[0], time.monotonic()))

        def send() -> None:
            while not stop.is_set():
                for p in pkts:
                    tx.sendto(p[0], (Chain.SITE_A, 0))
                time.sleep(0.005)  # kept, pacing the sender

        threads = [threading.Thread(target=receive), threading.Thread(target=send)]
        for t in threads:
            t.start()
        try:
            admin = ch.client("a", token=ADMIN, psp=None)

            def per_worker() -> dict[str, int]:
                return {
                    line.split('worker="')[1].split('"')[0]: int(line.rsplit(" ", 1)[1])
                    for line in admin.metrics().splitlines()
                    if line.startswith("pcsite_rx_packets_total{")
                }

            # the kernel split spread the circuits: both workers carry traffic, every circuit
            # delivers
            assert wait_until(
                lambda: (
                    all(per_worker().get(w, 0) > 50 for w in ("0", "1"))
                    and {i for i, _ in arrivals} == set(range(12))
                )
            ), per_worker()
            status = admin.status()
            victim = next(w for w in status["workers"] if w["index"] == 0)
            assert victim["buckets"] > 0
            os.kill(victim["pid"], 9)
            killed = time.monotonic()
            wait_until(lambda: {i for i, t in arrivals if t > killed} == set(range(12)))
        finally:
            stop.set()
            for t in threads:
                t.join()
        before = {i for i, t in arrivals if t < killed}
        assert before == set(range(12))
        # every circuit (those on the killed worker too) delivers again within 1 s
        for i in range(12):
            after = [t for j, t in arrivals if j == i and t > killed]
            assert after, f"circuit {i} never resumed"
            assert min(after) - killed < 1.0, (i, min(after) - killed)
        log = ch.logs["a"].read_text()
        assert "worker 0" in log and "exited" in log


@pytest.mark.parametrize("engine", ["sqlite", "redis"])
def test_uploaded_service_reads_the_fis_entry_written_via_api_to_steer_the_circuit(
    tmp_path: Path, engine: str
) -> None:
    redis_proc = None
    fis = None
    if engine == "redis":
        if not shutil.which("redis-server"):
            pytest.fail("redis-server is not installed (apt-get install redis-server)")
        sock = tmp_path / "redis.sock"
        redis_proc = subprocess.Popen(
            ["redis-server", "--port", "0", "--unixsocket", str(sock), "--save", "",
             "--appendonly", "no"], stdout=subprocess.DEVNULL,
        )  # fmt: skip
        assert wait_until(sock.exists, 10), "redis-server did not start"
        fis = f"unix://{sock}"
    try:
        with Chain(tmp_path) as ch:
            ch.start_site("a", 2, fis=fis, signing_key=acme_public_hex())
            ch.start_site("b", 1)
            cb = ch.client("b")
            lb1 = cb.allocate_circuit("srcroute")["label"]
            cb.install_hop(lb1, in_key=KB, deliver=Chain.D, strip=True)
            lb2 = cb.allocate_circuit("srcroute")["label"]
            cb.install_hop(lb2, in_key=KB, deliver=Chain.D2, strip=True)
            ca = ch.client("a")
            # the PSP's source-routing code, uploaded signed through the API, reads the FIS
            deploy_source_routing(ca)
            assert ca.list_services()[0]["active"] == "1"
            la = ca.allocate_circuit("srcroute")["label"]
            ca.install_hop(la, in_key=KA, out=[OutHop(lb1, Chain.SITE_B, KB),
                                              OutHop(lb2, Chain.SITE_B, KB)])  # fmt: skip
            rx1 = ch.udp_receiver(9999, Chain.D)
            rx2 = ch.udp_receiver(9999, Chain.D2)
            tx = ch.raw_sender()
            pkt = bytes(wire.build_circuit_packet(src=Chain.S, dst=Chain.SITE_A, label=la,
                        key=KA, payload=_udp(5555, 9999, b"x")))  # fmt: skip
            for out, rx, other in ((lb1, rx1, rx2), (lb2, rx2, rx1)):
                ca.fis_put("srcroute", str(la), {"label": out, "next_hop": Chain.SITE_B})

                def steered(rx: socket.socket = rx) -> bool:  # once the cache has the write
                    tx.sendto(pkt, (Chain.SITE_A, 0))
                    return bool(_drain(rx, 1, timeout=0.1))

                assert wait_until(steered, 10)
                _drain(rx, 100, timeout=0.3), _drain(other, 100, timeout=0.3)  # probes in flight
                for _ in range(10):
                    tx.sendto(pkt, (Chain.SITE_A, 0))
                assert len(_drain(rx, 10)) == 10
                assert _drain(other, 1, timeout=0.3) == []
            assert ca.fis_get("srcroute", str(la))["label"] == lb2
            # another PSP cannot write acme's FIS namespace
            evil = ch.client("a", token=OTHER_TOKEN, psp="evil")
            with pytest.raises(ControlError) as e:
                evil.request("PUT", f"/v1/psps/acme/fis/srcroute/kv/{la}", {"value": 1})
            assert e.value.code == "forbidden"
    finally:
        if redis_proc is not None:
            redis_proc.terminate()
            redis_proc.wait(5)


def test_sighup_reloads_credentials_and_refuses_changes_that_need_a_restart(
    tmp_path: Path,
) -> None:
    import signal

    with Chain(tmp_path) as ch:
        ch.start_site("a", 1)
        cfg = tmp_path / "site-a.toml"
        new_token = "newpsp-token-0123456789abcdef"
        cfg.write_text(cfg.read_text() + f'\n[control.psps.newpsp]\ntoken = "{new_token}"\n')
        ch.procs["a"].send_signal(signal.SIGHUP)
        assert wait_until(lambda: ch.log_has("a", "reloaded configuration"), 10), ch.logs[
            "a"
        ].read_text()
        assert ch.client("a", token=new_token, psp="newpsp").whoami()["name"] == "newpsp"
        # a worker count change needs a restart: refused, the site keeps running as it was
        cfg.write_text(cfg.read_text().replace("workers = 1", "workers = 3"))
        ch.procs["a"].send_signal(signal.SIGHUP)
        assert wait_until(lambda: ch.log_has("a", "reload refused"), 10), ch.logs["a"].read_text()
        assert "workers" in ch.logs["a"].read_text().split("reload refused")[1]
        status = ch.client("a", token=ADMIN, psp=None).status()
        assert len(status["workers"]) == 1
        # a broken file is refused too, with the key named
        cfg.write_text(cfg.read_text().replace("workers = 3", "workers = 0"))
        ch.procs["a"].send_signal(signal.SIGHUP)
        assert wait_until(lambda: ch.log_has("a", "site.workers"), 10), ch.logs["a"].read_text()
        assert ch.procs["a"].poll() is None
        assert ch.stop_site("a") == 0


FIREWALL = b"""# drops UDP datagrams to port 7777, lets everything else continue to its destination
def process(pkt):
    if pkt.proto == 17 and pkt.read(2, 2) == b"\\x1e\\x61":
        return pkt.drop("port 7777 blocked")
"""


def test_forms_2_and_3_are_diverted_by_the_kernel_split_and_run_the_registered_service(
    tmp_path: Path,
) -> None:
    from pcsite_lite.repository import sign_service
    from pcsock.ownership import OwnershipClaim, ZoneKey, build_proof, reverse_zone
    from tests.support.sites import ACME_KEY

    prefix = "198.18.63.0/24"  # D's network, owned by acme
    now = time.time()
    root, own = ZoneKey.generate("in-addr.arpa."), ZoneKey.generate(reverse_zone(prefix))
    anchor = tmp_path / "anchor.ds"
    anchor.write_text(root.ds_text())
    claim = OwnershipClaim(prefix, "acme", "firewall", now - 3600, now + 86400)
    proof = build_proof([claim], own, chain=[root], inception=now - 60, expiration=now + 3600)
    with Chain(tmp_path) as ch:
        ch.start_site("a", 2, signing_key=acme_public_hex(), trust_anchor_file=str(anchor))
        ca = ch.client("a")
        ca.upload_service("firewall", "1", FIREWALL,
                          sign_service(ACME_KEY, "acme", "firewall", "1", FIREWALL))  # fmt: skip
        ca.activate_service("firewall", "1")
        rx = ch.udp_receiver(9999, Chain.D)
        blocked = ch.udp_receiver(7777, Chain.D)
        plain = in_ns(ch.ns["s"], lambda: socket.socket(socket.AF_INET, socket.SOCK_DGRAM))
        # before sign-up the site does not see D's traffic at all
        plain.sendto(b"before", (Chain.D, 7777))
        assert _drain(blocked, 1) == [b"before"]
        assert ca.register_destination(prefix, "firewall", str(proof))["diverted"] is True
        for i in range(10):
            plain.sendto(b"ok%d" % i, (Chain.D, 9999))
            plain.sendto(b"no%d" % i, (Chain.D, 7777))
        assert sorted(_drain(rx, 10)) == sorted(b"ok%d" % i for i in range(10))
        assert _drain(blocked, 1, timeout=0.5) == []
        assert wait_until(lambda: ca.usage()["services"]["firewall"]["packets"] >= 20)
        fw = ca.usage()["services"]["firewall"]
        assert fw["packets"] == 20 and fw["drops"] == 10
        # form 2: a service ID registered through the API; the flagged packet to D is diverted
        # at A (DSCP 43), processed, and continues to D
        sid = ca.register_service_id("tagger")["service_id"]
        tx = ch.raw_sender()
        for i in range(5):
            pkt = wire.build_service_packet(src=Chain.S, dst=Chain.D, service_id=sid,
                                            payload=_udp(5555, 9999, b"f2-%d" % i))  # fmt: skip
            tx.sendto(bytes(pkt), (Chain.D, 0))
        assert wait_until(lambda: ca.usage()["services"].get("tagger", {}).get("packets", 0) >= 5)
        usage = ca.usage()["services"]
        assert usage["tagger"]["packets"] == 5
        # an unregistered service ID is dropped with a reason
        pkt = wire.build_service_packet(src=Chain.S, dst=Chain.D, service_id=sid + 1,
                                        payload=_udp(5555, 9999, b"x"))  # fmt: skip
        tx.sendto(bytes(pkt), (Chain.D, 0))
        admin = ch.client("a", token=ADMIN, psp=None)
        assert wait_until(lambda: 'reason="no_service"' in admin.metrics()), admin.metrics()


def test_unreachable_fis_is_a_clear_startup_error_with_nothing_left_behind(
    tmp_path: Path,
) -> None:
    with Chain(tmp_path) as ch:
        with pytest.raises(RuntimeError) as e:
            ch.start_site("a", 1, fis=f"unix://{tmp_path}/no-redis-here.sock")
        msg = str(e.value)
        assert "site.fis" in msg and "no-redis-here.sock" in msg and "Traceback" not in msg
        assert "a" not in ch.procs  # it exited by itself
        rules = subprocess.run(["ip", "-n", ch.ns["a"], "rule"], capture_output=True,
                               text=True).stdout  # fmt: skip
        assert "fwmark" not in rules and "0:\tfrom all lookup local" in rules

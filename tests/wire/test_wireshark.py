"""The Wireshark Lua dissector decodes what pcsock.wire builds: the spec vectors, rejected
inputs and random packets, written to a pcap and read back with tshark."""

from __future__ import annotations

import os
import random
import shutil
import subprocess
from pathlib import Path

import pytest
from scapy.layers.inet import IP, UDP
from scapy.layers.l2 import Ether
from scapy.utils import wrpcap

from pcsock import wire
from pcsock.scapy import PacketCloudService
from tests.support.wire_vectors import by_name, load, packet

ROOT = Path(__file__).resolve().parents[2]
LUA = ROOT / "contrib" / "wireshark" / "packetcloud.lua"
TSHARK = shutil.which("tshark")
FIELDS = [
    "packetcloud.version",
    "packetcloud.form",
    "packetcloud.next_proto",
    "packetcloud.hop_limit",
    "packetcloud.metadata",
    "packetcloud.label",
    "packetcloud.orig_src",
    "packetcloud.service_id",
    "packetcloud.check",
    "packetcloud.check_ok",
    "frame.protocols",
]

pytestmark = pytest.mark.skipif(TSHARK is None, reason="tshark not installed (./quickstart setup)")


def _env(home: Path) -> dict[str, str]:
    """An environment with no personal Wireshark profile (an empty HOME and config dir)."""
    config = home / "wireshark-config"
    config.mkdir(exist_ok=True)
    return {
        **os.environ,
        "HOME": str(home),
        "XDG_CONFIG_HOME": str(home / ".config"),
        "WIRESHARK_CONFIG_DIR": str(config),
    }


def tshark(pcap: Path, home: Path, hop_key: bytes | None = None) -> list[dict[str, str]]:
    """Decode ``pcap`` with the dissector; one dict of FIELDS per frame.

    HOME points to an empty directory so that no personal Wireshark profile or plugin changes
    the result; Lua scripts given with -X run as root with Debian's init.lua (see the script).
    """
    cmd = [TSHARK or "tshark", "-n", "-X", f"lua_script:{LUA}", "-r", str(pcap), "-T", "fields"]
    cmd += ["-E", "separator=/t", "-E", "occurrence=f"]
    if hop_key is not None:
        cmd += ["-o", f"packetcloud.hop_key:{hop_key.hex()}"]
    for field in FIELDS:
        cmd += ["-e", field]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=60, env=_env(home))
    assert proc.returncode == 0, proc.stderr
    assert "Lua" not in proc.stderr or "error" not in proc.stderr.lower(), proc.stderr
    return [dict(zip(FIELDS, line.split("\t"))) for line in proc.stdout.splitlines()]


def expected(raw: bytes, key_ok: bool | None) -> dict[str, str]:
    """What the dissector must show for ``raw``, from pcsock.wire's parse."""
    pkt = wire.parse(raw)
    exp = {
        "packetcloud.version": "1",
        "packetcloud.form": str(pkt.form),
        "packetcloud.next_proto": str(pkt.next_proto),
        "packetcloud.metadata": f"0x{pkt.metadata:02x}",
        "packetcloud.check": pkt.check.hex(),
        "packetcloud.hop_limit": "",
        "packetcloud.label": "",
        "packetcloud.orig_src": "",
        "packetcloud.service_id": "",
    }
    if pkt.form == wire.FORM_CIRCUIT:
        exp["packetcloud.hop_limit"] = str(pkt.hop_limit)
        exp["packetcloud.label"] = f"0x{pkt.label:08x}"
        exp["packetcloud.orig_src"] = wire.int2ip(pkt.orig_src)
        exp["packetcloud.check_ok"] = "" if key_ok is None else str(int(key_ok))
    else:
        exp["packetcloud.service_id"] = f"0x{pkt.service_id:06x}"
        exp["packetcloud.check_ok"] = str(int(pkt.verify_check()))
    return exp


def _frames(raws: list[bytes]) -> list[Ether]:
    return [Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:02") / IP(r) for r in raws]


def _random_packets(n: int) -> list[bytes]:
    rng = random.Random(6253)
    out = []
    for i in range(n):
        common = dict(
            src=rng.getrandbits(32),
            dst=rng.getrandbits(32),
            metadata=rng.getrandbits(8),
            next_proto=rng.choice([1, 6, 17, 99]),
            udp=bool(i % 2),
            payload=rng.randbytes(rng.randrange(0, 40)),
        )
        if i % 3:
            out.append(
                bytes(
                    wire.build_circuit_packet(
                        label=rng.getrandbits(32),
                        key=bytes(range(16)),
                        hop_limit=rng.getrandbits(8),
                        orig_src=rng.getrandbits(32),
                        **common,  # type: ignore[arg-type]
                    )
                )
            )
        else:
            out.append(
                bytes(wire.build_service_packet(service_id=rng.getrandbits(24), **common))  # type: ignore[arg-type]
            )
    return out


def test_tshark_decodes_spec_vectors_and_random_packets_like_wire(tmp_path: Path) -> None:
    named = load("vector") + load("hop") + [by_name()["R1"], by_name()["R2"]]
    raws = [packet(v) for v in named] + _random_packets(24)
    pcap = tmp_path / "packetcloud.pcap"
    wrpcap(str(pcap), _frames(raws))
    rows = tshark(pcap, tmp_path)
    assert len(rows) == len(raws)
    for i, (raw, row) in enumerate(zip(raws, rows)):
        exp = expected(raw, None)
        got = {k: row[k] for k in exp}
        assert got == exp, (i, raw.hex())
        pkt = wire.parse(raw)
        inner = {1: "icmp", 6: "tcp", 17: "udp"}.get(pkt.next_proto, "data")
        stack = row["frame.protocols"].split(":")
        assert "packetcloud" in stack, stack
        if len(pkt.payload) >= 8 or inner == "data":
            after = stack[stack.index("packetcloud") + 1 :]
            assert after and after[0] in (inner, "data"), (i, stack)
    # the bad-check reject (R2, form 2) is flagged, the others verify
    flags = {v["name"]: rows[i]["packetcloud.check_ok"] for i, v in enumerate(named)}
    assert flags["R2"] == "0" and flags["V3"] == "1" and flags["V4"] == "1"


def test_tshark_verifies_form1_macs_under_the_configured_hop_key(tmp_path: Path) -> None:
    circuits = [v for v in load("vector") + load("hop") if "label" in v or "out_label" in v]
    circuits.append(by_name()["R1"])  # V1 with a flipped check byte
    pcap = tmp_path / "circuits.pcap"
    wrpcap(str(pcap), _frames([packet(v) for v in circuits]))
    keys = {bytes.fromhex(v.get("key") or v["out_key"]) for v in circuits}
    for key in keys:
        rows = tshark(pcap, tmp_path, hop_key=key)
        for v, row in zip(circuits, rows):
            own = bytes.fromhex(v.get("key") or v["out_key"])
            should = own == key and v["name"] != "R1"
            assert row["packetcloud.check_ok"] == str(int(should)), (v["name"], key.hex())


def test_tshark_dissects_shim_from_udp_source_port_6253(tmp_path: Path) -> None:
    """A site's answer to a NATed sender: source port 6253, destination the NAT's port."""
    frame = Ether() / IP(src="198.18.1.1", dst="198.18.0.2") / UDP(sport=6253, dport=40000)
    frame /= PacketCloudService(service_id=0x123456, metadata=9) / b"x"
    pcap = tmp_path / "reply.pcap"
    wrpcap(str(pcap), [frame])
    (row,) = tshark(pcap, tmp_path)
    assert row["packetcloud.service_id"] == "0x123456" and row["packetcloud.check_ok"] == "1"


def test_dissector_survives_malformed_shims(tmp_path: Path) -> None:
    """Truncated shims, unknown versions/forms and flipped bits: tshark shows them as
    malformed, never as a Lua error."""
    raws: list[bytes] = []
    for name in ("V1", "V2", "V3", "V4"):
        good = packet(by_name()[name])
        shim_off = wire.parse(good).shim_off
        for cut in range(shim_off, len(good)):  # IPv4 header kept consistent with the cut
            short = bytearray(good[:cut])
            short[2:4] = cut.to_bytes(2, "big")
            if shim_off == 28:
                short[24:26] = (cut - 20).to_bytes(2, "big")  # UDP length
            short[10:12] = b"\0\0"
            short[10:12] = wire.internet_checksum(short[:20]).to_bytes(2, "big")
            raws.append(bytes(short))
        for byte in range(shim_off, shim_off + 9):
            for bit in range(8):
                bad = bytearray(good)
                bad[byte] ^= 1 << bit
                raws.append(bytes(bad))
    pcap = tmp_path / "malformed.pcap"
    wrpcap(str(pcap), _frames(raws))
    proc = subprocess.run(
        [TSHARK or "tshark", "-n", "-X", f"lua_script:{LUA}", "-r", str(pcap), "-V"],
        capture_output=True,
        text=True,
        timeout=120,
        env=_env(tmp_path),
    )
    assert proc.returncode == 0, proc.stderr
    assert "Lua Error" not in proc.stdout and "Lua Error" not in proc.stderr
    assert proc.stdout.count("Frame ") >= len(raws)
    assert "truncated: form 1 needs 16 bytes" in proc.stdout  # truncations flagged
    assert "unknown version" in proc.stdout  # flipped version/form bits flagged
    assert "PacketCloud check does not verify" in proc.stdout  # flipped form-2 bits flagged

"""A Mobile IP home agent process for the namespace demo's baseline (triangle routing).

Runs in the home network's namespace: answers ARP for the mobile network's device address,
captures the packets for the mobile network prefix arriving on its interface and tunnels them
(RFC 2003, :func:`.ipip.encapsulate`) from its own address to the care-of address written in
``STATE`` (JSON ``{"care_of": ...}``, re-read when it changes).

Run: ``python -m examples.mobility.homeagent IFACE HOME_ADDR PREFIX DEVICE STATE``.
"""

from __future__ import annotations

import ipaddress
import json
import signal
import socket
import subprocess
import sys
from pathlib import Path

from .ipip import TunnelError, encapsulate

ETH_P_IP = 0x0800
PACKET_OUTGOING = 4


def main(argv: list[str] | None = None) -> int:
    iface, home, prefix, device, state = sys.argv[1:] if argv is None else argv
    net = ipaddress.IPv4Network(prefix)
    subprocess.run(["ip", "addr", "add", f"{device}/32", "dev", iface], check=False)
    # the kernel must not answer for the device itself (no ICMP port unreachable)
    script = (
        "table ip pce_homeagent {\n  chain input { type filter hook input priority -10;\n"
        f'    iifname "{iface}" ip daddr {device} drop\n  }}\n}}\n'
    )
    subprocess.run(["nft", "-f", "-"], input=script.encode(), check=True)
    rx = socket.socket(socket.AF_PACKET, socket.SOCK_DGRAM, socket.htons(ETH_P_IP))
    rx.bind((iface, ETH_P_IP))
    rx.settimeout(0.05)
    tx = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)
    path = Path(state)
    care_of: str | None = None
    mtime: tuple[int, int] | None = None
    running = True

    def stop(*_: object) -> None:
        nonlocal running
        running = False

    signal.signal(signal.SIGTERM, stop)
    print("homeagent up", flush=True)
    while running:
        try:
            st = path.stat()
            m = (st.st_ino, st.st_mtime_ns)  # the writer renames a new file into place
            if m != mtime:  # (remembered once read: a failed read is tried again)
                care_of = json.loads(path.read_text()).get("care_of")
                mtime = m
        except (OSError, ValueError):
            pass
        try:
            data, addr = rx.recvfrom(65535)
        except (TimeoutError, OSError):
            continue
        if addr[2] == PACKET_OUTGOING or len(data) < 20 or care_of is None:
            continue
        if ipaddress.IPv4Address(data[16:20]) not in net:
            continue
        try:
            out = encapsulate(data, src=home, dst=care_of)
        except TunnelError:
            continue
        tx.sendto(bytes(out), (care_of, 0))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Differential mutation fuzz: the C accelerator (pcsock._accel) against the pure-Python codec.

Seeded random packets of every shape (form 1 and 2, IP and UDP mode, IPv4 options, plain
IPv4, hop limits 0/1/16, known, unknown and misconfigured labels, good and bad MACs) are
mutated (bit flips, byte stores at the header fields' offsets, truncations, trailing bytes,
the IPv4 checksum and the form-1 check sometimes recomputed after the mutation so deeper checks
are reached) and fed to both implementations in every input type (``bytes``, an exact
``bytearray`` that is rewritten in place, a longer ``bytearray``, a ``memoryview``) with random
options (``verify_ip_checksum``, ``proto``, ``udp_port``, site source). For each input:

- the receive checks (``_frame``: what ``parse`` runs): the same reason, or the same buffer,
  header length, form and shim offset, and the same in-place/copy behaviour;
- ``switch_hop``: the same reason, ``None``, or byte-identical output, and the same bytes left
  in a caller's ``bytearray``;
- ``Packet.switch`` on a parsed form-1 packet: the same reason or bytes;
- every tenth input, ``build_circuit_packet`` from random (sometimes out-of-range) fields.

The C keys' last-MAC memo is switched off for every other block of 1000 inputs, so both the
memo and the compression are compared.

Figures (``--json PATH``): ``accel_fuzz_packets`` (inputs compared), ``accel_fuzz_mismatches``
(must be 0), ``accel_fuzz_outcomes`` (how often each verdict was reached),
``accel_fuzz_seconds``. The CI test (tests/wire/test_accel_differential.py) runs 10^5 inputs;
the default here is 10^6.

Run: ``python -m benchmarks.codec_fuzz [--json PATH] [--packets N] [--seed S] [--quick]``.
"""

from __future__ import annotations

import argparse
import random
import sys
import time
from collections import Counter
from typing import Any

from benchmarks._report import emit
from pcsock import wire

K1 = wire.HopKey(bytes(range(16)))
K2 = wire.HopKey(bytes(range(50, 82)))
K3 = wire.HopKey(b"k" * 20)
SITE = wire.ip2int("198.18.1.1")
#: the fuzz's circuit table: label 1 is an ordinary hop, 2 expects another key, 3 has an
#: out label out of range (bad_field after the MAC checks), 4 an out key that is not a HopKey
ROUTES: dict[int, Any] = {
    1: (K1, 0xABCDEF01, wire.ip2int("198.18.7.7"), K2),
    2: (K2, 5, wire.ip2int("198.18.9.9"), K3),
    3: (K1, 2**32, 1, K2),
    4: (K1, 6, 7, "not a key"),
}
_OFFSETS = (0, 1, 2, 3, 6, 7, 9, 20, 21, 22, 23, 24, 25, 26, 28, 29, 30, 32, 35)
_VALUES = (0, 1, 0x11, 0x12, 0x21, 0x13, 0x45, 0x46, 0x4F, 0x44, 0x55, 17, 253, 0x18, 0x6D, 255)


def _seed_packet(rng: random.Random) -> bytearray:
    kind = rng.random()
    payload = rng.randbytes(rng.choice((0, 0, 3, 8, 20, 40)))
    udp = rng.random() < 0.4
    if kind < 0.75:
        raw = wire.build_circuit_packet(
            src="198.18.0.1",
            dst="198.18.1.1",
            label=rng.choice((1, 1, 1, 2, 3, 4, 9)),
            key=rng.choice((K1, K1, K1, K2, None)),
            hop_limit=rng.choice((16, 16, 1, 0)),
            metadata=rng.randrange(256),
            payload=payload,
            udp=udp,
        )
    elif kind < 0.9:
        raw = wire.build_service_packet(
            src="198.18.0.1",
            dst="198.18.200.9",
            service_id=rng.randrange(2**24),
            payload=payload,
            udp=udp,
        )
    else:
        raw = wire.build_ipv4(
            src="198.18.0.1", dst="198.18.1.1", proto=rng.choice((17, 6, 1)), payload=payload
        )
    if rng.random() < 0.15:  # IPv4 options: four NOPs
        raw = bytearray(raw[:20]) + b"\x01\x01\x01\x01" + raw[20:]
        raw[0] = 0x46
        raw[2:4] = len(raw).to_bytes(2, "big")
        _fix_ip_checksum(raw)
    return raw


def _fix_ip_checksum(b: bytearray) -> None:
    ihl = (b[0] & 15) * 4 if len(b) >= 1 else 0
    if len(b) >= 12 and 20 <= ihl <= len(b):
        b[10:12] = b"\0\0"
        b[10:12] = wire.internet_checksum(b[:ihl]).to_bytes(2, "big")


def _resign(b: bytearray) -> None:
    """Recompute the form-1 check under K1 wherever the shim would be (IP or UDP mode)."""
    if len(b) < 20:
        return
    ihl = (b[0] & 15) * 4
    dst = int.from_bytes(b[16:20], "big")
    for off in (ihl, ihl + 8):
        if off + 16 <= len(b):
            b[off + 12 : off + 16] = wire.circuit_mac(K1, bytes(b[off : off + 12]), dst)


def _mutate(rng: random.Random, b: bytearray) -> bytearray:
    for _ in range(rng.choice((0, 0, 1, 1, 2, 3))):
        op = rng.random()
        if op < 0.3 and b:
            i = rng.randrange(len(b))
            b[i] ^= 1 << rng.randrange(8)
        elif op < 0.6:
            i = rng.choice(_OFFSETS)
            if i < len(b):
                b[i] = rng.choice(_VALUES)
        elif op < 0.75:
            del b[rng.randrange(len(b) + 1) :]
        elif op < 0.85:
            b += rng.randbytes(rng.randrange(1, 6))
        elif len(b) >= 4:  # IPv4 total length to something near the real one
            b[2:4] = max(0, min(0xFFFF, len(b) + rng.randrange(-20, 6))).to_bytes(2, "big")
    if rng.random() < 0.3:
        _resign(b)
    if rng.random() < 0.6:
        _fix_ip_checksum(b)
    return b


def _as_input(rng: random.Random, b: bytearray) -> tuple[Any, Any]:
    """Two equal, independent inputs of one random type (each implementation gets one)."""
    kind = rng.randrange(4)
    if kind == 0:
        return bytes(b), bytes(b)
    if kind == 1:
        return bytearray(b), bytearray(b)
    if kind == 2:
        return bytearray(b) + b"\xee\xee", bytearray(b) + b"\xee\xee"
    return memoryview(bytes(b)), memoryview(bytes(b))


def _outcome(fn: Any, *args: Any, **kw: Any) -> tuple[Any, ...]:
    try:
        out = fn(*args, **kw)
    except wire.WireError as exc:
        return ("error", exc.reason)
    except (TypeError, ValueError, AttributeError) as exc:
        return ("exception", type(exc).__name__)
    if out is None:
        return ("none",)
    if isinstance(out, tuple):  # _frame
        buf, ihl, vf, off = out
        return ("frame", bytes(buf), ihl, vf, off, buf is args[0])
    return ("ok", bytes(out), bool(args) and out is args[0])


def _build_case(rng: random.Random) -> dict[str, Any]:
    def field(maximum: int) -> Any:
        r = rng.random()
        if r < 0.97:
            return rng.randrange(maximum + 1)
        return rng.choice((-1, maximum + 1, True, 1.5))

    return dict(
        src=rng.choice(("198.18.0.1", 3325165569, "nope", 2**32)),
        dst=rng.choice(("198.18.1.1", 1)),
        label=field(2**32 - 1),
        key=rng.choice((K1, K2, None, bytes(16), b"short")),
        payload=rng.choice((b"", rng.randbytes(30), bytearray(b"xyz"), memoryview(b"ab"))),
        metadata=field(255),
        orig_src=rng.choice((None, "198.19.7.2")),
        next_proto=field(255),
        hop_limit=field(255),
        ttl=field(255),
        tos=field(255),
        ident=field(0xFFFF),
        udp=rng.random() < 0.5,
        sport=field(0xFFFF),
        dport=field(0xFFFF),
        proto=field(255),
    )


def run(packets: int, seed: int = 7) -> dict[str, Any]:
    """Compare both implementations on ``packets`` fuzzed inputs; returns the figures."""
    accel = wire._accel
    if accel is None:
        raise SystemExit(f"codec_fuzz: the C accelerator is not available ({wire.PURE_REASON})")
    pure_frame = wire.PURE["_frame"]
    pure_switch = wire.PURE["switch_hop"]
    pure_switch_packet = wire.PURE["_switch_packet"]
    rng = random.Random(seed)
    outcomes: Counter[str] = Counter()
    mismatches: list[str] = []
    memo = accel.set_memo(True)
    t0 = time.perf_counter()
    try:
        for i in range(packets):
            if i % 1000 == 0:
                accel.set_memo((i // 1000) % 2 == 0)
            raw = _mutate(rng, _seed_packet(rng))
            verify = rng.random() < 0.7
            proto = rng.choice((253, 253, 253, 17, 200))
            port = rng.choice((6253, 6253, 6253, 53))
            src = rng.choice((None, None, SITE, 0, 2**32, "x"))
            a, b = _as_input(rng, raw)
            got_py = _outcome(pure_frame, a, verify, proto, port)
            got_c = _outcome(accel.frame, b, verify, proto, port)
            if got_py != got_c:
                mismatches.append(f"frame {raw.hex()} {verify} {proto} {port}: {got_py} {got_c}")
            a, b = _as_input(rng, raw)
            given = bytes(a)
            kw = dict(verify_ip_checksum=verify, proto=proto, udp_port=port)
            got_py = _outcome(pure_switch, a, ROUTES.get, src, **kw)
            got_c = _outcome(accel.switch_hop, b, ROUTES.get, src, **kw)
            if got_py != got_c or bytes(a) != bytes(b):
                mismatches.append(f"switch_hop {raw.hex()} {kw} {src}: {got_py} {got_c}")
            outcomes[got_c[0] if got_c[0] != "error" else got_c[1]] += 1
            if got_py[0] == "ok" or (got_py[0] == "error" and got_py[1] in ("bad_mac",)):
                # Packet.switch on the parsed packet, with the route of its label (or label 1's)
                pkt = wire.parse(given, verify_ip_checksum=False, proto=proto, udp_port=port)
                route = ROUTES.get(pkt.label) or ROUTES[1]
                pa, pb = bytearray(pkt.buf), bytearray(pkt.buf)
                args = (pkt.ihl, pkt.shim_off, *route, src)
                got_py = _outcome(pure_switch_packet, pa, *args)
                got_c = _outcome(accel.switch_packet, pb, *args)
                if got_py != got_c or pa != pb:
                    mismatches.append(f"Packet.switch {raw.hex()} {route[1:3]}: {got_py} {got_c}")
            if i % 10 == 0:
                case = _build_case(rng)
                results = []
                for flag in (False, True):
                    wire.use_accelerator(flag)
                    results.append(_outcome(wire.build_circuit_packet, **case))
                wire.use_accelerator(True)
                # the C builder answers bad_field where the reference's builder does
                if results[0] != results[1]:
                    mismatches.append(f"build {case}: {results[0]} {results[1]}")
                outcomes["build_" + results[1][0]] += 1
    finally:
        accel.set_memo(memo)
    return {
        "accel_fuzz_packets": packets,
        "accel_fuzz_mismatches": len(mismatches),
        "accel_fuzz_seconds": round(time.perf_counter() - t0, 2),
        "accel_fuzz_seed": seed,
        "accel_fuzz_outcomes": dict(sorted(outcomes.items())),
        "accel_fuzz_first_mismatches": mismatches[:5],
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.codec_fuzz", description=__doc__)
    ap.add_argument("--json", metavar="PATH", help="write the figures as JSON")
    ap.add_argument("--packets", type=int, default=1_000_000, help="inputs to compare")
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--quick", action="store_true", help="10 000 inputs (checks it works)")
    args = ap.parse_args(argv)
    figures = run(10_000 if args.quick else args.packets, args.seed)
    print(f"outcomes: {figures['accel_fuzz_outcomes']}")
    for m in figures["accel_fuzz_first_mismatches"]:
        print("MISMATCH", m)
    emit(figures, args.json)
    return 1 if figures["accel_fuzz_mismatches"] else 0


if __name__ == "__main__":
    sys.exit(main())

"""The C accelerator (pcsock._accel) against the pure-Python reference and independent
implementations: BLAKE2s against hashlib and RFC 7693's own test values, the spec vectors of
docs/protocol.md §9, and a differential mutation fuzz of 10^5 inputs (benchmarks.codec_fuzz;
10^6 with ``python -m benchmarks.codec_fuzz``). Every other wire test also runs on both
implementations (tests/wire/conftest.py)."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pcsock import wire
from tests.support.wire_vectors import load, packet

accel = wire._accel
KA = bytes(range(16))
needs_accel = pytest.mark.skipif(
    accel is None, reason=f"C accelerator not built: {wire.PURE_REASON}"
)


def test_the_accelerator_is_built_and_in_use() -> None:
    """./quickstart installs gcc and python3-dev, so pip builds pcsock._accel; the other tests
    here need it. PACKETCLOUD_PURE=1 (the pure-Python run of the suite) is the one exception."""
    if os.environ.get("PACKETCLOUD_PURE", "") not in ("", "0"):
        assert accel is None and wire.PURE_REASON == "PACKETCLOUD_PURE is set"
        return
    assert accel is not None, wire.PURE_REASON
    assert wire.switch_hop is accel.switch_hop or wire.switch_hop is wire.PURE["switch_hop"]


# --- BLAKE2s ------------------------------------------------------------------------------


def _selftest_seq(n: int, seed: int) -> bytes:
    """RFC 7693 Appendix E: deterministic input sequence."""
    a = (0xDEAD4BAD * seed) & 0xFFFFFFFF
    b = 1
    out = bytearray()
    for _ in range(n):
        t = (a + b) & 0xFFFFFFFF
        a, b = b, t
        out.append(t >> 24 & 0xFF)
    return bytes(out)


@needs_accel
def test_blake2s_matches_rfc7693_appendix_b_and_the_appendix_e_self_test() -> None:
    assert accel.blake2s(b"abc") == bytes.fromhex(
        "508c5e8c327c14e2e1a72ba34eeb452f37458b209ed63a294d999b4c86675982"
    )
    # Appendix E: hash every (digest length, input length) pair, unkeyed and keyed, into
    # one BLAKE2s-256 of all the results
    results = b""
    for outlen in (16, 20, 28, 32):
        for inlen in (0, 3, 64, 65, 255, 1024):
            data = _selftest_seq(inlen, inlen)
            results += accel.blake2s(data, digest_size=outlen)
            key = _selftest_seq(outlen, outlen)
            results += accel.blake2s(data, key=key, digest_size=outlen)
    assert accel.blake2s(results) == bytes.fromhex(
        "6a411f08ce25adcdfb02aba641451cec53c598b24f4fc787fbdc88797f4c1dfe"
    )


@needs_accel
@settings(max_examples=300, deadline=None)
@given(
    data=st.binary(max_size=200),
    key=st.binary(max_size=32),
    digest_size=st.integers(1, 32),
)
def test_blake2s_equals_hashlib(data: bytes, key: bytes, digest_size: int) -> None:
    want = hashlib.blake2s(data, key=key, digest_size=digest_size).digest()
    assert accel.blake2s(data, key=key, digest_size=digest_size) == want
    if key:
        k = accel.Key(key, digest_size)
        assert k.mac(data) == want
        assert k.mac(data) == want  # again, through the memo for 16-byte inputs


@needs_accel
def test_a_memoised_key_never_answers_for_another_message() -> None:
    k = accel.Key(b"m" * 16, 4)
    msgs = [bytes([i]) * 16 for i in range(3)]
    for m in msgs * 3:
        assert k.mac(m) == hashlib.blake2s(m, key=b"m" * 16, digest_size=4).digest()
    # a packet with a valid check is memoised; the same shim with a forged check still fails
    raw = wire.build_circuit_packet(src="198.18.0.1", dst="198.18.1.1", label=7, key=b"m" * 16)
    routes = {7: (wire.HopKey(b"m" * 16), 8, 9, wire.HopKey(b"n" * 16))}
    assert accel.switch_hop(bytes(raw), routes.get) is not None
    forged = bytearray(raw)
    forged[35] ^= 1
    with pytest.raises(wire.WireError) as exc:
        accel.switch_hop(bytes(forged), routes.get)
    assert exc.value.reason == "bad_mac"


# --- spec vectors ---------------------------------------------------------------------------


@needs_accel
@pytest.mark.parametrize("v", load("hop"), ids=lambda v: v["name"])
def test_c_hop_gives_the_spec_hop_vectors(v: dict[str, str]) -> None:
    [src] = [s for s in load("vector") if s["name"] == v["from"]]
    route = (
        wire.HopKey(bytes.fromhex(v["in_key"])),
        int(v["out_label"], 16),
        wire.ip2int(v["out_dst"]),
        wire.HopKey(bytes.fromhex(v["out_key"])),
    )
    raw = packet(src)
    routes = {wire.parse(raw).label: route}
    out = accel.switch_hop(raw, routes.get, wire.ip2int(v["out_src"]))
    assert bytes(out) == packet(v)
    assert bytes(wire.PURE["switch_hop"](raw, routes.get, wire.ip2int(v["out_src"]))) == bytes(out)


@needs_accel
@pytest.mark.parametrize("v", load("reject"), ids=lambda v: v["name"])
def test_c_hop_rejects_the_spec_rejects_with_their_reason(v: dict[str, str]) -> None:
    raw = packet(v)
    key = wire.HopKey(bytes.fromhex(v.get("key", "00" * 16)))
    try:
        pkt = wire.PURE["_frame"](raw, True, 253, 6253)
    except wire.WireError as exc:
        with pytest.raises(wire.WireError) as got:
            accel.switch_hop(raw, {}.get)
        assert got.value.reason == exc.reason == v["expect"]
        return
    label = int.from_bytes(raw[24:28], "big")
    routes = {label: (key, 1, 1, key)}
    if v["expect"] == "bad_check":  # form 2: the codec leaves it to verify_check
        assert pkt[2] == 0x12 and accel.switch_hop(raw, routes.get) is None
        return
    with pytest.raises(wire.WireError) as got:
        accel.switch_hop(raw, routes.get)
    assert got.value.reason == v["expect"]


# --- mutation fuzz --------------------------------------------------------------------------


@needs_accel
def test_mutation_fuzz_of_100k_inputs_finds_no_difference() -> None:
    from benchmarks.codec_fuzz import run

    figures = run(100_000, seed=14)
    assert figures["accel_fuzz_mismatches"] == 0, figures["accel_fuzz_first_mismatches"]
    # the fuzz reached every verdict the receive checks and the hop can give
    reached = set(figures["accel_fuzz_outcomes"])
    assert (wire.REASONS - {"bad_check"}) | {"ok", "none", "build_ok"} <= reached


# --- safety and the plain-C interface -------------------------------------------------------


@needs_accel
def test_a_circuit_table_that_resizes_the_packet_cannot_corrupt_memory() -> None:
    """The C hop holds the caller's bytearray while it calls the circuit table back; a
    callback that tries to resize it gets Python's BufferError, not a dangling pointer."""
    raw = wire.build_circuit_packet(src="198.18.0.1", dst="198.18.1.1", label=7, key=bytes(16))
    data = bytearray(raw)

    def hostile(label: int) -> wire.Route:
        data.clear()
        return (wire.HopKey(bytes(16)), 8, 9, wire.HopKey(bytes(16)))

    with pytest.raises(BufferError):
        accel.switch_hop(data, hostile)
    assert data == raw


C_MAIN = r"""
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "_accel.h"
static int unhex(const char *s, unsigned char *out) {
    int n = 0;
    unsigned v;
    while (*s && sscanf(s, "%2x", &v) == 1) { out[n++] = (unsigned char)v; s += 2; }
    return n;
}
int main(int argc, char **argv) {
    unsigned char pkt[2048], kin[32], kout[32];
    int n = unhex(argv[1], pkt), lin = unhex(argv[2], kin), lout = unhex(argv[3], kout), i;
    unsigned src = 0xC6120101u;  /* 198.18.1.1 */
    pc_b2s_key in_key, out_key;
    pc_frame_t f;
    int r = pc_frame(pkt, (size_t)n, 1, 253, 6253, &f, NULL, 0);
    if (r != PC_OK) { printf("%s\n", pc_reason_name(r)); return 0; }
    pc_b2s_prekey(&in_key, kin, (size_t)lin, 4);
    pc_b2s_prekey(&out_key, kout, (size_t)lout, 4);
    r = pc_hop(pkt, &f, &in_key, (unsigned)strtoul(argv[4], NULL, 16),
               (unsigned)strtoul(argv[5], NULL, 16), &out_key, &src, 0);
    if (r != PC_OK) { printf("%s\n", pc_reason_name(r)); return 0; }
    for (i = 0; i < (int)f.len; i++) printf("%02x", pkt[i]);
    printf("\n");
    return 0;
}
"""


@pytest.mark.skipif(shutil.which("gcc") is None, reason="needs gcc (./quickstart installs it)")
def test_the_plain_c_interface_builds_without_python_and_gives_the_hop_vector(tmp_path) -> None:
    """pcsock/_accel.c compiled with -DPC_ACCEL_NO_PYTHON (what a C worker loop links): the
    V1 -> V5 hop of docs/protocol.md §9 and the R1 rejection, from C alone."""
    src = Path(wire.__file__).parent
    (tmp_path / "main.c").write_text(C_MAIN)
    exe = tmp_path / "hop"
    subprocess.run(
        ["gcc", "-O2", "-std=gnu11", "-Wall", "-Werror", "-DPC_ACCEL_NO_PYTHON", f"-I{src}",
         str(tmp_path / "main.c"), str(src / "_accel.c"), "-o", str(exe)],
        check=True, capture_output=True,
    )  # fmt: skip
    [v5] = [v for v in load("hop") if v["name"] == "V5"]
    [v1] = [v for v in load("vector") if v["name"] == "V1"]
    [r1] = [v for v in load("reject") if v["name"] == "R1"]
    # the hop vector's destination is 198.18.2.1
    args = [v5["in_key"], v5["out_key"], v5["out_label"][2:], "c6120201"]
    out = subprocess.run([exe, packet(v1).hex(), *args], capture_output=True, text=True)
    assert out.stdout.strip() == packet(v5).hex()
    out = subprocess.run([exe, packet(r1).hex(), *args], capture_output=True, text=True)
    assert out.stdout.strip() == "bad_mac"


_PROBE = (
    "import logging, sys\n"
    "logging.basicConfig(stream=sys.stdout, format='%(levelname)s %(message)s')\n"
    "if 'block' in sys.argv: sys.modules['pcsock._accel'] = None  # as if it was not built\n"
    "from pcsock import wire\n"
    "import pcsite_lite.pipeline, pcsock.socket\n"
    "print('ACCELERATED', wire.ACCELERATED, wire.switch_hop is wire.PURE['switch_hop'])\n"
)


@pytest.mark.parametrize(
    ("env", "arg", "warns"),
    [({"PACKETCLOUD_PURE": "1"}, "", False), ({"PACKETCLOUD_PURE": ""}, "block", True)],
)
def test_without_the_accelerator_everything_runs_pure_and_says_so_once(
    env: dict[str, str], arg: str, warns: bool
) -> None:
    proc = subprocess.run(
        [sys.executable, "-c", _PROBE, arg],
        capture_output=True,
        text=True,
        env={**os.environ, **env},
        timeout=60,
        check=True,
    )
    assert "ACCELERATED False True" in proc.stdout
    lines = [line for line in proc.stdout.splitlines() if "pure-Python codec" in line]
    assert len(lines) == (1 if warns else 0), proc.stdout
    if warns:
        assert lines[0].startswith("WARNING") and "pcsock._accel" in lines[0]


@needs_accel
def test_hop_keys_are_read_from_their_slot_and_a_bad_one_is_refused() -> None:
    raw = bytes(wire.build_circuit_packet(src="198.18.0.1", dst="198.18.1.1", label=7, key=KA))

    class Sub(wire.HopKey):
        """A subclass: read through getattr, not the slot."""

    ok = (wire.HopKey(KA), 8, 9, Sub(bytes(16)))
    assert accel.switch_hop(raw, {7: ok}.get) == wire.PURE["switch_hop"](raw, {7: ok}.get)
    broken = wire.HopKey(KA)
    broken._ck = "not a key"
    with pytest.raises(TypeError):
        accel.switch_hop(raw, {7: (broken, 8, 9, broken)}.get)
    del broken._ck
    with pytest.raises(AttributeError):
        accel.switch_hop(raw, {7: (broken, 8, 9, broken)}.get)


# --- the form-1 hop's egress (the site pipeline's, both paths) -----------------------------


@needs_accel
@settings(max_examples=300, deadline=None)
@given(
    options=st.sampled_from((0, 4, 12)),
    udp=st.booleans(),
    hops=st.integers(0, 255),
    label=st.integers(0, 0xFFFFFFFF),
    dst=st.integers(0, 0xFFFFFFFF),
    keyed=st.booleans(),
    payload=st.binary(max_size=40),
)
def test_form1_out_in_c_equals_the_reference(
    options: int, udp: bool, hops: int, label: int, dst: int, keyed: bool, payload: bytes
) -> None:
    """pcsock.wire.form1_out (the pure hop, as PURE["form1_out"]) and _accel.form1_out write
    the same bytes for IP and UDP mode, with and without IP options, with and without an out
    key; the result parses, its checksum verifies, and its MAC verifies under the out key."""
    raw = wire.build_circuit_packet(
        src="198.18.0.1", dst="198.18.1.1", label=7, key=KA, payload=payload, udp=udp
    )
    if options:  # IPv4 options (NOPs) before the shim: IHL grows, lengths and checksum fixed
        raw[20:20] = b"\x01" * options
        raw[0] = 0x45 + options // 4
        raw[2:4] = len(raw).to_bytes(2, "big")
        if udp:
            raw[20 + options + 4 : 20 + options + 6] = (len(raw) - 20 - options).to_bytes(2, "big")
        raw[10:12] = b"\0\0"
        raw[10:12] = wire.internet_checksum(raw[: 20 + options]).to_bytes(2, "big")
    pkt = wire.parse(raw)
    out_key = wire.HopKey(bytes(range(1, 17))) if keyed else None
    args = (pkt.shim_off, hops, label, dst, out_key)
    a, b = bytearray(raw), bytearray(raw)
    got_py = wire.PURE["form1_out"](a, *args)
    got_c = accel.form1_out(b, *args)
    assert got_py == got_c and a == b
    out = wire.parse(got_c)
    assert (out.label, out.hop_limit, out.dst, out.src) == (label, hops, dst, pkt.dst)
    assert out.orig_src == pkt.orig_src and bytes(out.payload) == payload
    if keyed:
        assert out.verify_mac(out_key)
    else:
        assert out.check == b"\0\0\0\0"
    if udp:
        assert out.buf[out.ihl + 6 : out.ihl + 8] == b"\0\0"


@needs_accel
def test_form1_out_refuses_a_shim_offset_that_is_not_the_headers_end() -> None:
    raw = wire.build_circuit_packet(src="198.18.0.1", dst="198.18.1.1", label=7, key=KA)
    for off in (0, 19, 21, 24, 36):
        with pytest.raises(ValueError):
            accel.form1_out(bytearray(raw), off, 1, 2, 3, None)

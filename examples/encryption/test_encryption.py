"""Encryption offload in the simulator: plaintext in, ciphertext across the core, plaintext out."""

from __future__ import annotations

import functools
from typing import Any

import pytest
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from examples.encryption.scenario import build_world, send
from examples.encryption.service import open_metadata
from pcsite_lite.sim import Link
from pcsock.wire import parse


def _capture(link: Link) -> list[bytes]:
    """Record every frame sent on ``link``."""
    seen: list[bytes] = []
    orig = link.transmit

    def transmit(sender: Any, data: bytes) -> None:
        seen.append(data)
        orig(sender, data)

    link.transmit = transmit  # type: ignore[method-assign]
    return seen


def test_plaintext_from_the_sender_reaches_the_destination_and_only_ciphertext_crosses_the_core():
    w = build_world()
    core = _capture(w.core)
    msgs = [b"hello %d " % i * (i + 1) for i in range(20)]
    assert send(w, msgs) == msgs
    assert len(core) == 20
    for frame, msg in zip(core, msgs, strict=True):
        pkt = parse(frame)
        sealed, epoch = open_metadata(pkt.metadata)
        assert sealed and epoch == w.psp.epoch
        body = bytes(pkt.payload)
        assert msg not in body and len(body) == len(msg) + 28  # nonce + GCM tag
        # the key lives in the FIS (the PSP has it), never with the sender
        key = w.psp.keys[epoch]
        # the metadata byte (sealed, epoch) is the associated data the tag covers
        assert AESGCM(key).decrypt(body[:12], body[12:], bytes([pkt.metadata])) == msg
    assert w.sites["C1"].site.drops == {} and w.sites["C2"].site.drops == {}


def test_tampered_ciphertext_is_dropped_with_a_reason_and_never_delivered():
    w = build_world()
    orig = w.core.transmit

    def flip_last_byte(sender: Any, data: bytes) -> None:
        b = bytearray(data)
        b[-1] ^= 0x01  # inside the GCM tag; the hop MAC covers the shim, not the payload
        orig(sender, bytes(b))

    w.core.transmit = flip_last_byte
    assert send(w, [b"secret"]) == []
    assert [(d.reason, d.detail) for d in w.sites["C2"].drops] == [
        ("service_drop", "crypt_auth_failed")
    ]


def test_a_sender_cannot_smuggle_unsealed_data_past_the_egress_or_pick_its_own_epoch():
    w = build_world()
    # a packet that claims to be sealed already is refused at the ingress
    w.sender.send(w.chain.packet(w.sender.ip, b"x" * 40, metadata=0x80))
    w.net.run()
    assert [d.detail for d in w.sites["C1"].drops] == ["crypt_already_sealed"]
    assert w.dest.inbox == []


def test_key_rotation_keeps_in_flight_packets_until_the_old_epoch_is_retired():
    w = build_world()
    first = w.psp.epoch
    w.sender.send(w.chain.packet(w.sender.ip, b"old epoch"))
    # sealed under `first` at C1, still on the two 2 ms links to C2
    w.net.run(until=w.net.now + 0.002)
    second = w.psp.rotate()
    assert second == first + 1
    w.net.run()
    assert [bytes(parse(r.data).payload) for r in w.dest.inbox] == [b"old epoch"]
    assert send(w, [b"new epoch"]) == [b"new epoch"]
    # packets sealed under a retired epoch are refused with a reason
    w.sender.send(w.chain.packet(w.sender.ip, b"late"))
    w.net.run(until=w.net.now + 0.002)
    w.psp.rotate()
    w.psp.retire(second)
    w.net.run()
    assert w.sites["C2"].site.drops and w.sites["C2"].drops[-1].detail == "crypt_no_key"
    with pytest.raises(ValueError):
        w.psp.retire(w.psp.epoch)


@pytest.mark.parametrize("size", [0, 1, 1400])
def test_payload_sizes_round_trip(size: int) -> None:
    w = build_world()
    msg = bytes(range(256)) * (size // 256) + bytes(size % 256)
    assert send(w, [msg]) == [msg]


def test_the_metadata_byte_encodes_sealed_and_epoch() -> None:
    from examples.encryption.service import seal_metadata

    assert [open_metadata(seal_metadata(e)) for e in (0, 5, 127)] == [
        (True, 0),
        (True, 5),
        (True, 127),
    ]
    assert open_metadata(0) == (False, 0)
    assert functools.reduce(lambda a, b: a | b, [seal_metadata(e) for e in range(128)]) == 0xFF

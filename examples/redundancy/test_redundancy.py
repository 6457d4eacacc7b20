"""Redundancy elimination: the codec (hypothesis), misses, and the site pair in the simulator."""

from __future__ import annotations

import random

from hypothesis import given, settings
from hypothesis import strategies as st

from examples.redundancy import service as re
from examples.redundancy.scenario import build_world, send
from examples.redundancy.workload import workload
from pcsite_lite.fis import namespace


class Store:
    """The packet store and fingerprint index as plain dicts (what the FIS and cache hold)."""

    def __init__(self) -> None:
        self.slots: dict[int, tuple[int, bytes]] = {}
        self.index: dict[int, tuple[int, int, int, float]] = {}
        self.seq = 0

    def get(self, slot: int, cid: int) -> bytes | None:
        entry = self.slots.get(slot)
        return entry[1] if entry is not None and entry[0] == cid else None

    def put(self, slot: int, cid: int, data: bytes, t: float) -> None:
        self.slots[slot] = (cid, data)

    def index_put(self, fp: int, slot: int, cid: int, pos: int, t: float) -> None:
        self.index[fp] = (slot, cid, pos, t)

    def push(self, data: bytes, now: float) -> bytes | None:
        """Encode ``data`` against what is stored, then store it (as the ingress does)."""
        enc = re.encode(data, self.index.get, self.get, now)
        re.remember(data, self.seq % 64, now, self.put, self.index_put)
        self.seq += 1
        return enc


chunks = st.lists(st.binary(min_size=0, max_size=300), min_size=1, max_size=6)


@st.composite
def traffic(draw: st.DrawFn) -> list[bytes]:
    """Packets built from a few shared chunks, random bytes and random single-byte edits."""
    pool = draw(st.lists(st.binary(min_size=64, max_size=400), min_size=1, max_size=4))
    out = []
    for _ in range(draw(st.integers(1, 8))):
        parts = [pool[draw(st.integers(0, len(pool) - 1))] if draw(st.booleans()) else b
                 for b in draw(chunks)]  # fmt: skip
        pkt = bytearray(b"".join(parts))
        if pkt and draw(st.booleans()):
            pkt[draw(st.integers(0, len(pkt) - 1))] ^= draw(st.integers(1, 255))
        out.append(bytes(pkt))
    return out


@settings(max_examples=200, deadline=None)
@given(traffic())
def test_decode_of_encode_is_the_identity(packets: list[bytes]) -> None:
    store = Store()
    for i, data in enumerate(packets):
        enc = store.push(data, now=1.0 + i)
        if enc is not None:
            assert re.decode(enc, store.get) == (data, None)


@settings(max_examples=200, deadline=None)
@given(traffic(), st.randoms(use_true_random=False))
def test_a_decoder_miss_is_detected_and_never_yields_wrong_bytes(
    packets: list[bytes], rnd: random.Random
) -> None:
    store = Store()
    for i, data in enumerate(packets):
        enc = store.push(data, now=1.0 + i)
        if enc is None:
            continue
        # the egress's view: some slots evicted, some overwritten by other payloads
        egress = dict(store.slots)
        for slot in list(egress):
            r = rnd.random()
            if r < 0.3:
                del egress[slot]
            elif r < 0.5:
                cid, old = egress[slot]
                egress[slot] = (cid if rnd.random() < 0.5 else cid ^ 1, bytes(reversed(old)))

        def get(slot: int, cid: int, egress: dict = egress) -> bytes | None:
            entry = egress.get(slot)
            return entry[1] if entry is not None and entry[0] == cid else None

        out, reason = re.decode(enc, get)
        assert out == data or (out is None and reason in {"re_miss", "re_corrupt"})


@given(st.binary(max_size=200))
def test_garbage_encodings_are_malformed_not_exceptions(blob: bytes) -> None:
    out, reason = re.decode(bytes([re.MAGIC]) + blob, lambda slot, cid: None)
    assert out is None and reason in {"re_malformed", "re_miss", "re_corrupt"}


def test_rabin_fingerprints_roll_and_sample_by_content() -> None:
    rng = random.Random(3)
    block = rng.randbytes(2000)
    marks = re.anchors(block)
    # about one window in 2**SAMPLE_BITS is an anchor
    assert 20 < len(marks) < 120
    # the same content sampled at the same places wherever it appears (rolling == direct)
    shifted = re.anchors(rng.randbytes(37) + block)
    assert {fp for fp, _ in marks} <= {fp for fp, _ in shifted}
    pos = dict(shifted)
    assert all(pos[fp] == off + 37 for fp, off in marks)
    # a fingerprint is the window's residue mod P: recompute one directly
    fp, off = marks[0]
    v = 0
    for b in block[off : off + re.WINDOW]:
        v = re.polymod_shift(v << 8 | b)
    assert v == fp


def test_the_site_pair_removes_known_redundancy_and_delivers_every_payload_intact() -> None:
    w = build_world()
    payloads, repeated = workload(400, redundancy=0.5)
    assert send(w, payloads) == payloads
    original = sum(map(len, payloads))
    saved = 1 - sum(w.core_payload_bytes) / original
    ideal = repeated / original
    assert ideal > 0.4 and 0.85 * ideal < saved <= ideal
    assert not w.sites["C1"].site.drops and not w.sites["C2"].site.drops
    # no redundancy: nothing saved, nothing lost (raw packets pass unencoded)
    w2 = build_world()
    fresh, rep0 = workload(100, redundancy=0.0, seed=9)
    assert rep0 == 0 and send(w2, fresh) == fresh
    assert sum(w2.core_payload_bytes) == sum(map(len, fresh))


def test_an_evicted_store_entry_is_a_counted_miss_at_the_egress_not_a_corrupt_packet() -> None:
    w = build_world(staleness=0.0005)  # the egress sees the overwrite within the 4 ms path
    payloads, _ = workload(60, redundancy=1.0, pool=1)
    assert send(w, payloads[:30]) == payloads[:30]
    # the packet is encoded at C1; while it crosses the core the store is overwritten (e.g.
    # flushed): the egress cannot find what it refers to
    w.sender.send(w.chain.packet(w.sender.ip, payloads[30]))
    w.net.run(until=w.net.now + 0.001)
    ns = namespace("isp-re", "re")
    for slot in range(64):
        w.fis.put(ns, re.slot_key(slot), {"id": 0, "t": 0.0, "d": ""}, writer="isp-re")
    before = len(w.dest.inbox)
    w.net.run()
    assert len(w.dest.inbox) == before
    assert [d.detail for d in w.sites["C2"].drops] == ["re_miss"]

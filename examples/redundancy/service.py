"""Protocol-independent redundancy elimination (paper §2.6.2, after Spring and Wetherall 2000).

The same service runs at an ingress site near the sender (role ``encode``) and an egress site
near the receiver (role ``decode``) of a circuit; the FIS key ``"hop:<label>"`` gives the role
of the circuit's incoming label at each site. The pair shares a **packet store** through the
FIS (one FIS both sites use): the ingress stores every payload it sees under
``"pkt:<slot>"`` -> ``{"id": content id, "t": time, "d": base64}``, the slots used as a FIFO
ring of :data:`SLOTS` entries (the oldest payload is overwritten first); the egress reads it.

Encoding (ingress), per packet:

1. Rabin fingerprints (polynomial arithmetic over GF(2) modulo the degree-63 irreducible
   polynomial of LBFS, ``0xbfe6b8a5bf378d83``) of every 64-byte window, computed with a rolling
   table-driven update (one table lookup to shift a byte in, one to shift a byte out);
2. **value sampling**: only windows whose fingerprint has its low :data:`SAMPLE_BITS` bits zero
   are anchors (on average one window in 32, chosen by content, so the same content is sampled
   the same way in every packet);
3. each anchor is looked up in the fingerprint index (the ingress node's local cache:
   fingerprint -> (content id, offset, time stored)); a hit whose stored packet is old enough
   for every site to see it (:data:`REF_DELAY`, twice the FIS staleness bound) is checked byte
   for byte, **expanded** left and right as far as the bytes agree, and the region is replaced
   by a reference ``(content id, offset, length)``;
4. the payload is stored and its anchors indexed; if the encoding is shorter, it replaces the
   payload and the metadata byte says so (``1``).

Decoding (egress) replaces each reference by the stored bytes. A reference whose slot is empty
or holds another packet (evicted, never seen) is a **miss**: the packet is dropped as
``re_miss``, never delivered with wrong bytes. The encoding carries the CRC-32 and length of
the original payload; a decoded payload that does not match them is dropped as ``re_corrupt``
(a defence against a content-id collision); a malformed encoding as ``re_malformed``.

Encoded payload: ``!BIH`` (magic ``0xE5``, CRC-32, original length), then tokens: literal
``0x00 len:u16 bytes`` or reference ``0x01 slot:u16 id:u32 offset:u16 len:u16``.

The ring position is a counter of this node (module state). One ingress node per site pair is
what the examples run; several nodes would need a node identity from the platform to split the
ring (today they would overwrite each other's slots: more misses, never corruption).
"""

import binascii
import struct
import zlib

WINDOW = 64
SAMPLE_BITS = 5
SAMPLE_MASK = (1 << SAMPLE_BITS) - 1
POLY = 0xBFE6B8A5BF378D83  # degree 63, irreducible (LBFS's rabinpoly)
DEGREE = 63
SHIFT = DEGREE - 8
FP_MASK = (1 << DEGREE) - 1
SLOTS = 4096  # packet store size (FIS entries), per site pair
REF_DELAY = 0.010  # a stored packet is referenced only this long after it was stored
MAGIC = 0xE5
HEAD = struct.Struct("!BIH")
LIT = struct.Struct("!BH")
REF = struct.Struct("!BHIHH")
INDEX = struct.Struct("!HIHdI")
MARGIN = 512  # a stored packet this close to being overwritten is not referenced
STATE = {"seq": 0}  # this node's position in the store ring
ENCODED = 1


def polymod_shift(value):
    """``value`` (degree < 71) reduced modulo POLY."""
    for bit in range(70, DEGREE - 1, -1):
        if value >> bit & 1:
            value ^= POLY << (bit - DEGREE)
    return value


def tables():
    """(T, U): T[t] = (t * x^63) mod P shifts a byte in; U[b] = (b * x^(8*(WINDOW-1))) mod P
    removes the byte that leaves the window. Both are linear, so built from powers of x."""
    t_tab = [0] * 256
    for t in range(1, 256):
        t_tab[t] = polymod_shift(t << DEGREE)
    powers = []
    v = 1
    for k in range(8 * (WINDOW - 1) + 8):
        if k >= 8 * (WINDOW - 1):
            powers.append(v)
        v <<= 1
        if v >> DEGREE:
            v ^= POLY
    u_tab = [0] * 256
    for b in range(1, 256):
        low = b & -b
        u_tab[b] = u_tab[b ^ low] ^ powers[low.bit_length() - 1]
    return t_tab, u_tab


T_TAB, U_TAB = tables()


def anchors(data):
    """[(fingerprint, offset)] of the sampled 64-byte windows of ``data`` (first per value)."""
    out = []
    if len(data) < WINDOW:
        return out
    seen = set()
    t_tab, u_tab, mask, shift = T_TAB, U_TAB, FP_MASK, SHIFT
    fp = 0
    for b in data[:WINDOW]:
        fp = (((fp << 8) & mask) | b) ^ t_tab[fp >> shift]
    if not fp & SAMPLE_MASK:
        seen.add(fp)
        out.append((fp, 0))
    pos = 1
    for old, b in zip(data, data[WINDOW:]):
        fp ^= u_tab[old]
        fp = (((fp << 8) & mask) | b) ^ t_tab[fp >> shift]
        if not fp & SAMPLE_MASK and fp not in seen:
            seen.add(fp)
            out.append((fp, pos))
        pos += 1
    return out


def content_id(data):
    """A 32-bit id of a stored payload (checked on every read of its slot)."""
    return (zlib.crc32(data) ^ (zlib.adler32(data) << 1)) & 0xFFFFFFFF


def slot_key(slot):
    return "pkt:" + str(slot)


def encode(data, index_get, store_get, now, marks=None):
    """The encoding of ``data``, or None if no region matched (send it as it is).

    ``index_get(fp)`` -> (slot, content id, offset, time stored) or None;
    ``store_get(slot, cid)`` -> the payload stored in ``slot`` if its content id is ``cid``,
    else None; ``marks``: ``anchors(data)`` if known."""
    matches = []
    covered = 0
    n = len(data)
    if marks is None:
        marks = anchors(data)
    for fp, pos in marks:
        if pos < covered:
            continue
        hit = index_get(fp)
        if hit is None:
            continue
        slot, cid, off, stored_at = hit
        if now - stored_at < REF_DELAY:
            continue
        old = store_get(slot, cid)
        if old is None or old[off : off + WINDOW] != data[pos : pos + WINDOW]:
            continue
        s, o = pos, off
        while s - 32 >= covered and o >= 32 and data[s - 32 : s] == old[o - 32 : o]:
            s -= 32
            o -= 32
        while s > covered and o > 0 and data[s - 1] == old[o - 1]:
            s -= 1
            o -= 1
        e, oe, m = pos + WINDOW, off + WINDOW, len(old)
        while e + 32 <= n and oe + 32 <= m and data[e : e + 32] == old[oe : oe + 32]:
            e += 32
            oe += 32
        while e < n and oe < m and data[e] == old[oe]:
            e += 1
            oe += 1
        matches.append((s, e, slot, cid, o))
        covered = e
    if not matches:
        return None
    out = bytearray(HEAD.pack(MAGIC, zlib.crc32(data), n))
    at = 0
    for s, e, slot, cid, o in matches:
        if s > at:
            out += LIT.pack(0, s - at) + data[at:s]
        out += REF.pack(1, slot, cid, o, e - s)
        at = e
    if at < n:
        out += LIT.pack(0, n - at) + data[at:]
    return bytes(out)


def decode(enc, store_get):
    """(payload, None) or (None, drop reason). Never returns bytes that differ from what the
    ingress encoded: a missing stored packet is ``re_miss``, a CRC or length mismatch
    ``re_corrupt``."""
    if len(enc) < HEAD.size:
        return None, "re_malformed"
    magic, crc, n = HEAD.unpack_from(enc, 0)
    if magic != MAGIC:
        return None, "re_malformed"
    out = bytearray()
    at = HEAD.size
    while at < len(enc):
        tag = enc[at]
        if tag == 0 and at + LIT.size <= len(enc):
            length = LIT.unpack_from(enc, at)[1]
            at += LIT.size
            if at + length > len(enc):
                return None, "re_malformed"
            out += enc[at : at + length]
            at += length
        elif tag == 1 and at + REF.size <= len(enc):
            tag, slot, cid, off, length = REF.unpack_from(enc, at)
            at += REF.size
            old = store_get(slot, cid)
            if old is None or off + length > len(old):
                return None, "re_miss"
            out += old[off : off + length]
        else:
            return None, "re_malformed"
        if len(out) > n:
            return None, "re_corrupt"
    if len(out) != n or zlib.crc32(out) != crc:
        return None, "re_corrupt"
    return bytes(out), None


def remember(data, slot, now, store_put, index_put, marks=None):
    """Put ``data`` in the packet store's ``slot`` and its anchors in the fingerprint index."""
    cid = content_id(data)
    store_put(slot, cid, data, now)
    if marks is None:
        marks = anchors(data)
    for fp, pos in marks:
        index_put(fp, slot, cid, pos, now)
    return cid


def fis_store_get(pkt, slot, cid):
    entry = pkt.fetch(slot_key(slot))
    if entry is None or entry["id"] != cid:
        return None
    return binascii.a2b_base64(entry["d"])


def process(pkt):
    """Packet API entry point (``pcsite_lite/api.py``)."""
    hop = pkt.fetch("hop:" + str(pkt.shim.label))
    if hop is None:
        return pkt.drop("re_no_role")

    def store_get(slot, cid):
        return fis_store_get(pkt, slot, cid)

    if hop["role"] == "decode":
        if pkt.shim.metadata != ENCODED:
            return None
        data, reason = decode(pkt.read(), store_get)
        if data is None:
            return pkt.drop(reason)
        pkt.set_payload(data)
        pkt.shim.update(metadata=0)
        return None

    data = pkt.read()
    if len(data) < WINDOW:
        return None
    now = pkt.now
    seq = STATE["seq"]
    STATE["seq"] = seq + 1

    def index_get(fp):
        raw = pkt.cache_get(fp)
        if raw is None:
            return None
        slot, cid, off, t, stored_seq = INDEX.unpack(raw)
        if seq - stored_seq > SLOTS - MARGIN:  # about to be overwritten: do not refer to it
            return None
        return slot, cid, off, t

    def store_put(slot, cid, payload, t):
        text = binascii.b2a_base64(payload, newline=False).decode()
        pkt.store(slot_key(slot), {"id": cid, "t": t, "d": text})

    def index_put(fp, slot, cid, pos, t):
        old = pkt.cache_get(fp)
        if old is not None and seq - INDEX.unpack(old)[4] < SLOTS // 2:
            return  # keep the older copy: it is past REF_DELAY sooner
        pkt.cache(fp, INDEX.pack(slot, cid, pos, t, seq))

    marks = anchors(data)
    enc = encode(data, index_get, store_get, now, marks)
    remember(data, seq % SLOTS, now, store_put, index_put, marks)
    if enc is not None and len(enc) < len(data):
        pkt.set_payload(enc)
        pkt.shim.update(metadata=ENCODED)
        pkt.log("re saved " + str(len(data) - len(enc)))
    return None

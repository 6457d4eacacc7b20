"""The multicast header the first site inserts in front of the payload (paper §2.6.2).

"After constructing the multicast tree, an additional shim header containing the constructed
multicast tree will be inserted for further forwarding." Layout (44 bytes, network order)::

    0..1   magic "MC"
    2      version (1)
    3      seed: which link-ID table the zFilter uses (LIPSIN's d)
    4..7   group ID
    8..11  upstream AS: the AS of the site that sent this copy (rewritten at each hop)
    12..43 zFilter (256 bits)

The sender's own packets carry no header yet (the PacketCloud shim's metadata bit
:data:`MD_TREE` is clear); the first site computes the tree, inserts the header and sets the bit.

>>> h = MulticastHeader(seed=2, group=7, upstream=64500, zfilter=b"\\x01" * 32)
>>> MulticastHeader.decode(h.encode() + b"payload")[0] == h
True
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Final

from examples.errors import ReasonError

__all__ = ["HEADER", "HEADER_LEN", "MAGIC", "MD_TREE", "HeaderError", "MulticastHeader"]

MAGIC: Final = b"MC"
VERSION: Final = 1
HEADER: Final = struct.Struct("!2sBBII32s")
HEADER_LEN: Final = HEADER.size  # 44
#: Shim metadata bit: set once the first site has inserted the multicast header.
MD_TREE: Final = 0x01


class HeaderError(ReasonError):
    """A payload that does not start with a valid multicast header; ``reason`` says why."""


@dataclass(frozen=True, slots=True)
class MulticastHeader:
    seed: int
    group: int
    upstream: int
    zfilter: bytes

    def encode(self) -> bytes:
        return HEADER.pack(MAGIC, VERSION, self.seed, self.group, self.upstream, self.zfilter)

    @classmethod
    def decode(cls, data: bytes | bytearray | memoryview) -> tuple[MulticastHeader, bytes]:
        """Header and the bytes that follow it; :class:`HeaderError` if malformed."""
        if len(data) < HEADER_LEN:
            raise HeaderError("mc_truncated")
        magic, version, seed, group, upstream, zf = HEADER.unpack_from(data)
        if magic != MAGIC:
            raise HeaderError("mc_bad_magic")
        if version != VERSION:
            raise HeaderError("mc_bad_version")
        return cls(seed, group, upstream, zf), bytes(data[HEADER_LEN:])

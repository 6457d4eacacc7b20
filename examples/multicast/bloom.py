"""LIPSIN-style in-packet Bloom filters ("zFilters") over directed inter-domain links.

A multicast tree is a set of directed links ``(u, v)`` between autonomous systems. Every
directed link gets a *link ID*: a 256-bit word with ``k`` bits set, chosen by hashing the
link's name. The tree's zFilter is the OR of its links' IDs; a site forwards a copy on its
out-link ``(here, v)`` iff every bit of that link's ID is set in the filter (Jokela et al.,
"LIPSIN: Line Speed Publish/Subscribe Inter-Networking", SIGCOMM 2009).

LIPSIN keeps ``d`` link-ID tables per link so that the encoder can pick the table whose
filter yields the fewest false positives on the actual topology; here a table is a *seed*
(BLAKE2s salt), carried in the packet next to the filter (see :mod:`.header`).

The false-positive probability of a filter holding ``n`` link IDs of ``k`` independent
uniform bits each in ``m`` bits is ``(1 - (1 - 1/m)^(k*n))^k``
(:func:`expected_false_positive_rate`); ``test_multicast.py`` measures it.

>>> f = ZFilter()
>>> f.add(link_mask(64500, 64501, seed=0))
>>> link_mask(64500, 64501, seed=0) in f, link_mask(64501, 64500, seed=0) in f
(True, False)
>>> len(f.to_bytes())
32
"""

from __future__ import annotations

import hashlib
from functools import lru_cache
from typing import Final

__all__ = [
    "DEFAULT_K",
    "M_BITS",
    "N_SEEDS",
    "ZFilter",
    "expected_false_positive_rate",
    "link_mask",
]

#: Filter width in bits (LIPSIN's 256-bit zFilter: 32 bytes in the packet).
M_BITS: Final = 256
#: Bits per link ID. LIPSIN uses k = 5 for 256-bit filters.
DEFAULT_K: Final = 5
#: Number of link-ID tables (seeds) the encoder may choose from (LIPSIN's d).
N_SEEDS: Final = 8
_FULL: Final = (1 << M_BITS) - 1


@lru_cache(maxsize=65536)
def link_mask(u: int, v: int, *, seed: int = 0, k: int = DEFAULT_K) -> int:
    """The link ID of the directed link ``u -> v`` in table ``seed``: a 256-bit int, k bits set.

    Each of the ``k`` bytes of ``BLAKE2s(f"{u}>{v}", salt=seed)`` names one bit position
    (0..255), so the ``k`` positions are independent and uniform, as the false-positive formula
    assumes (two positions may coincide, exactly as with ``k`` independent hash functions).
    """
    if not 1 <= k <= 32:
        raise ValueError(f"k must be in 1..32, got {k}")
    if not 0 <= seed < 1 << 64:
        raise ValueError(f"seed must fit in 64 bits, got {seed}")
    digest = hashlib.blake2s(
        f"{u}>{v}".encode(), digest_size=k, salt=seed.to_bytes(8, "big")
    ).digest()
    mask = 0
    for b in digest:
        mask |= 1 << b
    return mask


class ZFilter:
    """A 256-bit in-packet Bloom filter of link IDs."""

    __slots__ = ("bits",)

    def __init__(self, bits: int = 0) -> None:
        if not 0 <= bits <= _FULL:
            raise ValueError("a zFilter has 256 bits")
        self.bits = bits

    def add(self, mask: int) -> None:
        """OR a link ID into the filter."""
        self.bits |= mask

    def __contains__(self, mask: int) -> bool:
        return self.bits & mask == mask

    def fill_ratio(self) -> float:
        """Fraction of bits set (LIPSIN keeps it under ~50% for a useful filter)."""
        return self.bits.bit_count() / M_BITS

    def to_bytes(self) -> bytes:
        return self.bits.to_bytes(M_BITS // 8, "big")

    @classmethod
    def from_bytes(cls, data: bytes | bytearray | memoryview) -> ZFilter:
        if len(data) != M_BITS // 8:
            raise ValueError(f"a zFilter is {M_BITS // 8} bytes, got {len(data)}")
        return cls(int.from_bytes(data, "big"))

    def __eq__(self, other: object) -> bool:
        return isinstance(other, ZFilter) and other.bits == self.bits

    def __hash__(self) -> int:
        return hash(self.bits)

    def __repr__(self) -> str:
        return f"ZFilter(fill={self.fill_ratio():.2f})"


def expected_false_positive_rate(n: int, *, m: int = M_BITS, k: int = DEFAULT_K) -> float:
    """``(1 - (1 - 1/m)^(k*n))^k``: chance that a link not in a filter of ``n`` links matches."""
    if n < 0 or m < 1 or k < 1:
        raise ValueError("n >= 0, m >= 1, k >= 1")
    return float((1.0 - (1.0 - 1.0 / m) ** (k * n)) ** k)

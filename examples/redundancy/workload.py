"""A synthetic workload with known redundancy (seeded, pure).

Each packet is a 32-byte unique header (sequence number and random bytes) and a body. With
probability ``redundancy`` the body is one of ``pool`` popular bodies (a repeat once it has
been sent before), otherwise fresh random bytes. :func:`workload` returns the payloads and the
number of body bytes that repeat earlier bytes (the redundancy an ideal eliminator removes).
"""

from __future__ import annotations

import random
import struct

__all__ = ["workload"]


def workload(
    n: int, *, size: int = 1024, redundancy: float = 0.5, pool: int = 20, seed: int = 1
) -> tuple[list[bytes], int]:
    """(payloads, repeated body bytes) of ``n`` packets of ``size`` bytes."""
    rng = random.Random(seed)
    body = size - 32
    popular = [rng.randbytes(body) for _ in range(pool)]
    seen: set[int] = set()
    out, repeated = [], 0
    for i in range(n):
        head = struct.pack("!I", i) + rng.randbytes(28)
        if rng.random() < redundancy:
            k = rng.randrange(pool)
            if k in seen:
                repeated += body
            seen.add(k)
            out.append(head + popular[k])
        else:
            out.append(head + rng.randbytes(body))
    return out, repeated

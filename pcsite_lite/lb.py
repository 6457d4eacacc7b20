"""The site load balancer's mapping (paper §2.3): packet -> bucket -> compute-node worker.

Pure and I/O-free. Two steps, kept apart so the kernel can do the first one:

1. **Packet -> bucket** (:func:`bucket_key`, :func:`bucket_of`). Form-1 packets hash the
   incoming circuit label, so every packet of a circuit lands on one worker (circuit-dependent
   state stays on one node). Form-2 and form-3 packets hash the flow: the 5-tuple when the
   payload carries UDP/TCP ports, else source and destination address; the bucket is
   BLAKE2s of that key ``mod`` the bucket count. This is a *model*, not what the daemon runs:
   the daemon classifies in nftables (``pcsite_lite.daemon.kernel.render_ruleset``) with the
   same rule for form 1 (the incoming label) but a different hash (``jhash``, so packets land
   in different buckets than here) and, for forms 2 and 3, source . destination address only
   (no ports), so every flow between two hosts shares a worker. What the two share is the
   property the tests check here: a circuit's packets stay on one worker. The daemon has no
   Python dispatcher and uses only step 2 of this module.
2. **Bucket -> worker** (:class:`BucketTable`). Each bucket goes to the worker with the highest
   rendezvous score ``H(bucket, worker)`` (highest-random-weight hashing). Removing a worker
   moves exactly its own buckets; adding one moves only the buckets it now wins — about
   ``1/N`` of all buckets either way — and every other bucket keeps its worker.

>>> t = BucketTable(["w0", "w1", "w2"])
>>> t.worker(bucket_of(build_key_label(7)))  in {"w0", "w1", "w2"}
True
>>> t2 = t.without("w1")
>>> all(t2.assignment[b] == w for b, w in enumerate(t.assignment) if w != "w1")
True
"""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Hashable, Iterable, Sequence
from typing import Final

from pcsock.wire import FORM_CIRCUIT, IPPROTO_PACKETCLOUD, UDP_PORT, VERSION

__all__ = [
    "DEFAULT_BUCKETS",
    "BucketTable",
    "bucket_key",
    "bucket_of",
    "build_key_label",
    "moved_fraction",
]

#: Buckets in the table: a power of two >= 256 keeps per-worker shares within a few percent
#: for the worker counts a site runs (tens), and the kernel map stays tiny.
DEFAULT_BUCKETS: Final = 256

_IPPROTO_TCP: Final = 6
_IPPROTO_UDP: Final = 17
_I: Final = struct.Struct("!I")
_CIRCUIT_VF: Final = VERSION << 4 | FORM_CIRCUIT


def build_key_label(label: int) -> bytes:
    """The bucket key of a form-1 packet with incoming ``label`` (``b"L"`` + 4 label bytes)."""
    return b"L" + _I.pack(label)


def bucket_key(
    data: bytes | bytearray | memoryview,
    *,
    proto: int = IPPROTO_PACKETCLOUD,
    udp_port: int = UDP_PORT,
) -> bytes:
    """What the balancer hashes for an IPv4 packet: label (form 1) or flow (forms 2/3).

    Never raises: a packet too short to classify hashes whatever addresses it has (or nothing),
    so malformed input still lands on *some* worker whose pipeline counts the drop.
    """
    n = len(data)
    if n < 20:
        return b"?"
    ihl = (data[0] & 15) * 4
    ip_proto = data[9]
    if ip_proto == proto:
        off = ihl
    elif (
        ip_proto == _IPPROTO_UDP
        and n >= ihl + 8
        and (data[ihl + 2] << 8 | data[ihl + 3]) == (udp_port)
    ):
        off = ihl + 8
    else:
        off = -1
    if off >= 0 and n >= off + 8 and data[off] == _CIRCUIT_VF:
        return b"L" + bytes(data[off + 4 : off + 8])
    flow = bytes(data[12:20])  # source and destination address
    if off < 0 and ip_proto in (_IPPROTO_TCP, _IPPROTO_UDP) and n >= ihl + 4:
        flow += bytes((ip_proto,)) + bytes(data[ihl : ihl + 4])  # + ports: the 5-tuple
    return b"F" + flow


def bucket_of(key: bytes, buckets: int = DEFAULT_BUCKETS) -> int:
    """The bucket of a key from :func:`bucket_key` (stable across processes and runs)."""
    digest = hashlib.blake2s(key, digest_size=4).digest()
    return _I.unpack(digest)[0] % buckets


def _score(bucket: int, worker: Hashable) -> int:
    h = hashlib.blake2s(f"{bucket}\0{worker}".encode(), digest_size=8).digest()
    return int.from_bytes(h, "big")


def _owner(bucket: int, workers: tuple[Hashable, ...]) -> Hashable:
    return max(workers, key=lambda w: _score(bucket, w))


class BucketTable:
    """An immutable bucket -> worker assignment by rendezvous hashing.

    ``workers`` are any hashable, printable names (worker indexes work). ``assignment[b]``
    is the worker that owns bucket ``b``. An empty worker set is an error: a site with no
    compute node cannot forward.
    """

    __slots__ = ("assignment", "buckets", "workers")

    def __init__(self, workers: Iterable[Hashable], buckets: int = DEFAULT_BUCKETS) -> None:
        ws = tuple(dict.fromkeys(workers))
        if not ws:
            raise ValueError("a bucket table needs at least one worker")
        if not isinstance(buckets, int) or buckets < 1:
            raise ValueError(f"buckets must be a positive integer, got {buckets!r}")
        self.workers: tuple[Hashable, ...] = ws
        self.buckets = buckets
        self.assignment: tuple[Hashable, ...] = tuple(_owner(b, ws) for b in range(buckets))

    def worker(self, bucket: int) -> Hashable:
        """The worker owning ``bucket``."""
        return self.assignment[bucket % self.buckets]

    def with_workers(self, workers: Iterable[Hashable]) -> BucketTable:
        """The table for another worker set (same bucket count)."""
        return BucketTable(workers, self.buckets)

    def without(self, worker: Hashable) -> BucketTable:
        """The table after ``worker`` left (crashed or removed)."""
        return self.with_workers(w for w in self.workers if w != worker)

    def adding(self, worker: Hashable) -> BucketTable:
        """The table after ``worker`` joined."""
        return self.with_workers((*self.workers, worker))

    def shares(self) -> dict[Hashable, int]:
        """Buckets per worker."""
        out: dict[Hashable, int] = dict.fromkeys(self.workers, 0)
        for w in self.assignment:
            out[w] += 1
        return out

    def __repr__(self) -> str:
        return f"BucketTable(workers={list(self.workers)!r}, buckets={self.buckets})"


def moved_fraction(before: Sequence[Hashable], after: Sequence[Hashable]) -> float:
    """Fraction of positions whose worker differs between two assignments (or key mappings)."""
    if len(before) != len(after):
        raise ValueError("assignments differ in length")
    if not before:
        return 0.0
    return sum(1 for a, b in zip(before, after) if a != b) / len(before)

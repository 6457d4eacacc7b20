"""Batched packet I/O: the C helper :mod:`pcsite_lite._fastio`, or the same in pure Python.

The worker reads its TUN device in batches (one call per batch, not one interpreter round
trip and one ``BlockingIOError`` per packet) and the load generator sends with ``sendmmsg``.
``pip install -e .`` builds the C module (``setup.py``); when it is missing (no compiler) or
``PACKETCLOUD_PURE=1`` is set, the pure-Python functions below run instead, with the same
signatures and results, and the first use says so once on stderr.

``read_batch(fd, limit, spin_ns=0)``: packets read from a non-blocking packet fd until it is
empty or ``limit`` were read; with ``spin_ns`` > 0 and nothing read yet, keep trying for that
long (the worker's busy-poll window).
``write_batch(fd, packets) -> (written, errors, bytes_written)``.
``recv_batch(sock_fd, limit, bufsize)``: ``recvmmsg`` without blocking.
``send_batch(sock_fd, packets, (host, port)) -> sent``: ``sendmmsg`` to one address (at most
:data:`MAX_BATCH` packets per call; a full socket buffer sends 0).
``send_ip_batch(raw_fd, packets) -> (sent, errors, bytes_sent)``: ``sendmmsg`` of whole IPv4
packets on a raw ``IP_HDRINCL`` socket, each to the destination in its header (a packet the
kernel refuses, or shorter than an IPv4 header, is counted and skipped).
``recv_spin(sock_fd, bufsize, spin_ns) -> (message or None, spun_ns, spun_cpu_ns)``: one
message received without blocking, retried for up to ``spin_ns`` (a confined process
busy-polling its channel for the worker's next batch, :mod:`pcsite_lite.confine`), yielding
the vCPU between tries to any other runnable process; ``spun_ns``: how long it polled,
``spun_cpu_ns``: the CPU time the calling thread used meanwhile (preemption not counted).
"""

from __future__ import annotations

import errno
import os
import socket
import sys
import time
from collections.abc import Sequence
from typing import Final

__all__ = [
    "ACCELERATED",
    "MAX_BATCH",
    "read_batch",
    "recv_batch",
    "recv_spin",
    "send_batch",
    "send_ip_batch",
    "write_batch",
]

MAX_BATCH: Final = 1024
_READ_BUF: Final = 65536


def _clamp(limit: int) -> int:
    return min(MAX_BATCH, max(1, limit))


def _py_read_batch(fd: int, limit: int, spin_ns: int = 0) -> list[bytes]:
    out: list[bytes] = []
    n = _clamp(limit)
    read = os.read
    deadline = 0
    while len(out) < n:
        try:
            out.append(read(fd, _READ_BUF))
        except BlockingIOError:
            if not out and spin_ns > 0:
                t = time.monotonic_ns()
                if not deadline:
                    deadline = t + spin_ns
                if t < deadline:
                    continue
            break
        except InterruptedError:
            continue
        except OSError:
            if out:
                break
            raise
    return out


def _py_write_batch(fd: int, packets: Sequence[bytes]) -> tuple[int, int, int]:
    written = errors = nbytes = 0
    write = os.write
    for p in packets:
        try:
            nbytes += write(fd, p)
            written += 1
        except OSError:
            errors += 1
    return written, errors, nbytes


def _py_recv_batch(fd: int, limit: int, bufsize: int = _READ_BUF) -> list[bytes]:
    if not 1 <= bufsize <= _READ_BUF:
        raise ValueError("recv_batch: bufsize must be in 1..65536")
    s = socket.socket(fileno=os.dup(fd))
    try:
        out = []
        for _ in range(_clamp(limit)):
            try:
                out.append(s.recv(bufsize, socket.MSG_DONTWAIT))
            except BlockingIOError:
                break
        return out
    finally:
        s.close()


def _py_send_batch(fd: int, packets: Sequence[bytes], addr: tuple[str, int]) -> int:
    try:
        socket.inet_pton(socket.AF_INET, addr[0])
        if not 0 <= addr[1] <= 65535:
            raise ValueError
    except (OSError, ValueError):
        raise ValueError(f"send_batch: {addr} is not an IPv4 address and port") from None
    s = socket.socket(fileno=os.dup(fd))
    try:
        sent = 0
        for p in packets[:MAX_BATCH]:
            try:
                s.sendto(p, addr)
            except OSError as exc:
                if sent or isinstance(exc, BlockingIOError) or exc.errno == errno.ENOBUFS:
                    break  # as sendmmsg: what was sent so far (0 on a full buffer)
                raise
            sent += 1
        return sent
    finally:
        s.close()


def _py_send_ip_batch(fd: int, packets: Sequence[bytes]) -> tuple[int, int, int]:
    s = socket.socket(fileno=os.dup(fd))
    try:
        sent = errors = nbytes = 0
        errors += max(0, len(packets) - MAX_BATCH)
        for p in packets[:MAX_BATCH]:
            if len(p) < 20:
                errors += 1
                continue
            try:
                nbytes += s.sendto(p, (socket.inet_ntoa(bytes(p[16:20])), 0))
                sent += 1
            except OSError:
                errors += 1
        return sent, errors, nbytes
    finally:
        s.close()


def _py_recv_spin(
    fd: int | socket.socket, bufsize: int, spin_ns: int
) -> tuple[bytes | None, int, int]:
    """(``fd`` may also be the socket object: a seccomp-confined process cannot wrap a bare
    fd, which takes ``getsockopt``.)"""
    if not 1 <= bufsize <= 1 << 20:
        raise ValueError("recv_spin: bufsize must be in 1..1048576")
    sock = fd if isinstance(fd, socket.socket) else socket.socket(fileno=os.dup(fd))
    clock, cpu = time.monotonic_ns, time.thread_time_ns
    c0 = cpu()
    t0 = clock()
    try:
        while True:
            try:
                msg = sock.recv(bufsize, socket.MSG_DONTWAIT)
            except BlockingIOError:
                t = clock()
                if t - t0 >= spin_ns:
                    return None, t - t0, cpu() - c0
                os.sched_yield()  # another process with work on this vCPU runs first
                continue
            except InterruptedError:
                continue
            return msg, clock() - t0, cpu() - c0
    finally:
        if sock is not fd:
            sock.close()


def _load() -> bool:
    global read_batch, write_batch, recv_batch, send_batch, send_ip_batch, recv_spin
    if os.environ.get("PACKETCLOUD_PURE", "") not in ("", "0"):  # as pcsock.wire reads it
        print("pcsite_lite.fastio: PACKETCLOUD_PURE=1, batched I/O runs in Python", file=sys.stderr)
        return False
    try:
        from pcsite_lite import _fastio  # type: ignore[attr-defined]
    except ImportError as exc:
        print(
            f"pcsite_lite.fastio: the C helper is not built ({exc}); batched I/O runs in Python"
            " (pip install -e . builds it)",
            file=sys.stderr,
        )
        return False
    read_batch = _fastio.read_batch
    write_batch = _fastio.write_batch
    recv_batch = _fastio.recv_batch
    send_batch = _fastio.send_batch
    send_ip_batch = _fastio.send_ip_batch
    recv_spin = _fastio.recv_spin
    return True


read_batch = _py_read_batch
write_batch = _py_write_batch
recv_batch = _py_recv_batch
send_batch = _py_send_batch
send_ip_batch = _py_send_ip_batch
recv_spin = _py_recv_spin
#: True when the C helper is in use
ACCELERATED: bool = _load()

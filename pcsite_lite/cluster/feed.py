"""The controller's state feed to compute nodes: a snapshot, then every change.

The controller's supervisor already turns every accepted change (circuit installed, renewed,
torn down; service ID; destination; ...) into a replication *op* for its workers
(``pcsite_lite/daemon/state.py``). :class:`FeedServer` streams the same ops over TCP to every
compute node on the internal network: after a challenge-response on the cluster secret, a
node is sent the whole state (``iter_snapshot_ops``), a ``synced`` op, then each change as it
happens, one JSON object per line; every line in both directions carries an HMAC under a key
of that connection (derived from the secret and the server's nonce) over its direction, its
number and its text (:class:`_Seal`), so a host on the internal network cannot inject,
replay or reorder a line: the receiver drops the connection, counts ``forged`` in
``refused`` and the node reconnects and resynchronises. :class:`OpReplica` (pure) is what a
node keeps: the current op per key, from which its own workers' snapshots are streamed, so a
node that joins or restarts converges without anyone's help and keeps forwarding from its
copy while the controller is away (it reconnects and resynchronises, tearing down what
vanished meanwhile).

A site whose FIS is a Redis engine does not use this feed: its roles meet on the engine
(:mod:`pcsite_lite.cluster.engine`). This one serves a site without a network engine (one
SQLite FIS file on a filesystem the machines share, as in the testbed). Nodes' reports carry
their live usage and their journaled usage batches (:mod:`pcsite_lite.cluster.usage`).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import threading
from collections import Counter, deque
from collections.abc import Awaitable, Callable, Iterator
from typing import Any, Final

import trio

__all__ = ["FeedClient", "FeedError", "FeedServer", "OpReplica", "leaf", "merge_usage"]

MAX_LINE: Final = 1 << 20  #: bytes of one op line
MAX_BACKLOG: Final = 32 << 20  #: bytes queued for one node before it is cut off (it resyncs)
_HELLO: Final = b"pcsite-feed-1|"


def merge_usage(per_worker: list[dict[str, dict[str, int]]]) -> dict[str, dict[str, int]]:
    """One ``"psp/service" -> counters`` document from several (a node's report)."""
    out: dict[str, dict[str, int]] = {}
    for doc in per_worker:
        for name, fields in doc.items():
            acc = out.setdefault(name, {})
            for k, v in fields.items():
                acc[k] = acc.get(k, 0) + int(v)
    return out


def valid_report(doc: Any) -> bool:
    """A node's report: ``{"node": str, "inc": str, "usage": {name: {counter: int}}}``."""
    if not isinstance(doc, dict) or not isinstance(doc.get("node"), str):
        return False
    if not isinstance(doc.get("inc"), str) or not isinstance(doc.get("usage"), dict):
        return False
    return all(isinstance(n, str) and isinstance(f, dict) and all(
        isinstance(k, str) and isinstance(v, int) and not isinstance(v, bool) and v >= 0
        for k, v in f.items()) for n, f in doc["usage"].items())  # fmt: skip


class FeedError(Exception):
    """The feed broke (authentication, framing, a line too long)."""


def _key(op: dict[str, Any]) -> tuple[Any, ...] | None:
    kind = op.get("op")
    if kind in ("circuit", "teardown", "renew"):
        return ("c", int(op["label"]))
    if kind in ("service_id", "release_id"):
        return ("s", int(op["id"]))
    if kind in ("destination", "release_destination"):
        return ("d", str(op["prefix"]))
    if kind == "enable":
        return ("e", str(op["psp"]), str(op["service"]))
    return None


class OpReplica:
    """The node's copy of the site state, as the ops that rebuild it (pure)."""

    _ORDER: Final = {"c": 0, "s": 1, "d": 2, "e": 3}

    def __init__(self) -> None:
        self.ops: dict[tuple[Any, ...], dict[str, Any]] = {}

    def apply(self, op: dict[str, Any]) -> None:
        key = _key(op)
        if key is None:
            return
        kind = op["op"]
        if kind in ("teardown", "release_id", "release_destination"):
            self.ops.pop(key, None)
        elif kind == "renew":
            cur = self.ops.get(key)
            if cur is not None:
                self.ops[key] = {**cur, "expires": op["expires"]}
        else:
            self.ops[key] = {k: v for k, v in op.items() if k != "seq"}

    def iter_snapshot_ops(self) -> Iterator[dict[str, Any]]:
        for key in sorted(self.ops, key=lambda k: self._ORDER[k[0]]):
            op = self.ops.get(key)
            if op is not None:
                yield op

    def removal_ops(self, newer: OpReplica) -> list[dict[str, Any]]:
        """Ops that take away what this replica holds and ``newer`` does not."""
        out: list[dict[str, Any]] = []
        for key in self.ops.keys() - newer.ops.keys():
            if key[0] == "c":
                out.append({"op": "teardown", "label": key[1]})
            elif key[0] == "s":
                out.append({"op": "release_id", "id": key[1]})
            elif key[0] == "d":
                out.append({"op": "release_destination", "prefix": key[1]})
        return out

    def divert_prefixes(self) -> list[str]:
        return sorted(k[1] for k in self.ops if k[0] == "d")

    def __len__(self) -> int:
        return len(self.ops)


def _mac(secret: bytes, nonce: bytes) -> bytes:
    return hmac.new(secret, _HELLO + nonce, hashlib.sha256).hexdigest().encode()


class _Seal:
    """Every line after the handshake carries an HMAC under a key of this connection (from
    the secret and the server's nonce) over its direction, its number and its text, so a host
    on the internal network can neither inject, replay, reorder nor drop a line unnoticed:
    ``seal`` appends the mac, ``open`` checks it (:class:`FeedError` ``forged line``)."""

    def __init__(self, secret: bytes, nonce: bytes, out: bytes, inp: bytes) -> None:
        self.key = hmac.new(secret, b"pcsite-feed-session|" + nonce, hashlib.sha256).digest()
        self.out, self.inp = out, inp
        self.n_out = self.n_in = 0

    def _tag(self, way: bytes, n: int, text: bytes) -> bytes:
        msg = way + n.to_bytes(8, "big") + text
        return hmac.new(self.key, msg, hashlib.sha256).hexdigest()[:32].encode()

    def seal(self, text: bytes) -> bytes:
        self.n_out += 1
        return text + b"\t" + self._tag(self.out, self.n_out, text) + b"\n"

    def open(self, line: bytes) -> bytes:
        text, sep, tag = line.rpartition(b"\t")
        self.n_in += 1
        if not sep or not hmac.compare_digest(tag, self._tag(self.inp, self.n_in, text)):
            raise FeedError("forged line (its mac does not verify)")
        return text


class _Sub:
    def __init__(self) -> None:
        self.q: deque[bytes] = deque()
        self.size = 0
        self.wake = trio.Event()
        self.cut = False


class FeedServer:
    """Controller side. ``snapshot()`` yields the current state's ops; :meth:`publish` (from
    any thread) queues one change for every connected node."""

    def __init__(self, snapshot: Callable[[], Iterator[dict[str, Any]]], secret: bytes,
                 log: Callable[[str], None],
                 on_report: Callable[[dict[str, Any]], None] | None = None) -> None:  # fmt: skip
        self.snapshot = snapshot
        self.on_report = on_report  #: what a node reports back (its metered usage)
        self.secret = secret
        self.log = log
        self.subs: set[_Sub] = set()
        self._lock = threading.Lock()
        self._token: Any = None
        self.nodes = 0  #: connected, authenticated nodes
        #: connections dropped, by reason (``auth``: a failed handshake; ``forged``: a line
        #: whose mac did not verify)
        self.refused: Counter[str] = Counter()

    def publish(self, op: dict[str, Any]) -> None:
        line = json.dumps(op, separators=(",", ":")).encode() + b"\n"
        with self._lock:
            for s in self.subs:
                s.q.append(line)
                s.size += len(line)
                if s.size > MAX_BACKLOG:
                    s.cut = True
        if self._token is not None:
            try:
                self._token.run_sync_soon(self._wake_all)
            except trio.RunFinishedError:
                pass

    def _wake_all(self) -> None:
        for s in list(self.subs):
            s.wake.set()

    async def serve(
        self, host: str, port: int, *, task_status: Any = trio.TASK_STATUS_IGNORED
    ) -> None:
        self._token = trio.lowlevel.current_trio_token()
        listeners = await trio.open_tcp_listeners(port, host=host)
        task_status.started(listeners[0].socket.getsockname()[1])
        await trio.serve_listeners(self._handle, listeners)

    async def _handle(self, stream: trio.SocketStream) -> None:
        peer = "?"
        try:
            peer = str(stream.socket.getpeername()[0])
            nonce = os.urandom(16)
            await stream.send_all(nonce.hex().encode() + b"\n")
            with trio.fail_after(5):
                answer = await _read_line(stream, bytearray(), 256)
            if not hmac.compare_digest(answer, _mac(self.secret, nonce)):
                self.refused["auth"] += 1
                self.log(f"feed: {peer} failed authentication")
                return
            await self._stream(stream, peer, _Seal(self.secret, nonce, b"s", b"c"))
        except Exception as exc:  # a node's connection never takes the controller down
            err = leaf(exc)
            if isinstance(err, FeedError) and str(err).startswith("forged"):
                self.refused["forged"] += 1
            self.log(f"feed: {peer} gone ({type(err).__name__}: {err})")
        finally:
            await stream.aclose()

    async def _stream(self, stream: trio.SocketStream, peer: str, seal: _Seal) -> None:
        sub = _Sub()
        with self._lock:
            self.subs.add(sub)  # before the snapshot: changes meanwhile are queued, not lost
        self.nodes += 1
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._reports, stream, seal)
                await self._send(stream, peer, sub, seal)
        finally:
            self.nodes -= 1
            with self._lock:
                self.subs.discard(sub)

    async def _reports(self, stream: trio.SocketStream, seal: _Seal) -> None:
        buf = bytearray()
        while True:
            doc = json.loads(seal.open(await _read_line(stream, buf, MAX_LINE)))
            if isinstance(doc, dict) and self.on_report is not None:
                self.on_report(doc)

    async def _send(self, stream: trio.SocketStream, peer: str, sub: _Sub, seal: _Seal) -> None:
        n = 0
        buf = bytearray()
        for op in self.snapshot():
            buf += seal.seal(json.dumps(op, separators=(",", ":")).encode())
            n += 1
            if len(buf) > 65536:
                await stream.send_all(bytes(buf))
                buf.clear()
        buf += seal.seal(json.dumps({"op": "synced", "ops": n}).encode())
        await stream.send_all(bytes(buf))
        self.log(f"feed: {peer} sent a snapshot of {n} ops")
        while True:
            with self._lock:
                if sub.cut:
                    raise FeedError("fell too far behind")
                lines = list(sub.q)
                sub.q.clear()
                sub.size = 0
                if not lines:
                    sub.wake = trio.Event()
            if lines:
                await stream.send_all(b"".join(seal.seal(line[:-1]) for line in lines))
            else:
                await sub.wake.wait()


def leaf(exc: BaseException) -> BaseException:
    """The first real error inside trio's exception groups."""
    while isinstance(exc, BaseExceptionGroup) and exc.exceptions:
        exc = exc.exceptions[0]
    return exc


async def _read_line(stream: trio.SocketStream, buf: bytearray, limit: int) -> bytes:
    while True:
        i = buf.find(b"\n")
        if i >= 0:
            line = bytes(buf[:i])
            del buf[: i + 1]
            return line
        if len(buf) > limit:
            raise FeedError(f"line longer than {limit} bytes")
        data = await stream.receive_some(65536)
        if not data:
            raise FeedError("connection closed")
        buf += data


class FeedClient:
    """Node side: keep :attr:`replica` in step with the controller; ``on_op(op)`` is called
    for every change after the first snapshot (and for removals found on a resync);
    ``on_synced()`` after each snapshot."""

    def __init__(self, host: str, port: int, secret: bytes, *,
                 on_op: Callable[[dict[str, Any]], None], on_synced: Callable[[], None],
                 log: Callable[[str], None],
                 report: Callable[[], dict[str, Any]] | None = None,
                 report_interval: float = 0.25, node: str = "",
                 settle: Callable[[], Awaitable[None]] | None = None) -> None:  # fmt: skip
        """``settle()``: waits until this node's workers applied what ``on_op`` passed them;
        then the node acknowledges the op's ``seq`` (the controller's API call waits for the
        acknowledgements, bounded, as it waits for its own workers)."""
        self.host, self.port, self.secret = host, port, secret
        self.report, self.report_interval = report, report_interval
        self.node, self.settle = node, settle
        self._send_lock = trio.Lock()
        self.on_op, self.on_synced, self.log = on_op, on_synced, log
        self.replica = OpReplica()
        self.synced = False  #: the replica holds a whole snapshot (it may be stale)
        self.connected = False
        self.refused: Counter[str] = Counter()  #: connections dropped: ``forged`` lines
        self._seal: Any = None  #: this connection's line seal (after the handshake)

    async def run(self) -> None:
        delay = 0.1
        while True:
            try:
                await self._session()
            except Exception as exc:  # never ends: the node forwards from its copy meanwhile
                exc = leaf(exc)
                if isinstance(exc, FeedError) and str(exc).startswith("forged"):
                    self.refused["forged"] += 1
                    self.log(f"feed from {self.host}:{self.port}: {exc}: reconnecting")
                if self.connected:
                    self.log(f"feed from {self.host}:{self.port} lost ({exc}); "
                             "forwarding from the local copy")  # fmt: skip
                self.connected = False
            await trio.sleep(delay)
            delay = min(2.0, delay * 2)

    async def _session(self) -> None:
        with trio.fail_after(3):
            stream = await trio.open_tcp_stream(self.host, self.port)
        async with stream:
            buf = bytearray()
            with trio.fail_after(5):
                nonce = bytes.fromhex((await _read_line(stream, buf, 256)).decode())
                await stream.send_all(_mac(self.secret, nonce) + b"\n")
            seal = self._seal = _Seal(self.secret, nonce, b"c", b"s")
            fresh = OpReplica()
            while True:  # the snapshot
                op = json.loads(seal.open(await _read_line(stream, buf, MAX_LINE)))
                if op.get("op") == "synced":
                    break
                fresh.apply(op)
            old = self.replica  # empty the first time: every op is news
            self.replica = fresh
            for rm in old.removal_ops(fresh):  # what vanished while we were away
                self.on_op(rm)
            for op in fresh.iter_snapshot_ops():
                if old.ops.get(_key(op)) != op:  # type: ignore[arg-type]
                    self.on_op(op)
            self.synced = self.connected = True
            self.on_synced()
            self.log(f"feed from {self.host}:{self.port}: {len(fresh)} ops in the snapshot")
            async with trio.open_nursery() as n:
                if self.report is not None:
                    n.start_soon(self._report, stream)
                while True:
                    op = json.loads(seal.open(await _read_line(stream, buf, MAX_LINE)))
                    self.replica.apply(op)
                    self.on_op(op)
                    if self.settle is not None and isinstance(op.get("seq"), int):
                        await self.settle()
                        await self._send(stream, {"node": self.node, "ack": op["seq"]})

    async def _send(self, stream: trio.SocketStream, doc: dict[str, Any]) -> None:
        async with self._send_lock:
            await stream.send_all(self._seal.seal(json.dumps(doc, separators=(",", ":")).encode()))

    async def _report(self, stream: trio.SocketStream) -> None:
        assert self.report is not None
        while True:
            await self._send(stream, self.report())
            await trio.sleep(self.report_interval)

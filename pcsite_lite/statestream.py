"""Site state through the FIS engine: the controller publishes, every compute node follows.

A site that spans machines cannot hand its state to workers over pipes. The controller's
accepted changes (circuits, service deployments, service-ID and destination registrations: the
replication *ops* of :mod:`pcsite_lite.daemon.state`, plus ``deploy``/``undeploy``) go to the
site's Redis FIS engine instead, and each node applies them to its own replica. FIS entries
themselves need nothing more: every node reads them through its
:class:`~pcsite_lite.fis.CachedFIS`, which follows the engine's change feed.

Layout under a key prefix (default: the engine's prefix + ``":state"``, e.g. ``"pcfis:state"``),
all written by one Lua script per publish, so a reader sees each committed op exactly once, in
order, numbered::

    {prefix}:version   int     the number of the last op (the state's version)
    {prefix}:epoch     string  random identity of this state (set once; a reset changes it)
    {prefix}:log       stream  entry "<version>-0": op = the op (JSON); last ``log_keep``
    {prefix}:state     hash    entity -> the op that rebuilds it ("circuit:77" -> circuit op)

The ``state`` hash is the versioned snapshot: ``GET version`` + ``HGETALL state`` in one
``MULTI`` is the state as of that version. A node (:class:`StateSubscriber`) that joins, or that
restarts, or whose log position was pruned away, loads the snapshot and applies the difference
to what it holds (removed entities get their inverse op: ``teardown``, ``release_id``,
``release_destination``, ``undeploy``); after that it reads the log past its version (``XRANGE``;
``XREAD BLOCK`` when the caller wants to wait). It never needs the controller: the engine has
everything. While the engine is away the node keeps its replica and forwards from it
(``available`` is False); :meth:`StateSubscriber.save` / :meth:`~StateSubscriber.load` keep
the replica in a file, so a node restarted while the engine is away starts with it.

Writes go through the engine's :meth:`~pcsite_lite.fis.RedisFIS.call`, so they share its
back-off, its error mapping (:class:`~pcsite_lite.fis.FISUnavailableError`) and its replica
acknowledgement (``wait=N``: :class:`~pcsite_lite.fis.FISNotReplicatedError`).

>>> entity_of({"op": "circuit", "label": 77, "psp": "acme"})
'circuit:77'
>>> inverse_op("destination:198.18.7.0/24")
{'op': 'release_destination', 'prefix': '198.18.7.0/24'}
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import threading
from collections import Counter, deque
from collections.abc import Awaitable, Callable, Iterable
from typing import Any, Final

import redis
import trio

from pcsite_lite.fis import FISUnavailableError, FISValueError, RedisFIS
from pcsite_lite.fis.redis_engine import UNREACHABLE

__all__ = [
    "MAX_OP_BYTES",
    "SAVED_STATE",
    "EngineFeedClient",
    "EngineFeedServer",
    "StatePublisher",
    "StateSubscriber",
    "check_op",
    "entity_of",
    "inverse_op",
    "sign_op",
]

Op = dict[str, Any]
#: an op larger than this is refused: a deploy carries up to the repository's 1 MiB of code
#: (base64) and the PSP's key and signature
MAX_OP_BYTES: Final = 2 * 1024 * 1024
LOG_KEEP: Final = 10000  #: log entries kept for catching up (approximately)
BATCH: Final = 1000  #: log entries read per round trip
MAX_BLOCK_S: Final = 1.0  #: longest a poll may block (below the socket timeout)

#: op kind -> (entity kind, the op's field naming the entity, whether the op removes it)
_ENTITY: Final[dict[str, tuple[str, str, bool]]] = {
    "circuit": ("circuit", "label", False),
    "renew": ("circuit", "label", False),
    "teardown": ("circuit", "label", True),
    "service_id": ("service_id", "id", False),
    "release_id": ("service_id", "id", True),
    "destination": ("destination", "prefix", False),
    "release_destination": ("destination", "prefix", True),
    "deploy": ("deploy", "name", False),
    "undeploy": ("deploy", "name", True),
}
#: entity kind -> (inverse op kind, its field); and the order a snapshot is applied in
_INVERSE: Final = {
    "deploy": ("undeploy", "name"),
    "service_id": ("release_id", "id"),
    "destination": ("release_destination", "prefix"),
    "circuit": ("teardown", "label"),
}

# KEYS: 1 version, 2 log, 3 state, 4 epoch. ARGV: 1 log length kept, 2 an epoch candidate, 3 the
# version the ops' macs were computed after (else nothing is written: -(version + 1)), then
# quadruples (entity or "", op JSON, "set" | "del" | "keep", state JSON).
_PUBLISH_LUA = """
local cur = tonumber(redis.call('GET', KEYS[1]) or '0')
if cur ~= tonumber(ARGV[3]) then
  return -(cur + 1)
end
redis.call('SET', KEYS[4], ARGV[2], 'NX')
local v = 0
for i = 4, #ARGV, 4 do
  v = redis.call('INCR', KEYS[1])
  local r = redis.pcall('XADD', KEYS[2], 'MAXLEN', '~', ARGV[1], v .. '-0', 'op', ARGV[i + 1])
  if type(r) == 'table' and r.err then
    redis.call('DEL', KEYS[2])
    redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[1], v .. '-0', 'op', ARGV[i + 1])
  end
  if ARGV[i + 2] == 'set' then
    redis.call('HSET', KEYS[3], ARGV[i], ARGV[i + 3])
  elseif ARGV[i + 2] == 'del' then
    redis.call('HDEL', KEYS[3], ARGV[i])
  end
end
return v
"""


# KEYS: 1 version, 2 log, 3 state, 4 the new state (renamed over it), 5 epoch. ARGV: 1 log
# length kept, 2 an epoch candidate, 3 the resync op, 4 the version it was signed after. The new
# state may be absent (empty).
_REPLACE_LUA = """
local cur = tonumber(redis.call('GET', KEYS[1]) or '0')
if cur ~= tonumber(ARGV[4]) then
  return -(cur + 1)
end
redis.call('SET', KEYS[5], ARGV[2], 'NX')
if redis.call('EXISTS', KEYS[4]) == 1 then
  redis.call('RENAME', KEYS[4], KEYS[3])
else
  redis.call('DEL', KEYS[3])
end
local v = redis.call('INCR', KEYS[1])
local r = redis.pcall('XADD', KEYS[2], 'MAXLEN', '~', ARGV[1], v .. '-0', 'op', ARGV[3])
if type(r) == 'table' and r.err then
  redis.call('DEL', KEYS[2])
  redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[1], v .. '-0', 'op', ARGV[3])
end
return v
"""
SAVED_STATE: Final = "cluster-state.json"  #: a node's saved replica, in its state directory
RESYNC: Final = {"op": "resync"}  #: log entry: the state was replaced, load the snapshot


def entity_of(op: Op) -> str | None:
    """The entity an op creates, changes or removes (``"circuit:77"``), or ``None`` for an op
    that changes no lasting state (``enable``: re-enable a failed service now)."""
    spec = _ENTITY.get(str(op.get("op")))
    if spec is None:
        return None
    kind, field, _ = spec
    value = op.get(field)
    if field == "name" and value is None:
        value = f"{op.get('psp')}/{op.get('service')}"
    if value is None:
        raise FISValueError(f"state op {op.get('op')!r} lacks {field!r}")
    return f"{kind}:{value}"


def inverse_op(entity: str) -> Op:
    """The op that removes ``entity`` from a node's replica."""
    kind, _, value = entity.partition(":")
    op_kind, field = _INVERSE[kind]
    if field == "name":
        psp, _, service = value.partition("/")
        return {"op": op_kind, "psp": psp, "service": service}
    return {"op": op_kind, field: int(value) if field in ("label", "id") else value}


def _order(entity: str) -> int:
    return list(_INVERSE).index(entity.partition(":")[0])


def _dumps(doc: object) -> str:
    return json.dumps(doc, separators=(",", ":"), sort_keys=True, allow_nan=False)


_MAC_TAG: Final = b"pcsite-state-1|"


def _mac(key: bytes, op: Op, at: int | None) -> str:
    body = {k: v for k, v in op.items() if k != "mac"}
    where = b"state|" if at is None else b"log %d|" % at
    return hmac.new(key, _MAC_TAG + where + _dumps(body).encode(), hashlib.sha256).hexdigest()


def sign_op(key: bytes | None, op: Op, at: int | None = None) -> Op:
    """``op`` with its ``mac``: HMAC-SHA256, keyed by the site's cluster secret, over the op
    without it and where it is written: ``at`` = its version in the log (so an entry copied
    to another position, or a state entry copied into the log, does not verify), ``None``
    for the snapshot. Unchanged without a key."""
    if key is None:
        return op
    return {**{k: v for k, v in op.items() if k != "mac"}, "mac": _mac(key, op, at)}


def check_op(key: bytes | None, op: Any, at: int | None = None) -> tuple[Op | None, str]:
    """``(op without its mac, "")`` if ``op`` is an object whose mac verifies for position
    ``at`` (or no key is set), else ``(None, reason)``: ``"malformed"``, ``"unsigned"`` or
    ``"forged"``."""
    if not isinstance(op, dict):
        return None, "malformed"
    mac = op.get("mac")
    body = {k: v for k, v in op.items() if k != "mac"}
    if key is None:
        return body, ""
    if not isinstance(mac, str):
        return None, "unsigned"
    if not hmac.compare_digest(mac, _mac(key, body, at)):
        return None, "forged"
    return body, ""


class _Keys:
    def __init__(self, prefix: str) -> None:
        self.version = f"{prefix}:version"
        self.log = f"{prefix}:log"
        self.state = f"{prefix}:state"
        self.new_state = f"{prefix}:state-new"
        self.epoch = f"{prefix}:epoch"


class StatePublisher:
    """The controller's side: :meth:`publish` ops after the master copy accepted them.

    ``engine``: the site's :class:`~pcsite_lite.fis.RedisFIS` (its connection, back-off and
    replica acknowledgement are shared). A ``renew`` keeps the circuit's entity up to date (the
    stored circuit op gets the new ``expires``).
    """

    def __init__(
        self,
        engine: RedisFIS,
        *,
        prefix: str | None = None,
        log_keep: int = LOG_KEEP,
        key: bytes | None = None,
    ) -> None:
        self.engine = engine
        self.key = key  #: signs every op written (log and snapshot): see :func:`sign_op`
        self.keys = _Keys(prefix or f"{engine.prefix}:state")
        self._log_keep = log_keep
        self._script = engine.client.register_script(_PUBLISH_LUA)
        self._replace = engine.client.register_script(_REPLACE_LUA)

    def publish(self, op: Op) -> int:
        """Publish one op; returns its version (see :meth:`publish_many`)."""
        return self.publish_many([op])

    def publish_many(self, ops: Iterable[Op]) -> int:
        """Publish ops atomically, in order; returns the version of the last one.

        Raises :class:`FISValueError` for an op that is not JSON or larger than
        :data:`MAX_OP_BYTES` (nothing is published), :class:`FISUnavailableError` when the
        engine cannot be reached or the replicas did not acknowledge in time.
        """
        ops = list(ops)
        renewed = [op for op in ops if op.get("op") == "renew"]
        current: dict[str, Op] = {}
        if renewed:
            names = [entity_of(op) or "" for op in renewed]
            raw = self.engine.call(lambda r: r.hmget(self.keys.state, names))
            current = {n: json.loads(v) for n, v in zip(names, raw, strict=True) if v}
        entries: list[tuple[str, Op, str, str]] = []
        for op in ops:
            op = {k: v for k, v in op.items() if k != "mac"}
            try:
                text = _dumps(sign_op(self.key, op))
            except (TypeError, ValueError) as exc:
                raise FISValueError(f"state op is not JSON: {exc}") from None
            if len(text) > MAX_OP_BYTES:
                raise FISValueError(f"state op of {len(text)} bytes (max {MAX_OP_BYTES})")
            entity = entity_of(op)
            action, state = "keep", ""
            if entity is not None:
                removes = _ENTITY[op["op"]][2]
                if removes:
                    action = "del"
                elif op["op"] == "renew":
                    base = current.get(entity)
                    if base is not None:  # a renew of a circuit the state does not hold: log only
                        base = {k: v for k, v in base.items() if k != "mac"}
                        base["expires"] = op["expires"]
                        current[entity] = base
                        action, state = "set", _dumps(sign_op(self.key, base))
                else:
                    action, state = "set", text
            entries.append((entity or "", op, action, state))
        if not entries:
            return self.version()
        k = self.keys
        epoch = os.urandom(8).hex()

        def write(r: redis.Redis) -> int:
            base = int(r.get(k.version) or 0)
            for _ in range(3):  # the version moved meanwhile (another writer): sign again
                args: list[Any] = [self._log_keep, epoch, base]
                for i, (entity, op, action, state) in enumerate(entries):
                    args += [entity, _dumps(sign_op(self.key, op, at=base + i + 1)), action, state]
                v = int(self._script(keys=[k.version, k.log, k.state, k.epoch], args=args,
                                     client=r))  # fmt: skip
                if v >= 0:
                    return v
                base = -v - 1
            raise FISUnavailableError("state stream: its version kept moving under the writer")

        return int(self.engine.call(write, write=True))

    def version(self) -> int:
        return int(self.engine.call(lambda r: r.get(self.keys.version)) or 0)

    def replace(self, ops: Iterable[Op], *, chunk: int = 1000) -> int:
        """Make the published state exactly what ``ops`` build (the controller's master copy,
        e.g. at start or after ops were lost); returns the new version. Written in chunks
        beside the state, then swapped in with a ``resync`` log entry: nodes load the
        snapshot and apply only the difference."""
        state: dict[str, str] = {}
        for op in ops:
            entity = entity_of(op)
            if entity is not None and not _ENTITY[op["op"]][2]:
                text = _dumps(sign_op(self.key, {k: v for k, v in op.items() if k != "mac"}))
                if len(text) > MAX_OP_BYTES:
                    raise FISValueError(f"state op of {len(text)} bytes (max {MAX_OP_BYTES})")
                state[entity] = text
        k = self.keys
        items = list(state.items())

        def write(r: redis.Redis) -> int:
            r.delete(k.new_state)
            for i in range(0, len(items), chunk):
                r.hset(k.new_state, mapping=dict(items[i : i + chunk]))
            base = int(r.get(k.version) or 0)
            for _ in range(3):
                resync = _dumps(sign_op(self.key, RESYNC, at=base + 1))
                v = int(self._replace(
                    keys=[k.version, k.log, k.state, k.new_state, k.epoch],
                    args=[self._log_keep, os.urandom(8).hex(), resync, base], client=r,
                ))  # fmt: skip
                if v >= 0:
                    return v
                base = -v - 1
            raise FISUnavailableError("state stream: its version kept moving under the writer")

        return int(self.engine.call(write, write=True))

    def reset(self) -> None:
        """Forget the whole state (a new epoch): every node resynchronises to an empty state."""
        k = self.keys
        self.engine.call(lambda r: r.delete(k.version, k.log, k.state, k.epoch), write=True)


class StateSubscriber:
    """A node's side: follows the published state and applies it with ``apply(op)``.

    ``apply`` is the node's replica (``WorkerSite.apply``); an op it refuses is counted in
    :attr:`errors` by exception type and skipped (the node keeps following). :attr:`state`
    mirrors what was applied (entity -> op) at :attr:`version` of :attr:`epoch`.
    """

    def __init__(
        self,
        engine: RedisFIS,
        apply: Callable[[Op], object],
        *,
        prefix: str | None = None,
        max_ops_per_poll: int = 10 * BATCH,
        key: bytes | None = None,
    ) -> None:
        self.engine = engine
        self.key = key  #: with a key, an op whose mac does not verify is refused (counted)
        self.keys = _Keys(prefix or f"{engine.prefix}:state")
        self._apply = apply
        self._max = max_ops_per_poll
        self._blocking: redis.Redis | None = None
        self.state: dict[str, Op] = {}
        self.version = 0
        self.epoch: str | None = None
        self.available = False  #: whether the last poll reached the engine
        self.snapshots = 0  #: times the node (re)loaded the snapshot
        self.applied = 0  #: ops applied (from the log or a snapshot difference)
        self.errors: Counter[str] = Counter()  #: ops the replica refused, by exception type
        #: entries refused before the replica saw them, by reason (``forged``: a mac that
        #: does not verify; ``unsigned``; ``malformed``)
        self.refused: Counter[str] = Counter()
        self.last_error = ""

    # --- applying ---
    def _do(self, op: Op) -> None:
        try:
            self._apply(op)
        except Exception as exc:  # the replica refused it: count, keep following
            self.errors[type(exc).__name__] += 1
            self.last_error = f"{op.get('op')}: {type(exc).__name__}: {exc}"[:300]
        self.applied += 1

    def _follow(self, op: Op) -> None:
        entity = entity_of(op)
        if entity is not None:
            if _ENTITY[op["op"]][2]:
                self.state.pop(entity, None)
            elif op["op"] == "renew":
                if entity in self.state:
                    self.state[entity] = {**self.state[entity], "expires": op["expires"]}
            else:
                self.state[entity] = op
        self._do(op)

    def _converge(self, target: dict[str, Op]) -> None:
        """Apply the difference between what the node holds and ``target``."""
        for entity in sorted(set(self.state) - set(target), key=_order, reverse=True):
            self._do(inverse_op(entity))
            del self.state[entity]
        for entity in sorted(target, key=_order):
            if self.state.get(entity) != target[entity]:
                self.state[entity] = target[entity]
                self._do(target[entity])

    # --- reading the engine ---
    def _snapshot(self, r: redis.Redis) -> None:
        k = self.keys
        # read between two looks at (epoch, version): every publish changes the version in the
        # same script as the state, so equal looks mean the hash is the state at that version
        # (plain reads: a node's Redis user needs neither MULTI nor scripts)
        for _ in range(10):
            pipe = r.pipeline(transaction=False)
            pipe.mget(k.epoch, k.version)
            pipe.hgetall(k.state)
            pipe.mget(k.epoch, k.version)
            first, raw, second = pipe.execute()
            if first == second:
                break
        else:
            raise FISUnavailableError("state stream: its snapshot kept changing while read")
        epoch, version = first
        target = {}
        for k, v in raw.items():
            try:
                op, why = check_op(self.key, json.loads(v))
            except ValueError:
                self.errors["BadSnapshotEntry"] += 1
                continue
            try:
                misplaced = op is not None and entity_of(op) != k.decode()
            except ValueError:
                op, why = None, "malformed"
            if op is None or misplaced:
                self.refused[why or "misplaced"] += 1
                continue
            target[k.decode()] = op
        self._converge(target)
        self.epoch = epoch.decode() if epoch else None
        self.version = int(version or 0)
        self.snapshots += 1

    def _entries(self, r: redis.Redis, after: int) -> list[tuple[int, Op | None]]:
        """Log entries past ``after``; an entry refused by :func:`check_op` is ``None``."""
        out: list[tuple[int, Op | None]] = []
        entries: Any = r.xrange(self.keys.log, f"{after + 1}-0", "+", count=BATCH)
        for entry_id, fields in entries:
            num = int(entry_id.decode().partition("-")[0])
            op, why = check_op(self.key, json.loads(fields[b"op"]), at=num)
            if op is None:
                self.refused[why] += 1
                self.last_error = f"log entry {num} refused: {why}"
            out.append((num, op))
        return out

    def _sync(self, r: redis.Redis) -> int:
        before = self.applied
        epoch, version = r.mget(self.keys.epoch, self.keys.version)
        epoch_s = epoch.decode() if epoch else None
        version_i = int(version or 0)
        if epoch_s is None and self.epoch is not None:
            return 0  # an emptied store: keep forwarding from the replica until it is refilled
        if epoch_s != self.epoch or version_i < self.version:
            self._snapshot(r)  # a new node, another store, or a store that went back in time
            return self.applied - before
        while self.version < version_i and self.applied - before < self._max:
            entries = self._entries(r, self.version)
            if not entries or entries[0][0] != self.version + 1:
                self._snapshot(r)  # the log no longer reaches back to us
                break
            for num, op in entries:
                if num != self.version + 1 or op == RESYNC:
                    self._snapshot(r)  # a hole, or the whole state was replaced
                    return self.applied - before
                if op is not None:
                    self._follow(op)
                self.version = num
        return self.applied - before

    def poll(self, block: float = 0.0) -> int:
        """Apply what was published since the last poll; returns the number of ops applied.

        ``block`` > 0: when nothing is new, wait up to that long (at most
        :data:`MAX_BLOCK_S`) for the next op. Never raises for an unreachable engine: the
        node keeps its replica (:attr:`available` becomes False) and catches up later.
        """
        try:
            n = self.engine.call(self._sync)
            if n == 0 and block > 0:
                self._wait(min(block, MAX_BLOCK_S))
                n = self.engine.call(self._sync)
        except FISUnavailableError as exc:
            self.available = False
            self.last_error = str(exc)[:300]
            return 0
        except (ValueError, KeyError) as exc:  # a log entry not written by a publisher
            self.errors[type(exc).__name__] += 1
            self.epoch = None  # resynchronise from the snapshot next time
            return 0
        self.available = True
        return n

    def _wait(self, seconds: float) -> None:
        if self._blocking is None:
            self._blocking = self.engine.new_client()
        try:
            self._blocking.xread(
                {self.keys.log: f"{self.version}-0"}, count=1, block=int(seconds * 1000)
            )
        except UNREACHABLE as exc:
            self._blocking.close()
            self._blocking = None
            raise FISUnavailableError(f"state stream unavailable: {exc}") from None

    def iter_snapshot_ops(self) -> Iterable[Op]:
        """The ops that rebuild the node's replica (a restarted worker's snapshot)."""
        for entity in sorted(self.state, key=_order):
            yield self.state[entity]

    def divert_prefixes(self) -> list[str]:
        """Registered destination prefixes (the node diverts their traffic to its workers)."""
        return sorted(op["prefix"] for e, op in self.state.items() if e.startswith("destination:"))

    # --- a node restarted while the engine is away ---
    def save(self, path: str | os.PathLike[str]) -> None:
        """Keep the replica in ``path`` (temp file + rename; mode 0600: providers' keys)."""
        tmp = f"{os.fspath(path)}.tmp"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            json.dump(
                {"format": 1, "epoch": self.epoch, "version": self.version, "state": self.state}, f
            )
        os.replace(tmp, path)

    def load(self, path: str | os.PathLike[str]) -> int:
        """Apply a :meth:`save` file to the replica (before the engine is reached); returns the
        number of entities loaded, 0 for a missing or unreadable file."""
        try:
            with open(path) as f:
                doc = json.load(f)
            if doc.get("format") != 1:
                return 0
            state = {str(k): dict(v) for k, v in doc["state"].items()}
            epoch = None if doc["epoch"] is None else str(doc["epoch"])
            version = int(doc["version"])
        except (OSError, ValueError, TypeError, KeyError, AttributeError):
            return 0
        self._converge(state)
        self.epoch, self.version = epoch, version
        return len(state)

    def close(self) -> None:
        if self._blocking is not None:
            self._blocking.close()
            self._blocking = None


# --- drop-in feeds for a site's supervisor (controller and node roles) ---
MAX_QUEUE: Final = 100_000  #: ops a controller holds while the engine is away, then resyncs
PUBLISH_BATCH: Final = 500


class EngineFeedServer:
    """Controller side, for a supervisor: :meth:`publish` (from any thread) never blocks; a
    thread of its own writes the ops to the engine in order, in batches, retrying while the
    engine is away. At :meth:`start`, and whenever more than :data:`MAX_QUEUE` ops piled up,
    it replaces the published state with ``snapshot()`` (the master copy), so what nodes
    follow never lacks an accepted change for long."""

    def __init__(
        self,
        publisher: StatePublisher,
        snapshot: Callable[[], Iterable[Op]],
        log: Callable[[str], None],
        *,
        retry: float = 0.2,
    ) -> None:
        self.publisher = publisher
        self.snapshot = snapshot
        self.log = log
        self._retry = retry
        self._q: deque[Op] = deque()
        self._cv = threading.Condition()
        self._resync = True  # the first thing: publish the master copy
        self._stop = False
        self._thread: threading.Thread | None = None
        self.published = 0  #: ops written to the engine
        self.resyncs = 0  #: times the whole state was replaced
        self.version = 0  #: the engine's version after the last write
        self.available = False

    def publish(self, op: Op) -> None:
        with self._cv:
            if len(self._q) >= MAX_QUEUE:
                self._q.clear()
                self._resync = True
            else:
                self._q.append(op)
            self._cv.notify()

    def start(self) -> EngineFeedServer:
        self._thread = threading.Thread(target=self._run, name="state-feed", daemon=True)
        self._thread.start()
        return self

    def close(self, timeout: float = 5.0) -> None:
        """Stop after writing what is queued (if the engine takes it within ``timeout``)."""
        with self._cv:
            self._stop = True
            self._cv.notify()
        if self._thread is not None:
            self._thread.join(timeout)

    def idle(self) -> bool:
        """Whether everything published so far is on the engine."""
        with self._cv:
            return not self._q and not self._resync and not self._busy

    _busy = False

    def _run(self) -> None:
        while True:
            with self._cv:
                while not self._q and not self._resync and not self._stop:
                    self._cv.wait()
                if self._stop and (not self._q or not self.available):
                    return
                resync = self._resync
                batch = (
                    [] if resync else [self._q[i] for i in range(min(len(self._q), PUBLISH_BATCH))]
                )
                self._resync = False
                self._busy = True
            try:
                if resync:
                    self.version = self.publisher.replace(self.snapshot())
                    self.resyncs += 1
                else:
                    before = self.version
                    self.version = self.publisher.publish_many(batch)
                    self.published += len(batch)
                    if before and self.version != before + len(batch):
                        # the store lost what we published (wiped, or a new server): put
                        # the whole master copy back
                        self.log("state feed: the engine's state went back; republishing")
                        with self._cv:
                            self._resync = True
            except FISUnavailableError as exc:
                if self.available:
                    self.log(f"state feed: engine away ({exc}); holding changes")
                self.available = False
                with self._cv:
                    self._resync = self._resync or resync
                    self._busy = False
                    self._cv.wait(self._retry)
                continue
            except FISValueError as exc:  # an op the engine cannot take: nodes would miss it
                self.log(f"state feed: {exc}; republishing the whole state")
                with self._cv:
                    for _ in batch:
                        self._q.popleft()
                    self._resync = True
                    self._busy = False
                    if resync:  # the master copy itself holds it: retry later, not at once
                        self._cv.wait(self._retry)
                continue
            with self._cv:
                for _ in batch:
                    self._q.popleft()
                self._busy = False
            if not self.available:
                self.log("state feed: engine reachable")
            self.available = True


class EngineFeedClient:
    """Node side, for a supervisor: ``await run()`` follows the engine; ``on_op(op)`` is
    called (in the caller's trio thread) for every change and for the difference a snapshot
    brings, ``on_synced()`` after each snapshot. :attr:`replica` offers
    ``iter_snapshot_ops()`` and ``divert_prefixes()``; with ``state_file`` it survives a
    restart while the engine is away."""

    def __init__(
        self,
        subscriber_engine: RedisFIS,
        *,
        on_op: Callable[[Op], None],
        on_synced: Callable[[], None],
        log: Callable[[str], None],
        state_file: str | os.PathLike[str] | None = None,
        block: float = 0.5,
        save_interval: float = 1.0,
        key: bytes | None = None,
        applied: Callable[[int], Awaitable[None]] | None = None,
        applied_interval: float = 0.5,
    ) -> None:
        """``applied(version)``: awaited after ops were handed over (and at least every
        ``applied_interval`` s): the node waits for its workers, then says how far it got."""
        self._pending: list[Op] = []
        self.replica = StateSubscriber(subscriber_engine, self._pending.append, key=key)
        self.applied = applied
        self.applied_interval = applied_interval
        self.on_op, self.on_synced, self.log = on_op, on_synced, log
        self.state_file = state_file
        self.block = block
        self.save_interval = save_interval
        self.synced = False  #: the replica holds a whole state (it may be stale)
        self.connected = False
        if state_file is not None and self.replica.load(state_file):
            self.synced = True  # forwarding from the saved copy until the engine is back

    def _deliver(self) -> None:
        ops, self._pending[:] = list(self._pending), []
        for op in ops:
            self.on_op(op)

    async def run(self) -> None:
        if self._pending:  # the saved copy loaded at start: hand it over first
            self.log(f"state feed: starting from the saved copy ({len(self.replica.state)} "
                     f"entities, version {self.replica.version})")  # fmt: skip
            self._deliver()
            self.on_synced()
        next_save = next_applied = 0.0
        dirty = False  #: the replica changed since it was last saved
        while True:
            snapshots = self.replica.snapshots
            n = await trio.to_thread.run_sync(self.replica.poll, self.block)
            self._deliver()
            if self.applied is not None and (n or trio.current_time() >= next_applied):
                if self.replica.available:
                    await self.applied(self.replica.version)
                next_applied = trio.current_time() + self.applied_interval
            if self.replica.available != self.connected:
                self.connected = self.replica.available
                self.log(
                    "state feed: following the engine"
                    if self.connected
                    else f"state feed: engine away ({self.replica.last_error}); "
                    "forwarding from the local copy"
                )
            if self.replica.snapshots != snapshots:
                self.synced = True
                self.on_synced()
            if not self.connected:
                await trio.sleep(self.block)
            now = trio.current_time()
            dirty = dirty or bool(n)
            if self.state_file is not None and dirty and now >= next_save:
                await trio.to_thread.run_sync(self.replica.save, self.state_file)
                next_save = now + self.save_interval
                dirty = False

"""FIS engine on a real Redis server: for a site whose compute nodes span machines (§2.3).

Same interface and rules as :class:`pcsite_lite.fis.SqliteFIS` (validation and the writer check
live in :class:`~pcsite_lite.fis.FISEngine`); wrap it in :class:`~pcsite_lite.fis.CachedFIS` on
every compute node. Layout under a key prefix (default ``"pcfis"``)::

    {prefix}:kv:{ns}               hash  key -> JSON value
    {prefix}:lpm:{ns}:{table}      hash  "a.b.c.d/len" -> JSON value
    {prefix}:version               int   bumped by every write
    channel {prefix}:changes       "<version> <JSON list of [kind, ns, table, key]>"

Every write is one Lua script: the hash update, ``INCR version`` and ``PUBLISH`` happen
atomically, so a subscriber sees each committed write exactly once, in order, numbered.
A node's :class:`~pcsite_lite.fis.CachedFIS` reads messages already received on its pub/sub
connection when its staleness period elapses (a non-blocking read: no thread). A gap in the
numbers, a broken connection, or (checked once per ``verify_interval``) a server version that
no message ever brought means messages were lost: the feed reports it and the cache is flushed.
A longest-prefix ``lookup`` without the cache is one ``HMGET`` of the 33 candidate prefixes.

>>> import os  # doctest: +SKIP
>>> fis = RedisFIS("unix:///tmp/redis.sock")  # doctest: +SKIP
>>> fis.put("acme/fw", "blocked", True, writer="acme")  # doctest: +SKIP
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from typing import Any

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from pcsite_lite.fis import Change, ChangeFeed, FISEngine, FISUnavailableError, check_namespace
from pcsite_lite.lpm import MASKS, format_prefix

__all__ = ["RedisFIS"]

# KEYS[1] = hash, KEYS[2] = version key. ARGV[1] = "hset"|"hdel", ARGV[2] = channel,
# ARGV[3] = JSON list of changes, ARGV[4..] = fields (hdel) or field/value pairs (hset).
_WRITE_LUA = """
local n = 0
if ARGV[1] == 'hset' then
  for i = 4, #ARGV, 2 do n = n + redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1]) end
else
  for i = 4, #ARGV do n = n + redis.call('HDEL', KEYS[1], ARGV[i]) end
end
if ARGV[1] == 'hset' or n > 0 then
  local v = redis.call('INCR', KEYS[2])
  redis.call('PUBLISH', ARGV[2], v .. ' ' .. ARGV[3])
end
return n
"""


class RedisFIS(FISEngine):
    """FIS on Redis. ``url``: ``redis://host:port/db`` or ``unix:///path/to/redis.sock``
    (or pass a ``redis.Redis`` as ``client``). ``prefix`` separates several stores on one
    server (tests use one per test)."""

    def __init__(
        self,
        url: str | None = None,
        *,
        client: redis.Redis | None = None,
        prefix: str = "pcfis",
        verify_interval: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__()
        if client is None:
            if url is None:
                raise ValueError("RedisFIS needs a url or a client")
            client = redis.Redis.from_url(url)
        self._r: redis.Redis = client
        self.prefix = prefix
        self.channel = f"{prefix}:changes"
        self._version_key = f"{prefix}:version"
        self._script = self._r.register_script(_WRITE_LUA)
        self._verify_interval = verify_interval
        self._clock = clock

    # keys
    def _kv_key(self, ns: str) -> str:
        return f"{self.prefix}:kv:{ns}"

    def _lpm_key(self, ns: str, table: str) -> str:
        return f"{self.prefix}:lpm:{ns}:{table}"

    def _run(self, key: str, op: str, changes: list[Change], args: list[str]) -> int:
        payload = json.dumps([[c.kind, c.ns, c.table, c.key] for c in changes])
        n = self._script(keys=[key, self._version_key], args=[op, self.channel, payload, *args])
        return int(n)

    @staticmethod
    def _text(raw: Any) -> str | None:
        return None if raw is None else raw.decode() if isinstance(raw, bytes) else str(raw)

    def close(self) -> None:
        self._r.close()

    # key-value
    def _get(self, ns: str, key: str) -> str | None:
        return self._text(self._r.hget(self._kv_key(ns), key))

    def _put(self, ns: str, items: list[tuple[str, str]]) -> None:
        flat = [x for kv in items for x in kv]
        self._run(self._kv_key(ns), "hset", [Change("kv", ns, "", k) for k, _ in items], flat)

    def _delete(self, ns: str, key: str) -> bool:
        return self._run(self._kv_key(ns), "hdel", [Change("kv", ns, "", key)], [key]) > 0

    def _items(self, ns: str) -> Iterator[tuple[str, str]]:
        raw = self._r.hgetall(self._kv_key(ns))
        rows = sorted((self._text(k) or "", self._text(v) or "") for k, v in raw.items())
        return iter(rows)

    # longest prefix
    def _lpm_get(self, ns: str, table: str, net: int, plen: int) -> str | None:
        field = format_prefix(net, plen, check=False)
        return self._text(self._r.hget(self._lpm_key(ns, table), field))

    def _lpm_put(self, ns: str, table: str, rows: list[tuple[int, int, str, str]]) -> None:
        flat = [x for _, _, text, value in rows for x in (text, value)]
        changes = [Change("lpm", ns, table, r[2]) for r in rows]
        self._run(self._lpm_key(ns, table), "hset", changes, flat)

    def _lpm_delete(self, ns: str, table: str, net: int, plen: int, prefix: str) -> bool:
        key = self._lpm_key(ns, table)
        return self._run(key, "hdel", [Change("lpm", ns, table, prefix)], [prefix]) > 0

    def _lookup(self, ns: str, table: str, addr: int) -> str | None:
        fields = [format_prefix(addr & MASKS[n], n, check=False) for n in range(32, -1, -1)]
        for raw in self._r.hmget(self._lpm_key(ns, table), fields):
            if raw is not None:
                return self._text(raw)
        return None

    def _lpm_items(self, ns: str, table: str) -> Iterator[tuple[str, str]]:
        raw = self._r.hgetall(self._lpm_key(ns, table))
        rows = []
        for k, v in raw.items():
            text = self._text(k) or ""
            addr, _, plen = text.partition("/")
            a, b, c, d = (int(x) for x in addr.split("."))
            rows.append(((a << 24 | b << 16 | c << 8 | d, int(plen)), text, self._text(v) or ""))
        rows.sort()
        return iter([(text, v) for _, text, v in rows])

    def _drop(self, ns: str) -> list[Change]:
        changes: list[Change] = []
        kv = self._kv_key(ns)
        keys = [self._text(k) or "" for k in self._r.hkeys(kv)]
        if keys:
            self._run(kv, "hdel", [Change("kv", ns, "", k) for k in keys], keys)
            changes += [Change("kv", ns, "", k) for k in keys]
        for table in self.tables(ns):
            key = self._lpm_key(ns, table)
            prefixes = [self._text(p) or "" for p in self._r.hkeys(key)]
            if prefixes:
                lpm_changes = [Change("lpm", ns, table, p) for p in prefixes]
                self._run(key, "hdel", lpm_changes, prefixes)
                changes += lpm_changes
        return changes

    # listing
    def _scan(self, pattern: str) -> list[str]:
        return [self._text(k) or "" for k in self._r.scan_iter(match=pattern, count=1000)]

    def namespaces(self) -> list[str]:
        found: set[str] = set()
        for k in self._scan(f"{self.prefix}:kv:*"):
            found.add(k[len(self.prefix) + 4 :])
        for k in self._scan(f"{self.prefix}:lpm:*"):
            found.add(k[len(self.prefix) + 5 :].rpartition(":")[0])
        return sorted(found)

    def tables(self, ns: str) -> list[str]:
        base = f"{self.prefix}:lpm:{check_namespace(ns)}:"
        return sorted(k[len(base) :] for k in self._scan(base + "*") if ":" not in k[len(base) :])

    def watch(self) -> ChangeFeed:
        return _RedisFeed(self)


class _RedisFeed(ChangeFeed):
    """A pub/sub subscription read without blocking; numbered messages reveal losses.

    After a broken connection (server restart, ``CLIENT KILL``, output-buffer overflow) the
    feed reports a loss on every poll until it has subscribed again; then it restarts its
    numbering from the server's current version, which may be lower (a restarted server).
    """

    def __init__(self, engine: RedisFIS) -> None:
        self._engine = engine
        kwargs = dict(engine._r.connection_pool.connection_kwargs)
        kwargs["retry"] = Retry(NoBackoff(), 0)  # surface a broken link instead of hiding it
        kwargs.pop("retry_on_error", None)
        self._client = redis.Redis(
            connection_pool=redis.ConnectionPool(
                connection_class=engine._r.connection_pool.connection_class, **kwargs
            )
        )
        self._ps: Any = None
        self._seq = 0
        self._expect = 0  # a server version some message must have brought by the next verify
        self._next_verify = 0.0
        try:
            self._subscribe(wait=5.0)  # the first subscription must work
        except (redis.RedisError, OSError) as exc:
            self._client.close()
            raise FISUnavailableError(
                f"cannot subscribe to FIS changes on {engine.prefix!r}: {exc}"
            ) from None

    def _subscribe(self, wait: float) -> None:
        ps = self._client.pubsub()
        try:
            ps.subscribe(self._engine.channel)
            deadline = time.monotonic() + wait
            while True:  # wait for the server's confirmation: from then on nothing is missed
                msg = ps.get_message(timeout=min(0.05, wait))
                if msg is not None and msg.get("type") == "subscribe":
                    break
                if time.monotonic() >= deadline:
                    raise redis.ConnectionError("could not subscribe to the FIS change channel")
            self._seq = int(self._engine._r.get(self._engine._version_key) or 0)
        except BaseException:
            ps.close()
            raise
        self._ps = ps
        self._expect = 0
        self._next_verify = self._engine._clock() + self._engine._verify_interval

    def _drop(self) -> None:
        if self._ps is not None:
            try:
                self._ps.close()
            except (redis.RedisError, OSError):
                pass
            self._ps = None

    def poll(self) -> list[Change] | None:
        out: list[Change] = []
        lost = False
        try:
            if self._ps is None:
                self._subscribe(wait=0.05)
                return None  # whatever happened while disconnected is unknown
            while True:
                msg = self._ps.get_message(timeout=0.0)
                if msg is None:
                    break
                if msg.get("type") != "message":
                    continue
                try:
                    data = msg["data"].decode() if isinstance(msg["data"], bytes) else msg["data"]
                    seq_text, _, payload = data.partition(" ")
                    seq = int(seq_text)
                    changes = [Change(k, n, t, key) for k, n, t, key in json.loads(payload)]
                except (ValueError, TypeError, AttributeError):
                    lost = True  # not ours (someone published junk): trust nothing cached
                    continue
                if seq <= self._seq:
                    continue  # committed before we subscribed: already reflected by the store
                if seq != self._seq + 1:
                    lost = True
                self._seq = seq
                out.extend(changes)
            now = self._engine._clock()
            if now >= self._next_verify:
                self._next_verify = now + self._engine._verify_interval
                current = int(self._engine._r.get(self._engine._version_key) or 0)
                if self._expect > self._seq or current < self._seq:
                    # a message never came, or the store was reset (FLUSHALL): start over
                    lost = True
                    self._seq = current
                self._expect = current
        except (redis.ConnectionError, redis.TimeoutError, OSError):
            self._drop()
            return None
        return None if lost else out

    def close(self) -> None:
        try:
            self._drop()
        finally:
            self._client.close()

"""FIS engine on a real Redis server: for a site whose compute nodes span machines (§2.3).

Same interface and rules as :class:`~pcsite_lite.fis.SqliteFIS` (validation and the writer check
live in :class:`~pcsite_lite.fis.FISEngine`); wrap it in :class:`~pcsite_lite.fis.CachedFIS` on
every compute node. Layout under a key prefix (default ``"pcfis"``)::

    {prefix}:kv:{ns}               hash    key -> JSON value
    {prefix}:lpm:{ns}:{table}      hash    "a.b.c.d/len" -> JSON value
    {prefix}:version               int     bumped by every write
    {prefix}:epoch                 string  random identity of this store (set once)
    {prefix}:log                   stream  entry "<version>-0": w = write id, c = the
                                           changes (last ``LOG_KEEP`` entries, roughly)
    channel {prefix}:changes       "<version> <write id> <JSON list of [kind, ns, table, key]>"

Every write is one Lua script: the hash update, ``INCR version``, ``XADD`` to the log and
``PUBLISH`` happen atomically, so a subscriber sees each committed write exactly once, in order,
numbered. A node's :class:`~pcsite_lite.fis.CachedFIS` reads messages already received on its
pub/sub connection when its staleness period elapses (a non-blocking read: no thread). A gap in
the numbers, a message that never came (checked once per ``verify_interval``) or a broken
connection is repaired from the log: after re-subscribing, the feed reads the log entries past
the last number it applied (``XRANGE``). Only when the log no longer reaches back that far, or
the store's epoch changed (reset, another server), must the cache be flushed.

Replication: ``redis+sentinel://[USER:PASSWORD@]HOST:PORT[,HOST:PORT...]/PRIMARY[/DB]`` reaches
the current primary of a Redis primary + replicas group through its Sentinels (``open_engine``
accepts it; :func:`sentinel_client` parses it). With ``wait_replicas=N`` (URL query ``wait=N``,
``wait_ms=MS``, default 1000) a write returns only after ``WAIT`` reports that every replica
attached to the primary, and at least N, has it; otherwise it raises
:class:`~pcsite_lite.fis.FISNotReplicatedError` (the write may or may not survive a failover; it
was not acknowledged). Every attached replica, because Sentinel picks the replica to promote by
the replication offsets it last saw (``INFO``, refreshed every 10 s), which can be stale: a test
caught it promoting an empty replica and losing writes that ``WAIT 1`` had acknowledged through
the other one. A replica detached at the time of a write (link down) does not hold it, and
Sentinel may still promote it if it was detached only briefly: the residual risk of Sentinel.
While there is no primary, writes raise :class:`~pcsite_lite.fis.FISUnavailableError` and node
caches keep answering.

Failures: every Redis error that means "the server cannot be reached or refuses us" (connection
refused or lost, timeout, loading, authentication or ACL refusal) becomes
:class:`~pcsite_lite.fis.FISUnavailableError`. After one, the engine fails fast (no network
attempt) for a back-off (``BACKOFF_MIN`` doubling to ``BACKOFF_MAX``, and at least
``PROBE_RATIO`` times what the failed attempt took), so a flood of cache misses during an
outage cannot turn into a flood of connection attempts, and a server that hangs (a machine
gone, a frozen primary) costs a caller at most ``1 / (1 + PROBE_RATIO)`` of its time in
failed attempts. Connections use ``socket_connect_timeout`` 0.2 s and ``socket_timeout`` 2 s
unless the URL sets them; the single-entry reads of a cache miss (``get``, ``lpm_get``) use a
connection of their own with a ``READ_TIMEOUT`` (0.25 s) read timeout, retried only when a
pooled connection turns out broken (a server restart), never after a timeout: a worker's
packet loop that misses while the server hangs waits at most that long, not 2 s twice. When
a node cache's change feed finds the server away (a re-subscription refused or timed out, or
a read timed out), the engine fails fast until the feed's next attempt (``fast_failures``
counts those calls): during an outage only the feed tries the server, at its bounded rate,
and misses cost nothing but the drop; the feed's first successful attempt ends the back-off.

A longest-prefix ``lookup`` without the cache is one ``HMGET`` of the 33 candidate prefixes.

>>> import os  # doctest: +SKIP
>>> fis = RedisFIS("redis://site:secret@198.19.0.9:6379/0")  # doctest: +SKIP
>>> fis.put("acme/fw", "blocked", True, writer="acme")  # doctest: +SKIP
"""

from __future__ import annotations

import functools
import json
import os
import time
from collections.abc import Callable, Iterator
from typing import Any, Final, TypeVar

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry
from redis.sentinel import Sentinel

from pcsite_lite.fis.engine import Change, ChangeFeed, FISEngine
from pcsite_lite.fis.errors import (
    FISAuthError,
    FISNotReplicatedError,
    FISUnavailableError,
    FISValueError,
)
from pcsite_lite.fis.names import check_namespace
from pcsite_lite.lpm import MASKS, format_prefix

__all__ = [
    "BACKOFF_MAX",
    "BACKOFF_MIN",
    "LOG_KEEP",
    "PROBE_RATIO",
    "READ_TIMEOUT",
    "SENTINEL_SCHEME",
    "UNREACHABLE",
    "RedisFIS",
    "sentinel_client",
]

SENTINEL_SCHEME: Final = "redis+sentinel"

LOG_KEEP: Final = 10000  #: change-log entries kept for catching up (approximately: MAXLEN ~)
BACKOFF_MIN: Final = 0.02  #: seconds the engine fails fast after a failure ...
BACKOFF_MAX: Final = 0.5  #: ... doubling up to this (bounds the recovery delay too)
#: ... and at least this many times what the failed attempt took: a caller (a worker's packet
#: loop) spends at most 1 / (1 + PROBE_RATIO) of its time on attempts that fail
PROBE_RATIO: Final = 4
READ_TIMEOUT: Final = 0.25  #: read timeout (s) of a cache miss's single-entry reads
#: Redis errors that mean the store is out of reach (not a bad request of ours)
_UNREACHABLE = (
    redis.ConnectionError,  # includes AuthenticationError, BusyLoadingError
    redis.TimeoutError,
    redis.exceptions.NoPermissionError,
    redis.exceptions.AuthenticationWrongNumberOfArgsError,
    OSError,
)

UNREACHABLE: Final = _UNREACHABLE  #: for modules that share the engine's connection

_REFUSED = (
    redis.AuthenticationError,
    redis.exceptions.NoPermissionError,
    redis.exceptions.AuthenticationWrongNumberOfArgsError,
)

# KEYS: 1 hash, 2 version, 3 log, 4 epoch. ARGV: 1 "hset"|"hdel", 2 channel, 3 JSON list of
# changes, 4 log length kept, 5 a random write id (also the epoch if the store has none),
# 6.. fields (hdel) or field/value pairs (hset).
_WRITE_LUA = """
local n = 0
if ARGV[1] == 'hset' then
  for i = 6, #ARGV, 2 do n = n + redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1]) end
else
  for i = 6, #ARGV do n = n + redis.call('HDEL', KEYS[1], ARGV[i]) end
end
if ARGV[1] == 'hset' or n > 0 then
  redis.call('SET', KEYS[4], ARGV[5], 'NX')
  local v = redis.call('INCR', KEYS[2])
  local r = redis.pcall('XADD', KEYS[3], 'MAXLEN', '~', ARGV[4], v .. '-0', 'w', ARGV[5],
                        'c', ARGV[3])
  if type(r) == 'table' and r.err then
    -- the log is ahead of the version (someone reset one but not the other): restart it
    redis.call('DEL', KEYS[3])
    redis.call('XADD', KEYS[3], 'MAXLEN', '~', ARGV[4], v .. '-0', 'w', ARGV[5], 'c', ARGV[3])
  end
  redis.call('PUBLISH', ARGV[2], v .. ' ' .. ARGV[5] .. ' ' .. ARGV[3])
end
return n
"""

F = TypeVar("F", bound=Callable[..., Any])
T = TypeVar("T")


def _guarded(fn: F) -> F:
    """Run ``fn`` under the engine's back-off; unreachable-store errors become
    :class:`FISUnavailableError`."""

    @functools.wraps(fn)
    def wrapper(self: RedisFIS, *args: Any, **kwargs: Any) -> Any:
        self._check_backoff()
        t0 = time.monotonic()
        try:
            result = fn(self, *args, **kwargs)
        except _UNREACHABLE as exc:
            raise self._unavailable(exc, time.monotonic() - t0) from None
        self._backoff = 0.0
        return result

    return wrapper  # type: ignore[return-value]


def _client_defaults() -> dict[str, Any]:
    return {
        "socket_connect_timeout": 0.2,
        "socket_timeout": 2.0,
        # one immediate retry: a pooled connection that died with a server restart
        "retry": Retry(NoBackoff(), 1),
    }


def sentinel_client(url: str, **kwargs: Any) -> tuple[redis.Redis, Callable[..., redis.Redis], str]:
    """Parse ``redis+sentinel://[USER:PASSWORD@]HOST:PORT[,HOST:PORT]/PRIMARY[/DB]``.

    Returns a client of the current primary, a factory of further such clients (keyword
    arguments override the connection defaults) and a description for error messages.

    >>> sentinel_client("redis+sentinel://127.0.0.1:1/pcfis/2")[2]
    "Redis primary 'pcfis' (db 2) via Sentinel 127.0.0.1:1"
    """
    from urllib.parse import unquote, urlsplit

    try:
        parts = urlsplit(url)
        if parts.scheme != SENTINEL_SCHEME:
            raise ValueError(f"scheme is not {SENTINEL_SCHEME}")
        netloc = parts.netloc.rpartition("@")[2]
        hosts = []
        for hp in netloc.split(","):
            host, _, port = hp.rpartition(":")
            hosts.append((host.strip("[]"), int(port)))
        path = [x for x in parts.path.split("/") if x]
        if not hosts or not 1 <= len(path) <= 2:
            raise ValueError("expected HOST:PORT[,HOST:PORT]/PRIMARY[/DB]")
        name, db = path[0], int(path[1]) if len(path) == 2 else 0
        user = unquote(parts.username) if parts.username else None
        password = unquote(parts.password) if parts.password else None
    except ValueError as exc:
        raise FISValueError(f"bad Sentinel FIS URL {url!r}: {exc}") from None
    timeouts = {"socket_connect_timeout": 0.2, "socket_timeout": 0.5}
    # asking the Sentinels fails fast (no retries with back-off sleeps): a cache refreshes
    # inline, and a Sentinel on a machine that is down must cost one connect timeout
    sentinel = Sentinel(hosts, sentinel_kwargs={**timeouts, "retry": Retry(NoBackoff(), 0)},
                        **timeouts)  # fmt: skip
    base = {**_client_defaults(), "db": db, "username": user, "password": password, **kwargs}

    def factory(**over: Any) -> redis.Redis:
        return sentinel.master_for(name, **{**base, **over})

    where = ",".join(f"{h}:{p}" for h, p in hosts)
    return factory(), factory, f"Redis primary {name!r} (db {db}) via Sentinel {where}"


class RedisFIS(FISEngine):
    """FIS on Redis. ``url``: ``redis://user:password@host:port/db``,
    ``unix:///path/to/redis.sock`` or ``redis+sentinel://...`` (see the module docstring), or
    pass a ``redis.Redis`` as ``client``. ``prefix`` separates several stores on one server
    (tests use one per test). ``wait_replicas``/``wait_timeout``: acknowledge a write only once
    that many replicas have it (``WAIT``)."""

    def __init__(
        self,
        url: str | None = None,
        *,
        client: redis.Redis | None = None,
        prefix: str = "pcfis",
        verify_interval: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
        log_keep: int = LOG_KEEP,
        wait_replicas: int = 0,
        wait_timeout: float = 1.0,
    ) -> None:
        super().__init__()
        self._factory: Callable[..., redis.Redis] | None = None
        where = ""
        if client is None:
            if url is None:
                raise ValueError("RedisFIS needs a url or a client")
            if url.startswith(SENTINEL_SCHEME + ":"):
                client, self._factory, where = sentinel_client(url)
            else:
                client = redis.Redis.from_url(url, **_client_defaults())
        if not 0 <= wait_replicas <= 64 or not 0 < wait_timeout <= 60:
            raise FISValueError("wait_replicas must be 0..64 and wait_timeout 0..60 s")
        self.wait_replicas = wait_replicas
        self.wait_timeout = wait_timeout
        self._r: redis.Redis = client
        self.prefix = prefix
        self.channel = f"{prefix}:changes"
        self._version_key = f"{prefix}:version"
        self._log_key = f"{prefix}:log"
        self._epoch_key = f"{prefix}:epoch"
        self._log_keep = log_keep
        self._script = self._r.register_script(_WRITE_LUA)
        self._verify_interval = verify_interval
        self._clock = clock
        self._backoff = 0.0
        self._retry_at = 0.0
        #: calls failed at once during a back-off (no attempt: the server is known away)
        self.fast_failures = 0
        # a cache miss's reads (one HGET): a short read timeout, and a retry only for a broken
        # pooled connection (a timeout is not retried: the server hangs, do not wait twice)
        self._reads = self.new_client(
            socket_timeout=READ_TIMEOUT,
            retry=Retry(NoBackoff(), 1, supported_errors=(redis.ConnectionError,)),
        )
        if not where:
            kw = self._r.connection_pool.connection_kwargs
            where = "Redis at " + (kw.get("path") or f"{kw.get('host', '?')}:{kw.get('port', '?')}")
        self.where = f"{where} (prefix {prefix!r})"

    @property
    def client(self) -> redis.Redis:
        """The connection (pool) to the primary, for modules that keep more under the prefix."""
        return self._r

    def new_client(self, **over: Any) -> redis.Redis:
        """Another client of the same server (primary) without retries: a broken link shows
        (the change feed's pub/sub connection, blocking stream reads). ``over``: connection
        keywords to override (e.g. ``socket_timeout``)."""
        if self._factory is not None:
            return self._factory(**{"retry": Retry(NoBackoff(), 0), **over})
        kwargs = dict(self._r.connection_pool.connection_kwargs)
        kwargs["retry"] = Retry(NoBackoff(), 0)
        kwargs.update(over)
        kwargs.pop("retry_on_error", None)
        return redis.Redis(
            connection_pool=redis.ConnectionPool(
                connection_class=self._r.connection_pool.connection_class, **kwargs
            )
        )

    def call(self, fn: Callable[[redis.Redis], T], *, write: bool = False) -> T:
        """``fn(client)`` under the engine's back-off and error mapping (unreachable server:
        :class:`FISUnavailableError`); ``write``: then wait for the replicas (see
        :meth:`replicated`)."""
        self._check_backoff()
        t0 = time.monotonic()
        try:
            result = fn(self._r)
        except _UNREACHABLE as exc:
            raise self._unavailable(exc, time.monotonic() - t0) from None
        self._backoff = 0.0
        if write:
            self.replicated()
        return result

    def replicated(self) -> None:
        """Return once every replica attached to the primary, and at least ``wait_replicas``,
        has every write of this connection so far; :class:`FISNotReplicatedError` if they do
        not within ``wait_timeout``.

        Every attached replica, not just N of them: Sentinel promotes the replica whose
        replication offset it *last saw* highest, which may be minutes old, so a write that
        only some replicas hold could be lost by a failover that picks another one."""
        if not self.wait_replicas:
            return
        try:
            attached = int(self._r.info("replication").get("connected_slaves", 0))
            need = max(self.wait_replicas, attached)
            n = int(self._r.wait(need, max(1, int(self.wait_timeout * 1000))))
        except _UNREACHABLE as exc:
            raise self._unavailable(exc) from None
        if n < need:
            raise FISNotReplicatedError(
                f"FIS write not acknowledged: {n} of {need} replicas had it within "
                f"{self.wait_timeout:g} s ({self.where}); it may or may not survive a failover"
            )

    # failures
    def _check_backoff(self) -> None:
        if self._backoff and time.monotonic() < self._retry_at:
            self.fast_failures += 1
            raise FISUnavailableError(f"FIS engine unavailable: {self.where} (retrying)")

    def _reached(self) -> None:
        """The server answered another connection of ours (the change feed's): end the
        back-off, misses may read it again at once."""
        self._backoff = 0.0

    def _away(self, until: float) -> None:
        """Another connection of ours (the change feed's) found the server away: fail fast
        until ``until`` (the feed's next attempt) instead of trying it ourselves."""
        self._backoff = max(self._backoff, BACKOFF_MIN)
        self._retry_at = max(self._retry_at, until)

    def _unavailable(self, exc: BaseException, spent: float = 0.0) -> FISUnavailableError:
        """Start (or double) the back-off after a failed attempt that took ``spent`` s."""
        self._backoff = min(BACKOFF_MAX, max(BACKOFF_MIN, self._backoff * 2))
        self._retry_at = time.monotonic() + max(self._backoff, PROBE_RATIO * spent)
        what = f"{type(exc).__name__}: {exc}"
        if isinstance(exc, _REFUSED):
            return FISAuthError(
                f"FIS engine refused access: {self.where}: {what} (check the site's FIS "
                "credentials, site.fis = redis://USER:PASSWORD@host:port/db, and the ACL)"
            )
        return FISUnavailableError(f"FIS engine unavailable: {self.where}: {what}")

    # keys
    def _kv_key(self, ns: str) -> str:
        return f"{self.prefix}:kv:{ns}"

    def _lpm_key(self, ns: str, table: str) -> str:
        return f"{self.prefix}:lpm:{ns}:{table}"

    def _run(self, key: str, op: str, changes: list[Change], args: list[str]) -> int:
        payload = json.dumps([[c.kind, c.ns, c.table, c.key] for c in changes])
        n = self._script(
            keys=[key, self._version_key, self._log_key, self._epoch_key],
            args=[op, self.channel, payload, self._log_keep, os.urandom(8).hex(), *args],
        )
        if int(n) or op == "hset":
            self.replicated()
        return int(n)

    @staticmethod
    def _text(raw: Any) -> str | None:
        return None if raw is None else raw.decode() if isinstance(raw, bytes) else str(raw)

    def close(self) -> None:
        self._reads.close()
        self._r.close()

    # key-value
    @_guarded
    def _get(self, ns: str, key: str) -> str | None:
        return self._text(self._reads.hget(self._kv_key(ns), key))

    @_guarded
    def _put(self, ns: str, items: list[tuple[str, str]]) -> None:
        flat = [x for kv in items for x in kv]
        self._run(self._kv_key(ns), "hset", [Change("kv", ns, "", k) for k, _ in items], flat)

    @_guarded
    def _delete(self, ns: str, key: str) -> bool:
        return self._run(self._kv_key(ns), "hdel", [Change("kv", ns, "", key)], [key]) > 0

    @_guarded
    def _items(self, ns: str) -> Iterator[tuple[str, str]]:
        raw = self._r.hgetall(self._kv_key(ns))
        rows = sorted((self._text(k) or "", self._text(v) or "") for k, v in raw.items())
        return iter(rows)

    # longest prefix
    @_guarded
    def _lpm_get(self, ns: str, table: str, net: int, plen: int) -> str | None:
        field = format_prefix(net, plen, check=False)
        return self._text(self._reads.hget(self._lpm_key(ns, table), field))

    @_guarded
    def _lpm_put(self, ns: str, table: str, rows: list[tuple[int, int, str, str]]) -> None:
        flat = [x for _, _, text, value in rows for x in (text, value)]
        changes = [Change("lpm", ns, table, r[2]) for r in rows]
        self._run(self._lpm_key(ns, table), "hset", changes, flat)

    @_guarded
    def _lpm_delete(self, ns: str, table: str, net: int, plen: int, prefix: str) -> bool:
        key = self._lpm_key(ns, table)
        return self._run(key, "hdel", [Change("lpm", ns, table, prefix)], [prefix]) > 0

    @_guarded
    def _lookup(self, ns: str, table: str, addr: int) -> str | None:
        fields = [format_prefix(addr & MASKS[n], n, check=False) for n in range(32, -1, -1)]
        for raw in self._r.hmget(self._lpm_key(ns, table), fields):
            if raw is not None:
                return self._text(raw)
        return None

    @_guarded
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

    @_guarded
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

    @_guarded
    def namespaces(self) -> list[str]:
        found: set[str] = set()
        for k in self._scan(f"{self.prefix}:kv:*"):
            found.add(k[len(self.prefix) + 4 :])
        for k in self._scan(f"{self.prefix}:lpm:*"):
            found.add(k[len(self.prefix) + 5 :].rpartition(":")[0])
        return sorted(found)

    @_guarded
    def tables(self, ns: str) -> list[str]:
        base = f"{self.prefix}:lpm:{check_namespace(ns)}:"
        return sorted(k[len(base) :] for k in self._scan(base + "*") if ":" not in k[len(base) :])

    def watch(self) -> ChangeFeed:
        return _RedisFeed(self)


#: read timeout of a change feed's connection (s); its reads are single small commands
FEED_TIMEOUT = 0.25


class _Lost(Exception):
    """The change log no longer reaches back to what the feed applied (or the store changed)."""


class _RedisFeed(ChangeFeed):
    """A pub/sub subscription read without blocking; numbered messages reveal losses, which
    the log (``XRANGE``) repairs.

    Opening never fails: an unreachable server makes :meth:`poll` raise
    :class:`FISUnavailableError` (after a failure it tries again only after the engine's
    back-off). Once subscribed again, the feed catches up from the log past the last number it
    applied; if it never applied any (it started while the server was away) it has nothing
    cached to repair, and starts from the server's current number.
    """

    def __init__(self, engine: RedisFIS) -> None:
        self._engine = engine
        # every read of the feed goes through its own client, without retries and with a
        # short read timeout: a cache refreshes inline (a worker between packets), so a
        # primary that vanished without a reset (a machine down, a cut link) must cost it
        # FEED_TIMEOUT once per back-off, not the engine's 2 s socket timeout twice
        self._client = engine.new_client(socket_timeout=FEED_TIMEOUT)
        self._ps: Any = None
        self._epoch: str | None = None  #: the store's epoch; None until first reached
        self._seq = 0  #: the last change number applied
        self._wid: str | None = None  #: the write id of change number _seq, if known
        self._catch_up = False  #: read the log past _seq before trusting messages
        self._expect = 0  # a server version some message must have brought by the next verify
        self._next_verify = 0.0
        self._backoff = 0.0
        self._retry_at = 0.0
        #: opened while the server was away: a reader may have filled entries we cannot vouch
        #: for by the time we first reach it (unless a snapshot's position is resumed)
        self._unknown = False
        t0 = time.monotonic()
        try:
            self._subscribe(wait=5.0)
            engine._reads.ping()  # open the misses' connection now, not on the first miss
        except _UNREACHABLE:
            self._drop()
            self._failed(time.monotonic() - t0)
            self._unknown = True

    @property
    def position(self) -> tuple[str, int] | None:
        return None if self._epoch is None else (self._epoch, self._seq)

    def resume(self, position: tuple[str, int]) -> bool:
        epoch, seq = position
        if self._epoch is not None and epoch != self._epoch:
            return False
        self._epoch = epoch
        self._seq = int(seq)
        self._wid = None
        self._catch_up = True
        self._unknown = False
        return True

    def _failed(self, spent: float) -> None:
        """Back off after a failed attempt that took ``spent`` s (as the engine does)."""
        self._backoff = min(BACKOFF_MAX, max(BACKOFF_MIN, self._backoff * 2))
        self._retry_at = time.monotonic() + max(self._backoff, PROBE_RATIO * spent)

    def _server_epoch(self) -> str:
        r = self._client
        key = self._engine._epoch_key
        r.set(key, os.urandom(8).hex(), nx=True)
        return self._engine._text(r.get(key)) or ""

    def _version(self) -> int:
        return int(self._client.get(self._engine._version_key) or 0)

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
            epoch = self._server_epoch()
        except BaseException:
            ps.close()
            raise
        self._ps = ps
        self._engine._reached()  # the server answers: misses need not wait for its back-off
        if self._epoch is None:  # first contact, nothing applied yet: start from now
            self._epoch = epoch
            self._seq = self._version()
            self._wid = None
            self._catch_up = False
            if self._unknown:
                self._unknown = False
                raise _Lost
        elif epoch != self._epoch:  # another store (reset, replaced): nothing can be repaired
            self._epoch = epoch
            self._seq = self._version()
            self._wid = None
            self._catch_up = False
            raise _Lost
        else:
            self._catch_up = True
        self._expect = 0
        self._next_verify = self._engine._clock() + self._engine._verify_interval

    def _entries(self, lo: int, hi: int) -> list[tuple[int, str, str]]:
        """Log entries ``lo..hi`` as ``(number, write id, payload)``."""
        t = self._engine._text
        raw = self._client.xrange(self._engine._log_key, f"{lo}-0", f"{hi}-0", count=1000)
        out = []
        for entry_id, fields in raw or ():
            num = int((t(entry_id) or "").partition("-")[0])
            doc = fields or {}
            out.append((num, t(doc.get(b"w")) or "", t(doc.get(b"c")) or ""))
        return out

    def _read_log(self, upto: int) -> list[Change]:
        """Changes numbered ``_seq + 1 .. upto`` from the log; :class:`_Lost` if it has a hole
        or if the entry we applied last is not there any more (the server lost writes and
        reused their numbers)."""
        if self._wid is not None and self._seq > 0:
            mine = self._entries(self._seq, self._seq)
            if mine and mine[0][1] != self._wid:
                raise _Lost
        out: list[Change] = []
        nxt = self._seq + 1
        while nxt <= upto:
            entries = self._entries(nxt, upto)
            if not entries:
                raise _Lost
            for num, wid, payload in entries:
                if num != nxt:
                    raise _Lost  # pruned past us
                try:
                    out.extend(Change(k, n, t, key) for k, n, t, key in json.loads(payload))
                except (ValueError, TypeError):
                    raise _Lost from None
                self._seq, self._wid = num, wid
                nxt += 1
        return out

    def _drop(self) -> None:
        if self._ps is not None:
            try:
                self._ps.close()
            except _UNREACHABLE:
                pass
            self._ps = None

    def poll(self) -> list[Change] | None:
        out: list[Change] = []
        lost = False
        applied = (self._seq, self._wid)  # what the reader has, if this poll fails half-way
        t0 = time.monotonic()
        linked = self._ps is not None
        try:
            if not linked:
                if t0 < self._retry_at:
                    raise FISUnavailableError(
                        f"FIS change feed unavailable: {self._engine.where} (retrying)"
                    )
                self._subscribe(wait=0.05)
            if self._catch_up:
                current = self._version()
                if current < self._seq:
                    raise _Lost  # the store went back in time (reset, lost writes)
                out.extend(self._read_log(current))
                self._catch_up = False
            while True:
                msg = self._ps.get_message(timeout=0.0)
                if msg is None:
                    break
                if msg.get("type") != "message":
                    continue
                try:
                    data = msg["data"].decode() if isinstance(msg["data"], bytes) else msg["data"]
                    seq_text, _, rest = data.partition(" ")
                    wid, _, payload = rest.partition(" ")
                    seq = int(seq_text)
                    changes = [Change(k, n, t, key) for k, n, t, key in json.loads(payload)]
                except (ValueError, TypeError, AttributeError):
                    lost = True  # not ours (someone published junk): trust nothing cached
                    continue
                if seq <= self._seq:
                    continue  # already applied (from the log) or committed before we started
                if seq != self._seq + 1:
                    out.extend(self._read_log(seq - 1))  # a message went missing: repair
                self._seq, self._wid = seq, wid
                out.extend(changes)
            now = self._engine._clock()
            if now >= self._next_verify:
                self._next_verify = now + self._engine._verify_interval
                current = self._version()
                if current < self._seq:
                    raise _Lost
                if self._expect > self._seq:  # a message never came: repair from the log
                    out.extend(self._read_log(self._expect))
                self._expect = current
        except _Lost:
            self._catch_up = False
            try:
                self._seq = self._version()
            except _UNREACHABLE:
                self._drop()
            return None
        except _UNREACHABLE as exc:
            # the changes gathered so far are not returned: read them again from the log
            self._seq, self._wid = applied
            self._catch_up = self._epoch is not None
            self._drop()
            self._failed(time.monotonic() - t0)
            if not linked or isinstance(exc, (redis.TimeoutError, TimeoutError)):
                # the server refused or did not answer (not merely a link that broke): the
                # engine fails the misses fast until this feed tries it again
                self._engine._away(self._retry_at)
            raise FISUnavailableError(
                f"FIS change feed unavailable: {self._engine.where}: {type(exc).__name__}"
            ) from None
        self._backoff = 0.0
        return None if lost else out

    def close(self) -> None:
        try:
            self._drop()
        finally:
            self._client.close()

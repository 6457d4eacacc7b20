"""The site's durable state: one SQLite database (WAL) in the site's ``state_dir``.

What the control API acknowledges survives a crash of the daemon (or of the machine, when
``state_dir`` is on a disk): circuit hops, label reservations, service IDs, destination
registrations (with their ownership proof) and a table of the configured credentials. Each
change is committed here *before* the API answers and before the workers hear of it; the
database runs with ``journal_mode=WAL`` and ``synchronous=FULL``, so a commit that returned
is on the disk. At start the supervisor loads everything that has not expired
(:meth:`SiteStore.load`) and rebuilds its master copy from it; the workers converge from
that copy (snapshot + change stream, see ``state.py``). Service code and its active versions
live in the service repository directory (written with fsync'd atomic renames), FIS entries
in the FIS engine.

Rows are plain JSON-compatible values, so a row that no longer parses is skipped at load
(and named in the report) rather than stopping the site.

:class:`StateLock` is an exclusive ``flock`` on ``state_dir/pcsite.lock``: one daemon per
site, and ``pcsite cleanup`` refuses to touch the kernel state of a site that runs. The
kernel releases it when the process dies, however it dies.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import sqlite3
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

__all__ = ["DB_NAME", "SiteStore", "Snapshot", "StateLock", "StoreError", "token_digest"]

DB_NAME: Final = "site.db"
LOCK_NAME: Final = "pcsite.lock"
SCHEMA_VERSION: Final = 1

_SCHEMA: Final = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS circuits (
    label INTEGER PRIMARY KEY, psp TEXT NOT NULL, expires REAL NOT NULL, op TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS circuits_expires ON circuits (expires);
CREATE TABLE IF NOT EXISTS reservations (
    label INTEGER PRIMARY KEY, psp TEXT NOT NULL, service TEXT NOT NULL, until REAL NOT NULL);
CREATE TABLE IF NOT EXISTS service_ids (
    id INTEGER PRIMARY KEY, psp TEXT NOT NULL, service TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS service_id_redirects (id INTEGER PRIMARY KEY, redirect TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS destinations (
    prefix TEXT PRIMARY KEY, psp TEXT NOT NULL, service TEXT NOT NULL,
    redirect TEXT NOT NULL, claim TEXT NOT NULL, proof TEXT, expires REAL);
CREATE TABLE IF NOT EXISTS credentials (
    name TEXT PRIMARY KEY, role TEXT NOT NULL, token_sha256 TEXT NOT NULL,
    signing_key TEXT);
"""


class StoreError(Exception):
    """The state store cannot be opened or refused a write (the message says why)."""


def token_digest(token: str) -> str:
    """What the store keeps of a credential: its SHA-256 (never the token itself)."""
    return hashlib.sha256(token.encode()).hexdigest()


#: (prefix, psp, service, redirect prefixes, claim, proof or None, proof expiry or None)
DestinationRow = tuple[str, str, str, list[str], dict[str, Any], str | None, float | None]


@dataclass
class Snapshot:
    """Everything :meth:`SiteStore.load` found, plus what it had to skip."""

    circuits: list[dict[str, Any]] = field(default_factory=list)  #: replication ops
    reservations: list[tuple[int, str, str, float]] = field(default_factory=list)
    service_ids: list[tuple[int, str, str]] = field(default_factory=list)
    #: service ID -> the prefixes the ISP approved for its service to redirect to
    service_id_redirects: dict[int, list[str]] = field(default_factory=dict)
    destinations: list[DestinationRow] = field(default_factory=list)
    credentials: dict[str, tuple[str, str]] = field(default_factory=dict)  #: name -> (role, sha)
    skipped: list[str] = field(default_factory=list)  #: rows that did not parse, and why
    expired: int = 0  #: circuits and reservations dropped because their time was over


class SiteStore:
    """The durable tables of one site (see the module docstring)."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        try:
            self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            # it holds hop keys: readable by the daemon only (SQLite gives the -wal and -shm
            # files the database file's permissions)
            os.close(os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600))
            os.chmod(self.path, 0o600)
            self._db = sqlite3.connect(self.path, isolation_level=None, timeout=5.0)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")
            self._db.executescript(_SCHEMA)
            row = self._db.execute("SELECT value FROM meta WHERE key='schema'").fetchone()
            if row is None:
                self._db.execute("INSERT INTO meta VALUES ('schema', ?)", (str(SCHEMA_VERSION),))
            elif row[0] != str(SCHEMA_VERSION):
                raise StoreError(f"{self.path}: schema version {row[0]}, expected {SCHEMA_VERSION}")
        except (sqlite3.Error, OSError) as exc:
            raise StoreError(f"cannot open the state store {self.path}: {exc}") from exc

    def close(self) -> None:
        self._db.close()

    def _tx(self, statements: Iterable[tuple[str, tuple[Any, ...]]]) -> None:
        """Run statements in one transaction (committed, i.e. on disk, when this returns)."""
        db = self._db
        try:
            db.execute("BEGIN IMMEDIATE")
            try:
                for sql, args in statements:
                    db.execute(sql, args)
            except BaseException:
                db.execute("ROLLBACK")
                raise
            db.execute("COMMIT")
        except sqlite3.Error as exc:
            raise StoreError(f"{self.path}: {exc}") from exc

    # --- circuits and reservations
    def put_circuit(self, op: dict[str, Any]) -> None:
        """Install or replace a circuit hop (its replication op); its reservation is used up."""
        label = int(op["label"])
        self._tx([
            ("DELETE FROM reservations WHERE label=?", (label,)),
            ("INSERT OR REPLACE INTO circuits VALUES (?, ?, ?, ?)",
             (label, op["psp"], float(op["expires"]), json.dumps(op))),
        ])  # fmt: skip

    def renew_circuit(self, label: int, expires: float) -> None:
        self._tx([("UPDATE circuits SET expires=? WHERE label=?", (float(expires), label))])

    def delete_circuit(self, label: int) -> None:
        """Remove a circuit hop or a reservation of ``label``."""
        self._tx([
            ("DELETE FROM circuits WHERE label=?", (label,)),
            ("DELETE FROM reservations WHERE label=?", (label,)),
        ])  # fmt: skip

    def put_reservation(self, label: int, psp: str, service: str, until: float) -> None:
        self._tx([("INSERT OR REPLACE INTO reservations VALUES (?, ?, ?, ?)",
                   (label, psp, service, float(until)))])  # fmt: skip

    def reservation(self, label: int) -> tuple[str, str, float] | None:
        """``(psp, service, until)`` of a reserved label, or None."""
        try:
            row = self._db.execute(
                "SELECT psp, service, until FROM reservations WHERE label=?", (label,)
            ).fetchone()
        except sqlite3.Error as exc:
            raise StoreError(f"{self.path}: {exc}") from exc
        return None if row is None else (str(row[0]), str(row[1]), float(row[2]))

    def expire(self, now: float) -> None:
        """Forget circuits and reservations whose time is over."""
        self._tx([
            ("DELETE FROM circuits WHERE expires<=?", (now,)),
            ("DELETE FROM reservations WHERE until<=?", (now,)),
        ])  # fmt: skip

    # --- registrations
    def put_service_id(
        self, sid: int, psp: str, service: str, redirect: Iterable[str] = ()
    ) -> None:
        red = list(redirect)
        self._tx([
            ("INSERT OR REPLACE INTO service_ids VALUES (?, ?, ?)", (sid, psp, service)),
            ("DELETE FROM service_id_redirects WHERE id=?", (sid,)),
            *([("INSERT INTO service_id_redirects VALUES (?, ?)", (sid, json.dumps(red)))]
              if red else []),
        ])  # fmt: skip

    def delete_service_id(self, sid: int) -> None:
        self._tx([("DELETE FROM service_ids WHERE id=?", (sid,)),
                  ("DELETE FROM service_id_redirects WHERE id=?", (sid,))])  # fmt: skip

    def put_destination(
        self,
        prefix: str,
        psp: str,
        service: str,
        redirect: list[str],
        claim: dict[str, Any],
        proof: str | None,
        expires: float | None,
    ) -> None:
        self._tx([("INSERT OR REPLACE INTO destinations VALUES (?, ?, ?, ?, ?, ?, ?)",
                   (prefix, psp, service, json.dumps(redirect), json.dumps(claim), proof,
                    expires))])  # fmt: skip

    def delete_destination(self, prefix: str) -> None:
        self._tx([("DELETE FROM destinations WHERE prefix=?", (prefix,))])

    # --- credentials
    def set_credentials(self, rows: Iterable[tuple[str, str, str, str | None]]) -> None:
        """Replace the credentials table: ``(name, role, token, signing key hex)`` rows (the
        token is stored as its SHA-256)."""
        stmts: list[tuple[str, tuple[Any, ...]]] = [("DELETE FROM credentials", ())]
        for name, role, token, key in rows:
            stmts.append(("INSERT INTO credentials VALUES (?, ?, ?, ?)",
                          (name, role, token_digest(token), key)))  # fmt: skip
        self._tx(stmts)

    # --- start
    def load(self, now: float) -> Snapshot:
        """Everything still valid at ``now`` (expired circuits and reservations are deleted)."""
        snap = Snapshot()
        db = self._db
        try:
            for label, op_text, expires in db.execute(
                "SELECT label, op, expires FROM circuits ORDER BY label"
            ):
                if expires <= now:
                    snap.expired += 1
                    continue
                try:
                    op = json.loads(op_text)
                    if not isinstance(op, dict) or int(op["label"]) != label:
                        raise ValueError("not a circuit op for this label")
                    op["expires"] = float(expires)
                    snap.circuits.append(op)
                except (ValueError, KeyError, TypeError) as exc:
                    snap.skipped.append(f"circuit {label}: {exc}")
            for label, psp, service, until in db.execute(
                "SELECT label, psp, service, until FROM reservations ORDER BY label"
            ):
                if until <= now:
                    snap.expired += 1
                else:
                    snap.reservations.append((int(label), str(psp), str(service), float(until)))
            for sid, psp, service in db.execute(
                "SELECT id, psp, service FROM service_ids ORDER BY id"
            ):
                snap.service_ids.append((int(sid), str(psp), str(service)))
            for sid, redirect in db.execute("SELECT id, redirect FROM service_id_redirects"):
                try:
                    red = json.loads(redirect)
                    if not isinstance(red, list) or not all(isinstance(p, str) for p in red):
                        raise ValueError("redirect must be a list of prefixes")
                    snap.service_id_redirects[int(sid)] = red
                except (ValueError, TypeError) as exc:
                    snap.skipped.append(f"service ID {sid}'s redirect prefixes: {exc}")
            for prefix, psp, service, redirect, claim, proof, expires in db.execute(
                "SELECT prefix, psp, service, redirect, claim, proof, expires FROM destinations"
            ):
                try:
                    red = json.loads(redirect)
                    cl = json.loads(claim)
                    if not isinstance(red, list) or not isinstance(cl, dict):
                        raise ValueError("redirect must be a list, claim an object")
                    snap.destinations.append((str(prefix), str(psp), str(service), red, cl,
                                              proof, expires))  # fmt: skip
                except (ValueError, TypeError) as exc:
                    snap.skipped.append(f"destination {prefix}: {exc}")
            for name, role, sha in db.execute("SELECT name, role, token_sha256 FROM credentials"):
                snap.credentials[str(name)] = (str(role), str(sha))
        except sqlite3.Error as exc:
            raise StoreError(f"{self.path}: {exc}") from exc
        if snap.expired:
            self.expire(now)
        return snap


class StateLock:
    """An exclusive lock on a site's state directory, held while its daemon runs."""

    def __init__(self, state_dir: str | os.PathLike[str]) -> None:
        self.path = Path(state_dir) / LOCK_NAME
        self._fd = -1

    def acquire(self) -> None:
        """Take the lock or raise :class:`StoreError` naming the process that holds it."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip()
            os.close(fd)
            raise StoreError(
                f"another pcsite runs this site (pid {holder or '?'}, lock {self.path})"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._fd = fd

    def release(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def __enter__(self) -> StateLock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()

"""FIS test fixtures: a real ``redis-server`` owned by the test session, and ``store_url``,
parametrized so every engine test runs against SQLite and Redis alike."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import redis

from tests.support import stop_process, wait_until

REDIS_SERVER = shutil.which("redis-server") or "/usr/bin/redis-server"


@contextlib.contextmanager
def redis_server(
    workdir: Path,
    *,
    persist: bool = False,
    acl: dict[str, str] | None = None,
    acl_text: str | None = None,
) -> Iterator[str]:
    """Run a private redis-server on ``workdir/redis.sock``; yield its URL; kill it by PID.

    ``persist``: append-only file in ``workdir`` (fsync every second), so a server started
    again on the same directory has the same data. ``acl``: user -> password, each allowed
    everything; the default user is then off (the URL yielded carries no credentials).
    ``acl_text``: an ACL file to use instead."""
    if not os.path.exists(REDIS_SERVER):
        pytest.fail(f"redis-server not found at {REDIS_SERVER} (apt-get install redis-server)")
    sock = workdir / "redis.sock"
    logfile = workdir / "redis.log"
    extra: list[str] = []
    if acl_text is not None:  # the caller's ACL file as it is
        (workdir / "users.acl").write_text(acl_text)
        extra = ["--aclfile", str(workdir / "users.acl")]
    elif acl:
        aclfile = workdir / "users.acl"
        lines = ["user default off ~* &* +@all"]  # off; +@all: see testbed.net.redis_acl
        lines += [f"user {u} on >{p} ~* &* +@all" for u, p in acl.items()]
        aclfile.write_text("\n".join(lines) + "\n")
        extra = ["--aclfile", str(aclfile)]
    proc = subprocess.Popen(
        [
            REDIS_SERVER,
            "--port", "0",
            "--unixsocket", str(sock),
            "--unixsocketperm", "700",
            "--save", "",
            "--appendonly", "yes" if persist else "no",
            "--appendfsync", "everysec",
            "--dir", str(workdir),
            "--logfile", str(logfile),
            *extra,
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )  # fmt: skip
    url = f"unix://{sock}"
    try:

        def answers() -> bool:
            try:
                return bool(redis.Redis.from_url(url).ping())
            except redis.AuthenticationError:
                return True  # up, and refusing the default user
            except (redis.ConnectionError, FileNotFoundError):
                return proc.poll() is not None  # stop waiting for a dead server

        if not wait_until(answers, 10) or proc.poll() is not None:
            log = logfile.read_text() if logfile.exists() else ""
            pytest.fail(f"redis-server did not start (rc={proc.poll()}): {log[-500:]}")
        yield url
    finally:
        stop_process(proc)


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A redis-server shared by the session's tests (each test uses its own key prefix)."""
    with redis_server(tmp_path_factory.mktemp("pcf-redis")) as url:
        yield url


@pytest.fixture
def start_redis() -> Callable[[Path], contextlib.AbstractContextManager[str]]:
    """``with start_redis(dir) as url:`` runs a private server (for restart tests)."""
    return redis_server


@pytest.fixture(params=["sqlite", "redis"])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """URL of a fresh, empty FIS store (open it with ``open_engine``; works across processes)."""
    if request.param == "sqlite":
        return f"sqlite://{tmp_path / 'fis.db'}"
    base: str = request.getfixturevalue("redis_url")
    return f"{base}?prefix=pcf-{uuid.uuid4().hex[:12]}"

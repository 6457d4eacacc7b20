"""Network namespaces without forking: create, enter (per thread), delete.

A namespace is created the way ``ip netns add`` does it, but from a thread of this process:
``unshare(CLONE_NEWNET)`` moves only the calling thread into a fresh namespace, which is then
bind-mounted on ``/run/netns/NAME`` (so ``ip netns``, ``nsenter`` and ``ip netns exec`` see
it). Work inside a namespace runs in a thread that ``setns`` into it: the thread's sockets
(netlink included) belong to that namespace for their whole life. The main thread never
changes namespace, and a thread that entered one exits when its work is done (a thread parked
in a namespace would keep it alive after deletion).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import threading
from collections.abc import Callable
from typing import TypeVar

__all__ = ["NETNS_DIR", "call_in", "create", "exists", "inode", "remove", "write_sysctl"]

NETNS_DIR = "/run/netns"
CLONE_NEWNET = 0x40000000
MS_BIND = 4096
MS_REC = 16384
MS_SHARED = 1 << 20
MNT_DETACH = 2

_libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
T = TypeVar("T")


def _check(rc: int, what: str) -> None:
    if rc != 0:
        code = ctypes.get_errno()
        raise OSError(code, f"{what}: {os.strerror(code)}")


def path(name: str) -> str:
    return f"{NETNS_DIR}/{name}"


def exists(name: str) -> bool:
    return os.path.exists(path(name))


def inode(name: str) -> int | None:
    """The nsfs inode of namespace ``name`` (what ``/proc/PID/ns/net`` links to), or None."""
    try:
        return os.stat(path(name)).st_ino
    except OSError:
        return None


def _ensure_dir() -> None:
    os.makedirs(NETNS_DIR, exist_ok=True)


def write_sysctl(key: str, value: str) -> None:
    """Write a ``net.*`` sysctl of the calling thread's namespace (``key`` with slashes)."""
    with open(f"/proc/sys/{key}", "w") as fh:
        fh.write(value)


def create(name: str, sysctls: dict[str, str] | None = None) -> None:
    """Create namespace ``name`` from the calling thread, leaving the thread inside it.

    ``sysctls`` (``{"net/ipv4/ip_forward": "1"}``) are written once inside. Call this only
    from a worker thread that will exit or enter another namespace afterwards.
    """
    _ensure_dir()
    target = path(name)
    fd = os.open(target, os.O_RDONLY | os.O_CREAT | os.O_EXCL, 0o444)
    os.close(fd)
    try:
        _check(_libc.unshare(CLONE_NEWNET), f"unshare for {name}")
        _check(
            _libc.mount(b"/proc/thread-self/ns/net", target.encode(), None, MS_BIND, None),
            f"bind-mount {target}",
        )
    except OSError:
        try:
            os.unlink(target)
        except OSError:
            pass
        raise
    for key, value in (sysctls or {}).items():
        write_sysctl(key, value)


def enter(name: str) -> None:
    """Move the calling thread into namespace ``name`` (worker threads only)."""
    fd = os.open(path(name), os.O_RDONLY)
    try:
        _check(_libc.setns(fd, CLONE_NEWNET), f"setns {name}")
    finally:
        os.close(fd)


def remove(name: str) -> bool:
    """Unmount and delete namespace ``name``; True if it existed.

    The kernel frees the namespace (and every interface in it, which removes the veth peers
    in other namespaces) once no process, socket or thread still refers to it.
    """
    target = path(name)
    if not os.path.lexists(target):
        return False
    _libc.umount2(target.encode(), MNT_DETACH)
    try:
        os.unlink(target)
    except FileNotFoundError:
        return False
    return True


def call_in(name: str | None, fn: Callable[[], T], timeout: float | None = 60.0) -> T:
    """Run ``fn()`` in a fresh thread inside namespace ``name`` and return its result.

    Sockets ``fn`` opens stay in that namespace and may be used from any thread afterwards.
    """
    box: dict[str, object] = {}

    def runner() -> None:
        try:
            if name is not None:
                enter(name)
            box["result"] = fn()
        except BaseException as exc:  # re-raised in the caller
            box["error"] = exc

    thread = threading.Thread(target=runner, name=f"netns-{name}", daemon=True)
    thread.start()
    thread.join(timeout)
    if thread.is_alive():
        raise TimeoutError(f"work inside namespace {name} did not finish within {timeout} s")
    if "error" in box:
        raise box["error"]  # type: ignore[misc]
    return box["result"]  # type: ignore[return-value]

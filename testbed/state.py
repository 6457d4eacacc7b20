"""Per-run state: what a testbed run created, on disk, so anything can clean it up.

Each run has a name ``<prefix><runid>`` (e.g. ``pct3fa2``) and a directory
``/run/packetcloud-testbed/<run>/`` holding ``state.json`` (the planned namespaces, the
processes started with their start times, the owner process, the phase) plus per-run files
(DNS config and zones, logs). The directory is created (atomically, which also reserves the
run name) before anything else and the state is rewritten before each step, so a run killed
with SIGKILL at any point can be removed by :func:`clean` — and only that run: namespaces are
matched by exact ``<run>-`` name prefix, processes by PID *and* start time or by living in one
of the run's namespaces.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import signal
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from testbed import netns

__all__ = ["STATE_ROOT", "CleanReport", "Run", "clean", "list_runs", "proc_start_time"]

STATE_ROOT = Path(os.environ.get("PACKETCLOUD_TESTBED_STATE", "/run/packetcloud-testbed"))
_PREFIX = re.compile(r"^[a-z][A-Za-z0-9]{1,7}$")


def proc_start_time(pid: int) -> int | None:
    """Start time of ``pid`` in clock ticks since boot (field 22 of /proc/PID/stat), or None."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            data = fh.read()
    except OSError:
        return None
    return int(data[data.rindex(")") + 2 :].split()[19])


def alive(pid: int | None, start: int | None) -> bool:
    """True if process ``pid`` exists and is the one that started at ``start``."""
    return pid is not None and proc_start_time(pid) == start


class Run:
    """The state of one run (a directory plus ``state.json``)."""

    def __init__(self, name: str, data: dict[str, Any]) -> None:
        self.name = name
        self.data = data

    @property
    def dir(self) -> Path:
        return STATE_ROOT / self.name

    @classmethod
    def new(cls, prefix: str, topology: str) -> Run:
        if not _PREFIX.match(prefix):
            raise ValueError(
                f"prefix {prefix!r} must be a lowercase letter then 1..7 letters/digits"
            )
        STATE_ROOT.mkdir(parents=True, exist_ok=True)
        for _ in range(100):
            runid = secrets.token_hex(2)
            name = prefix + runid
            try:
                (STATE_ROOT / name).mkdir()
            except FileExistsError:
                continue
            if any(n.startswith(name + "-") for n in _netns_names()):
                shutil.rmtree(STATE_ROOT / name, ignore_errors=True)
                continue
            pid = os.getpid()
            run = cls(
                name,
                {
                    "run": name,
                    "prefix": prefix,
                    "runid": runid,
                    "topology": topology,
                    "owner_pid": pid,
                    "owner_start": proc_start_time(pid),
                    "persistent": False,
                    "phase": "building",
                    "created": time.time(),
                    "namespaces": [],
                    "processes": [],
                    "summary": {},
                },
            )
            run.save()
            return run
        raise RuntimeError("could not allocate a free run id")

    @classmethod
    def load(cls, name: str) -> Run:
        path = STATE_ROOT / name / "state.json"
        try:
            return cls(name, json.loads(path.read_text()))
        except FileNotFoundError:
            raise LookupError(f"no testbed run named {name!r} (no {path})") from None
        except json.JSONDecodeError:
            # a run killed while writing its very first state: only the name is known
            return cls(name, {"run": name, "namespaces": [], "processes": [], "phase": "unknown"})

    def save(self) -> None:
        tmp = self.dir / "state.json.tmp"
        tmp.write_text(json.dumps(self.data, indent=1))
        os.replace(tmp, self.dir / "state.json")

    def ns(self, node: str) -> str:
        return f"{self.name}-{node}"

    def add_process(self, node: str, name: str, pid: int, argv: list[str]) -> None:
        self.data["processes"].append(
            {"node": node, "name": name, "pid": pid, "start": proc_start_time(pid), "argv": argv}
        )
        self.save()

    def drop_process(self, pid: int) -> None:
        self.data["processes"] = [p for p in self.data["processes"] if p["pid"] != pid]
        self.save()

    @property
    def owner_alive(self) -> bool:
        return alive(self.data.get("owner_pid"), self.data.get("owner_start"))

    @property
    def stale(self) -> bool:
        """Owner gone and not deliberately left up (``testbed up`` runs are persistent)."""
        if self.data.get("persistent") and self.data.get("phase") == "up":
            return False
        if "owner_pid" not in self.data:
            # no state written yet: a run being created right now, unless it is old
            try:
                return time.time() - self.dir.stat().st_mtime > 60
            except OSError:
                return False
        return not self.owner_alive


def _netns_names() -> list[str]:
    try:
        return os.listdir(netns.NETNS_DIR)
    except FileNotFoundError:
        return []


def list_runs() -> list[Run]:
    """Every run with a state directory, oldest first."""
    if not STATE_ROOT.is_dir():
        return []
    runs = [Run.load(p.name) for p in STATE_ROOT.iterdir() if p.is_dir()]
    return sorted(runs, key=lambda r: r.data.get("created", 0))


@dataclass
class CleanReport:
    run: str
    namespaces: int = 0
    processes: int = 0
    seconds: float = 0.0
    leftovers: list[str] | None = None


def run_namespaces(name: str) -> list[str]:
    return [n for n in _netns_names() if n.startswith(name + "-")]


def processes_in(namespaces: list[str]) -> list[int]:
    """PIDs of processes whose network namespace is one of ``namespaces``."""
    inodes = {f"net:[{ino}]" for ino in (netns.inode(n) for n in namespaces) if ino}
    if not inodes:
        return []
    me = os.getpid()
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == me:
            continue
        try:
            if os.readlink(f"/proc/{entry}/ns/net") in inodes:
                pids.append(int(entry))
        except OSError:
            continue
    return pids


def terminate(pids: list[tuple[int, int | None]], grace: float = 2.0) -> int:
    """SIGTERM then (after ``grace`` s) SIGKILL each (pid, start time); returns how many died."""
    live = [(p, s) for p, s in pids if alive(p, s)]
    for pid, _ in live:
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline and any(alive(p, s) for p, s in live):
        _reap()
        time.sleep(0.02)
    for pid, start in live:
        if alive(pid, start):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
    deadline = time.monotonic() + 2.0
    while time.monotonic() < deadline and any(alive(p, s) for p, s in live):
        _reap()
        time.sleep(0.02)
    return len(live)


def _reap() -> None:
    try:
        while os.waitpid(-1, os.WNOHANG)[0] > 0:
            pass
    except ChildProcessError:
        pass


def clean(name: str, timeout: float = 15.0) -> CleanReport:
    """Remove everything run ``name`` left: its processes, namespaces and state directory.

    Bounded: processes get SIGTERM then SIGKILL within a few seconds; namespace removal is an
    unmount and an unlink each. Nothing outside the run's names and PIDs is touched.
    """
    if not re.match(r"^[a-z][A-Za-z0-9]{1,7}[0-9a-f]{4}$", name):
        raise ValueError(f"{name!r} is not a run name")
    t0 = time.monotonic()
    report = CleanReport(name)
    try:
        run: Run | None = Run.load(name)
    except LookupError:
        run = None
    names = sorted(
        set(run_namespaces(name))
        | {n for n in (run.data.get("namespaces", []) if run else []) if n.startswith(name + "-")}
    )
    recorded = [(p["pid"], p.get("start")) for p in (run.data["processes"] if run else [])]
    in_ns = [(pid, proc_start_time(pid)) for pid in processes_in(names)]
    report.processes = terminate(
        recorded + [x for x in in_ns if x not in recorded], grace=min(2.0, timeout / 3)
    )
    # a process may have been starting inside a namespace while we looked: one more pass
    late = [(pid, proc_start_time(pid)) for pid in processes_in(names)]
    report.processes += terminate(late, grace=0.5)
    for n in names:
        if time.monotonic() - t0 > timeout:
            break
        report.namespaces += netns.remove(n)
    shutil.rmtree(STATE_ROOT / name, ignore_errors=True)
    left = run_namespaces(name)
    report.leftovers = left or None
    report.seconds = time.monotonic() - t0
    return report

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
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from testbed import netns

__all__ = [
    "STATE_ROOT", "CleanReport", "Run", "clean", "kill_node", "list_runs", "proc_start_time",
    "restart_node",
]  # fmt: skip

STATE_ROOT = Path(os.environ.get("PACKETCLOUD_TESTBED_STATE", "/run/packetcloud-testbed"))
_PREFIX = re.compile(r"^[a-z][A-Za-z0-9]{1,7}$")
_NEW = ".new-"  #: prefix of a run directory being created (see Run.new)


def _stat(pid: int) -> list[str] | None:
    """The fields of /proc/PID/stat after the command name (state first), or None."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            data = fh.read()
    except OSError:
        return None
    return data[data.rindex(")") + 2 :].split()


def proc_start_time(pid: int) -> int | None:
    """Start time of ``pid`` in clock ticks since boot (field 22 of /proc/PID/stat), or None."""
    fields = _stat(pid)
    return None if fields is None else int(fields[19])


def alive(pid: int | None, start: int | None) -> bool:
    """True if process ``pid`` runs and is the one that started at ``start``.

    A zombie (killed, not yet reaped by its parent: state ``Z``) or a dying process (``X``)
    is dead: its /proc entry outlives it until the parent waits, which may be never.
    """
    if pid is None:
        return False
    fields = _stat(pid)
    return fields is not None and fields[0] not in ("Z", "X") and int(fields[19]) == start


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
        pid = os.getpid()
        start = proc_start_time(pid)
        for _ in range(100):
            runid = secrets.token_hex(2)
            name = prefix + runid
            if (STATE_ROOT / name).exists() or any(
                n.startswith(name + "-") for n in _netns_names()
            ):
                continue
            data = {
                "run": name,
                "prefix": prefix,
                "runid": runid,
                "topology": topology,
                "owner_pid": pid,
                "owner_start": start,
                "persistent": False,
                "phase": "building",
                "created": time.time(),
                "namespaces": [],
                "processes": [],
                "summary": {},
            }
            # the directory appears with its owner already recorded: written under a temporary
            # name (which carries the owner too), then renamed into place, which also reserves
            # the run name atomically (rename fails if another run took it meanwhile)
            tmp = STATE_ROOT / f"{_NEW}{pid}-{start}-{secrets.token_hex(4)}"
            tmp.mkdir()
            (tmp / "state.json").write_text(json.dumps(data, indent=1))
            try:
                os.rename(tmp, STATE_ROOT / name)
            except OSError:
                shutil.rmtree(tmp, ignore_errors=True)
                continue
            return cls(name, data)
        raise RuntimeError("could not allocate a free run id")

    @classmethod
    def load(cls, name: str) -> Run:
        path = STATE_ROOT / name / "state.json"
        try:
            return cls(name, json.loads(path.read_text()))
        except FileNotFoundError:
            if not (STATE_ROOT / name).is_dir():
                raise LookupError(f"no testbed run named {name!r} (no {path})") from None
            # a directory without state (left by an older version): only the name is known
            return cls(name, {"run": name, "namespaces": [], "processes": [], "phase": "unknown"})
        except json.JSONDecodeError:
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
        """Owner gone and not deliberately left up (``testbed up`` runs are persistent).

        Decided at once: a run directory always holds its owner (see :meth:`new`), so one
        without (unreadable state) was left by a writer that died.
        """
        if self.data.get("persistent") and self.data.get("phase") == "up":
            return False
        return not self.owner_alive

    @property
    def status(self) -> str:
        """The phase as ``testbed status`` shows it: ``dead`` for a build whose owner died."""
        phase = str(self.data.get("phase") or "unknown")
        return "dead" if phase != "up" and self.stale else phase


def _netns_names() -> list[str]:
    try:
        return os.listdir(netns.NETNS_DIR)
    except FileNotFoundError:
        return []


def list_runs() -> list[Run]:
    """Every run with a state directory, oldest first."""
    if not STATE_ROOT.is_dir():
        return []
    runs = [Run.load(p.name) for p in STATE_ROOT.iterdir() if p.is_dir() and _is_run(p.name)]
    return sorted(runs, key=lambda r: r.data.get("created", 0))


def _is_run(name: str) -> bool:
    return not name.startswith(_NEW)


def clean_unborn() -> int:
    """Remove temporary run directories (see :meth:`Run.new`) whose creator died; how many."""
    if not STATE_ROOT.is_dir():
        return 0
    n = 0
    for p in STATE_ROOT.iterdir():
        if not p.name.startswith(_NEW):
            continue
        try:
            pid, start, _ = p.name[len(_NEW) :].split("-")
            dead = not alive(int(pid), None if start == "None" else int(start))
        except ValueError:
            dead = True
        if dead:
            shutil.rmtree(p, ignore_errors=True)
            n += 1
    return n


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


def kill_node(run: Run, node: str) -> int:
    """SIGKILL the processes the run started in ``node`` (a crash, for fault injection);
    they are remembered so :func:`restart_node` can start them again. Returns how many."""
    mine = [p for p in run.data["processes"] if p["node"] == node]
    killed = 0
    for p in mine:
        if alive(p["pid"], p.get("start")):
            os.kill(p["pid"], signal.SIGKILL)
            killed += 1
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and any(alive(p["pid"], p.get("start")) for p in mine):
        _reap()
        time.sleep(0.02)
    run.data["processes"] = [p for p in run.data["processes"] if p["node"] != node]
    run.data.setdefault("killed", {}).setdefault(node, []).extend(mine)
    run.save()
    return killed


def restart_node(run: Run, node: str) -> int:
    """Start again, with the same command lines, what :func:`kill_node` killed in ``node``."""
    todo = run.data.get("killed", {}).pop(node, [])
    logdir = run.dir / "logs"
    logdir.mkdir(exist_ok=True)
    for i, p in enumerate(todo):
        with open(logdir / f"{node}-{p['name']}-restart{i}.log", "ab") as fh:
            popen = subprocess.Popen(p["argv"], stdout=fh, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL, start_new_session=True)  # fmt: skip
        popen.returncode = 0  # it belongs to the run, not to this process
        run.add_process(node, p["name"], popen.pid, p["argv"])
    run.save()
    return len(todo)


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

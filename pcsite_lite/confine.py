"""Kernel confinement of provider code: one process per provider service (issue #16).

CPython has no in-process isolation boundary (see :mod:`pcsite_lite.sandbox`), so a site runs
each provider's service in its own *confined process* and talks to it over a socketpair. The
trusted side (the worker) keeps the packet, the circuit and every anti-spoofing check; the
confined side gets a snapshot of what the Packet API reads, runs ``process(pkt)`` and returns
the list of *actions* the service took (``shim.update``, ``forward_to``, ``drop``,
``replicate``, ``encapsulate``, ``log``, ``store``, a new payload), which the worker replays on
the real :class:`~pcsite_lite.api.PacketApi` -- so a refused action is refused exactly as in
process. FIS reads (``fetch``, ``lookup``, ``isp_fetch``, ``isp_lookup``) are synchronous
calls back to the worker; ``cache``/``cache_get``, ``aes`` and ``compress`` run in the
confined process itself (the cache is node-local per service anyway).

After an answer, a process on other vCPUs than its worker busy-polls its channel for the
next batch (``IsolationPolicy.spin_us``, adaptive); the site, not the provider, pays for
that CPU (:attr:`ConfinedService.site_spin_ns`, bounded by the window and the idle time).

What the kernel enforces on the confined process (each applied before any provider code runs;
:attr:`ConfinedService.measures` lists what was applied):

* ``rlimits``: ``RLIMIT_AS`` (memory), ``RLIMIT_NOFILE``/``RLIMIT_FSIZE``/``RLIMIT_CORE``;
* ``netns`` and ``mountns`` (when the worker is root): its own network namespace (only a
  loopback, down) and mount namespace, private, whose ``/`` is an empty read-only tmpfs
  (``pivot_root``; no mount of the host left); where the kernel refuses the namespaces,
  ``chroot`` to an empty directory instead;
* ``uid``: its own unprivileged UID/GID (root only; the simulator's unprivileged lane keeps
  rlimits, Landlock and seccomp);
* ``landlock`` (any user, if the kernel has it): no file-system access, no TCP bind/connect,
  no signal or abstract UNIX socket outside itself;
* ``cgroup``: its own cgroup-v1 ``memory`` (limit) and ``cpu,cpuacct`` (CPU quota and the
  kernel's CPU accounting) group, when the hierarchy is writable;
* ``seccomp``: no-new-privileges and a syscall allow-list (its channel, memory, futex,
  clocks, signals, exit; no ``open``, ``socket``, ``exec``, ``fork``, ``ptrace``, ``kill``);
  anything else fails with ``EPERM``.

The worker enforces the deadline: a call that has not answered after ``deadline_ms`` plus
``per_packet_ms`` for each packet it carries (:meth:`IsolationPolicy.deadline`) gets
the process ``SIGKILL``\\ ed and the packet counted as ``service_timeout``; a process that died
(OOM, a signal) counts as ``service_error``. A dead process is restarted, with exponential
backoff, without blocking the worker: packets that arrive meanwhile are dropped as
``service_unavailable`` (not a failure). CPU is billed from the kernel's per-process CPU clock
of the confined process (``clock_gettime`` on its CPU-time clock), memory high-water from its
cgroup (or ``VmHWM``).

Wire format (SOCK_SEQPACKET, one message per send). Control messages (the source, ``ready``
or a load error, FIS calls and their answers) are ``!I`` length of a JSON head, the head, then
raw bytes: ``{"rpc": name, "args": [...]}`` answered with ``{"r": value}`` or ``{"x": reason,
"d": detail}``. Packets go in binary *batch frames*, one message per batch each way, with no
per-packet JSON: worker -> process ``b"B"``, ``!I`` count, one fixed :data:`_META` record per
packet (shim fields with a presence bit each, addresses, protocol, ToS, TTL, arrival time,
payload length), then the payloads back to back; process -> worker ``b"R"``, ``!III`` count,
JSON length, CPU µs it busy-polled for this message (:data:`_RHEAD`), one fixed :data:`_RES`
record per packet (outcome code, payload changed, cache bytes, new payload length), one JSON
array holding only the action lists (and error reasons) of the packets that have any, then
the new payloads. The worker builds form-1 records and parses answers in C
(``_fastio.form1_meta``, ``_fastio.answer_records``; references :func:`_py_form1_meta`,
:func:`_py_answer_records`). A packet that only read fields, changed
its payload or did nothing costs no JSON at all. The process never trusts the worker less
than itself; the worker treats every byte from the process as hostile (size-bounded, counts
and lengths checked against what it sent, JSON only, actions validated on replay; an error
reason the worker did not cause -- a FIS outage -- is not believed).
"""

from __future__ import annotations

import binascii
import gc
import json
import os
import select
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time
import weakref
from collections import deque
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Final

from pcsite_lite.api import PacketApi, PacketApiError, decision_of
from pcsite_lite.runtime import ACTIVE
from pcsite_lite.sandbox import Budget, BudgetExceeded, ServiceUnavailable

__all__ = [
    "ConfinedService",
    "IsolationPolicy",
    "Prefetcher",
    "ServiceFailed",
    "ServiceUnavailable",
    "check_source",
    "landlock_abi",
    "process_cpu_ns",
    "sweep_cgroups",
]

_HEAD: Final = struct.Struct("!I")
#: a batch frame's packet record (worker -> process): form, presence bits of the shim fields
#: (1 label, 2 service ID, 4 metadata, 8 original source, 16 hop limit), label, service ID,
#: metadata, original source, hop limit, IPv4 source, destination, protocol, ToS, TTL,
#: arrival time, payload length
_META: Final = struct.Struct("!BBqqBIBIIBBBdI")
#: a batch answer's head after its ``b"R"``: packet count, length of the JSON array, and the
#: CPU time (µs) the process spent busy-polling its channel since its previous answer (the
#: site's spin)
_RHEAD: Final = struct.Struct("!III")
#: a batch answer's packet record (process -> worker): outcome (0 done, no actions; 1 done,
#: its actions are the JSON array's next item; 2 failed, the next item is [reason, detail]),
#: payload changed (0/1), cache bytes written, new payload length
_RES: Final = struct.Struct("!BBII")
#: a form-1 packet without IP options: ToS, TTL, source, destination; and from the shim's
#: second byte: next protocol, hop limit, metadata, label, original source
_IP_FIELDS: Final = struct.Struct("!xB6xB3xII")
_SHIM1_FIELDS: Final = struct.Struct("!BBBII")
#: outcomes in a batch answer (``_DROPPED`` is the worker's own: never accepted off the wire)
_OK, _ACTS, _FAILED, _DROPPED = 0, 1, 2, 3
#: the kernel stamps each message the worker receives from a confined process with when it
#: was queued (``SO_TIMESTAMPNS``, Linux's value where Python lacks the name): a batch's round
#: trip ends when its answer was sent, not when the busy worker got round to reading it
_SO_TIMESTAMPNS: Final = getattr(socket, "SO_TIMESTAMPNS", 35)
_STAMP_SPACE: Final = socket.CMSG_SPACE(16)
_TIMESPEC: Final = struct.Struct("@qq")
#: largest message the worker accepts from a confined process (a 64 KiB packet + head)
MAX_MESSAGE: Final = 200_000
#: FIS calls one packet may make back to the worker
MAX_RPCS: Final = 64
#: the error a confined service's FIS call gets when the site's FIS is down
FIS_UNAVAILABLE: Final = "fis_unavailable"
#: seconds between reads of a confined process's memory high-water
MEMORY_EVERY: Final = 1.0
#: longest the worker busy-polls for a confined process's answer before it sleeps in
#: ``select`` (ns); the window adapts to twice the recent answer time, up to this
SPIN_MAX_NS: Final = 500_000
#: answers after which a confined process that found its vCPU shared (its poll got less than
#: half of it) tries polling again
SPIN_PAUSE: Final = 64
#: packets, and payload bytes, in one batch message to a confined process
MAX_BATCH: Final = 64
#: packets per batch message when the worker splits a received batch for one service: the
#: process starts on the first message while the worker builds the next, and the worker runs
#: the pipeline on one message's answers while the process computes the next
CHUNK: Final = 32
#: a batch past its deadline is overdue once its process used that much CPU on it, or once
#: it has been waited for this many times its deadline (at least BACKSTOP_S seconds)
BACKSTOP_FACTOR: Final = 10
BACKSTOP_S: Final = 1.0
#: batch messages one confined service may have in flight (its channel's bound: further
#: packets for it are dropped as ``service_busy`` until answers come back). At a low rate a
#: message carries one packet, so this is also how many packets a process may fall behind
#: (preempted on a busy machine) before any is dropped; bytes in flight are bounded by the
#: channel's send buffer (:data:`CHANNEL_BYTES`: a message that does not fit is not sent)
MAX_INFLIGHT: Final = 256
#: the worker's send buffer on a confined process's channel (bytes of batch messages the
#: process has not read yet, at most)
CHANNEL_BYTES: Final = 1 << 20
MAX_BATCH_BYTES: Final = 96 * 1024
#: base of the per-service UIDs (``uid = UID_BASE + crc32(psp/service) % UID_SPAN``)
UID_BASE: Final = 0x30000000
UID_SPAN: Final = 1 << 20
CGROUP_ROOT: Final = "/sys/fs/cgroup"

#: syscalls a confined process may make once provider code can run
ALLOWED_SYSCALLS: Final = (
    "read recvfrom recvmsg write sendto sendmsg poll ppoll futex clock_gettime "
    "clock_getres gettimeofday clock_nanosleep nanosleep mmap munmap mremap mprotect brk "
    "madvise rt_sigreturn rt_sigprocmask rt_sigaction sigaltstack exit exit_group "
    "getrandom getpid gettid close sched_yield restart_syscall fstat newfstatat "
    "getrusage set_robust_list rseq"
).split()


class ServiceFailed(Exception):
    """The confined service failed (raised, died, or could not load); ``str()`` is the detail."""


# ---------------------------------------------------------------- policy (worker side)
class IsolationPolicy:
    """How provider services run at a site. ``mode``: ``process`` (confined) or ``inprocess``
    (every service in the worker: the simulator's lane). ``trusted``: ``"psp/service"`` names
    that run in the worker even in ``process`` mode (operator-certified code)."""

    def __init__(
        self,
        mode: str = "process",
        *,
        trusted: tuple[str, ...] = (),
        deadline_ms: float = 20.0,
        per_packet_ms: float = 1.0,
        memory_mb: int = 512,
        cpu_percent: int = 100,
        startup_s: float = 5.0,
        backoff_s: tuple[float, float] = (0.05, 5.0),
        cpus: frozenset[int] | None = None,
        spin_us: int = 200,
    ) -> None:
        if mode not in ("process", "inprocess"):
            raise ValueError("isolation mode is process or inprocess")
        self.mode = mode
        self.trusted = frozenset(trusted)
        self.deadline_ms = deadline_ms
        #: the deadline grows by this for each packet of a batch (FIS calls, real work)
        self.per_packet_ms = per_packet_ms
        self.memory_mb = memory_mb
        self.cpu_percent = cpu_percent
        self.startup_s = startup_s
        self.backoff_s = backoff_s
        #: vCPUs the confined processes may run on (None: the worker's)
        self.cpus = cpus
        #: longest a confined process busy-polls its channel after an answer (µs), when it
        #: runs on other vCPUs than the worker (else it would take the worker's CPU); the
        #: site pays for that CPU (:attr:`ConfinedService.site_spin_ns`)
        self.spin_us = spin_us

    def deadline(self, packets: int) -> float:
        """Seconds a confined process may take to answer a message of ``packets`` packets."""
        return (self.deadline_ms + packets * self.per_packet_ms) / 1000

    def confined(self, psp: str, service: str) -> bool:
        return self.mode == "process" and f"{psp}/{service}" not in self.trusted


def process_cpu_ns(pid: int) -> int:
    """CPU time (user + system, ns) the kernel accounted to process ``pid`` so far."""
    return time.clock_gettime_ns(((~pid) << 3) | 2)  # CPUCLOCK_SCHED of the whole process


def _uid_for(name: str) -> int:
    import zlib

    return UID_BASE + zlib.crc32(name.encode()) % UID_SPAN


class _Cgroup:
    """A cgroup-v1 group per confined process under ``memory`` and ``cpu``/``cpuacct``."""

    def __init__(self, name: str, *, memory_bytes: int, cpu_percent: int) -> None:
        self.dirs: list[Path] = []
        for ctl in ("memory", "cpu", "cpuacct"):
            base = Path(CGROUP_ROOT, ctl)
            d = base / f"pcsite-{os.getpid()}" / name
            if not base.is_dir():
                continue
            try:
                d.mkdir(parents=True, exist_ok=True)
            except OSError:
                continue
            if d.resolve() in (x.resolve() for x in self.dirs):
                continue  # cpu and cpuacct mounted together
            self.dirs.append(d)
        self._write("memory", "memory.limit_in_bytes", str(memory_bytes))
        self._write("memory", "memory.memsw.limit_in_bytes", str(memory_bytes))
        self._write("cpu", "cpu.cfs_quota_us", str(1000 * cpu_percent))  # period 100 ms

    def _find(self, ctl: str, file: str) -> Path | None:
        for d in self.dirs:
            if (d / file).exists():
                return d / file
        return None

    def _write(self, ctl: str, file: str, value: str) -> bool:
        p = self._find(ctl, file)
        if p is None:
            return False
        try:
            p.write_text(value)
            return True
        except OSError:
            return False

    def attach(self, pid: int) -> bool:
        ok = bool(self.dirs)
        for d in self.dirs:
            try:
                (d / "cgroup.procs").write_text(str(pid))
            except OSError:
                ok = False
        return ok

    def read_int(self, file: str) -> int | None:
        p = self._find("", file)
        try:
            return int(p.read_text()) if p is not None else None
        except (OSError, ValueError):
            return None

    def remove(self) -> None:
        for d in self.dirs:
            for _ in range(50):
                try:
                    d.rmdir()
                    break
                except FileNotFoundError:
                    break
                except OSError:
                    time.sleep(0.01)  # the killed process is still leaving the group
            try:
                d.parent.rmdir()  # the per-worker parent, once empty
            except OSError:
                pass
        self.dirs = []


def sweep_cgroups(pid: int | None = None, root: str | None = None) -> list[str]:
    """Remove the confined processes' cgroups a worker left behind when it was killed
    (``pcsite-<pid>`` under each controller; its confined processes die with it, so the
    groups are empty): those of worker ``pid``, or of every ``pcsite-<pid>`` whose process
    is gone. Returns the directories removed; a group that still holds a process stays."""
    removed: list[str] = []
    for ctl in ("memory", "cpu", "cpuacct"):
        base = Path(root or CGROUP_ROOT, ctl)
        try:
            parents = [base / f"pcsite-{pid}"] if pid else list(base.glob("pcsite-*"))
        except OSError:
            continue
        for parent in parents:
            owner = parent.name.removeprefix("pcsite-")
            if not owner.isdigit() or (pid is None and Path(f"/proc/{owner}").exists()):
                continue  # a live worker's groups
            try:
                children = [d for d in parent.iterdir() if d.is_dir()]
            except OSError:
                continue
            for d in [*children, parent]:
                try:
                    d.rmdir()
                    removed.append(str(d))
                except OSError:
                    pass
    return removed


def _send(sock: socket.socket, head: Any, tail: bytes = b"") -> None:
    h = json.dumps(head, separators=(",", ":")).encode()
    sock.send(_HEAD.pack(len(h)) + h + tail)


def _decode(msg: bytes) -> tuple[Any, bytes]:
    if len(msg) < 4:
        raise ValueError("short message")
    (n,) = _HEAD.unpack_from(msg)
    if n > len(msg) - 4:
        raise ValueError("bad head length")
    return json.loads(msg[4 : 4 + n]), msg[4 + n :]


# ---------------------------------------------------------------- the worker's proxy
class _Batch:
    """One batch message in flight: its packets' (record, payload, key), the context that
    serves its FIS calls, when it was sent, its deadline (monotonic s; 0 until the message
    ahead of it is answered) and, once answered or lost, its results."""

    __slots__ = ("cpu0", "ctx", "deadline", "fis_down", "idle_ns", "items", "results", "rpcs",
                 "sent_ns", "sent_rt", "started")  # fmt: skip

    def __init__(
        self, items: list[tuple[bytes, bytes, tuple[float, bytes]]], ctx: Any, sent_ns: int,
        deadline: float,
    ) -> None:  # fmt: skip
        self.items = items
        self.ctx = ctx
        self.sent_ns = sent_ns
        self.deadline = deadline
        self.rpcs = 0
        self.fis_down = False
        self.results: list[tuple[Any, ...]] = []
        self.started = 0.0
        self.cpu0: int | None = None
        #: how long its process had been idle when it was sent (its spin is credited up to it)
        self.idle_ns = 0
        #: the wall clock (ns) just before it was sent (its round trip: to the answer's stamp)
        self.sent_rt = 0

    def start(self, now: float, budget: float, cpu_ns: int) -> None:
        """The process turns to this batch at ``now`` (monotonic s), its CPU clock at
        ``cpu_ns``: the deadline runs from here."""
        self.started = now
        self.deadline = now + budget
        self.cpu0 = cpu_ns

    @property
    def now(self) -> float:
        """The arrival time of its packets."""
        return self.items[0][2][0]


class ConfinedService:
    """``process(pkt)`` of one provider service, run in a confined process.

    Callable like the service's own ``process``: it snapshots the
    :class:`~pcsite_lite.api.PacketApi`, exchanges messages with the process under the
    deadline and replays the returned actions on ``pkt`` (raising what the pipeline counts:
    :class:`~pcsite_lite.sandbox.BudgetExceeded`, :class:`~pcsite_lite.api.PacketApiError`,
    :class:`ServiceFailed`, :class:`ServiceUnavailable`).
    """

    def __init__(
        self,
        source: bytes,
        name: str,
        *,
        policy: IsolationPolicy | None = None,
        max_ticks: int = 100_000,
        max_ns: int = 10_000_000,
    ) -> None:
        self.source = source
        self.name = name
        self.policy = policy or IsolationPolicy()
        self.max_ticks = max_ticks
        self.max_ns = max_ns
        self.proc: subprocess.Popen[bytes] | None = None
        self.sock: socket.socket | None = None
        self.cgroup: _Cgroup | None = None
        self.ready = False
        self.measures: tuple[str, ...] = ()
        self.restarts = 0
        self.kills = 0
        self._started = 0.0
        #: busy-poll window for answers (ns; 0: sleep at once) and the answer time's average
        self._spin_ns = 0
        self._answer_ns = 0
        #: answers caught while busy-polling / waited for in select (for the status)
        self.spin_hits = 0
        self.spin_misses = 0
        #: batch messages that did not fit the channel's send buffer (and the number in
        #: flight then: the channel is full until one of those is answered)
        self.channel_full = 0
        self._full_at = 0
        self._not_before = 0.0
        self._backoff = 0.0
        self._cpu_base = 0
        self.cpu_ns = 0  #: kernel-accounted CPU of every process of this service so far
        #: of that, CPU the processes spent busy-polling for the worker's next batch (at the
        #: site's choice, so not billed to the provider; at most the spin window, and at most
        #: the time the worker left the process idle, per message)
        self.site_spin_ns = 0
        #: the process's busy-poll window (ns; 0: it blocks at once) and when it went idle
        #: (monotonic ns of its last answer while nothing else was in flight; 0: busy/new)
        self._child_spin = 0
        self._idle_start = False  #: started in the idle class (raised once ready)
        self._idle_since = 0
        #: when the kernel queued the process's last batch answer (CLOCK_REALTIME ns; 0:
        #: unknown): with the next message's send time, how long the process was idle
        self._answered_rt = 0
        self._taken = 0
        self._next_memory = 0.0
        #: batch messages sent and not yet answered, oldest first (at most MAX_INFLIGHT)
        self._inflight: deque[_Batch] = deque()
        #: batches answered while a one-packet round trip waited for the channel (poll
        #: hands them out first)
        self._answered: list[_Batch] = []
        #: round trips of recent batch messages (ns): from just before the worker sent one to
        #: when the kernel queued its answer (SO_TIMESTAMPNS; where the kernel gives no stamp,
        #: to when the worker read it)
        self.latency_ns: deque[int] = deque(maxlen=1024)
        #: from sending a batch message to the worker reading its answer (ns): the round trip
        #: plus however long the worker was busy with other packets
        self.pickup_ns: deque[int] = deque(maxlen=1024)
        #: results of the current batch by (arrival time, packet bytes): a result tuple
        #: (outcome, payload changed, cache bytes, actions or [reason, detail], new payload),
        #: or a list of them when the same bytes came twice
        self._results: dict[tuple[float, bytes], Any] = {}
        #: results installed and not yet asked for, in their packets' order: ((record,
        #: payload, key), result) (the by-key map holds them once a packet came out of order)
        self._order: deque[tuple[tuple[bytes, bytes, tuple[float, bytes]], Any]] = deque()
        self.batch_hits = 0
        self.mem_peak = 0  #: memory high-water (bytes) over its processes
        self._last_cpu = 0
        self._root = tempfile.mkdtemp(prefix="pcsite-confine-")
        os.chmod(self._root, 0o555)
        self._finalizer = weakref.finalize(self, _cleanup, self._state())
        self._spawn()

    # -- lifecycle
    def _state(self) -> dict[str, Any]:
        # what the finalizer needs (it may not hold self)
        if not hasattr(self, "_st"):
            self._st: dict[str, Any] = {"root": self._root}
        return self._st

    def _spawn(self) -> None:
        parent, child = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        pol = self.policy
        args = [
            sys.executable, "-I", "-m", "pcsite_lite.confine", "run",
            "--fd", str(child.fileno()), "--name", self.name,
            "--memory", str(pol.memory_mb << 20), "--root", self._root,
            "--uid", str(_uid_for(self.name)),
            "--ticks", str(self.max_ticks), "--max-ns", str(self.max_ns),
        ]  # fmt: skip
        spin = 0
        if pol.cpus and pol.spin_us and not pol.cpus & os.sched_getaffinity(0):
            spin = pol.spin_us * 1000  # its own vCPUs: polling takes nothing from the worker
        args += ["--spin-ns", str(spin)]
        self._child_spin = spin
        self._idle_since = 0
        self._answered_rt = 0
        # the interpreter's start and the module's load (~0.1 s of CPU, again at every
        # restart of a process killed for its deadline) in the idle class: the tenants
        # already serving on those vCPUs go first; the worker raises it once it is ready
        # (only root may: an unprivileged process could not be raised again)
        self._idle_start = os.geteuid() == 0
        try:
            proc = _spawn_child(args, child.fileno(), idle=self._idle_start)
        finally:
            child.close()
        try:
            parent.setsockopt(socket.SOL_SOCKET, _SO_TIMESTAMPNS, 1)
            parent.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, CHANNEL_BYTES // 2)  # doubled
        except OSError:
            pass
        self.proc = proc
        self.sock = parent
        self.ready = False
        self._spin_ns = 0
        if pol.cpus:
            try:
                os.sched_setaffinity(proc.pid, pol.cpus)
                # the worker may busy-poll for answers only when that takes no CPU from
                # the process it waits for: the process runs on other vCPUs than the worker
                if not pol.cpus & os.sched_getaffinity(0):
                    self._spin_ns = SPIN_MAX_NS
            except OSError:
                pass
        self._started = time.monotonic()
        self._last_cpu = 0
        cg = None
        if os.geteuid() == 0:
            # stopped while it joins its cgroup: billing starts at the CPU clock reading
            # where the cgroup's accounting starts, not a few (preempted) statements apart
            stopped = _stop(proc.pid)
            cg = _Cgroup(
                f"{self.name.replace('/', '.')}.{proc.pid}",
                memory_bytes=pol.memory_mb << 20,
                cpu_percent=pol.cpu_percent,
            )
            if not cg.attach(proc.pid):
                cg.remove()
                cg = None
        else:
            stopped = False
        self.cgroup = cg
        try:  # billing starts where the cgroup's accounting starts (exec is the platform's)
            self._last_cpu = self._cpu_base = process_cpu_ns(proc.pid)
        except OSError:
            self._cpu_base = 0
        if stopped:
            os.kill(proc.pid, signal.SIGCONT)
        st = self._state()
        st["pid"] = proc.pid
        st["proc"] = proc
        st["cgroup"] = cg
        # the source goes only after the cgroup holds the process
        _send(parent, {"src": 1}, self.source)

    def _reap(self, why: str) -> None:
        """Kill the process (if alive), account it, schedule a restart with backoff."""
        proc = self.proc
        if proc is None:
            return
        self._meter(memory=True)
        try:
            proc.send_signal(signal.SIGKILL)
        except ProcessLookupError:
            pass
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:  # pragma: no cover - a D-state process
            pass
        if self.cgroup is not None:
            peak = self.cgroup.read_int("memory.max_usage_in_bytes")
            if peak:
                self.mem_peak = max(self.mem_peak, peak)
            self.cgroup.remove()
            self.cgroup = None
        if self.sock is not None:
            self.sock.close()
        self.proc = None
        self.sock = None
        self.ready = False
        lo, hi = self.policy.backoff_s
        self._backoff = min(hi, self._backoff * 2) if self._backoff else lo
        self._not_before = time.monotonic() + self._backoff
        self.last_exit = why

    def stop(self) -> None:
        """End the process now (the service was replaced); it restarts only if called again."""
        self._reap("stopped")
        self._backoff = 0.0
        self._not_before = 0.0

    def close(self) -> None:
        """Stop the process for good and remove what it used (its cgroup, its root)."""
        self._reap("closed")
        self._finalizer()

    def take_cpu(self) -> int:
        """Kernel-accounted CPU (ns) of this service's processes since the last call, less
        what they spent busy-polling for the site (:attr:`site_spin_ns`)."""
        new = self.cpu_ns - self.site_spin_ns - self._taken
        if new <= 0:
            return 0
        self._taken += new
        return new

    def poll_ready(self) -> bool:
        """True once the process has loaded the service (never blocks)."""
        if not self.ready:
            self._ensure_started()
            if self.sock is not None:
                self._wait_ready(0)
        return self.ready

    def status(self) -> dict[str, Any]:
        """What an operator sees: confinement applied, restarts, deadline kills, memory."""
        self._meter(memory=True)
        return {
            "mode": "confined",
            "pid": self.proc.pid if self.proc is not None else None,
            "ready": self.ready,
            "measures": list(self.measures),
            "restarts": self.restarts,
            "deadline_kills": self.kills,
            "cpu_ns": self.cpu_ns,
            "site_spin_ns": self.site_spin_ns,
            "memory_peak_bytes": self.mem_peak,
            "answers_while_polling": self.spin_hits,
            "answers_after_sleeping": self.spin_misses,
            "batches_in_flight": len(self._inflight),
            "channel_full": self.channel_full,
        }

    def _meter(self, memory: bool = False) -> None:
        """Read the process's CPU clock (every call); its memory high-water when asked or at
        most every :data:`MEMORY_EVERY` seconds (a file read)."""
        proc = self.proc
        if proc is None:
            return
        try:
            cpu = process_cpu_ns(proc.pid)
        except OSError:
            return
        if cpu > self._last_cpu:
            self.cpu_ns += cpu - self._last_cpu
            self._last_cpu = cpu
        now = time.monotonic()
        if not memory and now < self._next_memory:
            return
        self._next_memory = now + MEMORY_EVERY
        if self.cgroup is not None:
            peak = self.cgroup.read_int("memory.max_usage_in_bytes")
        else:
            peak = _vm_hwm(proc.pid)
        if peak:
            self.mem_peak = max(self.mem_peak, peak)

    def _wait_ready(self, timeout: float) -> bool:
        sock = self.sock
        assert sock is not None
        r, _, _ = select.select([sock], [], [], max(0.0, timeout))
        if not r:
            if time.monotonic() - self._started > self.policy.startup_s:
                self._reap("startup timeout")
                raise ServiceFailed("load_timeout: module code did not finish loading")
            return False
        head = self._head(self._recv())
        if head.get("ready"):
            self.ready = True
            if self._idle_start and self.proc is not None:
                try:  # loaded: it serves packets in the normal class, like the others
                    os.sched_setscheduler(self.proc.pid, os.SCHED_OTHER, os.sched_param(0))
                except OSError:
                    pass
            self._meter()  # batch deadlines count the CPU the process uses from here
            self.measures = tuple(str(m) for m in head.get("measures", ()))[:16]
            self._backoff = 0.0 if self.restarts == 0 else self._backoff
            return True
        self._reap("load failed")
        raise ServiceFailed(f"{head.get('e', 'load_error')}: {str(head.get('d', ''))[:200]}")

    def wait_ready(self, timeout: float = 10.0) -> bool:
        """Block until the process has loaded the service (tests, benchmarks)."""
        end = time.monotonic() + timeout
        while not self.ready:
            left = end - time.monotonic()
            if left <= 0:
                return False
            self._ensure_started()
            if self.sock is None:
                time.sleep(min(left, 0.01))
                continue
            self._wait_ready(min(left, 0.05))
        return True

    def _ensure_started(self) -> None:
        if self.proc is None and time.monotonic() >= self._not_before:
            self.restarts += 1
            self._spawn()

    def _recv(self) -> bytes:
        """One message from the process (it died if the channel failed or closed)."""
        sock = self.sock
        assert sock is not None
        try:
            msg = sock.recv(MAX_MESSAGE)
        except OSError as exc:
            raise self._died(f"channel error: {exc}") from None
        if not msg:
            raise self._died("process exited")
        return msg

    def _head(self, msg: bytes) -> dict[str, Any]:
        """The JSON head of a control message from the process (its raw tail in ``_tail``)."""
        try:
            head, tail = _decode(msg)
        except (ValueError, RecursionError) as exc:  # e.g. JSON nested past the parser
            self._reap("garbled message")
            raise ServiceFailed(f"garbled message from the confined process: {exc}") from None
        if not isinstance(head, dict):
            self._reap("garbled message")
            raise ServiceFailed("garbled message from the confined process")
        head["_tail"] = tail
        return head

    def _died(self, why: str) -> ServiceFailed:
        proc = self.proc
        code = proc.poll() if proc is not None else None
        if code is None and proc is not None:
            try:
                code = proc.wait(timeout=1)
            except subprocess.TimeoutExpired:
                pass
        self._reap(why)
        sig = f"signal {-code}" if code is not None and code < 0 else f"exit {code}"
        return ServiceFailed(f"confined process died ({why}, {sig})")

    # -- the call
    def __call__(self, api: Any) -> None:
        order = self._order
        if order:
            # computed by the batch this packet arrived in (Prefetcher), whose packets the
            # pipeline runs in their order: the next result, if its arrival time and bytes
            # (which determine everything the snapshot holds) are this packet's
            d = api._d
            (_, _, key), res = order[0]
            if key[0] == d.now and key[1] == d.pkt.buf:
                order.popleft()
                self.batch_hits += 1
                if res is not _ZERO:  # (a packet the service only read: nothing to do)
                    self._apply(api, res)
                return
            self._unorder()
        results = self._results
        if results:
            d = decision_of(api)
            key = (d.now, bytes(d.pkt.buf))
            res = results.pop(key, None)
            if res is not None:
                if type(res) is list:  # the same bytes twice in one batch
                    rest = res
                    res = rest.pop(0)
                    if rest:
                        results[key] = rest
                self.batch_hits += 1
                self._apply(api, res)
                return
        if self._inflight:  # the channel carries batches: no round trip may cut in
            self._finish_inflight()
        meta, payload = snapshot(api)
        if not self.ready:
            self._ensure_started()
            if self.sock is None or not self._wait_ready(0):
                raise ServiceUnavailable(f"{self.name}: confined process starting")
        deadline = time.monotonic() + self.policy.deadline(1)
        sock = self.sock
        assert sock is not None
        idle = self._went_busy()
        try:
            sock.send(b"".join((b"B", _HEAD.pack(1), meta, payload)))
        except OSError as exc:
            raise self._died(f"send failed: {exc}") from None
        [res] = self._answer(api, deadline, 1, MAX_RPCS, idle)
        self._meter()
        self._apply(api, res)

    def _apply(self, api: Any, res: tuple[Any, ...]) -> None:
        """Replay a successful call's actions, or raise what a failed call counts as."""
        code, changed, cache, extra, tail = res
        if code <= _ACTS:
            if cache:
                decision_of(api).ctx.counters.cache_bytes += cache
            if changed:
                api.set_payload(tail)
            if code:
                _replay(api, extra)
            return
        if code == _DROPPED:  # the rest of a batch whose process was killed: counted once
            raise ServiceUnavailable(extra[1], reason=extra[0])
        err, detail = extra
        if err == "timeout":
            raise BudgetExceeded
        if err in ("api_misuse", "spoof_attempt"):
            raise PacketApiError(err, detail)
        if err == FIS_UNAVAILABLE:  # the site's FIS failed its call: a platform fault
            from pcsite_lite.fis import FISUnavailableError

            raise FISUnavailableError(detail)
        raise ServiceFailed(detail)

    # -- batches (the worker never waits on them: see Prefetcher)
    def submit(self, items: list[tuple[bytes, bytes, tuple[float, bytes]]], ctx: Any = None) -> int:
        """Send the snapshots (:func:`snapshot`) of up to :data:`MAX_BATCH` packets in one
        batch frame without waiting for the answer (:meth:`poll` collects it); returns how
        many were sent (0: the process is not ready, or :data:`MAX_INFLIGHT` messages are
        already in flight). ``ctx`` serves the batch's FIS calls."""
        q = self._inflight
        if not self.ready or self.sock is None or not items or self.busy():
            return 0
        n = total = 0
        for _, payload, _ in items:
            if n >= MAX_BATCH or total + len(payload) > MAX_BATCH_BYTES:
                break
            n += 1
            total += len(payload)
        if n < len(items):
            items = items[:n]
        frame = [b"B", _HEAD.pack(n)]
        frame += [m for m, _, _ in items]
        frame += [p for _, p, _ in items]
        sent_rt = time.time_ns()
        try:
            # never waits: a process that does not read its channel must not hold up the
            # worker (its oldest batch's deadline is what the worker enforces)
            self.sock.send(b"".join(frame), socket.MSG_DONTWAIT)
        except BlockingIOError:
            self.channel_full += 1
            self._full_at = len(q)
            return 0
        except OSError:
            return 0  # the call path will find the process dead
        self._full_at = 0
        idle = self._went_busy() if not q else 0
        now = time.monotonic()
        # the deadline runs from when the process can start on the message: now if nothing
        # is ahead of it, else from the answer to the message ahead (set in poll)
        batch = _Batch(items, ctx, time.monotonic_ns(), 0.0)
        batch.idle_ns = idle
        batch.sent_rt = sent_rt
        if not q:  # an idle process: its CPU clock is where its last answer left it
            batch.start(now, self.policy.deadline(n), self._last_cpu)
        q.append(batch)
        return n

    def busy(self) -> bool:
        """Whether the channel takes no more batch messages now: :data:`MAX_INFLIGHT` are
        in flight, or the last one did not fit its send buffer and none was answered since."""
        return len(self._inflight) >= MAX_INFLIGHT or self._full_at == len(self._inflight) > 0

    def pending(self) -> bool:
        """True while batch messages are in flight or answered and not yet taken."""
        return bool(self._inflight or self._answered)

    def _finish_inflight(self) -> None:
        """Wait for every batch in flight (each bounded by its deadline) before a round trip
        of one packet (a packet the batches could not carry, e.g. one a receiver's service
        ran on first); their answers wait in :attr:`_answered` for :meth:`poll`."""
        api = PacketApi()
        while self._inflight:
            self._answered += self.poll(api, keep_answered=False)
            if self._inflight and self.sock is not None:
                head = self._inflight[0]
                left = (head.deadline or time.monotonic()) - time.monotonic()
                select.select([self.sock], [], [], min(0.05, max(0.0005, left)))

    def poll(self, api: Any, keep_answered: bool = True) -> list[_Batch]:
        """The batches answered so far, in order (never blocks): serves the process's FIS
        calls with ``api`` (bound to the batch's context here), and past the oldest batch's
        deadline kills the process and returns every batch in flight with failure results
        (the oldest batch's first packet counts as the service's failure,
        ``service_timeout``; the rest are dropped with that reason)."""
        done: list[_Batch] = []
        if keep_answered and self._answered:  # answered while a round trip waited
            done, self._answered = self._answered, []
        q = self._inflight
        recv = None if self.sock is None else self.sock.recvmsg
        while q:
            head = q[0]
            if recv is None:  # reaped meanwhile (e.g. the service was replaced): not blamed
                done += self._lose_inflight(False, "confined process gone", blame=False)
                break
            try:
                msg, anc, _, _ = recv(MAX_MESSAGE, _STAMP_SPACE, socket.MSG_DONTWAIT)
            except BlockingIOError:
                if time.monotonic() > head.deadline and self._overdue(head):
                    self.kills += 1
                    self._reap("deadline")
                    done += self._lose_inflight(True, "deadline")
                break
            except OSError as exc:
                self._reap(f"channel error: {exc}")
                done += self._lose_inflight(False, f"channel error: {exc}")
                break
            if not msg:
                self._reap("process exited")
                done += self._lose_inflight(False, "confined process died (process exited)")
                break
            if msg[:1] == b"R":
                try:
                    head.results = _decode_answer(msg, len(head.items), head.fis_down)
                except (ValueError, TypeError, RecursionError, struct.error) as exc:
                    self._reap("garbled message")
                    done += self._lose_inflight(False, f"garbled answer: {exc}")
                    break
                q.popleft()
                t = time.monotonic_ns()
                stamp = _stamp(anc)
                idle = head.idle_ns
                if stamp and self._answered_rt:
                    # idle from its last answer (the kernel's stamp) to this message: also
                    # when the worker sent it before reading that answer
                    idle = max(idle, head.sent_rt - self._answered_rt)
                self._answered_rt = stamp
                self._credit_spin(msg, idle, t if not q else 0)
                took = t - head.sent_ns
                self.pickup_ns.append(took)
                self.latency_ns.append(stamp - head.sent_rt if stamp else took)
                if self._spin_ns:  # poll for answers for about twice their recent time
                    self._answer_ns += (took - self._answer_ns) >> 2
                    self._spin_ns = min(SPIN_MAX_NS, max(50_000, 2 * self._answer_ns))
                self._meter()
                if q:
                    q[0].start(t / 1e9, self.policy.deadline(len(q[0].items)), self._last_cpu)
                done.append(head)
                continue
            if not self._serve_call(api, head, msg):
                done += self._lose_inflight(False, "bad call from the confined process")
                break
        return done

    def _overdue(self, head: _Batch) -> bool:
        """Whether the oldest batch, past its wall-clock deadline, is overdue: the process
        used more CPU on it than the deadline allows (the kernel's accounting: a process the
        machine did not let run is not at fault; its deadline moves on by the CPU time it
        still has), or it has been waited for :data:`BACKSTOP_FACTOR` times its deadline,
        at least :data:`BACKSTOP_S` (a process that blocks instead of computing)."""
        budget = self.policy.deadline(len(head.items))
        now = time.monotonic()
        if head.cpu0 is None or self.proc is None:
            return True
        if now - head.started > max(BACKSTOP_S, BACKSTOP_FACTOR * budget):
            return True
        try:
            used = (process_cpu_ns(self.proc.pid) - head.cpu0) / 1e9
        except OSError:
            return True
        if used >= budget:
            return True
        head.deadline = now + (budget - used)
        return False

    def _serve_call(self, api: Any, batch: _Batch, msg: bytes) -> bool:
        """Answer one FIS call of the process (False: it broke the protocol; reaped)."""
        try:
            head = self._head(msg)
        except ServiceFailed:
            return False
        rpc = head.get("rpc")
        batch.rpcs += 1
        if rpc is None or batch.rpcs > MAX_RPCS * len(batch.items):
            self._reap("garbled message" if rpc is None else "too many calls")
            return False
        decision_of(api).ctx = batch.ctx
        answer = _serve_rpc(api, rpc, head.get("args", ()))
        if answer.get("x") == FIS_UNAVAILABLE:
            batch.fis_down = True
        try:
            _send(self.sock, answer)  # type: ignore[arg-type]
        except (OSError, TypeError, ValueError) as exc:
            self._reap(f"reply failed: {exc}")
            return False
        return True

    def _lose_inflight(self, timeout: bool, why: str, blame: bool = True) -> list[_Batch]:
        """Every batch in flight, with failure results (its process is gone): the oldest
        batch's first packet counts as the service's failure if ``blame``, every other
        packet is dropped with the same reason."""
        lost = list(self._inflight)
        self._inflight.clear()
        reason = ("service_timeout" if timeout else "service_error") if blame else (
            "service_unavailable")  # fmt: skip
        rest = (_DROPPED, 0, 0, [reason, f"batch lost with its process ({why})"], b"")
        first = (_FAILED, 0, 0, ["timeout", ""] if timeout else ["error", why], b"")
        for i, b in enumerate(lost):
            b.results = [rest] * len(b.items)
            if i == 0 and blame:
                b.results[0] = first
        return lost

    def install(self, batch: _Batch, keep: bool = False) -> None:
        """Make ``batch``'s results the ones the pipeline's calls find (``keep``: add them
        to those not yet asked for, else replace those): in their order, for packets that
        come in that order (the usual case), and by key once one does not."""
        if not keep:
            self._order.clear()  # results no packet asked for
            self._results.clear()
        self._order.extend(zip(batch.items, batch.results, strict=True))

    def _clear_results(self) -> None:
        self._order.clear()
        self._results.clear()

    def _unorder(self) -> None:
        """A packet came out of order: every result waiting in order goes to the by-key map."""
        results = self._results
        for (_, _, key), res in self._order:
            old = results.get(key)
            if old is None:
                results[key] = res
            elif type(old) is list:
                old.append(res)
            else:
                results[key] = [old, res]
        self._order.clear()

    def _spin(self, sock: socket.socket) -> bytes | None:
        """Busy-poll the channel for a message (the answer usually comes within the window:
        a select/sleep/wake-up costs more than the wait); None if the window passed."""
        clock = time.monotonic_ns
        t0 = clock()
        end = t0 + self._spin_ns
        recv = sock.recv
        while True:
            try:
                msg = recv(MAX_MESSAGE, socket.MSG_DONTWAIT)
            except BlockingIOError:
                if clock() < end:
                    continue
                self.spin_misses += 1
                self._answer_ns += (self._spin_ns - self._answer_ns) >> 2
                return None
            except OSError as exc:
                raise self._died(f"channel error: {exc}") from None
            self.spin_hits += 1
            self._answer_ns += (clock() - t0 - self._answer_ns) >> 2
            self._spin_ns = min(SPIN_MAX_NS, max(50_000, 2 * self._answer_ns))
            return msg

    def _went_busy(self) -> int:
        """A message goes to the process: how long it had been idle (ns; 0 if it was not)."""
        since = self._idle_since
        self._idle_since = 0
        return time.monotonic_ns() - since if since else 0

    def _credit_spin(self, msg: bytes, idle_ns: int, now_ns: int) -> None:
        """Credit the site with the busy-poll the answer ``msg`` reports, bounded by the
        process's window and by how long the worker had left it idle (a process that claims
        more is believed only that far); ``now_ns``: it is idle from now (0: not)."""
        self._idle_since = now_ns
        if idle_ns and self._child_spin and len(msg) >= 1 + _RHEAD.size:
            spun = _RHEAD.unpack_from(msg, 1)[2] * 1000
            self.site_spin_ns += min(spun, self._child_spin, idle_ns)

    def _answer(
        self, api: Any, deadline: float, n: int, max_rpcs: int, idle_ns: int = 0
    ) -> list[tuple[Any, ...]]:
        """Serve the process's FIS calls until its answer to the batch of ``n`` packets just
        sent; past ``deadline`` the process is killed and BudgetExceeded raised."""
        sock = self.sock
        assert sock is not None
        rpcs = 0
        fis_down = False  # the site answered one of its FIS calls with an outage
        while True:
            msg = self._spin(sock) if self._spin_ns else None
            if msg is None:
                left = deadline - time.monotonic()
                r = select.select([sock], [], [], left)[0] if left > 0 else []
                if not r:
                    self.kills += 1
                    self._reap("deadline")
                    raise BudgetExceeded
                msg = self._recv()
            elif not msg:
                raise self._died("process exited")
            if msg[:1] == b"R":
                self._answered_rt = 0  # (no stamp on this path)
                self._credit_spin(msg, idle_ns, time.monotonic_ns())
                try:
                    return _decode_answer(msg, n, fis_down)
                except (ValueError, TypeError, RecursionError, struct.error) as exc:
                    self._reap("garbled message")
                    raise ServiceFailed(f"garbled answer from the process: {exc}") from None
            head = self._head(msg)
            rpc = head.get("rpc")
            if rpc is None:
                self._reap("garbled message")
                raise ServiceFailed("garbled message from the confined process")
            rpcs += 1
            if rpcs > max_rpcs:
                self._reap("too many calls")
                raise ServiceFailed(f"more than {MAX_RPCS} FIS calls per packet")
            answer = _serve_rpc(api, rpc, head.get("args", ()))
            if answer.get("x") == FIS_UNAVAILABLE:
                fis_down = True
            try:
                _send(sock, answer)
            except (OSError, TypeError, ValueError) as exc:
                raise self._died(f"reply failed: {exc}") from None


class Prefetcher:
    """Hands the packets of a received batch that go to confined services to their processes
    before the pipeline sees them, so that the worker never waits on provider code.

    :meth:`dispatch` sends each service's packets in batch messages of :data:`CHUNK` (the
    processes compute in parallel with the worker, and with each other) and returns the
    other packets, which the worker runs through the pipeline at once. :meth:`completed`
    then yields each answered message's packets: the worker runs them through the pipeline,
    whose call of the service finds the packet's result (:meth:`ConfinedService.__call__`).
    A message that is not answered yet stays in flight while the worker goes on with the
    next packets; one past its deadline gets its process killed (:meth:`ConfinedService.poll`).
    So a service that stalls costs the other tenants nothing but its own packets.

    Only packets the pipeline would hand to that service are sent (form 1: a live circuit of
    this site, hop limit left, MAC verified; form 2: check verified, a registered service ID;
    form 3: a registered destination; TTL left), so provider code never sees a packet the
    pipeline would drop before it. A packet where a receiver's stage runs first, or whose
    snapshot differs, takes one round trip of its own (or, with messages in flight, is
    dropped as ``service_busy``).

    Calling the prefetcher (``prefetcher(packets, now)``) sends and then waits for every
    answer: the results are all there before the pipeline runs (tests, simple callers).
    """

    def __init__(self, site: Any) -> None:
        from pcsite_lite.api import Decision, PacketApi
        from pcsock import wire

        self.site = site
        self._decision = Decision()
        self._api = PacketApi(self._decision)
        self._rpc_decision = Decision()
        self._rpc_api = PacketApi(self._rpc_decision)
        #: the pipeline's form-1 ingress in C (eligibility, circuit, MAC in one call), if built
        self._ax: Any = wire.accelerator()
        #: services with batch messages in flight (an ordered set)
        self._busy: dict[ConfinedService, None] = {}

    def __call__(self, packets: list[bytes], now: float) -> int:
        """Prefetch the confined services' results for ``packets`` (arrived at ``now``) and
        wait for them; returns how many packets went to a confined process."""
        held = self._send(packets, now)
        for _ in self.completed(wait=True, keep=True):
            pass
        return len(held)

    def dispatch(self, packets: list[bytes], now: float) -> list[bytes]:
        """Send the packets of ``packets`` (arrived at ``now``) that go to confined services
        to their processes; returns the others, for the pipeline now (the sent ones come
        back from :meth:`completed`)."""
        held = self._send(packets, now)
        if not held:
            return packets
        return [d for i, d in enumerate(packets) if i not in held]

    def pending(self) -> bool:
        """True while batch messages are in flight."""
        return bool(self._busy)

    def channels(self) -> set[int]:
        """The file descriptors of the channels with batch messages in flight: the worker
        waits on them with its device, so an answer or a FIS call of a confined process
        wakes it at once (not at its next timeout)."""
        return {p.sock.fileno() for p in self._busy if p.sock is not None}

    def completed(
        self, wait: bool = False, keep: bool = False, spin: bool = True
    ) -> Iterator[tuple[list[bytes], float]]:
        """The packets of each answered batch message with their arrival time, in order per
        service, their results installed for the pipeline's calls (``keep``: added to the
        results not yet asked for, else in place of them). Busy-polls while an answer is due
        within its service's window (processes on other vCPUs than the worker), if ``spin``
        (a worker with packets waiting on its device does not: it has better to do than
        wait); ``wait``: until nothing is in flight (each process's deadline bounds the
        wait)."""
        rpc = self._rpc_api
        busy = self._busy
        slept = False  # answers found after a sleep, not while polling (for the status)
        while busy:
            for proxy in list(busy):
                for batch in proxy.poll(rpc):
                    if slept:
                        proxy.spin_misses += 1
                    else:
                        proxy.spin_hits += 1
                    proxy.install(batch, keep)
                    yield [key[1] for _, _, key in batch.items], batch.now
                if not proxy.pending():
                    busy.pop(proxy, None)
            if not busy:
                return
            now_ns = time.monotonic_ns()
            if any(p._answered for p in busy):
                continue  # answered while a round trip waited: hand them out
            if spin and any(
                p._spin_ns and now_ns - p._inflight[0].sent_ns < p._spin_ns for p in busy
            ):
                continue  # an answer is due soon: poll again
            if not wait:
                return
            socks = [p.sock for p in busy if p.sock is not None]
            due = min(p._inflight[0].deadline or float("inf") for p in busy)
            left = min(0.05, max(0.0, due - now_ns / 1e9))
            if socks and left > 0:
                select.select(socks, [], [], left)
            slept = True

    def _send(self, packets: list[bytes], now: float) -> set[int]:
        """Batch messages for ``packets``, each sent as soon as it is full (its process
        starts on it while the next is built); the indexes of the packets sent. Never raises:
        on a platform bug the packets not sent yet take the pipeline's path."""
        held: set[int] = set()
        started: set[ConfinedService] = set()

        def flush(proxy: ConfinedService, ctx: Any, items: list[Any], idxs: list[int]) -> None:
            if proxy not in started:
                started.add(proxy)
                if not proxy.pending():
                    proxy._clear_results()  # results of earlier batches no packet asked for
            self._submit(proxy, ctx, items, idxs, held)

        try:
            self._prefetch(packets, now, flush)
        except Exception as exc:
            self.site.runtime.event(now, "internal_error", "site", f"prefetch: {exc!r}")
        return held

    def _submit(
        self, proxy: ConfinedService, ctx: Any, items: list[Any], idxs: list[int], held: set[int]
    ) -> None:
        """Send ``items`` (packets ``idxs``) to ``proxy`` in messages of :data:`CHUNK`; add
        the indexes of those sent (or dropped as ``service_busy`` in their turn) to ``held``."""
        for i in range(0, len(items), CHUNK):
            chunk = items[i : i + CHUNK]
            n = proxy.submit(chunk, ctx)
            if not n and proxy.ready and proxy.busy():
                # its channel is full: these are dropped as ``service_busy`` (not its
                # failure), in their turn, by the pipeline's call finding that result
                over = _Batch(chunk, ctx, 0, 0.0)
                why = ["service_busy", f"{len(proxy._inflight)} batch messages in flight"]
                over.results = [(_DROPPED, 0, 0, why, b"")] * len(chunk)
                proxy._answered.append(over)
                n = len(chunk)
            if n:
                held.update(idxs[i : i + n])
                self._busy[proxy] = None

    @staticmethod
    def _ready(slot: Any) -> bool:
        p = slot.process
        return type(p) is ConfinedService and slot.status == ACTIVE and p.ready

    def _circuit_slot(self, c: Any, now: float, hops: int) -> Any:
        """The slot of a ready confined service a form-1 packet on circuit ``c`` (None:
        unknown label) with ``hops`` left goes to; None if the pipeline would not hand it to
        one first (expired, no hops left, a receiver's stage runs first: one round trip)."""
        if c is None or c.expires <= now or not hops:
            return None
        site = self.site
        if c.dest_addr is not None and site.destinations:
            return None
        slot = c.slot
        if slot is None:
            slot = c.slot = site.runtime.slot(c.psp, c.service)
        return slot if self._ready(slot) else None

    def _prefetch(self, packets: list[bytes], now: float, flush: Callable[..., None]) -> None:
        """Each confined service's packets of ``packets``: ``flush(service, context, packet
        snapshots, packet indexes)`` once :data:`CHUNK` of them are gathered, and for the
        rest at the end."""
        from pcsock.wire import FORM_CIRCUIT, FORM_SERVICE, WireError, parse

        site = self.site
        groups: dict[ConfinedService, tuple[Any, list[Any], list[int]]] = {}
        api = self._api
        ax = self._ax
        public = site.public_addr
        circuit_get = site.circuits.get
        circuit_slot = self._circuit_slot
        runtime_slot = site.runtime.slot
        destinations = site.destinations
        form1_meta = _form1_meta
        for i, data in enumerate(packets):
            # form 1 without options: the pipeline's own C ingress (same checks, same MAC)
            head = ax.form1_in(data, public, False, circuit_get) if ax is not None else None
            if head is not None:
                # _circuit_slot and _ready, inlined (this runs for every packet)
                c, o, hops, mac_ok = head
                if not mac_ok or c is None or not hops or c.expires <= now:
                    continue
                if c.dest_addr is not None and destinations:
                    continue  # a receiver's stage runs first: one round trip
                slot = c.slot
                if slot is None:
                    slot = c.slot = runtime_slot(c.psp, c.service)
                proxy = slot.process
                if type(proxy) is not ConfinedService or slot.status != ACTIVE or not proxy.ready:
                    continue
                # snapshot() of this packet, read straight from its bytes
                g = groups.get(proxy)
                if g is None:
                    g = groups[proxy] = (slot.ctx, [], [])
                g[1].append((form1_meta(data, o, now), data[o + 16 :], (now, bytes(data))))
                g[2].append(i)
                if len(g[2]) >= CHUNK:
                    del groups[proxy]
                    flush(proxy, *g)
                continue
            try:
                pkt = parse(data, verify_ip_checksum=False)
            except (WireError, ValueError):
                continue
            form = pkt.form
            if form == FORM_CIRCUIT and pkt.dst == public:
                c = circuit_get(pkt.label)
                slot = circuit_slot(c, now, pkt.hop_limit)
                if slot is None or not pkt.verify_mac(c.in_key):
                    continue
                self._decision.bind(pkt, slot.ctx, now, c, ())
            elif form == FORM_CIRCUIT or pkt.ttl <= 1:
                continue
            else:
                receiver = site.destinations.lookup(pkt.dst) if site.destinations else None
                if form == FORM_SERVICE:
                    if receiver is not None or not pkt.verify_check():
                        continue
                    reg = site.service_ids.get(pkt.service_id)
                else:  # form 3: the destination owner's service
                    reg = receiver
                if reg is None or not self._ready(reg.slot):
                    continue
                slot = reg.slot
                self._decision.bind(pkt, slot.ctx, now, None, reg.allowed)
            meta, payload = snapshot(api)
            key = (now, bytes(pkt.buf))
            g = groups.get(slot.process)
            if g is None:
                g = groups[slot.process] = (slot.ctx, [], [])
            g[1].append((meta, payload, key))
            g[2].append(i)
            if len(g[2]) >= CHUNK:
                del groups[slot.process]
                flush(slot.process, *g)
        for proxy, g in groups.items():
            flush(proxy, *g)


def snapshot(api: Any) -> tuple[bytes, bytes]:
    """What the confined process gets of the packet ``api`` is bound to: its :data:`_META`
    record (shim fields, addresses, protocol, ToS, TTL, arrival time, payload length) and
    the payload bytes."""
    d = decision_of(api)
    p = d.pkt
    form, *shim = api.shim.read()  # label, service ID, metadata, original source (int), hops
    bits = 0
    for i, v in enumerate(shim):  # absent fields: presence bit clear, 0 in the record
        if v is None:
            shim[i] = 0
        else:
            bits |= 1 << i
    label, sid, md, orig, hops = shim
    buf = p.buf
    off = p.payload_off
    meta = _META.pack(form, bits, label, sid, md, orig, hops, p.src, p.dst, p.next_proto,
                      p.tos, p.ttl, d.now, len(buf) - off)  # fmt: skip
    return meta, buf[off:]


def _decode_answer(msg: bytes, n: int, fis_down: bool) -> list[tuple[Any, ...]]:
    """The results in a batch answer ``msg`` for ``n`` packets (hostile bytes: every count,
    length and code is checked; ValueError/struct.error/RecursionError if anything is off).
    A FIS outage is believed only if the site reported one to the process (``fis_down``)."""
    results, extra, coded = _answer_records(msg, n, _ZERO)
    if not coded:
        if extra is not None:
            raise ValueError("answer longer than its records")
        return results
    xs = json.loads(extra) if extra is not None else None
    if not isinstance(xs, list) or len(xs) != coded:
        raise ValueError("the actions do not match the outcome codes")
    it = iter(xs)
    for k, r in enumerate(results):
        code = r[0]
        if not code:
            continue
        x = next(it)
        if code == _FAILED:
            if type(x) is not list or len(x) != 2 or not all(type(v) is str for v in x):
                raise ValueError("bad failure record")
            if x[0] == FIS_UNAVAILABLE and not fis_down:
                x = ["error", "claimed a FIS outage the site did not report"]
            else:
                x = [x[0], x[1][:300]]
        results[k] = (code, r[1], r[2], x, r[4])
    return results


def _py_answer_records(
    msg: bytes, n: int, zero: tuple[Any, ...]
) -> tuple[list[tuple[Any, ...]], bytes | None, int]:
    """The records of a batch answer (the C helper's reference): per packet (outcome,
    payload changed, cache bytes, None, new payload), ``zero`` for an all-zero record; the
    JSON array's bytes (None if empty); how many records have an outcome code."""
    if len(msg) < 1 + _RHEAD.size or msg[:1] != b"R":
        raise ValueError("short answer")
    count, jlen, _spun = _RHEAD.unpack_from(msg, 1)
    if count != n:
        raise ValueError("wrong result count")
    start = 1 + _RHEAD.size
    end = start + n * _RES.size
    off = end + jlen
    if off > len(msg):
        raise ValueError("answer shorter than its head says")
    out: list[tuple[Any, ...]] = []
    coded = 0
    for code, changed, cache, ln in _RES.iter_unpack(msg[start:end]):
        if code > _FAILED or changed > 1:
            raise ValueError("bad outcome code")
        coded += code != 0
        if not (code or changed or cache or ln):
            out.append(zero)
            continue
        if ln > len(msg) - off:
            raise ValueError("answer shorter than its records")
        out.append((code, changed, cache, None, msg[off : off + ln]))
        off += ln
    if off != len(msg):
        raise ValueError("answer longer than its records")
    return out, (msg[end : end + jlen] if jlen else None), coded


def _py_form1_meta(data: bytes, o: int, now: float) -> bytes:
    """The :data:`_META` record of a form-1 packet without IP options whose shim starts at
    ``o``, read straight from its bytes (the C helper's reference)."""
    if len(data) < 20 or o < 20 or o + 16 > len(data):
        raise ValueError("form1_meta: not a form-1 packet of that layout")
    tos, ttl, src, dst = _IP_FIELDS.unpack_from(data)
    proto, hops, md, label, orig = _SHIM1_FIELDS.unpack_from(data, o + 1)
    return _META.pack(1, 29, label, 0, md, orig, hops, src, dst, proto, tos, ttl, now,
                      len(data) - o - 16)  # fmt: skip


#: the result of a packet the service only read (shared: no tuple per packet)
_ZERO: Final = (_OK, 0, 0, None, b"")
_answer_records: Callable[..., Any] = _py_answer_records
_form1_meta: Callable[[bytes, int, float], bytes] = _py_form1_meta


def _accelerate() -> None:
    global _answer_records, _form1_meta
    from pcsite_lite import fastio

    if fastio.ACCELERATED:
        from pcsite_lite import _fastio  # type: ignore[attr-defined]

        _answer_records = _fastio.answer_records
        _form1_meta = _fastio.form1_meta


_accelerate()


def _serve_rpc(api: Any, rpc: Any, args: Any) -> Any:
    from pcsite_lite.fis import FISUnavailableError

    try:
        return {"r": _RPCS[rpc](api, *args)}
    except (KeyError, TypeError) as exc:
        return {"x": "api_misuse", "d": str(exc)[:200]}
    except FISUnavailableError as exc:  # the platform's fault: not counted against it
        return {"x": FIS_UNAVAILABLE, "d": str(exc)[:200]}
    except Exception as exc:  # PacketApiError(api_misuse) and FIS errors go back
        return {"x": getattr(exc, "reason", "api_misuse"), "d": str(exc)[:200]}


def _stamp(anc: list[tuple[int, int, bytes]]) -> int:
    """The kernel's ``SO_TIMESTAMPNS`` stamp (wall clock, ns) in a message's ancillary data,
    or 0."""
    for level, kind, data in anc:
        if level == socket.SOL_SOCKET and kind == _SO_TIMESTAMPNS and len(data) >= 16:
            sec, nsec = _TIMESPEC.unpack_from(data)
            return sec * 1_000_000_000 + nsec
    return 0


def _stop(pid: int) -> bool:
    """Stop our child ``pid`` and wait until it is stopped (False if it could not be)."""
    try:
        os.kill(pid, signal.SIGSTOP)
        _, status = os.waitpid(pid, os.WUNTRACED)
    except OSError:
        return False
    return os.WIFSTOPPED(status)


def _vm_hwm(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return 0


def _cleanup(st: dict[str, Any]) -> None:
    proc = st.get("proc")
    if proc is not None and proc.poll() is None:
        try:
            proc.kill()
            proc.wait(timeout=5)
        except (OSError, subprocess.TimeoutExpired):
            pass
    cg = st.get("cgroup")
    if cg is not None:
        cg.remove()
    try:
        os.rmdir(st["root"])
    except OSError:
        pass


def _rpc_fetch(api: Any, key: Any) -> Any:
    return api.fetch(key)


def _rpc_lookup(api: Any, table: Any, addr: Any) -> Any:
    return api.lookup(str(table), addr)


def _rpc_isp_fetch(api: Any, key: Any) -> Any:
    return api.isp_fetch(str(key))


def _rpc_isp_lookup(api: Any, table: Any, addr: Any) -> Any:
    return api.isp_lookup(str(table), addr)


def _rpc_identity(api: Any) -> Any:
    return [api.site_id, api.node_id]


_RPCS: Final[dict[str, Callable[..., Any]]] = {
    "fetch": _rpc_fetch,
    "lookup": _rpc_lookup,
    "isp_fetch": _rpc_isp_fetch,
    "isp_lookup": _rpc_isp_lookup,
    "identity": _rpc_identity,
}


def _b64(payloads: Any) -> Any:
    """``replicate``'s per-target payloads as JSON can carry them: bytes as base64 text;
    None, and anything the worker's check must refuse (False), as they are."""
    if not isinstance(payloads, list | tuple):
        return False
    if len(payloads) > 64:
        raise _misuse("at most 64 replicas")
    out: list[Any] = []
    for p in payloads:
        if isinstance(p, bytes | bytearray):
            out.append(_B2A(p, newline=False).decode())
        else:
            out.append(None if p is None else False)
    return out


def _unb64(payloads: Any) -> Any:
    """:func:`_b64`'s inverse on the worker's side (hostile: bad text becomes False, which
    ``replicate`` refuses)."""
    if not isinstance(payloads, list):
        return payloads
    out = []
    for p in payloads:
        if isinstance(p, str):
            try:
                p = binascii.a2b_base64(p, strict_mode=True)
            except (binascii.Error, ValueError):
                p = False
        out.append(p)
    return out


def _replay(api: Any, actions: Any) -> None:
    """Carry out the confined service's actions on the real API (which validates them)."""
    if not isinstance(actions, list) or len(actions) > 1024:
        raise ServiceFailed("bad action list from the confined process")
    for act in actions:
        if not isinstance(act, list) or not act or not isinstance(act[0], str):
            raise ServiceFailed("bad action from the confined process")
        op, args = act[0], act[1:]
        try:
            if op == "fwd":
                api.forward_to(*args)
            elif op == "drop":
                api.drop(*args)
            elif op == "shim":
                label, md = [*args, None, None][:2]
                api.shim.update(label=label, metadata=md)
            elif op == "rep":
                api.replicate(args[0], *map(_unb64, args[1:2]))
            elif op == "encap":
                api.encapsulate(*args)
            elif op == "log":
                api.log(*args)
            elif op == "store":
                api.store(*args)
            elif op == "spoof":
                raise decision_of(api).refuse(str(args[0] if args else "")[:200])
            else:
                raise PacketApiError("api_misuse", f"unknown action {op!r}")
        except TypeError as exc:
            raise PacketApiError("api_misuse", f"{op}: {exc}") from None


# ---------------------------------------------------------------- upload check (supervisor)
def check_source(
    source: bytes,
    name: str,
    *,
    timeout: float = 5.0,
    memory_bytes: int = 256 << 20,
    cpu_seconds: int = 1,
) -> tuple[str, str] | None:
    """Compile, check and load ``source`` in a throw-away confined process (rlimits on CPU
    time and address space, seccomp, a wall-clock ``timeout``); ``None`` if it loads, else
    ``(reason, detail)`` with a :class:`~pcsite_lite.sandbox.ServiceLoadError` reason. The
    caller runs nothing of the service."""
    root = tempfile.mkdtemp(prefix="pcsite-check-")
    os.chmod(root, 0o555)
    parent, child = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    args = [
        sys.executable, "-I", "-m", "pcsite_lite.confine", "check",
        "--fd", str(child.fileno()), "--name", name, "--memory", str(memory_bytes),
        "--cpu", str(cpu_seconds), "--root", root, "--uid", str(_uid_for(name)),
    ]  # fmt: skip
    try:
        proc = _spawn_child(args, child.fileno())
    finally:
        child.close()
    try:
        _send(parent, {"src": 1}, source)
        late = _wait_answer(parent, proc.pid, timeout)
        if late is not None:
            return ("load_timeout", late)
        msg = parent.recv(MAX_MESSAGE)
        if not msg:
            code = proc.wait(timeout=timeout)
            if code in (-signal.SIGXCPU, -signal.SIGKILL):
                return ("load_timeout", "module code ran out of CPU time")
            return ("load_error", f"the checking process died ({code})")
        head, _ = _decode(msg)
        if head.get("ready"):
            return None
        return (str(head.get("e", "load_error")), str(head.get("d", ""))[:500])
    except (OSError, ValueError) as exc:
        return ("load_error", f"checking failed: {exc}")
    finally:
        parent.close()
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        os.rmdir(root)


def _blocked(pid: int) -> bool:
    """Whether process ``pid`` is asleep (waiting on something of its own), not running or
    waiting for a CPU."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] in ("S", "D", "T", "t")
    except (OSError, IndexError):
        return False


def _wait_answer(sock: socket.socket, pid: int, timeout: float) -> str | None:
    """Wait until ``sock`` is readable, for at most ``timeout`` seconds of the process's own
    time: the CPU time it used plus the time it slept, not the time it waited for a CPU (it
    runs ``SCHED_IDLE``, so a busy site delays a check without failing it); and at most
    ``6 * timeout`` of wall time in all. ``None`` once readable, else why not."""
    start = last = time.monotonic()
    own = 0.0
    try:
        cpu0 = process_cpu_ns(pid)
    except OSError:
        cpu0 = 0
    while True:
        now = time.monotonic()
        try:
            cpu = process_cpu_ns(pid)
        except OSError:
            cpu = cpu0
        own += (now - last) if _blocked(pid) else (cpu - cpu0) / 1e9
        cpu0, last = cpu, now
        if own >= timeout:
            return f"checking the module took more than {timeout} s"
        if now - start >= 6 * timeout:
            return (
                f"the site's CPUs were too busy to check the module within "
                f"{6 * timeout:g} s (it waited for a CPU most of that time); try again"
            )
        if select.select([sock], [], [], min(0.05, timeout - own))[0]:
            return None


#: util-linux's ``chrt``: starts the upload check with the idle scheduling class already set
_CHRT: Final = shutil.which("chrt")


def _spawn_child(args: list[str], keep_fd: int, idle: bool = True) -> subprocess.Popen[bytes]:
    """``args`` as a process that inherits only ``keep_fd`` (and ``/dev/null`` as stdin,
    stdout and stderr), ``SCHED_IDLE`` if ``idle``. ``chrt --idle`` sets the class before
    the interpreter starts: a child started normally and lowered afterwards first ran for a
    slice of a few ms on its parent's vCPU, and ``os.posix_spawn`` keeps the GIL while the
    child execs; ``subprocess`` spawns with ``vfork`` and the GIL released. Without
    ``chrt``, the child is lowered right after it started."""
    cmd = [_CHRT, "--idle", "0", *args] if idle and _CHRT else args
    proc = subprocess.Popen(
        cmd, pass_fds=(keep_fd,), env={"LANG": "C.UTF-8"}, stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    if idle and not _CHRT:
        _background(proc.pid)
    return proc


def _background(pid: int) -> None:
    """Let process ``pid`` run only on CPU time nobody else wants: ``SCHED_IDLE`` (a task of
    any other policy that wakes on its CPU preempts it at once, unlike a nice-19 task, which
    keeps its slice of a few ms), or nice 19 where that policy is refused. The throw-away
    check runs so: it inherits the supervisor's CPUs and must never delay the control API;
    its CPU-time limit still bounds it."""
    try:
        os.sched_setscheduler(pid, os.SCHED_IDLE, os.sched_param(0))
        return
    except (OSError, AttributeError):
        pass
    try:
        os.setpriority(os.PRIO_PROCESS, pid, 19)
    except OSError:
        pass


# ---------------------------------------------------------------- the confined side
def _libseccomp() -> Any:
    import ctypes

    # by its soname first: ``ctypes.util.find_library`` forks and runs ``ldconfig -p``, kernel
    # work (fork, exec) that a check process did twice per upload on the supervisor's vCPU
    try:
        lib = ctypes.CDLL("libseccomp.so.2", use_errno=True)
    except OSError:
        import ctypes.util

        path = ctypes.util.find_library("seccomp")
        if path is None:
            raise
        lib = ctypes.CDLL(path, use_errno=True)
    lib.seccomp_init.restype = ctypes.c_void_p
    lib.seccomp_init.argtypes = [ctypes.c_uint32]
    lib.seccomp_rule_add.argtypes = [ctypes.c_void_p, ctypes.c_uint32, ctypes.c_int,
                                     ctypes.c_uint]  # fmt: skip
    lib.seccomp_syscall_resolve_name.argtypes = [ctypes.c_char_p]
    lib.seccomp_load.argtypes = [ctypes.c_void_p]
    lib.seccomp_release.argtypes = [ctypes.c_void_p]
    return lib


def _seccomp(allowed: list[str]) -> Callable[[], None]:
    """Build a filter allowing only ``allowed`` (others fail with EPERM); the returned
    function loads it (and sets no_new_privs). Building opens the library: do it before the
    file system goes away."""
    lib = _libseccomp()
    errno_eperm = 0x00050000 | 1  # SCMP_ACT_ERRNO(EPERM)
    allow = 0x7FFF0000  # SCMP_ACT_ALLOW
    ctx = lib.seccomp_init(errno_eperm)
    if not ctx:
        raise OSError("seccomp_init failed")
    for name in allowed:
        nr = lib.seccomp_syscall_resolve_name(name.encode())
        if nr < 0:
            continue  # not on this architecture
        if lib.seccomp_rule_add(ctx, allow, nr, 0) != 0:
            lib.seccomp_release(ctx)
            raise OSError(f"seccomp_rule_add({name}) failed")

    def load() -> None:
        try:
            if lib.seccomp_load(ctx) != 0:
                raise OSError("seccomp_load failed")
        finally:
            lib.seccomp_release(ctx)

    return load


def _syscalls(*names: str) -> dict[str, int]:
    """This architecture's numbers of ``names`` (libseccomp knows them; -1: none)."""
    lib = _libseccomp()
    return {n: lib.seccomp_syscall_resolve_name(n.encode()) for n in names}


# mount(2), unshare(2) and umount2(2) flags
_CLONE_NEWNS, _CLONE_NEWNET = 0x00020000, 0x40000000
_MS_RDONLY, _MS_NOSUID, _MS_NODEV, _MS_NOEXEC = 1, 2, 4, 8
_MS_REMOUNT, _MS_REC, _MS_PRIVATE = 32, 1 << 14, 1 << 18
_MNT_DETACH = 2


def _empty_root(libc: Any, root: str, nr: dict[str, int]) -> None:
    """In a private mount namespace (already unshared): make an empty read-only tmpfs at
    ``root`` the process's ``/`` and detach every other mount (none of the host's is left
    in this namespace, not even under ``/proc``)."""
    import ctypes

    def check(r: int, what: str) -> None:
        if r != 0:
            e = ctypes.get_errno()
            raise OSError(e, f"{what}: {os.strerror(e)}")

    flags = _MS_NOSUID | _MS_NODEV | _MS_NOEXEC
    check(libc.mount(None, b"/", None, _MS_REC | _MS_PRIVATE, None), "mount --make-rprivate /")
    check(libc.mount(b"pcsite", root.encode(), b"tmpfs", flags, b"size=4k,nr_inodes=1,mode=0555"),
          "mount tmpfs")  # fmt: skip
    os.chdir(root)
    # pivot_root(".", "."): the old root ends up on top of the new one, then goes
    check(libc.syscall(nr["pivot_root"], b".", b"."), "pivot_root")
    check(libc.umount2(b".", _MNT_DETACH), "umount the old root")
    os.chdir("/")
    check(libc.mount(None, b"/", None, _MS_REMOUNT | _MS_RDONLY | flags, None), "remount ro")


#: Landlock: every file-system access right of ABI 1-5, TCP bind/connect (ABI 4), abstract
#: UNIX sockets and signals outside the domain (ABI 6); a ruleset that handles them and
#: allows nothing denies them all
_LL_FS = ((1 << 13) - 1, 1 << 13, 1 << 14, 0, 1 << 15)  # added by ABI 1, 2, 3, 4, 5
_LL_NET = 3
_LL_SCOPE = 3


def landlock_abi(libc: Any = None, create: int | None = None) -> int:
    """The kernel's Landlock ABI version (0: no Landlock)."""
    import ctypes

    libc = libc or ctypes.CDLL(None, use_errno=True)
    if create is None:
        create = _syscalls("landlock_create_ruleset")["landlock_create_ruleset"]
    if create < 0:
        return 0
    abi = libc.syscall(create, None, ctypes.c_size_t(0), ctypes.c_uint32(1))  # ..._VERSION
    return max(0, abi)


def _landlock(libc: Any, nr: dict[str, int]) -> bool:
    """Deny this process every file-system access, TCP bind/connect and signals or abstract
    sockets outside itself (Landlock, when the kernel has it: False if not). Needs
    ``no_new_privs`` (set here)."""
    import ctypes

    create, restrict = nr.get("landlock_create_ruleset", -1), nr.get("landlock_restrict_self", -1)
    abi = landlock_abi(libc, create)
    if abi < 1 or restrict < 0:
        return False
    fs = 0
    for v, bits in enumerate(_LL_FS, start=1):
        if abi >= v:
            fs |= bits
    attr = (ctypes.c_uint64 * 3)(fs, _LL_NET if abi >= 4 else 0, _LL_SCOPE if abi >= 6 else 0)
    size = 24 if abi >= 6 else 16 if abi >= 4 else 8
    fd = libc.syscall(create, ctypes.byref(attr), ctypes.c_size_t(size), ctypes.c_uint32(0))
    if fd < 0:
        return False
    try:
        libc.prctl(38, 1, 0, 0, 0)  # PR_SET_NO_NEW_PRIVS
        if libc.syscall(restrict, fd, ctypes.c_uint32(0)) != 0:
            e = ctypes.get_errno()
            raise OSError(e, f"landlock_restrict_self: {os.strerror(e)}")
    finally:
        os.close(fd)
    return True


def _confine(*, memory: int, root: str, uid: int, cpu: int | None, strict: bool) -> list[str]:
    import ctypes
    import resource

    measures = []
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(1, signal.SIGKILL, 0, 0, 0)  # PR_SET_PDEATHSIG: die with the worker
    if os.getppid() == 1:  # the worker is already gone
        raise OSError("parent exited")
    load_filter = _seccomp(ALLOWED_SYSCALLS)
    nr = _syscalls("pivot_root", "landlock_create_ruleset", "landlock_restrict_self")
    resource.setrlimit(resource.RLIMIT_AS, (memory, memory))
    resource.setrlimit(resource.RLIMIT_FSIZE, (0, 0))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    resource.setrlimit(resource.RLIMIT_NOFILE, (16, 16))
    if cpu is not None:
        resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu + 1))
    measures.append("rlimits")
    if os.geteuid() == 0:
        # its own network namespace (no interface but a down loopback) and mount namespace
        # (an empty read-only tmpfs as /, nothing of the host's mounted); where the kernel
        # refuses them (e.g. in a container without the capability), a chroot to the empty
        # directory ``root`` as before
        root_done = False
        if libc.unshare(_CLONE_NEWNS | _CLONE_NEWNET) == 0:
            measures.append("netns")
            try:
                _empty_root(libc, root, nr)
                measures.append("mountns")
                root_done = True
            except OSError:
                if strict:
                    raise
        elif strict:
            raise OSError(ctypes.get_errno(), "unshare(CLONE_NEWNS | CLONE_NEWNET) failed")
        if not root_done:
            os.chroot(root)
            os.chdir("/")
            measures.append("chroot")
        os.setgroups([])
        os.setgid(uid)
        os.setuid(uid)
        measures.append("uid")
        resource.setrlimit(resource.RLIMIT_NPROC, (0, 0))
    elif strict:
        raise OSError("confinement needs root for chroot and setuid")
    if _landlock(libc, nr):
        measures.append("landlock")
    load_filter()
    measures.append("seccomp")
    return measures


class _Local:
    """The ``pkt`` a confined service sees: a snapshot plus a list of actions."""

    __slots__ = ("_acts", "_cache", "_cache_new", "_changed", "_ctx", "_ident", "_lab", "_m",
                 "_payload", "_rpc", "shim")  # fmt: skip

    def __init__(self, rpc: Callable[..., Any], cache: dict[Any, bytes], ctx: Any) -> None:
        self._rpc = rpc
        self._cache = cache
        self._ctx = ctx  # a ServiceContext: PacketApi.aes keeps its AES contexts there
        self._ident: list[str] | None = None  # (site, node): asked of the worker once
        self.shim = _LocalShim(self)

    # packet fields (decoded from the record only when the service reads them)
    form = property(lambda self: self._m[0])
    src = property(lambda self: _INT2IP(self._m[7]))
    dst = property(lambda self: _INT2IP(self._m[8]))
    proto = property(lambda self: self._m[9])
    tos = property(lambda self: self._m[10])
    ttl = property(lambda self: self._m[11])
    now = property(lambda self: self._m[12])
    length = property(lambda self: len(self._payload))

    def _identity(self) -> list[str]:
        if self._ident is None:
            ident = self._rpc("identity")
            if not isinstance(ident, list) or len(ident) != 2:
                raise _misuse("no node identity")
            self._ident = [str(ident[0]), str(ident[1])]
        return self._ident

    site_id = property(lambda self: self._identity()[0])
    node_id = property(lambda self: self._identity()[1])

    def read(self, offset: int = 0, length: int | None = None) -> bytes:
        if not isinstance(offset, int) or offset < 0:
            raise _misuse("offset must be a non-negative int")
        if length is None:
            return bytes(self._payload[offset:])
        if not isinstance(length, int) or length < 0:
            raise _misuse("length must be a non-negative int")
        return bytes(self._payload[offset : offset + length])

    def write(self, offset: int, data: bytes) -> None:
        if not isinstance(data, bytes | bytearray) or not isinstance(offset, int) or offset < 0:
            raise _misuse("write(offset: int >= 0, data: bytes)")
        if offset + len(data) > len(self._payload):
            raise _misuse("write past the end of the payload (use set_payload to grow it)")
        if type(self._payload) is not bytearray:
            self._payload = bytearray(self._payload)
        self._payload[offset : offset + len(data)] = data
        self._changed = True

    def set_payload(self, data: bytes) -> None:
        if not isinstance(data, bytes | bytearray):
            raise _misuse("set_payload(data: bytes)")
        if len(data) > 0xFFFF - 60:
            raise _misuse("payload too large for an IPv4 packet")
        self._payload = bytes(data)
        self._changed = True

    # FIS (calls back to the worker)
    def fetch(self, key: Any) -> Any:
        if not isinstance(key, str | int) or isinstance(key, bool):
            raise _misuse("FIS keys are str or int")
        return self._rpc("fetch", key)

    def lookup(self, table: str, addr: Any) -> Any:
        return self._rpc("lookup", str(table), addr if isinstance(addr, str | int) else None)

    def isp_fetch(self, key: str) -> Any:
        return self._rpc("isp_fetch", str(key))

    def isp_lookup(self, table: str, addr: Any) -> Any:
        return self._rpc("isp_lookup", str(table), addr if isinstance(addr, str | int) else None)

    def store(self, key: Any, value: Any) -> None:
        self._acts.append(["store", str(key), value])

    # node-local cache (this process is per service and per worker: node-local already)
    def cache(self, key: Any, buf: bytes) -> None:
        if not isinstance(buf, bytes | bytearray):
            raise _misuse("cache values are bytes")
        if not isinstance(key, str | int | bytes) or isinstance(key, bool):
            raise _misuse("cache keys are str, int or bytes")
        size = len(buf) + (len(key) if isinstance(key, str | bytes) else 8)
        if size > CACHE_LIMIT:
            raise _misuse("value larger than the service's cache")
        cache = self._cache
        cache.pop(key, None)
        while cache and sum(len(v) for v in cache.values()) + size > CACHE_LIMIT:
            del cache[next(iter(cache))]
        cache[key] = bytes(buf)
        self._cache_new += size

    def cache_get(self, key: Any) -> bytes | None:
        return self._cache.get(key)

    # building blocks: computed here, on the service's own CPU and memory
    def aes(self, buf: bytes, key: bytes, decrypt: bool = False, aad: bytes = b"") -> bytes:
        return _AES(self._ctx, buf, key, decrypt, aad)

    def compress(self, buf: bytes, decompress: bool = False) -> bytes:
        return _COMPRESS(self, buf, decompress)

    def ed25519_verify(self, public_key: bytes, signature: bytes, message: bytes) -> bool:
        return _VERIFY(self._ctx, public_key, signature, message)

    def log(self, text: str) -> None:
        self._acts.append(["log", str(text)[:4096]])

    # decisions (validated by the worker when it replays them)
    def forward_to(self, next_hop: Any) -> None:
        self._acts.append(["fwd", next_hop if isinstance(next_hop, str | int) else None])

    def drop(self, reason: str = "") -> None:
        self._acts.append(["drop", str(reason)[:200]])

    def encapsulate(self, outer_dst: Any) -> None:
        self._acts.append(["encap", outer_dst if isinstance(outer_dst, str | int) else None])

    def replicate(self, targets: Any, payloads: Any = None) -> None:
        if isinstance(targets, str | bytes):
            raise _misuse("replicate takes a list of targets")
        out = []
        for t in targets:
            out.append(t if isinstance(t, str | int) and not isinstance(t, bool) else None)
            if len(out) > 64:
                raise _misuse("at most 64 replicas")
        self._acts.append(["rep", out] if payloads is None else ["rep", out, _b64(payloads)])


class _LocalShim:
    __slots__ = ("_api",)

    def __init__(self, api: _Local) -> None:
        self._api = api

    def read(self) -> Any:
        return _SHIMVIEW(self.form, self.label, self.service_id, self.metadata,
                         self.orig_src, self.hop_limit)  # fmt: skip

    def _field(self, bit: int, i: int) -> Any:
        m = self._api._m
        return m[i] if m[1] & bit else None

    form = property(lambda self: self._api._m[0])
    service_id = property(lambda self: self._field(2, 3))
    metadata = property(lambda self: self._field(4, 4))
    orig_src = property(lambda self: _ip_or_none(self._field(8, 5)))
    hop_limit = property(lambda self: self._field(16, 6))

    @property
    def label(self) -> Any:
        lab = self._api._lab
        return self._field(1, 2) if lab is _UNSET else lab

    def update(self, *, label: Any = None, metadata: Any = None, **other: Any) -> None:
        if other:
            detail = f"shim fields {sorted(other)} are not writable by services"
            self._api._acts.append(["spoof", detail])  # refused on replay, even if caught
            raise _misuse(detail)
        if metadata is not None and (
            not isinstance(metadata, int) or isinstance(metadata, bool) or not 0 <= metadata <= 255
        ):
            raise _misuse("metadata must be an int 0..255")
        if label is not None:
            if not isinstance(label, int) or isinstance(label, bool):
                label = -1  # refused on replay
            self._api._lab = label
        self._api._acts.append(["shim", label, metadata])


def _ip_or_none(v: Any) -> str | None:
    return None if v is None else _INT2IP(v)


def _misuse(detail: str) -> Exception:
    from pcsite_lite.api import PacketApiError

    return PacketApiError("api_misuse", detail)


CACHE_LIMIT = 1 << 20
_UNSET: Final = object()
_INT2IP: Any = None
_AES: Any = None
_VERIFY: Any = None
_B2A: Any = None
_COMPRESS: Any = None
_SHIMVIEW: Any = None


def _serve(fd: int, name: str, mode: str, memory: int, root: str, uid: int, cpu: int | None,
           ticks: int, max_ns: int, spin_ns: int = 0) -> int:  # fmt: skip
    # Everything the runtime needs is imported before the filter goes on.
    global _AES, _VERIFY, _B2A, _COMPRESS, _SHIMVIEW, CACHE_LIMIT, _INT2IP
    import math  # noqa: F401  (services may import these and binascii: no file access after seccomp)
    import zlib  # noqa: F401

    from pcsite_lite import api as apimod
    from pcsite_lite import fastio
    from pcsite_lite.sandbox import ServiceLoadError, load_service

    _INT2IP = apimod.int2ip
    _AES = apimod.aes_gcm
    _VERIFY = apimod.ed25519_verify
    _B2A = binascii.b2a_base64
    _COMPRESS = apimod.PacketApi.compress
    CACHE_LIMIT = apimod.CACHE_LIMIT

    def shimview(*fields: Any) -> Any:
        return tuple.__new__(_LocalShimView, fields)

    _SHIMVIEW = shimview
    sock = socket.socket(fileno=fd)
    strict = os.environ.get("PCSITE_CONFINE_STRICT") == "1"
    try:
        measures = _confine(memory=memory, root=root, uid=uid, cpu=cpu, strict=strict)
    except OSError as exc:
        _send(sock, {"e": "load_error", "d": f"cannot confine: {exc}"})
        return 2
    _head, source = _decode(sock.recv(MAX_MESSAGE))
    # CPU time of this process: preemption on a loaded machine is not the service's; the
    # worker's wall-clock deadline bounds the rest
    budget = _CpuBudget(max_ticks=ticks, max_ns=max_ns)
    try:
        loaded = load_service(source, name, budget=budget)
    except ServiceLoadError as exc:
        _send(sock, {"e": exc.reason, "d": str(exc)})
        return 0
    except MemoryError:
        _send(sock, {"e": "load_error", "d": "MemoryError"})
        return 0
    if mode == "check":
        _send(sock, {"ready": 1, "measures": measures})
        return 0
    # the runtime and the loaded module out of the cyclic collector's reach: a full
    # collection in the middle of a batch scans only what the service made since
    gc.freeze()
    _send(sock, {"ready": 1, "measures": measures})
    process = loaded.process
    cache: dict[Any, bytes] = {}

    # batch frames the worker sent while a call of this one waited for its reply (the
    # worker keeps at most MAX_INFLIGHT in flight): handled, in order, after this one
    backlog: deque[bytes] = deque()

    def rpc(call: str, *args: Any) -> Any:
        _send(sock, {"rpc": call, "args": list(args)})
        while True:
            msg = sock.recv(MAX_MESSAGE)
            if msg[:1] != b"B":  # a reply's head length starts with a zero byte
                break
            if len(backlog) >= MAX_INFLIGHT:
                os._exit(2)  # the worker broke its bound
            backlog.append(msg)
        reply, _ = _decode(msg)
        if "x" in reply:
            raise apimod.PacketApiError(reply["x"], reply.get("d", ""))
        return reply.get("r")

    pkt = _Local(rpc, cache, apimod.ServiceContext("", "", budget=budget))

    runner = _Runner(process, pkt, budget)

    # After an answer the process busy-polls its channel (the worker's next batch usually
    # comes sooner than a sleeping process wakes): on its own vCPU, at the site's choice
    # (``spin_ns`` 0: never), reported in the next answer so that the site, not the
    # provider, pays for it; how long: :class:`_SpinWindow`.
    recv_spin = fastio.recv_spin
    chan: Any = fd if fastio.ACCELERATED else sock  # (no socket object of a bare fd here)
    window = _SpinWindow(spin_ns)
    clock = time.monotonic_ns
    spun = 0
    while True:
        if backlog:
            msg = backlog.popleft()
        else:
            msg = None
            win = window.take()
            if win:
                msg, took, cpu_ns = recv_spin(chan, MAX_MESSAGE, win)
                spun += cpu_ns
                if took > 20_000 and 2 * cpu_ns < took:
                    window.shared()
                    win = 0  # (no adapting to this wait)
                elif msg is not None:
                    window.caught(took)
            if msg is None:
                t0 = clock()
                msg = sock.recv(MAX_MESSAGE)
                if win:
                    window.missed(took + clock() - t0)
        if not msg:
            return 0
        if msg[:1] != b"B":
            return 2  # the worker speaks only in batch frames now
        sock.send(runner.answer(msg, spun))
        spun = 0


class _Runner:
    """The confined side of the lane, without I/O: runs the service's ``process`` on each
    packet of a batch frame and builds the answer frame (per packet: outcome, payload
    changed, cache bytes, the actions or ``[reason, detail]`` as JSON, the new payload).
    ``_serve`` feeds it the channel's messages; tests drive it directly."""

    __slots__ = ("budget", "dumps", "pkt", "process")

    def __init__(self, process: Callable[[Any], Any], pkt: _Local, budget: _CpuBudget) -> None:
        self.process = process
        self.pkt = pkt
        self.budget = budget
        # the action lists' one JSON encoder (compact; made once)
        self.dumps = json.JSONEncoder(separators=(",", ":")).encode

    def answer(self, msg: bytes, spun_ns: int = 0) -> bytes:
        """The answer frame to the batch frame ``msg`` (``spun_ns``: the busy-poll before
        it, reported for the site to pay)."""
        (n,) = _HEAD.unpack_from(msg, 1)
        off = 5 + n * _META.size
        recs = bytearray(n * _RES.size)
        extra: list[str] = []
        tails: list[bytes] = []
        size = at = 0
        pkt, budget, process, dumps = self.pkt, self.budget, self.process, self.dumps
        clock, max_ticks = budget.clock, budget.max_ticks
        pack_res, res_size, limit = _RES.pack_into, _RES.size, 2 * MAX_BATCH_BYTES
        for meta in _META.iter_unpack(msg[5:off]):
            ln = meta[13]
            # a fresh ``pkt`` (a _META record, the payload, no actions) and an armed budget
            # (_CpuBudget.start), written out: this runs for every packet
            pkt._m = meta
            pkt._payload = msg[off : off + ln]  # a bytearray once written to
            pkt._acts = []
            pkt._changed = False
            pkt._cache_new = 0
            pkt._lab = _UNSET  # the label chosen by shim.update
            off += ln
            budget.left = max_ticks
            budget.overrun = False
            budget._cpu0 = None
            budget._wall0 = clock()
            # a refused call's PacketApiError carries ``aes``/``compress``'s misuse too
            try:
                process(pkt)
                failed = None
            except BudgetExceeded:
                failed = ("timeout", "")
            except PacketApiError as exc:
                failed = (exc.reason, exc.detail)
            except MemoryError:
                failed = ("error", "MemoryError")
            except RecursionError:
                failed = ("error", "RecursionError")
            except Exception as exc:
                failed = ("error", f"{type(exc).__name__}: {exc}"[:300])
            if budget.overrun:
                failed = ("timeout", "")
            x: str | None = None
            if failed is None:
                code = _OK
                changed = pkt._changed
                tail = bytes(pkt._payload) if changed else b""
                cache = min(pkt._cache_new, 0xFFFFFFFF)
                if pkt._acts:
                    try:
                        x = dumps(pkt._acts)
                        code = _ACTS
                    except (TypeError, ValueError, RecursionError):  # not a JSON value
                        failed = ("api_misuse", "action arguments must be JSON values")
            if failed is not None:
                code, changed, cache, tail = _FAILED, False, 0, b""
                x = dumps([str(failed[0]), str(failed[1])])
            grow = len(tail) + (len(x) if x is not None else 0)
            if size + grow > limit:  # the answer must fit one message
                code, changed, cache, tail = _FAILED, False, 0, b""
                x = '["error","batch answer too large"]'
                grow = len(x)
            size += grow
            if tail:
                tails.append(tail)
            if x is not None:
                extra.append(x)
            pack_res(recs, at, code, changed, cache, len(tail))
            at += res_size
        j = ("[" + ",".join(extra) + "]").encode() if extra else b""
        head = _RHEAD.pack(n, len(j), min(spun_ns // 1000, 0xFFFFFFFF))
        return b"".join((b"R", head, recs, j, *tails))


class _SpinWindow:
    """How long (ns) a confined process busy-polls its channel after an answer before it
    sleeps, adapted the way KVM adapts its halt-polling window. A batch caught while polling
    keeps the window at twice that wait at least. One that came after the window passed
    grows it to twice the whole wait if that wait was within ``max_ns`` (a longer poll would
    have caught it, and a sleeping process wakes late: tens of µs on a virtual machine);
    after a longer gap the window halves, down to an eighth of ``max_ns``. A poll that got
    less than half its vCPU (other processes want it: a sleeping process would be woken
    sooner than a runnable one gets its turn) stops polling for the next
    :data:`SPIN_PAUSE` messages (``pause`` counts them down, :meth:`take`)."""

    __slots__ = ("floor", "max_ns", "ns", "pause")

    def __init__(self, max_ns: int) -> None:
        self.max_ns = max_ns
        self.floor = max_ns >> 3
        self.ns = max_ns
        self.pause = 0

    def take(self) -> int:
        """The window for the next wait (0: do not poll)."""
        if self.pause:
            self.pause -= 1
            return 0
        return self.ns

    def caught(self, took_ns: int) -> None:
        self.ns = min(self.max_ns, max(self.ns, 2 * took_ns))

    def missed(self, waited_ns: int) -> None:
        if waited_ns <= self.max_ns:
            self.ns = min(self.max_ns, max(self.floor, 2 * waited_ns))
        else:
            self.ns = max(self.floor, self.ns >> 1)

    def shared(self) -> None:
        self.pause = SPIN_PAUSE
        self.ns = self.floor


class _CpuBudget(Budget):
    """The per-call budget of a confined service on its thread's CPU time, without a CPU
    clock read per packet (``thread_time_ns`` is a system call, about 0.5 us, a third of a
    no-op packet's cost). :meth:`start` takes the cheap wall clock; the first clock check of
    a call (after :data:`~pcsite_lite.sandbox.CLOCK_EVERY` ticks: only services that loop or
    call a lot get there) reads the CPU clock and counts all wall time since the start as CPU
    (the most it can be), later checks count CPU time only. So a call gets at most its
    ``max_ns`` of CPU, less by whatever preemption fell before its first check."""

    __slots__ = ("_cpu0", "_wall0")

    def __init__(self, *, max_ticks: int, max_ns: int) -> None:
        super().__init__(max_ticks=max_ticks, max_ns=max_ns, clock=time.perf_counter_ns)
        self._wall0 = 0
        self._cpu0: int | None = None

    def start(self, now_ns: int) -> None:
        self.left = self.max_ticks
        self.overrun = False
        self._wall0 = now_ns
        self._cpu0 = None

    def _check(self, left: int) -> None:
        cpu = time.thread_time_ns()
        if self._cpu0 is None:
            self._cpu0 = cpu - (time.perf_counter_ns() - self._wall0)
        if left < 0 or cpu - self._cpu0 > self.max_ns:
            self.left = -1
            self.overrun = True
            raise BudgetExceeded


class _LocalShimView(tuple):
    __slots__ = ()
    form = property(lambda s: s[0])
    label = property(lambda s: s[1])
    service_id = property(lambda s: s[2])
    metadata = property(lambda s: s[3])
    orig_src = property(lambda s: s[4])
    hop_limit = property(lambda s: s[5])

    def as_tuple(self) -> tuple[Any, ...]:
        return tuple(self)


def main(argv: list[str] | None = None) -> int:
    import argparse

    ap = argparse.ArgumentParser(prog="pcsite-confine")
    ap.add_argument("mode", choices=("run", "check"))
    ap.add_argument("--fd", type=int, required=True)
    ap.add_argument("--name", required=True)
    ap.add_argument("--memory", type=int, required=True)
    ap.add_argument("--root", required=True)
    ap.add_argument("--uid", type=int, required=True)
    ap.add_argument("--cpu", type=int, default=None)
    ap.add_argument("--ticks", type=int, default=100_000)
    ap.add_argument("--max-ns", type=int, default=10_000_000)
    ap.add_argument("--spin-ns", type=int, default=0)
    a = ap.parse_args(argv)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    # nothing of the parent but the channel (and /dev/null as 0-2) stays open here: a
    # descriptor inherited by mistake would outlive the file-system view taken away below
    os.closerange(3, a.fd)
    os.closerange(a.fd + 1, 1 << 20)
    return _serve(a.fd, a.name, a.mode, a.memory, a.root, a.uid, a.cpu, a.ticks, a.max_ns,
                  a.spin_ns)  # fmt: skip


if __name__ == "__main__":
    sys.exit(main())

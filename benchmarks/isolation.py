"""Isolation benchmark: hostile provider code against a site, with another provider's traffic.

Every attack of issue #16 is uploaded through the site's normal path
(:meth:`pcsite_lite.control.site_backend.SiteBackend.upload_service`: signature, then the
throw-away confined check), activated, and -- if the site accepted it -- fed packets by a
worker replica (:class:`pcsite_lite.daemon.state.WorkerSite`, the worker's own pipeline and
repository loader, services confined per ``[services] isolation = "process"``) interleaved
one for one with a *victim* provider's circuit traffic (its service, also confined,
compresses each payload with ``pkt.compress``). Outcomes per attack:

- ``blocked_at_load``: the upload was refused (reason recorded), nothing of it ran here;
- ``stopped_at_run``: its packets failed (deadline kill, ``MemoryError`` under
  ``RLIMIT_AS``, refused API call), counted against it (``attacker_disabled``: it reached
  the 10 failures in a row that disable it within the run);
- ``confined``: it ran, and its harm stayed inside its own process (checked: the victim's
  payloads are still compressed by the real zlib, the next upload by anyone still works,
  no more copies than the replicate cap went out).

An *escape* is any harm outside the attacker's process: a victim payload not equal to
``zlib.compress`` of its input, a broken later upload, more than the cap of copies, or the
worker replica raising. Figures (``--json PATH``):

- ``isolation_escapes`` (goal 0);
- ``isolation_supervisor_stalls_ms``: control-API unavailability caused by an upload, measured
  on the site's own supervisor (:class:`~pcsite_lite.daemon.supervisor.Supervisor`, its
  control API and master state, in a process of its own pinned to the first vCPU): a probe
  process on another vCPU calls a third PSP's ``GET /services`` every 2 ms while the
  benchmark uploads each attack to that supervisor (``--stall-rounds`` rounds, interleaved);
  the uploads come from the probe's vCPU at nice 19 (the probe preempts them, as if the
  attacker were on another machine); per upload, the slowest call in flight during it minus
  the slowest call in a quiet window of the same length right after it; per attack the
  median over the rounds (a stall the upload causes comes every round, a hiccup of the
  machine in one), floored at 0; the worst attack
  (``isolation_supervisor_stalls_ms_max``: the worst single upload, floored at 0).
  ``isolation_supervisor_stalls_placebo_ms``: the same statistic with a second quiet window in
  place of the upload (nothing uploaded in either): the figure this machine's scheduling
  noise alone gives, same run. ``upload_ms`` per upload is how long it took;
- ``isolation_probe_lateness_ms``: the longest the probe process itself woke late for a call
  while an attack was uploaded (median over rounds, worst attack, like the stall): its own
  scheduling, a stall of the prober, not of the site (a supervisor stall close to it is the
  machine's, not the upload's);
- ``isolation_supervisor_loop_lateness_ms``: the longest the supervisor's own event loop was
  late (a 1 ms sleeper in its trio loop) during an upload: its process not running (the
  machine's scheduling) or the loop blocked (the site's fault);
- ``isolation_supervisor_gc_ms_max``: the supervisor's longest cyclic garbage collection in
  the whole measurement (``gc.callbacks``; it holds the event loop while it runs; per
  upload ``supervisor_gc_ms``); ``supervisor_frozen_objects``: the objects its startup
  moved out of the collector's reach (``gc.freeze``), ``supervisor_gc_collections``;
- ``isolation_event_loop_lateness_ms``: the longest the harness's in-process control API
  loop was late (a 1 ms sleeper's worst lateness) while an attack was uploaded to it (that
  loop shares its interpreter with the traffic harness: not a figure of the site);
- ``isolation_worker_crashes``: worker replicas lost (the harness's own process; 0 if it
  finished);
- ``isolation_victim_rate_ratio``: the victim's delivered packets per second during the worst
  attack over its rate beside a benign second provider in the same loop, in alternating
  windows (benign, attack, benign, ...: ``ATTACK_WINDOWS`` of each, ``--seconds`` of each in
  all; each attack has its own baseline, and a machine that is slower for a while slows
  both); per attack ``victim_rate_windows`` and ``victim_rate_benign_windows``;
- ``isolation_overhead_us_per_packet``: a no-op service confined minus the same service in
  the worker, per packet, batched as a worker with packets waiting runs it
  (``isolation_batch_size`` packets per message; it sends the next packets instead of
  busy-polling for answers), measured twice: on the site before the attacks and again
  after every attack ran (7 rounds each, each round both paths back to back); the figure is
  the median of the
  14 rounds' differences (``isolation_overhead_before_attacks_us_per_packet`` and
  ``..._after_attacks_...``: each measurement's own difference of medians, and the same for
  the latency; ``inprocess_noop_us_per_packet`` and
  ``inprocess_noop_after_attacks_us_per_packet``: the in-process path's cost in each, the
  machine's speed then); ``confined_unbatched_us_per_packet``: one round trip per packet;
  ``confined_worker_cpu_us_per_packet``, ``confined_tenant_cpu_us_per_packet`` (of which
  ``confined_tenant_spin_us_per_packet`` is its busy-poll) and
  ``inprocess_worker_cpu_us_per_packet``: CPU time (not wall) per packet of each side;
- ``isolation_batch_latency_us_median``: median round trip of one batch message (send, the
  process runs the service on every packet, answer) with nothing else in flight
  (``LATENCY_MESSAGES`` messages per round, each sent once the last was answered and its
  packets run): from just before the worker sends it to when the kernel queued the answer
  for the worker (``SO_TIMESTAMPNS``), over both measurements;
  ``isolation_batch_pickup_us_median``: from sending it to the worker reading the answer;
  ``isolation_batch_latency_loaded_us_median``: the same round trip for the messages of the
  per-packet loop above, which queue behind the ones sent before them;
- ``metering_cpu_vs_kernel``: CPU billed to the confined services (read from each process's
  kernel CPU-time clock) over what their cgroups' ``cpuacct.usage`` says for the same live
  processes (root only; None otherwise); ``metering_billed_vs_metered``: CPU in the
  services' counters plus the processes' busy-poll the site paid for, over the CPU metered
  from their processes (1.0: nothing lost); ``metering_site_spin_share``: that busy-poll's
  share of the metered CPU (not billed to the providers: docs/billing.md);
- ``attacks``: per attack its outcome, reason, upload time and victim rate.

Run: ``python -m benchmarks.isolation [--json PATH] [--seconds S]`` (root for chroot, UIDs
and cgroups; without root the confinement keeps rlimits and seccomp).
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import trio

from benchmarks._report import emit
from pcsite_lite.confine import process_cpu_ns
from pcsite_lite.control.app import ControlApp
from pcsite_lite.control.auth import Credentials
from pcsite_lite.control.client import ControlClient, ControlError
from pcsite_lite.control.site_backend import SiteBackend
from pcsite_lite.daemon.config import parse
from pcsite_lite.daemon.state import WorkerSite
from pcsite_lite.repository import generate_key, public_key_bytes, sign_service
from pcsite_lite.verdicts import Deliver, Forward
from pcsock.httpserver import serve
from pcsock.wire import HopKey, build_circuit_packet

SITE_IP = "198.18.9.1"
NEXT = "198.18.6.1"
SENDER = "198.18.5.1"
KEY = bytes(range(16))
OUT_KEY = bytes(range(16, 32))

VICTIM = "def process(pkt):\n    pkt.set_payload(pkt.compress(pkt.read()))\n"
NOOP = "def process(pkt):\n    pass\n"
MATCH_HOLE = 'match "x".upper:\n    case __pc_tick__:\n        pass\n'


@dataclass(frozen=True)
class Attack:
    name: str
    source: str
    expect: str  #: blocked_at_load, stopped_at_run or confined
    bad_signature: bool = False


#: The attacks of issue #16, in its order.
ATTACKS: tuple[Attack, ...] = (
    Attack("pow_at_load_bad_signature", "x = pow(3, 10**7)\n" + NOOP, "blocked_at_load", True),
    Attack("loop_at_load", "while True:\n    pass\n" + NOOP, "blocked_at_load"),
    Attack("match_hole_loop_at_load", MATCH_HOLE + "while True:\n    pass\n", "blocked_at_load"),
    Attack("huge_allocation_at_load", "x = b'x' * 10**10\n" + NOOP, "blocked_at_load"),
    Attack("pow_at_load", "x = pow(3, 10**8)\n" + NOOP, "blocked_at_load"),
    Attack(
        "replace_binascii",
        "import binascii\nbinascii.a2b_base64 = lambda s: 1 / 0\n" + NOOP,
        "confined",
    ),
    Attack(
        "match_hole_loop_in_process",
        "def process(pkt):\n"
        + "".join("    " + line + "\n" for line in MATCH_HOLE.splitlines())
        + "    while True:\n        pass\n",
        "blocked_at_load",
    ),
    Attack(
        "zlib_hijack",
        "import zlib\nseen = []\n"
        "def evil(b):\n    seen.append(b)\n    return b'EVIL'\n"
        "zlib.compress = evil\n"
        "def process(pkt):\n    pkt.set_payload(b''.join(seen[-4:]) or pkt.read())\n",
        "confined",
    ),
    Attack("pow_in_process", "def process(pkt):\n    pow(3, 10**8)\n", "stopped_at_run"),
    Attack("sum_range_in_process", "def process(pkt):\n    sum(range(10**10))\n", "stopped_at_run"),
    Attack("find_in_process", "def process(pkt):\n    ('a' * 10**9).find('b')\n", "stopped_at_run"),
    Attack("alloc_in_process", "def process(pkt):\n    b'x' * 10**10\n", "stopped_at_run"),
    Attack(
        "growing_dict",
        "grow = {}\ndef process(pkt):\n    grow[len(grow)] = b'x' * 10_000_000\n",
        "stopped_at_run",
    ),
    Attack(
        "replicate_own_64",
        f"def process(pkt):\n    pkt.replicate([{NEXT!r}] * 64)\n",
        "stopped_at_run",
    ),
)


#: the longest quiet window (s) an upload's is compared with: as long as the longest upload
#: (a check that runs out of CPU, ~4-8 s at the idle class), so that a long upload is not
#: compared with a shorter window (the slowest call of a longer window is slower by chance)
QUIET_MAX_S = 10.0
#: alternating windows of the benign service and the attack (each ``seconds / ATTACK_WINDOWS``)
ATTACK_WINDOWS = 5
#: batch messages sent one at a time per overhead round, for the round-trip latency
LATENCY_MESSAGES = 40


def probe_main(url: str, token: str, psp: str, period: float = 0.002) -> int:
    """The probe process: a legitimate API call (``GET /services`` as ``psp``) every
    ``period`` s until stdin closes; then one JSON line of its samples on stdout: (planned
    start, actual start, latency) in ``time.monotonic`` seconds (one clock for every process
    of the machine), and its error count."""
    client = ControlClient(url, token=token, psp=psp, timeout=60)
    samples: list[tuple[float, float, float]] = []
    errors = 0
    stop = threading.Event()

    def watch_stdin() -> None:
        sys.stdin.buffer.read()
        stop.set()

    threading.Thread(target=watch_stdin, daemon=True).start()
    planned = time.monotonic()
    while not stop.is_set() and len(samples) < 2_000_000:
        planned += period
        wait = planned - time.monotonic()
        if wait > 0:
            time.sleep(wait)
        t = time.monotonic()
        try:
            client.list_services()
        except (ControlError, OSError):
            errors += 1
        samples.append((planned, t, time.monotonic() - t))
        if t - planned > 0.5:  # far behind (e.g. stopped): no burst to catch up
            planned = time.monotonic()
    sys.stdout.write(json.dumps({"samples": samples, "errors": errors}) + "\n")
    sys.stdout.flush()
    return 0


def control_main(config_path: str, lateness_path: str) -> int:
    """The site's control plane in a process of its own: the supervisor with the controller
    role (control API, master state, upload checks), until SIGTERM; beside it a task that
    sleeps 1 ms at a time and records when its event loop woke it more than 0.5 ms late
    (``time.monotonic``, lateness in s) and a ``gc`` callback that records each of its
    cyclic collections (start, generation, duration); both, with the objects the
    supervisor froze at startup (``gc.get_freeze_count()``), written to ``lateness_path``
    at the end."""
    from pcsite_lite.daemon.supervisor import Supervisor

    with open(config_path) as f:
        cfg = parse(json.load(f))
    sup = Supervisor(cfg, roles=frozenset({"controller"}), log=lambda msg: None)
    late: list[tuple[float, float]] = []
    collections: list[tuple[float, int, float]] = []
    started = [0.0]

    def on_gc(phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            started[0] = time.monotonic()
        elif len(collections) < 1_000_000:
            collections.append((started[0], info["generation"], time.monotonic() - started[0]))

    gc.callbacks.append(on_gc)

    async def meter() -> None:
        while len(late) < 1_000_000:
            t = time.monotonic()
            await trio.sleep(0.001)
            d = time.monotonic() - t - 0.001
            if d > 0.0005:
                late.append((t, d))

    async def main() -> None:
        async with trio.open_nursery() as n:
            n.start_soon(meter)
            await sup.run()
            n.cancel_scope.cancel()

    try:
        trio.run(main)
    finally:
        Path(lateness_path).write_text(json.dumps(
            {"late": late, "gc": collections, "frozen": gc.get_freeze_count()}))  # fmt: skip
    return 0


class ControlProcess:
    """The supervisor (:func:`control_main`) on vCPU ``sup_cpu`` and the probe
    (:func:`probe_main`) on ``probe_cpu``, each in its own process, over a temporary state
    directory; :meth:`upload` sends attacks to it as a PSP does."""

    def __init__(self, tmp: Path, sup_cpu: int | None, probe_cpu: int | None) -> None:
        self.tmp = tmp
        self.keys = {"attacker": generate_key()}
        psps = {
            name: {
                "token": f"{name}-token-0123456789abcdef",
                "signing_key": public_key_bytes(generate_key() if name != "attacker"
                                                else self.keys[name]).hex(),
            }
            for name in ("attacker", "observer")
        }  # fmt: skip
        with socket.socket() as s:  # a free loopback port for its control API
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        doc = {
            "site": {
                "name": "iso-control",
                "public_ip": SITE_IP,
                "fis": f"sqlite://{tmp / 'fis.db'}",
                "state_dir": str(tmp),
                "repository": str(tmp / "repo"),
                "undeployed": "drop",
            },
            "control": {"admin_token": "admin-token-0123456789abcdef", "psps": psps,
                        "listen": f"127.0.0.1:{port}"},
        }  # fmt: skip
        (tmp / "site.json").write_text(json.dumps(doc))
        self.url = f"http://127.0.0.1:{port}"
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
        me = [sys.executable, "-m", "benchmarks.isolation"]
        self.lateness_path = tmp / "lateness.json"
        self.sup = subprocess.Popen(
            [*me, "--serve-control", str(tmp / "site.json"), str(self.lateness_path)],
            env=env, stdin=subprocess.DEVNULL,
        )  # fmt: skip
        self.probe: subprocess.Popen[bytes] | None = None
        if sup_cpu is not None:
            os.sched_setaffinity(self.sup.pid, {sup_cpu})
        self.client = ControlClient(self.url, token=psps["attacker"]["token"], psp="attacker",
                                    timeout=60)  # fmt: skip
        end = time.monotonic() + 30
        while True:
            try:
                self.client.list_services()
                break
            except (ControlError, OSError):
                if time.monotonic() > end or self.sup.poll() is not None:
                    self.close()
                    raise RuntimeError("the supervisor's control API did not come up") from None
                time.sleep(0.05)
        self.probe = subprocess.Popen(
            [*me, "--probe", self.url, psps["observer"]["token"], "observer"], env=env,
            stdin=subprocess.PIPE, stdout=subprocess.PIPE,
        )  # fmt: skip
        if probe_cpu is not None:
            os.sched_setaffinity(self.probe.pid, {probe_cpu})

    def upload(self, attack: Attack, version: str) -> tuple[float, float, str | None]:
        """Upload and activate ``attack``: (start, end) on ``time.monotonic`` and the refusal."""
        code = attack.source.encode()
        key = generate_key() if attack.bad_signature else self.keys["attacker"]
        service = f"a{version}"
        t0 = time.monotonic()
        try:
            sig = sign_service(key, "attacker", service, version, code)
            self.client.upload_service(service, version, code, sig)
            self.client.activate_service(service, version)
            refused = None
        except ControlError as exc:
            refused = str(exc)[:200]
        return t0, time.monotonic(), refused

    def samples(self) -> tuple[dict[str, Any], dict[str, Any]]:
        """Stop the probe and the supervisor: the probe's samples, what the supervisor
        recorded (:func:`control_main`; empty records if it wrote nothing)."""
        assert self.probe is not None
        out, _ = self.probe.communicate(b"", timeout=60)
        self.probe = None
        self.close()
        try:
            recorded = json.loads(self.lateness_path.read_text())
        except (OSError, ValueError):
            recorded = {}
        return json.loads(out), {"late": [], "gc": [], "frozen": 0, **recorded}

    def close(self) -> None:
        for p in (self.probe, self.sup):
            if p is not None and p.poll() is None:
                if p is self.probe:
                    p.communicate(b"", timeout=60)
                else:
                    p.terminate()
                    try:
                        p.wait(20)
                    except subprocess.TimeoutExpired:
                        p.kill()
                        p.wait()


def supervisor_stalls(
    attacks: tuple[Attack, ...], cpus: list[int], rounds: int = 1, quiet_max: float = QUIET_MAX_S
) -> dict[str, Any]:
    """Upload every attack to a supervisor in its own process while a probe process calls
    its control API (:class:`ControlProcess`); per attack the stall (the slowest call during
    the upload minus the slowest in a quiet window as long right after it, at most
    ``quiet_max`` s) and
    the probe's own worst lateness in that time."""
    tmp = Path(tempfile.mkdtemp(prefix="pcsite-isoctl-"))
    sup_cpu, probe_cpu = (cpus[0], cpus[1]) if len(cpus) > 1 else (None, None)
    proc = ControlProcess(tmp, sup_cpu, probe_cpu)
    windows: list[tuple[str, float, float, float, float, str | None]] = []
    # the uploads (signing, the HTTP client) run on the probe's vCPU: at the lowest nice
    # level the probe preempts them, as if the attacker were on another machine
    nice = os.getpriority(os.PRIO_PROCESS, 0)
    try:
        os.setpriority(os.PRIO_PROCESS, 0, 19)
        time.sleep(0.1)  # the probe is calling
        for r in range(rounds):
            for n, attack in enumerate(attacks):
                t0, t1, refused = proc.upload(attack, f"{r}.{n}")
                quiet = min(t1 - t0, quiet_max)
                time.sleep(max(2 * quiet + 0.01, 0.04))  # two quiet windows follow
                windows.append((attack.name, t0, t1, t1 + 0.01, t1 + 0.01 + quiet, refused))
        time.sleep(0.05)
        data, recorded = proc.samples()
    finally:
        proc.close()
        try:
            os.setpriority(os.PRIO_PROCESS, 0, nice)
        except OSError:  # not root: it stays at 19 for the rest of the run
            pass
        shutil.rmtree(tmp, ignore_errors=True)
    samples = data["samples"]

    def worst(since: float, until: float) -> tuple[float, float]:
        """(slowest call in flight in [since, until), the probe's worst lateness), ms."""
        lat = late = 0.0
        for planned, t, d in samples:
            if t < until and t + d >= since:
                lat = max(lat, d)
                late = max(late, t - planned)
        return lat * 1000, late * 1000

    sup_late = recorded["late"]

    def gc_ms(since: float, until: float) -> float:
        """The supervisor's longest cyclic collection that began in [since, until), ms."""
        return max((d for t, _, d in recorded["gc"] if since <= t < until), default=0.0) * 1000

    records = []
    for name, t0, t1, q0, q1, refused in windows:
        during, late = worst(t0, t1)
        without, _ = worst(q0, q1)
        placebo, _ = worst(q1, q1 + (q1 - q0))  # a window as long, nothing uploaded either
        loop = max((d for t, d in sup_late if t0 <= t < t1), default=0.0) * 1000
        loop_quiet = max((d for t, d in sup_late if q0 <= t < q1), default=0.0) * 1000
        records.append({"attack": name, "upload_ms": (t1 - t0) * 1000, "refused": refused,
                        "probe_ms_during_upload": during, "probe_ms_without_upload": without,
                        "probe_lateness_ms": late, "supervisor_loop_lateness_ms": loop,
                        "supervisor_loop_lateness_quiet_ms": loop_quiet,
                        "supervisor_gc_ms": gc_ms(t0, t1),
                        "stall_ms": during - without,
                        "placebo_stall_ms": without - placebo})  # fmt: skip

    # per attack the median over its rounds (a stall the upload causes comes every round; a
    # hiccup of the machine in one), floored at 0, then the worst attack
    def worst_median(key: str) -> float:
        per: dict[str, list[float]] = {}
        for r in records:
            per.setdefault(r["attack"], []).append(r[key])
        return max(max(0.0, statistics.median(v)) for v in per.values())

    return {
        "isolation_supervisor_stalls_ms": worst_median("stall_ms"),
        "isolation_supervisor_stalls_placebo_ms": worst_median("placebo_stall_ms"),
        "isolation_probe_lateness_ms": worst_median("probe_lateness_ms"),
        "isolation_supervisor_loop_lateness_ms": worst_median("supervisor_loop_lateness_ms"),
        "isolation_supervisor_stalls_ms_max": max(0.0, max(r["stall_ms"] for r in records)),
        "isolation_upload_ms_max": max(r["upload_ms"] for r in records),
        "isolation_supervisor_gc_ms_max": gc_ms(float("-inf"), float("inf")),
        "supervisor_gc_collections": len(recorded["gc"]),
        "supervisor_frozen_objects": recorded["frozen"],
        "supervisor_probe_calls": len(samples),
        "supervisor_probe_errors": data["errors"],
        "supervisor_uploads": records,
    }


class ControlServer:
    """The control API served by trio in a thread, with a stall meter: a task that sleeps
    1 ms at a time and records how late it woke (the event loop's unavailability)."""

    def __init__(self, app: ControlApp) -> None:
        self.max_stall_ms = 0.0
        self._cancel: trio.CancelScope | None = None
        self._token: trio.lowlevel.TrioToken | None = None
        ready = threading.Event()
        box: dict[str, int] = {}

        #: the meter runs while an upload is measured (between reset() and stop_meter()):
        #: a worker process has no control API thread, so none wakes during its traffic
        self.metering = False

        async def meter() -> None:
            while True:
                t = trio.current_time()
                on = self.metering
                await trio.sleep(0.001 if on else 0.05)
                if on:
                    late = (trio.current_time() - t - 0.001) * 1000
                    self.max_stall_ms = max(self.max_stall_ms, late)

        async def main() -> None:
            async with trio.open_nursery() as n:
                self._cancel = n.cancel_scope
                self._token = trio.lowlevel.current_trio_token()
                box["port"] = await n.start(serve, app, "127.0.0.1", 0)
                n.start_soon(meter)
                ready.set()

        self._thread = threading.Thread(target=trio.run, args=(main,), daemon=True)
        self._thread.start()
        if not ready.wait(10):
            raise RuntimeError("control server did not start")
        self.url = f"http://127.0.0.1:{box['port']}"

    def reset(self) -> None:
        """Start metering the loop's lateness afresh."""
        self.max_stall_ms = 0.0
        self.metering = True

    def stop_meter(self) -> None:
        self.metering = False

    def close(self) -> None:
        if self._token is not None and self._cancel is not None:
            self._token.run_sync_soon(self._cancel.cancel)
        self._thread.join(10)


@dataclass
class Harness:
    """A site's control backend and one worker replica over a temporary state directory."""

    tmp: Path
    memory_mb: int = 256
    deadline_ms: float = 20.0
    tenant_cpus: list[int] = field(default_factory=list)
    backend: SiteBackend = field(init=False)
    worker: WorkerSite = field(init=False)
    keys: dict[str, Any] = field(default_factory=dict)
    labels: dict[str, int] = field(default_factory=dict)
    out_labels: dict[str, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        psps: dict[str, dict[str, str]] = {}
        for name in ("victim", "attacker", "observer"):
            key = generate_key()
            self.keys[name] = key
            psps[name] = {
                "token": f"{name}-token-0123456789abcdef",
                "signing_key": public_key_bytes(key).hex(),
            }
        cfg = parse(
            {
                "site": {
                    "name": "iso",
                    "public_ip": SITE_IP,
                    "fis": f"sqlite://{self.tmp / 'fis.db'}",
                    "state_dir": str(self.tmp),
                    "repository": str(self.tmp / "repo"),
                    "undeployed": "drop",
                },
                "control": {"admin_token": "admin-token-0123456789abcdef", "psps": psps},
                "services": {
                    "memory_mb": self.memory_mb,
                    "deadline_ms": self.deadline_ms,
                    "cpus": self.tenant_cpus,
                },
            }
        )
        self.worker = WorkerSite(cfg, clock=time.monotonic)
        self.backend = SiteBackend(cfg, broadcast=self.worker.apply)
        creds = Credentials(
            admin_token=cfg.control.admin_token,
            psp_tokens={p: d["token"] for p, d in psps.items()},
        )
        self.server = ControlServer(ControlApp(self.backend, creds))
        self.clients = {
            p: ControlClient(self.server.url, token=d["token"], psp=p, timeout=30)
            for p, d in psps.items()
        }

    def close(self) -> None:
        self.server.close()
        self.worker.site.runtime.close()
        self.backend.close()

    def upload(self, psp: str, service: str, version: str, src: str, *, bad: bool = False) -> Any:
        """Upload and activate through the control API (HTTP, as a PSP does)."""
        code = src.encode()
        key = generate_key() if bad else self.keys[psp]
        sig = sign_service(key, psp, service, version, code)
        client = self.clients[psp]
        client.upload_service(service, version, code, sig)
        client.activate_service(service, version)

    def circuit(self, psp: str, service: str) -> int:
        label = int(self.backend.allocate_circuit(psp, service, 600.0)["label"])
        out = (label + 0x100000) % 0xFFFFFFFF + 1  # another 32-bit label, never 0
        hop = {"in_key": KEY.hex(), "out": [{"label": out, "next_hop": NEXT,
                                             "key": OUT_KEY.hex()}], "lifetime": 600.0}  # fmt: skip
        self.backend.install_hop(psp, label, hop)
        self.labels[service] = label
        self.out_labels[service] = out
        return label

    def packet(self, service: str, payload: bytes) -> bytearray:
        return build_circuit_packet(
            src=SENDER, dst=SITE_IP, label=self.labels[service], key=HopKey(KEY), payload=payload
        )

    def proxy(self, psp: str, service: str) -> Any:
        return self.worker.site.runtime.slot(psp, service).process

    def ready(self, psp: str, service: str, timeout: float = 20.0) -> bool:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            self.worker.refresh()  # as the worker loop does between batches
            slot = self.worker.site.runtime.slot(psp, service)
            p = slot.process
            if p is not None and getattr(p, "wait_ready", None) is not None:
                if p.wait_ready(0.05) and slot.code is not None:
                    return True
            elif p is not None:
                return True
            time.sleep(0.01)
        return False


def _payload(i: int) -> bytes:
    return b"victim payload %08d " % i * 4


def run_attack(h: Harness, attack: Attack, seconds: float, version: str) -> dict[str, Any]:
    """Upload ``attack`` as the attacker's service and, if accepted, interleave its packets
    with the victim's for ``seconds``; returns the outcome record."""
    rec: dict[str, Any] = {"attack": attack.name, "expected": attack.expect, "escapes": 0}
    service = f"a{version}"
    t0 = time.perf_counter()
    h.server.reset()
    refused: ControlError | None = None
    try:
        h.upload("attacker", service, version, attack.source, bad=attack.bad_signature)
    except ControlError as exc:
        refused = exc
    t1 = time.perf_counter()
    h.server.stop_meter()
    rec["event_loop_lateness_ms"] = h.server.max_stall_ms
    rec["harness_upload_ms"] = (t1 - t0) * 1000
    if refused is not None:
        rec["outcome"] = "blocked_at_load"
        rec["reason"] = str(refused)[:200]
        rec["victim_rate"] = None
        return rec
    # the supervisor still takes uploads (e.g. base64 decoding after a binascii attack)
    try:
        h.upload("victim", "probe", f"p{version}", NOOP)
    except Exception as exc:
        rec["escapes"] += 1
        rec["escape"] = f"later upload failed: {exc!r}"
    h.circuit("attacker", service)
    h.ready("attacker", service)
    # the same loop beside the benign service: the attack's own baseline, in alternating
    # windows (ATTACK_WINDOWS of each, benign first), so that a machine that got slower or
    # faster for a while (this one does, by up to ~1.5x for seconds) changes both alike
    benign: list[dict[str, Any]] = []
    attacked: list[dict[str, Any]] = []
    for _ in range(ATTACK_WINDOWS):
        benign.append(interleave(h, "attacker", "benign", seconds / ATTACK_WINDOWS))
        attacked.append(interleave(h, "attacker", service, seconds / ATTACK_WINDOWS))

    def rate(ws: list[dict[str, Any]]) -> float:
        wall = sum(w["wall"] for w in ws)
        return sum(w["victim_delivered"] for w in ws) / wall if wall else 0.0

    rec["victim_rate_benign"] = rate(benign)
    rec["victim_rate"] = rate(attacked)
    rec["victim_rate_windows"] = [round(rate([w]), 1) for w in attacked]
    rec["victim_rate_benign_windows"] = [round(rate([w]), 1) for w in benign]
    for k in ("victim_sent", "victim_delivered", "victim_bad", "copies_over_cap"):
        rec[k] = sum(w[k] for w in attacked)
    if rec["victim_rate_benign"]:
        rec["victim_rate_ratio"] = rec["victim_rate"] / rec["victim_rate_benign"]
    slot = h.worker.site.runtime.slot("attacker", service)
    rec["attacker_status"] = slot.status
    rec["attacker_failures"] = slot.failures
    iso = slot.as_dict()["isolation"]
    rec["attacker_restarts"] = iso.get("restarts") if isinstance(iso, dict) else None
    rec["attacker_disabled"] = slot.status == "disabled"
    if slot.failures:
        rec["outcome"] = "stopped_at_run"
        last = [e for e in h.worker.site.runtime.events if e.service == slot.name]
        rec["reason"] = f"{last[-1].kind}: {last[-1].detail}"[:200] if last else ""
    else:
        rec["outcome"] = "confined"
    rec["escapes"] += rec.pop("victim_bad") + rec.pop("copies_over_cap")
    return rec


def interleave(
    h: Harness, psp: str, service: str, seconds: float, batch: int = 32
) -> dict[str, Any]:
    """Victim and ``service`` packets one for one for ``seconds``, in batches of ``batch``
    handled as the worker does (:meth:`~pcsite_lite.daemon.tunpump.TunPump`: the packets for
    confined services go to their processes, the rest through the pipeline at once, then
    whatever the processes have answered; a batch still in flight does not hold up the next
    one); the victim's delivered payloads are checked."""
    pipe = h.worker.pipeline
    prefetch = h.worker.prefetch
    cap = h.worker.cfg.services.replicate_per_packet
    tally = {"ok": 0, "bad": 0, "over": 0}
    sent_by: dict[bytes, bytes | None] = {}  # packet -> the victim's payload (None: attacker)

    def run(datas: list[bytes], now: float) -> None:
        for d in datas:
            payload = sent_by.pop(d, None)
            out = pipe.process(d, now)
            if payload is not None:
                for v in out:
                    if isinstance(v, Forward | Deliver):
                        ok = bytes(v.data[36:]) == zlib.compress(payload)
                        tally["ok" if ok else "bad"] += 1
            else:
                copies = sum(isinstance(v, Forward | Deliver) for v in out)
                tally["over"] += max(0, copies - cap)

    sent = 0
    end = time.monotonic() + seconds
    t0 = time.monotonic()
    i = 0
    while time.monotonic() < end:
        now = time.time()
        datas: list[bytes] = []
        for _ in range(batch // 2):
            payload = _payload(i)
            i += 1
            d = bytes(h.packet("victim", payload))
            sent_by[d] = payload
            datas.append(d)
            sent += 1
            if psp:
                datas.append(bytes(h.packet(service, b"attack %d" % i)))
        if prefetch is None:
            run(datas, now)
        else:
            run(prefetch.dispatch(datas, now), now)
            for held, t in prefetch.completed(spin=False):  # as a worker with more to read
                run(held, t)
        pipe.account()
        h.worker.refresh()
    if prefetch is not None:  # what is still in flight comes back (or is lost) in time
        for held, t in prefetch.completed(wait=True):
            run(held, t)
    wall = time.monotonic() - t0
    return {
        "wall": wall,
        "victim_rate": tally["ok"] / wall,
        "victim_sent": sent,
        "victim_delivered": tally["ok"],
        "victim_bad": tally["bad"],
        "copies_over_cap": tally["over"],
    }


def metering(h: Harness) -> dict[str, Any]:
    """Billed CPU of the confined services against the kernel's accounting: the CPU-time
    clock readings billing used vs ``cpuacct.usage`` of their (live) cgroups."""
    clock = kernel = billed = metered = spin = 0
    for slot in h.worker.site.runtime.slots():
        p = slot.process
        if not hasattr(p, "take_cpu"):
            continue
        # billed, + not yet taken; the processes' busy-poll is the site's (not billed)
        billed += slot.ctx.counters.cpu_ns + max(0, p.cpu_ns - p.site_spin_ns - p._taken)
        spin += p.site_spin_ns
        metered += p.cpu_ns
        cg = p.cgroup
        if p.proc is not None and cg is not None:
            p._meter()
            v = cg.read_int("cpuacct.usage")
            if v:
                clock += p._last_cpu - p._cpu_base
                kernel += v
    return {
        "metering_cpu_vs_kernel": clock / kernel if kernel else None,
        "metering_billed_vs_metered": (billed + spin) / metered if metered else None,
        "metering_site_spin_share": spin / metered if metered else None,
    }


def _median_or_none(xs: list[float]) -> float | None:
    return statistics.median(xs) if xs else None


def overhead(h: Harness, count: int, batch: int = 64, tag: str = "") -> dict[str, float]:
    """Per-packet cost of a no-op service confined (batched, as the worker runs it) vs the
    same service in the worker, interleaved rounds; and the round trip of one batch message
    (:data:`~pcsite_lite.confine.CHUNK` packets: sent until its answer is read). ``tag``
    names this measurement's two services (one per call)."""
    from pcsite_lite.confine import CHUNK, ConfinedService

    pipe = h.worker.pipeline
    prefetch = h.worker.prefetch
    assert prefetch is not None
    conf_s, trus_s = f"noopc{tag}", f"noopt{tag}"
    h.upload("victim", conf_s, "1", NOOP)
    h.circuit("victim", conf_s)
    assert h.ready("victim", conf_s)
    h.worker.site.deploy("victim", trus_s, NOOP)  # the same code in the worker
    h.circuit("victim", trus_s)
    proxy = h.proxy("victim", conf_s)
    assert isinstance(proxy, ConfinedService)
    conf_b = [bytes(h.packet(conf_s, b"x%05d" % i * 20)) for i in range(batch)]
    trus_b = [bytes(h.packet(trus_s, b"x%05d" % i * 20)) for i in range(batch)]
    conf: list[float] = []
    trusted: list[float] = []
    unbatched: list[float] = []
    batched_ns: list[int] = []  # one message at a time: the round trip
    pickup_ns: list[int] = []
    loaded_ns: list[int] = []  # the per-packet loop's messages (queued behind others)
    rounds = max(1, count // batch)
    process = pipe.process
    proxy.latency_ns.clear()
    proxy.pickup_ns.clear()
    tenant_cpu: list[float] = []  # CPU time (not wall): what each side spent per packet
    worker_cpu: list[float] = []
    trusted_cpu: list[float] = []
    tenant_spin: list[float] = []  # of tenant_cpu: the busy-poll the site pays for
    for _ in range(7):
        pid = proxy.proc.pid if proxy.proc is not None else None
        c0 = process_cpu_ns(pid) if pid else 0
        s0 = proxy.site_spin_ns
        w0 = time.thread_time_ns()
        t = time.perf_counter_ns()
        for _ in range(rounds):
            now = time.time()
            for d in prefetch.dispatch(conf_b, now):
                process(d, now)
            for held, at in prefetch.completed(spin=False):  # as a worker with more to read
                for d in held:
                    process(d, at)
        for held, at in prefetch.completed(wait=True):  # the last batch's stragglers
            for d in held:
                process(d, at)
        conf.append((time.perf_counter_ns() - t) / (rounds * batch) / 1000)
        loaded_ns.extend(proxy.latency_ns)  # round trips with messages queued ahead
        proxy.latency_ns.clear()
        worker_cpu.append((time.thread_time_ns() - w0) / (rounds * batch) / 1000)
        if pid:
            tenant_cpu.append((process_cpu_ns(pid) - c0) / (rounds * batch) / 1000)
            tenant_spin.append((proxy.site_spin_ns - s0) / (rounds * batch) / 1000)
        w0 = time.thread_time_ns()
        t = time.perf_counter_ns()
        for _ in range(rounds):
            now = time.time()
            for d in trus_b:
                process(d, now)
        trusted.append((time.perf_counter_ns() - t) / (rounds * batch) / 1000)
        trusted_cpu.append((time.thread_time_ns() - w0) / (rounds * batch) / 1000)
        t = time.perf_counter_ns()
        for d in conf_b[: max(1, batch // 4)]:
            process(d, time.time())  # no prefetch: one round trip per packet
        unbatched.append((time.perf_counter_ns() - t) / max(1, batch // 4) / 1000)
        proxy.latency_ns.clear()
        proxy.pickup_ns.clear()
        # one batch message at a time, nothing else in flight: the mechanism's round trip
        one = conf_b[:CHUNK]
        for _ in range(LATENCY_MESSAGES):
            now = time.time()
            for d in prefetch.dispatch(one, now):
                process(d, now)
            for held, at in prefetch.completed(wait=True):
                for d in held:
                    process(d, at)
        batched_ns.extend(proxy.latency_ns)
        pickup_ns.extend(proxy.pickup_ns)
        proxy.latency_ns.clear()
    return {
        "isolation_overhead_us_per_packet": statistics.median(conf) - statistics.median(trusted),
        # per round (confined minus in-process in the same round) and per message, for pooling
        "_round_overheads": [c - t for c, t in zip(conf, trusted, strict=True)],
        "_latencies_ns": batched_ns,
        "isolation_batch_latency_us_median": statistics.median(batched_ns) / 1000,
        "isolation_batch_pickup_us_median": statistics.median(pickup_ns) / 1000,
        "isolation_batch_latency_loaded_us_median": statistics.median(loaded_ns) / 1000,
        "isolation_batch_size": CHUNK,
        "isolation_received_batch": batch,
        "confined_noop_us_per_packet": statistics.median(conf),
        "inprocess_noop_us_per_packet": statistics.median(trusted),
        "confined_unbatched_us_per_packet": statistics.median(unbatched),
        "confined_worker_cpu_us_per_packet": statistics.median(worker_cpu),
        "confined_tenant_cpu_us_per_packet": _median_or_none(tenant_cpu),
        "confined_tenant_spin_us_per_packet": _median_or_none(tenant_spin),
        "inprocess_worker_cpu_us_per_packet": statistics.median(trusted_cpu),
        "isolation_batch_hits": proxy.batch_hits,
    }


def run(
    seconds: float = 2.0,
    count: int = 2000,
    attacks: tuple[Attack, ...] = ATTACKS,
    tenant_cpus: list[int] | None = None,
    stalls: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Every attack, the baseline and the overhead; returns the figures (with ``stalls``,
    what :func:`supervisor_stalls` measured)."""
    tmp = Path(tempfile.mkdtemp(prefix="pcsite-iso-"))
    h = Harness(tmp, tenant_cpus=tenant_cpus or [])
    crashes = 0
    try:
        h.upload("victim", "victim", "1", VICTIM)
        h.circuit("victim", "victim")
        if not h.ready("victim", "victim"):
            raise RuntimeError("the victim's confined service did not start")
        h.upload("attacker", "benign", "1", NOOP)
        h.circuit("attacker", "benign")
        h.ready("attacker", "benign")
        # the isolation mechanism's cost on a site in normal operation (before any attack)
        ovh = overhead(h, count)
        base = interleave(h, "attacker", "benign", seconds)
        records = []
        for n, attack in enumerate(attacks):
            try:
                records.append(run_attack(h, attack, seconds, str(n)))
            except Exception as exc:
                crashes += 1
                records.append({"attack": attack.name, "outcome": "worker_crash",
                                "error": repr(exc), "escapes": 1})  # fmt: skip
        # and again after them (their processes killed, restarted, disabled): the same cost
        after = overhead(h, count, tag="2")
        # the figures: every round of both (a machine slower for a while slows both paths of
        # a round alike; the per-round difference cancels it), and every batch message
        rounds = ovh.pop("_round_overheads") + after.pop("_round_overheads")
        lat = ovh.pop("_latencies_ns") + after.pop("_latencies_ns")
        ovh.update({
            "isolation_overhead_before_attacks_us_per_packet":
                ovh["isolation_overhead_us_per_packet"],
            "isolation_batch_latency_before_attacks_us_median":
                ovh["isolation_batch_latency_us_median"],
            "isolation_overhead_after_attacks_us_per_packet":
                after["isolation_overhead_us_per_packet"],
            "isolation_batch_latency_after_attacks_us_median":
                after["isolation_batch_latency_us_median"],
            # the machine's speed at each measurement (this one changes speed for minutes)
            "inprocess_noop_after_attacks_us_per_packet": after["inprocess_noop_us_per_packet"],
            "isolation_overhead_us_per_packet": statistics.median(rounds),
            "isolation_batch_latency_us_median": statistics.median(lat) / 1000,
        })  # fmt: skip
        ratios = [r["victim_rate_ratio"] for r in records if r.get("victim_rate_ratio")]
        figures: dict[str, Any] = {
            "isolation_escapes": sum(r.get("escapes", 0) for r in records),
            **(stalls or {}),
            "isolation_event_loop_lateness_ms": max(
                r.get("event_loop_lateness_ms", 0.0) for r in records
            ),
            "isolation_worker_crashes": crashes,
            "isolation_victim_rate_ratio": min(ratios) if ratios else None,
            "victim_baseline_rate": statistics.median(
                [base["victim_rate"]]
                + [r["victim_rate_benign"] for r in records if r.get("victim_rate_benign")]
            ),
            **ovh,
            **metering(h),
            "attacks": records,
        }
        return figures
    finally:
        h.close()
        for p in sorted(tmp.rglob("*"), reverse=True):
            try:
                p.unlink() if p.is_file() or p.is_symlink() else p.rmdir()
            except OSError:
                pass
        os.rmdir(tmp) if tmp.exists() else None


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.isolation", description=__doc__)
    ap.add_argument("--json", metavar="PATH")
    ap.add_argument("--seconds", type=float, default=5.0, help="traffic per attack")
    ap.add_argument("--count", type=int, default=5000, help="packets per overhead round")
    ap.add_argument("--quick", action="store_true", help="tiny durations (a smoke run)")
    ap.add_argument("--no-pin", action="store_true", help="do not pin (default: the worker and "
                    "traffic on the first vCPU, the confined processes on the others; the "
                    "supervisor on the first, its probe on the second)")  # fmt: skip
    ap.add_argument("--stall-rounds", type=int, default=5,
                    help="uploads of every attack to the supervisor process")  # fmt: skip
    # the two processes of the stall measurement (run by the benchmark itself)
    ap.add_argument("--serve-control", nargs=2, metavar=("CONFIG", "LATENESS"),
                    help=argparse.SUPPRESS)  # fmt: skip
    ap.add_argument("--probe", nargs=3, metavar=("URL", "TOKEN", "PSP"), help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a.serve_control:
        return control_main(*a.serve_control)
    if a.probe:
        return probe_main(*a.probe)
    if a.quick:
        a.seconds, a.count, a.stall_rounds = 0.3, 256, 1
    cpus = sorted(os.sched_getaffinity(0))
    tenant: list[int] = []
    pin = not a.no_pin and len(cpus) > 1
    try:
        if pin:  # the uploads come from the probe's vCPU, not the supervisor's
            os.sched_setaffinity(0, {cpus[1]})
        stalls = supervisor_stalls(ATTACKS, cpus if pin else [], a.stall_rounds)
        if pin:
            os.sched_setaffinity(0, {cpus[0]})
            tenant = cpus[1:]
        figures = run(a.seconds, a.count, tenant_cpus=tenant, stalls=stalls)
    finally:
        os.sched_setaffinity(0, cpus)  # a caller in the same process keeps its vCPUs
    figures["pinned"] = ({"worker": cpus[0], "tenants": tenant, "supervisor": cpus[0],
                          "probe": cpus[1]} if tenant else None)  # fmt: skip
    for r in figures["attacks"]:
        print(f"{r['attack']:32s} {r.get('outcome', '?'):16s} {r.get('reason', '')[:70]}")
    emit(figures, a.json)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""A legitimate control API client's latency while thousands of idle connections flood the API.

The issue's attack: 24,000 idle TCP connections to the control API exhausted the daemon's
descriptors and the API was unreachable for ~14 s. Here a control API server (the real
``ControlApp`` over the real ``SiteBackend`` with a SQLite FIS, served by
``pcsock.httpserver`` with the **default** ``[limits]``) runs in its own process on
127.0.0.1, pinned to vCPU 0. Flooder processes (pinned to vCPU 1) open ``--connections`` idle
connections from ``--sources`` loopback addresses (127.1.x.y) as fast as they can and hold
them; whenever the server closes one (evicted at the site-wide cap, or refused at the
per-address cap) they open another, at most ``--reopen-rate`` per second in all. A legitimate
client (127.0.0.2, also on vCPU 1) makes ``GET /v1/whoami`` calls, each on a new connection as
``ControlClient`` does, at ``--rate`` per second, and times each from connect to answer
(a failed or >5 s call counts as 5,000 ms).

Rounds interleave a baseline window (no flood) and a flood window on the same server. The
flood window opens ``--settle`` seconds after every initial connect was answered (connected,
or closed by the server; at most 60 s after the burst), so it sees the held flood and its
reopening, not the opening burst: a burst far larger than the kernel's accept queue
(``net.core.somaxconn``) overflows it, and the kernel retries the dropped SYNs for seconds,
delaying a legitimate connect by its 1 s retransmission whatever the server does.
Figures (medians over rounds):

- ``api_flood_p99_ms``: the legitimate client's p99 during the flood (goal <= 100 ms);
- ``api_flood_baseline_p99_ms``: its p99 without the flood, same run;
  ``api_flood_p99_ratio_vs_baseline``; ``api_flood_p50_ms``, ``api_flood_baseline_p50_ms``;
- ``api_flood_errors``: legitimate calls that failed during the flood (all rounds);
- ``api_flood_connections``: idle connections the flooders held open at the end of the
  window (their view: connected, or queued in the kernel; the server's cap plus its accept
  queue bound it, the rest were closed and wait to be reopened at ``--reopen-rate``),
  ``api_flood_connect_attempts``, ``api_flood_target_connections``;
- the server's side: ``api_flood_server_max_open`` (connections held, at most the cap),
  ``api_flood_server_cap``, ``api_flood_server_evicted``, ``api_flood_server_refused``,
  ``api_flood_server_accept_errors``.

    .venv/bin/python -m benchmarks.api_flood --json /tmp/api_flood.json
    .venv/bin/python -m benchmarks.api_flood --quick            # a smoke run (seconds)

Run as root for 24,000 connections if the descriptor hard limit is lower (the flooders raise
it; or use ``--flooders`` so that each holds fewer).
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import resource
import select
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks._report import emit

TOKEN_ADMIN = "bench-admin-token-0123456789"
TOKEN_PSP = "bench-psp-token-0123456789ab"
LEGIT_SRC = "127.0.0.2"
FAILED_MS = 5000.0


def _pin(cpu: int) -> None:
    try:
        n = os.cpu_count() or 1
        if n >= 2:
            os.sched_setaffinity(0, {cpu % n})
    except (AttributeError, OSError):
        pass


def _raise_nofile(want: int) -> int:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    for limit in (max(want, hard), hard):
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (limit, limit))
            return limit
        except (ValueError, OSError):
            continue
    return soft


# --- the server process ---------------------------------------------------------------------


def serve(state: Path, stats_path: Path) -> int:
    """Serve the control API on 127.0.0.1 (port written to ``state/port``) until SIGTERM."""
    import trio

    from pcsite_lite.control.app import ControlApp
    from pcsite_lite.control.auth import Credentials
    from pcsite_lite.control.site_backend import SiteBackend
    from pcsite_lite.daemon.config import parse
    from pcsock.httpserver import ServerStats
    from pcsock.httpserver import serve as serve_api

    _pin(0)
    cfg = parse({
        "site": {"name": "flood", "public_ip": "198.18.9.1", "state_dir": str(state),
                 "fis": f"sqlite://{state / 'fis.db'}"},
        "control": {"admin_token": TOKEN_ADMIN, "psps": {"acme": {"token": TOKEN_PSP}}},
    })  # fmt: skip
    creds = Credentials(admin_token=TOKEN_ADMIN, psp_tokens={"acme": TOKEN_PSP})
    app = ControlApp(SiteBackend(cfg), creds, limits=cfg.limits)
    stats: list[ServerStats] = []
    peak = [0]

    async def main() -> None:
        async with trio.open_nursery() as n:
            port = await n.start(lambda task_status: serve_api(
                app, "127.0.0.1", 0, stats=stats, task_status=task_status))  # fmt: skip
            (state / "port").write_text(str(port))
            with trio.open_signal_receiver(signal.SIGTERM) as sigs:
                n.start_soon(_report, n)
                async for _ in sigs:
                    break
            n.cancel_scope.cancel()

    def _write(doc: dict[str, Any]) -> None:
        tmp = stats_path.with_suffix(".tmp")
        tmp.write_text(json.dumps(doc))
        tmp.replace(stats_path)

    async def _report(n: Any) -> None:
        last = 0.0
        while True:
            s = stats[0]
            peak[0] = max(peak[0], s.open)
            if trio.current_time() - last > 0.25:  # file writes off the event loop
                last = trio.current_time()
                await trio.to_thread.run_sync(_write, {**s.__dict__, "max_open": peak[0]})
            await trio.sleep(0.01)

    trio.run(main)
    return 0


# --- the flooder process --------------------------------------------------------------------


def _source(i: int, sources: int) -> str:
    k = i % sources
    return f"127.1.{k // 250}.{k % 250 + 1}"


def flood(port: int, n: int, sources: int, offset: int, reopen_rate: float,
          status_path: Path) -> int:  # fmt: skip
    """Open ``n`` idle connections, hold them, reopen closed ones, until SIGTERM. Ready once
    every initial connect has been answered (connected, or closed by the server): SYNs the
    full accept queue dropped are retried by the kernel for seconds after the burst."""
    _pin(1)
    _raise_nofile(n + 1024)
    stop = [False]
    signal.signal(signal.SIGTERM, lambda *_: stop.__setitem__(0, True))
    ep = select.epoll()
    socks: dict[int, tuple[socket.socket, int]] = {}
    connecting: set[int] = set()  # initial connects not answered yet
    attempts = failures = closed = 0
    watch = select.EPOLLIN | select.EPOLLRDHUP | select.EPOLLERR

    def open_one(i: int, initial: bool) -> None:
        nonlocal attempts, failures
        attempts += 1
        try:
            s = socket.socket()
        except OSError:
            failures += 1
            return
        try:
            s.setblocking(False)
            s.bind((_source(offset + i, sources), 0))
            s.connect_ex(("127.0.0.1", port))
            ep.register(s.fileno(), watch | (select.EPOLLOUT if initial else 0))
        except OSError:
            failures += 1
            s.close()
            return
        socks[s.fileno()] = (s, i)
        if initial:
            connecting.add(s.fileno())

    def write_status(ready: bool) -> None:
        doc = {"open": len(socks), "attempts": attempts, "failures": failures,
               "closed_by_server": closed, "pending": len(connecting), "ready": ready}  # fmt: skip
        tmp = status_path.with_suffix(".tmp")
        tmp.write_text(json.dumps(doc))
        tmp.replace(status_path)

    for i in range(n):
        if stop[0]:
            break
        open_one(i, True)
    started = time.monotonic()
    to_reopen: list[int] = []
    tokens, last, last_status = 0.0, time.monotonic(), 0.0
    while not stop[0]:
        for fd, ev in ep.poll(0.02):
            if ev == select.EPOLLOUT:  # connected, nothing from the server: hold it
                connecting.discard(fd)
                ep.modify(fd, watch)
                continue
            connecting.discard(fd)
            s, i = socks.pop(fd)
            ep.unregister(fd)
            s.close()
            closed += 1
            to_reopen.append(i)
        now = time.monotonic()
        tokens = min(reopen_rate, tokens + (now - last) * reopen_rate)
        last = now
        while to_reopen and tokens >= 1:
            tokens -= 1
            open_one(to_reopen.pop(), False)
        if now - last_status > 0.2:
            last_status = now
            write_status(not connecting or now - started > 60)
    for s, _ in socks.values():
        s.close()
    return 0


# --- the legitimate client ------------------------------------------------------------------


def _one_call(port: int) -> float:
    t0 = time.perf_counter()
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=FAILED_MS / 1000,
                                      source_address=(LEGIT_SRC, 0))  # fmt: skip
    try:
        conn.request("GET", "/v1/whoami", headers={"authorization": f"Bearer {TOKEN_PSP}"})
        resp = conn.getresponse()
        resp.read()
        ok = resp.status == 200
    except (OSError, http.client.HTTPException):
        ok = False
    finally:
        conn.close()
    ms = (time.perf_counter() - t0) * 1000
    return ms if ok else -1.0


def measure(port: int, seconds: float, rate: float) -> tuple[list[float], int]:
    """Latencies (ms) of paced calls for ``seconds``; failed calls count as FAILED_MS."""
    out: list[float] = []
    errors = 0
    start = time.perf_counter()
    k = 0
    while True:
        due = start + k / rate
        now = time.perf_counter()
        if due - start >= seconds:
            break
        if due > now:
            time.sleep(due - now)
        ms = _one_call(port)
        if ms < 0:
            errors += 1
            ms = FAILED_MS
        out.append(ms)
        k += 1
    return out, errors


def _pct(values: list[float], q: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, int(q * len(s)))]


def _wait_for(pred: Any, timeout: float) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if pred():
            return True
        time.sleep(0.05)
    return False


def _read(path: Path) -> dict[str, Any]:
    try:
        return dict(json.loads(path.read_text()))
    except (OSError, ValueError):
        return {}


def _stop(proc: subprocess.Popen[bytes], timeout: float) -> None:
    """SIGTERM (again, harmless if sent already), then SIGKILL after ``timeout``."""
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def run(args: argparse.Namespace) -> dict[str, Any]:
    _pin(1)
    me = [sys.executable, "-m", "benchmarks.api_flood"]
    root = Path(__file__).resolve().parent.parent
    with tempfile.TemporaryDirectory(prefix="api_flood-") as tmp:
        state = Path(tmp)
        stats_path = state / "server.json"
        server = subprocess.Popen([*me, "--serve", str(state), "--stats", str(stats_path)],
                                  cwd=root)  # fmt: skip
        try:
            if not _wait_for(lambda: (state / "port").exists(), 30):
                raise RuntimeError("the control API server did not start")
            port = int((state / "port").read_text())
            rounds: list[dict[str, Any]] = []
            for r in range(args.rounds):
                base, base_err = measure(port, args.seconds, args.rate)
                flooders, paths = [], []
                per = -(-args.connections // args.flooders)
                for f in range(args.flooders):
                    p = state / f"flood{r}-{f}.json"
                    paths.append(p)
                    flooders.append(subprocess.Popen(
                        [*me, "--flood", str(port), "--connections", str(per), "--sources",
                         str(args.sources), "--offset", str(f * per), "--reopen-rate",
                         str(args.reopen_rate / args.flooders), "--status", str(p)],
                        cwd=root,
                    ))  # fmt: skip
                try:
                    ready = _wait_for(lambda ps=paths: all(_read(p).get("ready") for p in ps), 120)
                    if not ready:
                        raise RuntimeError("the flooders did not finish opening connections")
                    time.sleep(args.settle)  # past the opening burst: the connections are held
                    lat, err = measure(port, args.seconds, args.rate)
                    held = sum(_read(p).get("open", 0) for p in paths)
                    attempts = sum(_read(p).get("attempts", 0) for p in paths)
                finally:
                    for fp in flooders:
                        fp.send_signal(signal.SIGTERM)
                    for fp in flooders:
                        _stop(fp, 30)
                _wait_for(lambda: _read(stats_path).get("open", 1) == 0, 30)
                rounds.append({
                    "baseline_p50_ms": _pct(base, 0.5), "baseline_p99_ms": _pct(base, 0.99),
                    "baseline_errors": base_err, "p50_ms": _pct(lat, 0.5),
                    "p99_ms": _pct(lat, 0.99), "errors": err, "calls": len(lat),
                    "held": held, "attempts": attempts,
                })  # fmt: skip
                print(f"round {r}: {rounds[-1]}", file=sys.stderr)
            srv = _read(stats_path)
        finally:
            _stop(server, 10)

    def med(key: str) -> float:
        return float(statistics.median(r[key] for r in rounds))

    p99, b99 = med("p99_ms"), med("baseline_p99_ms")
    return {
        "api_flood_p99_ms": p99,
        "api_flood_baseline_p99_ms": b99,
        "api_flood_p99_ratio_vs_baseline": p99 / b99 if b99 else float("nan"),
        "api_flood_p50_ms": med("p50_ms"),
        "api_flood_baseline_p50_ms": med("baseline_p50_ms"),
        "api_flood_goal_ms": 100.0,
        "api_flood_errors": int(sum(r["errors"] for r in rounds)),
        "api_flood_baseline_errors": int(sum(r["baseline_errors"] for r in rounds)),
        "api_flood_calls": int(sum(r["calls"] for r in rounds)),
        "api_flood_connections": int(statistics.median(r["held"] for r in rounds)),
        "api_flood_connect_attempts": int(sum(r["attempts"] for r in rounds)),
        "api_flood_target_connections": args.connections,
        "api_flood_server_max_open": int(srv.get("max_open", 0)),
        "api_flood_server_cap": int(srv.get("cap", 0)),
        "api_flood_server_evicted": int(srv.get("evicted", 0)),
        "api_flood_server_refused": int(srv.get("refused", 0)),
        "api_flood_server_accept_errors": int(srv.get("accept_errors", 0)),
        "rounds": rounds,
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.api_flood", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    ap.add_argument("--json", help="write the figures here")
    ap.add_argument("--quick", action="store_true", help="tiny parameters (a smoke run)")
    ap.add_argument("--connections", type=int, default=24_000, help="idle connections")
    ap.add_argument("--sources", type=int, default=200, help="flood source addresses")
    ap.add_argument("--flooders", type=int, default=2, help="flooder processes")
    ap.add_argument("--reopen-rate", type=float, default=2000.0,
                    help="connections per second the flood reopens after the server closed "
                         "them (all flooders together)")  # fmt: skip
    ap.add_argument("--rate", type=float, default=50.0, help="legitimate calls per second")
    ap.add_argument("--seconds", type=float, default=10.0, help="measurement window")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--settle", type=float, default=2.0,
                    help="seconds from the flood's last connect to the measurement")  # fmt: skip
    # internal roles
    ap.add_argument("--serve", help=argparse.SUPPRESS)
    ap.add_argument("--stats", help=argparse.SUPPRESS)
    ap.add_argument("--flood", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--offset", type=int, default=0, help=argparse.SUPPRESS)
    ap.add_argument("--status", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.serve:
        return serve(Path(args.serve), Path(args.stats))
    if args.flood:
        return flood(args.flood, args.connections, args.sources, args.offset,
                     args.reopen_rate, Path(args.status))  # fmt: skip
    if args.quick:
        args.connections, args.sources, args.flooders = 400, 4, 1
        args.seconds, args.rounds, args.rate, args.settle = 1.0, 1, 40.0, 0.2
    figures = run(args)
    emit(figures, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())

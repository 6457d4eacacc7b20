"""Replicated FIS failover: time until writes succeed again after the primary dies (issue 15).

Each round starts a :class:`~pcsite_lite.fis.local_group.LocalRedisGroup` (a primary, two
replicas, three Sentinels, all on 127.0.0.1), runs a writer that puts one key after another with
``wait=1`` (a write is acknowledged once a replica has it), SIGKILLs the primary, and measures
the time from the kill to the first write acknowledged by the new primary. After the round it
reads every acknowledged key back from the new primary: any missing is an acknowledged write
lost. The baseline, measured in the same invocation with rounds interleaved, is the write
latency without ``WAIT`` against the same group (what replica acknowledgement costs).

Figures:

* ``cluster_fis_failover_s``: median over rounds, kill -> first acknowledged write;
* ``cluster_fis_failover_over_detection``: that divided by Sentinel's ``down-after`` time (the
  part of it spent noticing the primary is gone);
* ``cluster_fis_acked_writes_lost``: acknowledged writes missing afterwards, summed over rounds
  (goal 0); ``cluster_fis_acked_writes``: how many were acknowledged in all;
* ``cluster_fis_write_wait_us`` / ``cluster_fis_write_nowait_us`` / ``cluster_fis_wait_ratio``:
  median write latency with and without replica acknowledgement.

The writer (this process) is pinned to one vCPU, the Redis servers to another (when the
machine has two); the pinning is restored at the end. Run quietly:

    .venv/bin/python -m benchmarks.fis_failover --json /tmp/fis_failover.json
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import threading
import time
from typing import Any

from benchmarks._report import emit
from pcsite_lite.fis import FISUnavailableError, namespace, open_engine
from pcsite_lite.fis.local_group import LocalRedisGroup

NS = namespace("bench", "failover")


def _latency_us(url: str, n: int, tag: str) -> float:
    fis = open_engine(url)
    samples = []
    for i in range(n):
        t = time.perf_counter()
        fis.put(NS, f"{tag}{i}", i, writer="bench")
        samples.append((time.perf_counter() - t) * 1e6)
    fis.close()
    return statistics.median(samples)


def one_round(workdir: str, down_after_ms: int, latency_n: int, cpus: set[int] | None) -> dict:
    with LocalRedisGroup(
        workdir, replicas=2, sentinels=3, down_after_ms=down_after_ms, cpus=cpus
    ) as group:
        wait_url, plain_url = group.url(wait=1, wait_ms=500), group.url()
        # baseline and WAIT latency, interleaved halves
        half = max(1, latency_n // 2)
        nowait = [_latency_us(plain_url, half, "n0-"), _latency_us(plain_url, half, "n1-")]
        wait = [_latency_us(wait_url, half, "w0-"), _latency_us(wait_url, half, "w1-")]
        fis = open_engine(wait_url)
        acked: list[int] = []
        first_ok_after: list[float] = []
        failed = 0
        kill_at = [0.0]
        stop = threading.Event()

        def writer() -> None:
            nonlocal failed
            i = 0
            while not stop.is_set():
                started = time.monotonic()
                try:
                    fis.put(NS, f"k{i}", i, writer="bench")
                    acked.append(i)
                    # the first write that started once the primary was dead
                    if kill_at[0] and started >= kill_at[0] and not first_ok_after:
                        first_ok_after.append(time.monotonic() - kill_at[0])
                except FISUnavailableError:
                    failed += 1
                    time.sleep(0.001)
                i += 1

        th = threading.Thread(target=writer, daemon=True)
        th.start()
        try:
            deadline = time.monotonic() + 30
            while len(acked) < 50 and time.monotonic() < deadline:
                time.sleep(0.005)
            old = group.kill_primary()  # returns once the process is gone
            kill_at[0] = time.monotonic()
            while not first_ok_after and time.monotonic() < kill_at[0] + 60:
                time.sleep(0.005)
        finally:
            stop.set()
            th.join(10)
        if not first_ok_after:
            raise RuntimeError("writes did not come back within 60 s of the kill")
        group.wait_failover(old)  # every Sentinel names the new primary
        check = open_engine(plain_url)
        values = {}
        for i in acked:
            values[i] = check.get(NS, f"k{i}")
        lost = sum(1 for i in acked if values[i] != i)
        return {
            "failover_s": first_ok_after[0],
            "lost": lost,
            "acked": len(acked),
            "failed": failed,
            "wait_us": statistics.median(wait),
            "nowait_us": statistics.median(nowait),
        }


def run(rounds: int, down_after_ms: int, latency_n: int) -> dict[str, Any]:
    cpus = sorted(os.sched_getaffinity(0))
    saved = set(cpus)
    server_cpus = {cpus[-1]} if len(cpus) > 1 else None
    if len(cpus) > 1:
        os.sched_setaffinity(0, {cpus[0]})
    results = []
    try:
        for _ in range(rounds):
            with tempfile.TemporaryDirectory(prefix="pcf-failover-") as d:
                results.append(one_round(d, down_after_ms, latency_n, server_cpus))
    finally:
        os.sched_setaffinity(0, saved)
    failover = statistics.median(r["failover_s"] for r in results)
    wait_us = statistics.median(r["wait_us"] for r in results)
    nowait_us = statistics.median(r["nowait_us"] for r in results)
    return {
        "cluster_fis_failover_s": failover,
        "cluster_fis_failover_max_s": max(r["failover_s"] for r in results),
        "cluster_fis_failover_over_detection": failover / (down_after_ms / 1000),
        "cluster_fis_acked_writes_lost": sum(r["lost"] for r in results),
        "cluster_fis_acked_writes": sum(r["acked"] for r in results),
        "cluster_fis_failed_writes": sum(r["failed"] for r in results),
        "cluster_fis_write_wait_us": wait_us,
        "cluster_fis_write_nowait_us": nowait_us,
        "cluster_fis_wait_ratio": wait_us / nowait_us,
        "rounds": rounds,
        "down_after_ms": down_after_ms,
        "replicas": 2,
        "sentinels": 3,
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="benchmarks.fis_failover", description=__doc__.split("\n")[0])
    ap.add_argument("--json", metavar="PATH", help="write the figures here")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--down-after-ms", type=int, default=1000, help="Sentinel down-after time")
    ap.add_argument("--latency-writes", type=int, default=2000, help="writes per latency sample")
    ap.add_argument("--quick", action="store_true", help="a smoke run: 1 round, few writes")
    args = ap.parse_args(argv)
    if args.quick:
        args.rounds, args.down_after_ms, args.latency_writes = 1, 300, 20
    figures = run(args.rounds, args.down_after_ms, args.latency_writes)
    figures["quick"] = bool(args.quick)
    emit(figures, args.json)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

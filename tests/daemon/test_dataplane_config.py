"""The ``[dataplane]`` performance keys (pinning, busy poll, batch) and the worker pinning,
and the bucket map never losing a worker when two come up at once."""

from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import Any

import pytest

from pcsite_lite.daemon.config import ConfigError, SiteConfig, parse
from pcsite_lite.daemon.supervisor import Supervisor, WorkerSlot

from .test_worker import Loop


def _cfg(tmp: Path, **dataplane: Any) -> SiteConfig:
    return parse({"site": {"name": "pcd2-t", "public_ip": "198.18.9.1", "workers": 2,
                           "fis": f"sqlite://{tmp / 'fis.db'}", "state_dir": str(tmp)},
                  "dataplane": dataplane,
                  "control": {"admin_token": "pcd2-admin-token-0123456789abcdef"}})  # fmt: skip


def test_defaults_and_cpu_assignment(tmp_path: Path) -> None:
    dp = _cfg(tmp_path).dataplane
    assert (dp.cpus, dp.busy_poll_us, dp.batch, dp.queue_len) == ((), 50, 256, 1000)
    assert dp.cpu_of(0) is None
    cpu = min(os.sched_getaffinity(0))
    dp = _cfg(tmp_path, cpus=[cpu], busy_poll_us=0, batch=32).dataplane
    assert (dp.cpu_of(0), dp.cpu_of(1), dp.busy_poll_us, dp.batch) == (cpu, cpu, 0, 32)


@pytest.mark.parametrize(
    ("key", "value", "words"),
    [
        ("cpus", [4096], "not online"),
        ("cpus", [-1], "vCPU numbers"),
        ("cpus", ["0"], "vCPU numbers"),
        ("cpus", 1, "must be list"),
        ("busy_poll_us", -1, "0..100000"),
        ("busy_poll_us", 1.5, "must be int"),
        ("batch", 0, "1..1024"),
        ("batch", 5000, "1..1024"),
        ("queue_len", 8, "16..65536"),
    ],
)
def test_bad_dataplane_keys_are_named_errors(
    tmp_path: Path, key: str, value: object, words: str
) -> None:
    with pytest.raises(ConfigError) as exc:
        _cfg(tmp_path, **{key: value})
    assert exc.value.key == f"dataplane.{key}" and words in exc.value.message


def test_worker_pins_itself_to_its_configured_vcpu(tmp_path: Path) -> None:
    cpu = max(os.sched_getaffinity(0))
    loop = Loop(_cfg(tmp_path, cpus=[cpu]))
    try:
        # the worker loop runs in a thread here; sched_setaffinity(0) pins that thread
        tid = loop.thread.native_id
        assert tid is not None and os.sched_getaffinity(tid) == {cpu}
    finally:
        loop.close()


class _SlowKernel:
    """Records every bucket map; the first update stalls until a second one starts (or
    0.5 s pass), the interleaving that lost a worker."""

    def __init__(self) -> None:
        self.maps: list[list[int]] = []
        self.first = threading.Event()
        self.second = threading.Event()

    def mark(self, worker: int) -> int:
        return 100 + worker

    def set_buckets(self, marks: list[int]) -> None:
        if not self.first.is_set():
            self.first.set()
            self.second.wait(0.5)
        else:
            self.second.set()
        self.maps.append(list(marks))


def test_two_workers_ready_together_both_keep_buckets(tmp_path: Path) -> None:
    sup = Supervisor(_cfg(tmp_path), log=lambda _m: None)
    try:
        kernel = _SlowKernel()
        sup.kernel = kernel  # type: ignore[assignment]
        sup.slots = [WorkerSlot(0, tun=None), WorkerSlot(1, tun=None)]
        sup.slots[0].ready = True
        t0 = threading.Thread(target=sup._rebalance)  # sees only worker 0 ready
        t0.start()
        assert kernel.first.wait(5)
        sup.slots[1].ready = True
        t1 = threading.Thread(target=sup._rebalance)  # sees both
        t1.start()
        t0.join(5)
        t1.join(5)
        assert set(kernel.maps[-1]) == {100, 101}, "the last map written lost a worker"
        assert set(sup.table.assignment) == {0, 1}
    finally:
        sup.backend.close()


def test_a_services_per_packet_budget_is_configured_and_bounded(tmp_path: Path) -> None:
    from pcsite_lite.daemon.state import WorkerSite

    def cfg(**services: Any) -> SiteConfig:
        return parse({"site": {"name": "pcd2-t", "public_ip": "198.18.9.1",
                               "fis": f"sqlite://{tmp_path / 'fis.db'}",
                               "state_dir": str(tmp_path)},
                      "services": services,
                      "control": {"admin_token": "pcd2-admin-token-0123456789abcdef"}})  # fmt: skip

    assert cfg().services.packet_budget_ms == 10.0
    worker = WorkerSite(cfg(packet_budget_ms=50))
    try:
        assert worker.site.runtime.budget.max_ns == 50_000_000  # what every service gets
    finally:
        worker.site.runtime.close()
    for bad in (0, 5000, "10"):
        with pytest.raises(ConfigError) as exc:
            cfg(packet_budget_ms=bad)
        assert exc.value.key == "services.packet_budget_ms"

"""The worker never waits on provider code: batch messages stay in flight while other
tenants' packets go on (pcsite_lite.confine.Prefetcher.dispatch/completed); deadlines count
the CPU the kernel accounted to the process; the in-flight bound drops with a reason."""

from __future__ import annotations

import os
import select
import signal
import time

import pytest

from pcsite_lite import confine
from pcsite_lite.api import PacketApi
from pcsite_lite.confine import Prefetcher
from pcsite_lite.verdicts import Drop, Forward
from tests.isolation.test_confinement import _circuit, _deploy, _pkt, _site
from tests.support import wait_until

pytestmark = pytest.mark.netns  # root: chroot, setuid and cgroups

REVERSE = "def process(pkt):\n    pkt.set_payload(pkt.read()[::-1])\n"
STALL = "def process(pkt):\n    sum(range(10**10))\n"


def _run(pipe, packets: list[bytes], now: float) -> dict[bytes, list]:
    return {d: pipe.process(d, now) for d in packets}


def test_a_stalled_tenant_does_not_hold_up_another_tenants_packets() -> None:
    site, pipe = _site(deadline_ms=300, per_packet_ms=0)
    _deploy(site, "good", "rev", REVERSE)
    stalled = _deploy(site, "evil", "stall", STALL)
    good, evil = _circuit(site, "good", "rev"), _circuit(site, "evil", "stall")
    pre = Prefetcher(site)
    batch = [bytes(_pkt(evil, b"e%d" % i)) for i in range(4)]
    batch += [bytes(_pkt(good, b"g%d" % i)) for i in range(4)]
    assert pre.dispatch(batch, 1.0) == []  # every packet went to its process
    out: dict[bytes, list] = {}

    # the good tenant's answers come back long before the stalled one's deadline
    def good_back() -> bool:
        for d, t in pre.completed():
            out.update(_run(pipe, d, t))
        return len(out) == 4

    wait_until(good_back, timeout=10)
    assert sorted(bytes(v.data[36:]) for [v] in out.values()) == [b"%dg" % i for i in range(4)]
    assert stalled.pending()  # still in flight: nobody waited for it
    # past its deadline (CPU time: it computes) the process is killed; its packets come back
    # once: the first blamed as the service's failure, the rest dropped with that reason
    for d, t in pre.completed(wait=True):
        out.update(_run(pipe, d, t))
    assert len(out) == 8 and not pre.pending()
    verdicts = [out[d][0] for d in batch[:4]]
    assert all(isinstance(v, Drop) and v.reason == "service_timeout" for v in verdicts)
    slot = site.runtime.slot("evil", "stall")
    assert slot.failures == 1 and stalled.kills == 1


def test_a_process_the_machine_does_not_run_is_not_killed_before_the_backstop() -> None:
    site, pipe = _site(deadline_ms=50, per_packet_ms=0)
    proxy = _deploy(site, "p", "rev", REVERSE)
    label = _circuit(site, "p", "rev")
    pre = Prefetcher(site)
    assert proxy.proc is not None
    os.kill(proxy.proc.pid, signal.SIGSTOP)  # descheduled: uses no CPU
    try:
        t0 = time.monotonic()
        assert pre.dispatch([bytes(_pkt(label, b"ab"))], 1.0) == []
        # well past its 50 ms deadline, it is still waited for (it used no CPU) ...
        while time.monotonic() - t0 < 0.3:
            assert list(pre.completed()) == [] and proxy.pending() and proxy.kills == 0
        # ... until the backstop: a process that does not compute is not waited for forever
        [(data, _)] = list(pre.completed(wait=True))
        assert time.monotonic() - t0 >= confine.BACKSTOP_S
        assert proxy.kills == 1
        [v] = pipe.process(data[0], 1.0)
        assert isinstance(v, Drop) and v.reason == "service_timeout"
    finally:
        if proxy.proc is not None:
            os.kill(proxy.proc.pid, signal.SIGCONT)


def test_batches_in_flight_are_bounded_and_the_rest_dropped_with_a_reason(monkeypatch) -> None:
    monkeypatch.setattr(confine, "MAX_INFLIGHT", 2)
    site, pipe = _site()
    proxy = _deploy(site, "p", "rev", REVERSE)
    label = _circuit(site, "p", "rev")
    pre = Prefetcher(site)
    os.kill(proxy.proc.pid, signal.SIGSTOP)  # keep the first messages in flight
    try:
        batch = [bytes(_pkt(label, b"p%02d" % i)) for i in range(3 * confine.CHUNK)]
        assert pre.dispatch(batch, 1.0) == []  # two messages went, the third is refused
        assert len(proxy._inflight) == 2
        # the refused ones come back at once, dropped with the reason, not blamed
        over = [pipe.process(d, t) for held, t in pre.completed() for d in held]
        assert len(over) == confine.CHUNK
        assert all(isinstance(v, Drop) and v.reason == "service_busy" for [v] in over)
        assert site.runtime.slot("p", "rev").failures == 0  # not the service's fault
    finally:
        os.kill(proxy.proc.pid, signal.SIGCONT)
    got = [pipe.process(d, t)[0] for held, t in pre.completed(wait=True) for d in held]
    assert [bytes(v.data[36:]) for v in got] == [
        (b"p%02d" % i)[::-1] for i in range(2 * confine.CHUNK)
    ]
    assert all(isinstance(v, Forward) for v in got)


def test_a_process_that_does_not_read_its_channel_never_blocks_the_worker() -> None:
    """Bytes in flight are bounded by the channel's send buffer: once it is full, further
    messages are not sent (the worker does not wait in ``send``) and their packets are
    dropped as ``service_busy``; what was sent is answered once the process runs again."""
    import threading

    site, pipe = _site()
    proxy = _deploy(site, "p", "rev", REVERSE)
    label = _circuit(site, "p", "rev")
    pre = Prefetcher(site)
    n = 40 * confine.CHUNK  # 40 messages of ~45 kB: more than the 1 MiB buffer holds
    batch = [bytes(_pkt(label, b"%05d" % i + b"x" * 1400)) for i in range(n)]
    left: list[list[bytes]] = []
    os.kill(proxy.proc.pid, signal.SIGSTOP)  # reads nothing
    try:
        t = threading.Thread(target=lambda: left.append(pre.dispatch(batch, 1.0)), daemon=True)
        t.start()
        t.join(20)
        assert not t.is_alive(), "the worker blocked sending to a process that does not read"
        assert left == [[]]
        sent = len(proxy._inflight)
        assert proxy.channel_full >= 1 and 0 < sent < 40 and proxy.busy()
        over = [pipe.process(d, t) for held, t in pre.completed() for d in held]
        assert len(over) == n - sent * confine.CHUNK
        assert all(isinstance(v, Drop) and v.reason == "service_busy" for [v] in over)
        assert proxy.status()["channel_full"] == proxy.channel_full
    finally:
        os.kill(proxy.proc.pid, signal.SIGCONT)
    got = [pipe.process(d, t)[0] for held, t in pre.completed(wait=True) for d in held]
    assert len(got) == sent * confine.CHUNK and all(isinstance(v, Forward) for v in got)
    assert not proxy.busy() and site.runtime.slot("p", "rev").failures == 0


def test_a_packet_batches_cannot_carry_waits_for_them_instead_of_being_dropped() -> None:
    site, pipe = _site()
    _deploy(site, "p", "rev", REVERSE)
    label = _circuit(site, "p", "rev")
    pre = Prefetcher(site)
    batch = [bytes(_pkt(label, b"q%02d" % i)) for i in range(2 * confine.CHUNK)]
    assert pre.dispatch(batch, 1.0) == []
    # a packet the prefetcher could not carry (its snapshot differs: here, another arrival
    # time) takes one round trip: it waits out the batches in flight, then goes
    [v] = pipe.process(bytes(_pkt(label, b"alone")), 2.0)
    assert isinstance(v, Forward) and bytes(v.data[36:]) == b"enola"
    # the batches' answers were kept, and come out in order
    got = [pipe.process(d, t)[0] for held, t in pre.completed(wait=True) for d in held]
    assert [bytes(v.data[36:]) for v in got] == [
        (b"q%02d" % i)[::-1] for i in range(2 * confine.CHUNK)
    ]


def test_fis_calls_and_later_batches_in_flight_do_not_mix_on_the_channel() -> None:
    site, pipe = _site()
    src = (
        "def process(pkt):\n"
        "    got = pkt.fetch('k')\n"
        "    pkt.set_payload(pkt.read() + (b'+' if got is None else b'!'))\n"
    )
    _deploy(site, "p", "f", src)
    label = _circuit(site, "p", "f")
    pre = Prefetcher(site)
    batches = [[bytes(_pkt(label, b"b%d-%d" % (j, i))) for i in range(confine.CHUNK)]
               for j in range(6)]  # fmt: skip
    out = []
    for j, b in enumerate(batches):  # each message's FIS calls are served while the next go
        assert pre.dispatch(b, float(j)) == []
    for held, t in pre.completed(wait=True):
        out += [pipe.process(d, t)[0] for d in held]
    want = [d for b in batches for d in b]
    assert len(out) == len(want)
    assert all(isinstance(v, Forward) for v in out)
    # every packet's own answer, in order: no reply went to the wrong call or batch
    assert [bytes(v.data[36:]) for v in out] == [d[36:] + b"+" for d in want]


def _dead_pid() -> int:
    pid = 4_000_000
    while os.path.exists(f"/proc/{pid}"):
        pid -= 1
    return pid


def test_a_killed_workers_cgroups_are_swept_and_live_ones_kept() -> None:
    from pcsite_lite.confine import CGROUP_ROOT, sweep_cgroups

    dead, live = _dead_pid(), 1  # pid 1 is always alive
    made = []
    for ctl in ("memory", "cpuacct"):
        for owner in (dead, live):
            d = os.path.join(CGROUP_ROOT, ctl, f"pcsite-{owner}", "acme.svc.1")
            if os.path.isdir(os.path.join(CGROUP_ROOT, ctl)):
                os.makedirs(d, exist_ok=True)
                made.append(d)
    assert made, "no cgroup v1 hierarchy to test with"
    try:
        removed = sweep_cgroups()
        for d in made:
            gone = f"pcsite-{dead}" in d
            assert os.path.isdir(d) is not gone, d
            assert (d in removed) is gone
        assert sweep_cgroups(live)  # a worker's own groups, by pid, once it exited
        assert not any(os.path.isdir(d) for d in made)
    finally:
        for d in made:
            for p in (d, os.path.dirname(d)):
                if os.path.isdir(p):
                    os.rmdir(p)


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="polling needs a vCPU of its own")
def test_the_process_polls_for_the_next_batch_at_the_sites_expense_not_the_providers() -> None:
    mine = os.sched_getaffinity(0)
    worker_cpu, tenant_cpu = sorted(mine)[:2]
    os.sched_setaffinity(0, {worker_cpu})  # the process polls only on a vCPU of its own
    try:
        site, pipe = _site(cpus=frozenset({tenant_cpu}), spin_us=2000)
        proxy = _deploy(site, "p", "rev", REVERSE)
        label = _circuit(site, "p", "rev")
        pre = Prefetcher(site)
        rounds = 0

        def polled() -> bool:
            """One more message (the process polls after each answer); True once the site
            was credited a poll. A process that finds its vCPU shared (a loaded machine)
            stops polling for SPIN_PAUSE messages, so this may take a few hundred rounds."""
            nonlocal rounds
            r = rounds = rounds + 1
            batch = [bytes(_pkt(label, b"r%d-%d" % (r, i))) for i in range(4)]
            assert pre(batch, 1.0 + r) == 4
            outs = [pipe.process(d, 1.0 + r) for d in batch]
            assert all(isinstance(v, Forward) for [v] in outs)
            return rounds >= 40 and proxy.site_spin_ns > 0

        # between messages the worker is elsewhere for 0.5 ms; the process polls meanwhile
        assert wait_until(polled, 60, interval=0.0005), "the process never polled"
    finally:
        os.sched_setaffinity(0, mine)
    proxy._meter()
    spin = proxy.site_spin_ns
    assert spin > 0 and proxy.status()["site_spin_ns"] == spin
    assert spin <= rounds * 2_000_000  # at most one window per message
    billed = site.runtime.counters("p", "rev").cpu_ns + proxy.take_cpu()
    # the kernel's CPU of the process is the provider's bill plus the site's polling
    assert billed + spin == proxy.cpu_ns
    if proxy.cgroup is not None:
        kernel = proxy.cgroup.read_int("cpuacct.usage")
        assert kernel is not None and abs(billed + spin - kernel) / kernel < 0.05


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="polling needs a vCPU of its own")
def test_a_poll_for_a_message_sent_before_the_last_answer_was_read_is_the_sites() -> None:
    """A worker with packets waiting sends the next message before it reads the answer to
    the last one: the process polled in between (idle from its answer, by the kernel's
    stamp on it, to that send), and the site pays for it, not the provider."""
    mine = os.sched_getaffinity(0)
    worker_cpu, tenant_cpu = sorted(mine)[:2]
    os.sched_setaffinity(0, {worker_cpu})
    try:
        site, _ = _site(cpus=frozenset({tenant_cpu}), spin_us=2000)
        proxy = _deploy(site, "p", "noop", "def process(pkt):\n    pass\n")
        assert proxy.sock is not None
        api = PacketApi()
        sent = 0

        def item() -> tuple[bytes, bytes, tuple[float, bytes]]:
            nonlocal sent
            sent += 1
            p = b"n%d" % sent
            meta = confine._META.pack(1, 1, 7, 0, 0, 0, 0, 1, 2, 17, 0, 64, 1.0, len(p))
            return meta, p, (float(sent), p)

        def credited_the_second() -> bool:
            # the site owes for the first message at most the time from the last answer
            # (the kernel's stamp on it) to that message: the rest is the second's
            last = proxy._answered_rt
            before = proxy.site_spin_ns
            assert proxy.submit([item()]) == 1
            assert wait_until(lambda: select.select([proxy.sock], [], [], 0)[0], 10, interval=0)
            # answered, not read: the process polls its channel; 1 ms later the next one goes
            end = time.monotonic() + 0.001
            while time.monotonic() < end:
                pass
            assert proxy.submit([item()]) == 1
            done: list = []
            assert wait_until(lambda: done.extend(proxy.poll(api)) or len(done) == 2, 10)
            first = done[0].sent_rt - last
            return last > 0 and proxy.site_spin_ns - before - first >= 500_000

        # (a process that finds its vCPU shared on a loaded machine skips a few polls)
        assert wait_until(credited_the_second, 30, interval=0), "no poll credited"
    finally:
        os.sched_setaffinity(0, mine)
    assert proxy.site_spin_ns <= sent * 2_000_000  # at most one window per message


def test_the_poll_window_grows_to_cover_a_gap_it_missed_and_shrinks_for_long_idles() -> None:
    w = confine._SpinWindow(200_000)
    assert (w.ns, w.floor) == (200_000, 25_000)
    w.missed(10_000_000)  # the next batch came 10 ms later: not worth polling for
    assert w.ns == 100_000
    for _ in range(5):
        w.missed(10_000_000)
    assert w.ns == 25_000  # an eighth at least
    w.missed(70_000)  # it came 70 µs after the answer: a 140 µs poll catches the next one
    assert w.ns == 140_000
    w.caught(60_000)
    assert w.ns == 140_000
    w.caught(90_000)
    assert w.ns == 180_000
    w.missed(150_000)
    assert w.ns == 200_000  # never past the site's window
    w.shared()
    assert (w.pause, w.ns) == (confine.SPIN_PAUSE, 25_000)
    assert confine._SpinWindow(0).ns == 0  # no polling at the site's choice


def test_a_claimed_poll_is_credited_at_most_the_window_and_the_idle_time() -> None:
    site, _ = _site()
    proxy = _deploy(site, "p", "rev", REVERSE)
    assert proxy._child_spin == 0  # on the worker's vCPUs: it never polls
    proxy._child_spin = 200_000  # as if it polled (200 µs window)

    def answer(spun_us: int) -> bytes:
        return b"R" + confine._RHEAD.pack(0, 0, spun_us)

    before = proxy.site_spin_ns
    proxy._credit_spin(answer(10_000_000), 50_000, 0)  # claims 10 s, idle 50 µs
    assert proxy.site_spin_ns - before == 50_000
    proxy._credit_spin(answer(10_000_000), 10**9, 0)  # idle 1 s: the window
    assert proxy.site_spin_ns - before == 250_000
    proxy._credit_spin(answer(30), 10**9, 0)  # what it says, if less
    assert proxy.site_spin_ns - before == 280_000
    proxy._credit_spin(answer(100), 0, 0)  # sent while it was busy: nothing
    proxy._child_spin = 0
    proxy._credit_spin(answer(100), 10**9, 0)  # the site did not ask it to poll: nothing
    assert proxy.site_spin_ns - before == 280_000


def test_a_round_trip_ends_when_the_answer_was_sent_not_when_a_busy_worker_read_it() -> None:
    site, pipe = _site()
    proxy = _deploy(site, "p", "rev", REVERSE)
    label = _circuit(site, "p", "rev")
    pre = Prefetcher(site)
    data = bytes(_pkt(label, b"ab"))
    assert pre.dispatch([data], 1.0) == []
    time.sleep(0.4)  # kept, the workload: a worker busy with other packets meanwhile
    done = [d for held, _ in pre.completed(wait=True) for d in held]
    assert done == [data] and proxy.pickup_ns[-1] >= 400_000_000
    # the kernel stamped the answer when the process sent it, long before
    assert 0 < proxy.latency_ns[-1] < proxy.pickup_ns[-1] - 200_000_000
    [v] = pipe.process(data, 1.0)
    assert isinstance(v, Forward) and bytes(v.data[36:]) == b"ba"

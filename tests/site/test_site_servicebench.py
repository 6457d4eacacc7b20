"""The PSP tutorial of docs/services.md: unit-testing a service in a few lines."""

from __future__ import annotations

from pcsite_lite.sandbox import BUDGET
from pcsite_lite.sim import ServiceBench

TAGGER = """
def process(pkt):
    tag = pkt.fetch("tag") or "none"
    pkt.set_payload(tag.encode() + b":" + pkt.read())
    pkt.log("tagged")
"""


def test_psp_tests_a_service_in_a_few_lines() -> None:
    bench = ServiceBench(TAGGER)
    bench.put("tag", "blue")
    assert bench.send(b"hi", form=1) == [b"blue:hi"]
    assert bench.send(b"hi", form=2) == [b"blue:hi"]
    assert bench.send(b"hi", form=3) == [b"blue:hi"]
    assert bench.counters["packets"] == 3 and bench.counters["log_lines"] == 3
    assert bench.drops == {} and bench.status == "active"


def test_bench_shows_a_broken_service() -> None:
    bench = ServiceBench("def process(pkt):\n    return 1 / 0\n")
    assert bench.send(b"x") == []
    assert bench.drops == {"service_error": 1}
    assert "ZeroDivisionError" in bench.site.runtime.events[-1].detail


def test_the_tutorial_in_docs_runs_as_written() -> None:
    import re
    from pathlib import Path

    doc = (Path(__file__).parents[2] / "docs" / "services.md").read_text()
    tutorial = doc.split("## Tutorial", 1)[1]
    block = re.search(r"```python\n(.*?)```", tutorial, re.S)
    assert block is not None
    exec(compile(block.group(1), "docs/services.md", "exec"), {})


LOOPS = """
def process(pkt):
    n = 0
    for i in range(2000):
        n += i
    pkt.set_payload(str(n).encode())
"""


def test_simulated_sites_budget_ticks_so_a_descheduled_moment_fails_no_packet() -> None:
    """Every clock read lands 100 ms later (as if the machine were too busy to run the
    simulation): a legitimate packet still passes, a spinning service is still stopped."""
    bench = ServiceBench(LOOPS)
    spin = ServiceBench("def process(pkt):\n    while True:\n        pass\n")
    for b in (bench, spin):
        assert b.site.runtime.budget is not BUDGET  # (never re-clock the process-wide one)
        ns = [0]

        def clock(ns: list[int] = ns) -> int:
            ns[0] += 100_000_000
            return ns[0]

        b.site.runtime.budget.clock = clock
        b.c.pipeline.clock = clock
    assert bench.send(b"x") == [str(sum(range(2000))).encode()]
    assert bench.drops == {}
    assert spin.send(b"x") == [] and spin.drops == {"service_timeout": 1}

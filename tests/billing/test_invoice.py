"""Invoices: exact decimal arithmetic, the documented rounding rule, the three renderings."""

from __future__ import annotations

import csv
import io
import json
import math
from decimal import Decimal
from fractions import Fraction

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pcsite_lite.billing.invoice import build_invoice, round_exact
from pcsite_lite.billing.prices import PriceSheet
from pcsite_lite.metering import Counters, UsageRecord

from .util import DAY, T0, rec

# Independent restatement of the billing units (the paper's CPU-hour; decimal GB; per million).
PER_UNIT = {
    "cpu_ns": 3_600_000_000_000,
    "bytes_local": 10**9,
    "bytes_interdomain": 10**9,
    "bytes_in": 10**9,
    "cache_bytes": 10**9,
    "fis_reads": 10**6,
    "fis_writes": 10**6,
    "log_lines": 10**6,
    "packets": 10**6,
}
PRICE_OF = {
    "cpu_ns": "cpu_per_hour",
    "bytes_local": "local_per_gb",
    "bytes_interdomain": "interdomain_per_gb",
    "bytes_in": "ingress_per_gb",
    "cache_bytes": "cache_per_gb",
    "fis_reads": "fis_reads_per_million",
    "fis_writes": "fis_writes_per_million",
    "log_lines": "log_lines_per_million",
    "packets": "packets_per_million",
}


def independent_round(x: Fraction, q: Fraction, mode: str) -> Fraction:
    """The documented rule, written differently: Python's exact Fraction rounding."""
    steps = x / q
    k = {
        "half_even": round(steps),  # Fraction.__round__ is exact banker's rounding
        "half_up": math.floor(steps + Fraction(1, 2)),
        "down": math.floor(steps),
        "up": math.ceil(steps),
    }[mode]
    return k * q


prices_st = st.decimals(min_value=0, max_value=1000, places=4, allow_nan=False)
counter_st = st.integers(min_value=0, max_value=10**15)
records_st = st.lists(
    st.tuples(
        st.sampled_from(["acme", "zeta"]),
        st.sampled_from(["mcast", "fw", "relay"]),
        st.sampled_from(["site-a", "site-b"]),
        st.integers(min_value=-5, max_value=40),
        st.fixed_dictionaries({name: counter_st for name in PER_UNIT}),
    ),
    max_size=25,
)


@settings(max_examples=150, deadline=None)
@given(
    records=records_st,
    cpu=prices_st,
    local=prices_st,
    extra=prices_st,
    fis=prices_st,
    logs=prices_st,
    quantum=st.sampled_from(["0.01", "0.001", "1", "0.05"]),
    mode=st.sampled_from(["half_up", "half_even", "down", "up"]),
)
def test_line_items_follow_the_rounding_rule_and_sum_exactly_to_the_total(
    records: list[tuple[str, str, str, int, dict[str, int]]],
    cpu: Decimal,
    local: Decimal,
    extra: Decimal,
    fis: Decimal,
    logs: Decimal,
    quantum: str,
    mode: str,
) -> None:
    sheet = PriceSheet(
        cpu_per_hour=cpu,
        local_per_gb=local,
        interdomain_per_gb=local + extra,
        ingress_per_gb=extra,
        fis_reads_per_million=fis,
        fis_writes_per_million=fis * 2,
        cache_per_gb=extra,
        log_lines_per_million=logs,
        packets_per_million=logs,
        quantum=Decimal(quantum),
        rounding=mode,
    )
    usage = [
        UsageRecord(site, psp, svc, T0 + 60 * i, T0 + 60 * i + 60, Counters(**c))
        for psp, svc, site, i, c in records
    ]
    # duplicates of (site, psp, service, i) are harmless here: invoices are pure over records
    start, end = T0, T0 + 30 * 60
    inv = build_invoice(usage, "acme", start, end, sheet)

    # brute force: sum the in-period usage of acme per (service, counter)
    sums: dict[tuple[str, str], int] = {}
    for r in usage:
        if r.psp == "acme" and start <= r.interval_start < end:
            for name in PER_UNIT:
                key = (r.service, name)
                sums[key] = sums.get(key, 0) + getattr(r.counters, name)
    q = Fraction(Decimal(quantum))
    expected: dict[tuple[str, str], Fraction] = {}
    exact_total = Fraction(0)
    for (svc, name), used in sums.items():
        price = Fraction(getattr(sheet, PRICE_OF[name]))
        if used and price:
            exact = used * price / PER_UNIT[name]
            expected[(svc, name)] = independent_round(exact, q, mode)
            exact_total += exact

    got = {(li.service, _counter(li.resource)): Fraction(li.amount) for li in inv.lines}
    assert got == expected
    assert inv.total == sum((li.amount for li in inv.lines), Decimal(0))
    assert Fraction(inv.total) == sum(expected.values(), Fraction(0))
    bound = len(inv.lines) * q * (Fraction(1, 2) if mode.startswith("half") else 1)
    assert abs(Fraction(inv.total) - exact_total) <= bound
    assert all(li.amount == li.amount.quantize(Decimal(quantum)) for li in inv.lines)


def _counter(resource: str) -> str:
    from pcsite_lite.billing.invoice import RESOURCES

    return next(r.counter for r in RESOURCES if r.name == resource)


@pytest.mark.parametrize(
    "value, quantum, mode, want",
    [
        (Fraction(5, 1000), "0.01", "half_up", "0.01"),
        (Fraction(5, 1000), "0.01", "half_even", "0.00"),
        (Fraction(15, 1000), "0.01", "half_even", "0.02"),
        (Fraction(1, 3), "0.01", "up", "0.34"),
        (Fraction(2, 3), "0.01", "down", "0.66"),
        (Fraction(-5, 1000), "0.01", "half_up", "-0.01"),
        (Fraction(7, 100), "0.05", "half_up", "0.05"),
        (Fraction(1, 10**30) + Fraction(5, 1000), "0.01", "half_even", "0.01"),
    ],
)
def test_round_exact_has_no_intermediate_rounding(
    value: Fraction, quantum: str, mode: str, want: str
) -> None:
    assert round_exact(value, Decimal(quantum), mode) == Decimal(want)


def test_a_worked_invoice_with_interdomain_traffic_priced_above_local() -> None:
    records = [
        # 2 CPU-hours, 10 GB local, 2.5 GB inter-domain, 1.5 M FIS reads, over two sites
        rec(0, cpu_ns=3_600 * 10**9, bytes_local=5 * 10**9, bytes_interdomain=10**9),
        rec(1, site="site-b", cpu_ns=3_600 * 10**9, bytes_local=5 * 10**9, fis_reads=1_500_000),
        rec(2, bytes_interdomain=15 * 10**8, log_lines=1000),
        rec(3, psp="zeta", cpu_ns=10**15),  # another PSP
        UsageRecord("site-a", "acme", "late", T0 + DAY, T0 + DAY + 60, Counters(cpu_ns=10**15)),
    ]
    inv = build_invoice(records, "acme", T0, T0 + DAY, PriceSheet.default())
    lines = {li.resource: (li.quantity, li.amount) for li in inv.lines}
    assert lines == {
        "cpu": (Decimal(2), Decimal("0.44")),
        "bandwidth_local": (Decimal(10), Decimal("0.10")),
        "bandwidth_interdomain": (Decimal("2.5"), Decimal("0.30")),
        "fis_reads": (Decimal("1.5"), Decimal("1.05")),
        "log_lines": (Decimal("0.001"), Decimal("0.00")),
    }
    assert inv.total == Decimal("1.89")
    assert inv.records == 3 and inv.sites == ("site-a", "site-b")


def test_csv_and_json_carry_the_same_exact_amounts_as_the_table() -> None:
    records = [
        rec(i, service=s, cpu_ns=10**12 * (i + 1), bytes_interdomain=7 * 10**8 * i)
        for i in range(5)
        for s in ("fw", "mcast")
    ]
    inv = build_invoice(records, "acme", T0, T0 + DAY, PriceSheet.default())
    assert len(inv.lines) == 4

    rows = list(csv.DictReader(io.StringIO(inv.to_csv())))
    assert rows[-1]["service"] == "TOTAL" and Decimal(rows[-1]["amount"]) == inv.total
    assert sum(Decimal(r["amount"]) for r in rows[:-1]) == inv.total
    assert [(r["service"], r["resource"]) for r in rows[:-1]] == [
        (li.service, li.resource) for li in inv.lines
    ]

    doc = json.loads(inv.to_json())
    assert doc["total"] == str(inv.total) and doc["psp"] == "acme"
    assert sum(Decimal(li["amount"]) for li in doc["lines"]) == Decimal(doc["total"])
    assert doc["period"] == {"from": "2025-11-25T00:00:00Z", "to": "2025-11-26T00:00:00Z"}

    table = inv.to_table()
    assert table.splitlines()[-1].split() == ["TOTAL", str(inv.total)]
    for li in inv.lines:
        assert any(ln.split()[:2] == [li.service, li.resource] for ln in table.splitlines())


def test_an_invoice_for_a_period_without_usage_is_zero() -> None:
    inv = build_invoice(
        [rec(0, cpu_ns=10**12)], "acme", T0 + DAY, T0 + 2 * DAY, PriceSheet.default()
    )
    assert inv.lines == () and inv.total == Decimal("0.00") and inv.records == 0
    assert "no usage" in inv.to_table()


def test_an_empty_period_is_refused() -> None:
    with pytest.raises(ValueError, match="end after"):
        build_invoice([], "acme", T0, T0, PriceSheet.default())

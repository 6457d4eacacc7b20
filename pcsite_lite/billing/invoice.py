"""Invoices: what one PSP owes for one period, itemised per service and resource (paper §2.5).

Rounding rule (the one documented in ``docs/billing.md``):

1. The period's usage is summed per (service, resource) over every usage record of the PSP whose
   ``interval_start`` lies in ``[period_start, period_end)`` — across all sites in the ledger.
2. Each line item's amount is computed **exactly** (rational arithmetic) as
   ``usage * unit_price / units_per_billing_unit`` (e.g. ``cpu_ns * price / 3.6e12``), and
   rounded **once** to the sheet's ``quantum`` (default 0.01) with its rounding mode (default
   half up).
3. The invoice total is the exact sum of the rounded line items, so the line items always add up
   to the total. (It differs from the exact, unrounded grand total by at most
   ``lines * quantum / 2`` under half-up/half-even rounding.)

Line items are listed only for resources with non-zero usage and a non-zero unit price. The
``quantity`` column (usage in the billing unit) is exact for bytes and operations and rounded to
12 decimal places for CPU-hours; the amount never uses the rounded quantity.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal, localcontext
from fractions import Fraction

from pcsite_lite.billing.prices import ROUNDING_MODES, PriceSheet
from pcsite_lite.metering import Counters, UsageRecord

__all__ = ["RESOURCES", "Invoice", "LineItem", "Resource", "build_invoice", "round_exact"]


@dataclass(frozen=True, slots=True)
class Resource:
    """A billable resource: which counter it reads and how it is priced."""

    name: str
    counter: str  #: field of :class:`~pcsite_lite.metering.Counters`
    base_unit: str  #: unit of the counter
    unit: str  #: billing unit the price is quoted in
    per_unit: int  #: base units per billing unit
    price_attr: str  #: attribute of :class:`~pcsite_lite.billing.prices.PriceSheet`


RESOURCES: tuple[Resource, ...] = (
    Resource("cpu", "cpu_ns", "ns", "CPU-hour", 3_600 * 10**9, "cpu_per_hour"),
    Resource("bandwidth_local", "bytes_local", "bytes", "GB", 10**9, "local_per_gb"),
    Resource(
        "bandwidth_interdomain", "bytes_interdomain", "bytes", "GB", 10**9, "interdomain_per_gb"
    ),
    Resource("bandwidth_ingress", "bytes_in", "bytes", "GB", 10**9, "ingress_per_gb"),
    Resource("fis_reads", "fis_reads", "ops", "million ops", 10**6, "fis_reads_per_million"),
    Resource("fis_writes", "fis_writes", "ops", "million ops", 10**6, "fis_writes_per_million"),
    Resource("cache_storage", "cache_bytes", "bytes", "GB", 10**9, "cache_per_gb"),
    Resource("log_lines", "log_lines", "lines", "million lines", 10**6, "log_lines_per_million"),
    Resource("packets", "packets", "packets", "million packets", 10**6, "packets_per_million"),
)


def round_exact(value: Fraction, quantum: Decimal, mode: str = "half_up") -> Decimal:
    """Round an exact rational ``value`` to a multiple of ``quantum``, with no intermediate
    rounding. ``mode`` is ``half_up`` (ties away from zero), ``half_even``, ``down`` (toward
    zero) or ``up`` (toward +infinity)."""
    if mode not in ROUNDING_MODES:
        raise ValueError(f"unknown rounding mode {mode!r}")
    q = Fraction(quantum)
    if q <= 0:
        raise ValueError("quantum must be positive")
    x = value / q
    neg = x < 0
    ax = -x if neg else x
    whole, rem = divmod(ax.numerator, ax.denominator)
    frac = Fraction(rem, ax.denominator)
    half = Fraction(1, 2)
    if mode == "half_up":
        k = whole + (frac >= half)
    elif mode == "half_even":
        k = whole + (frac > half or (frac == half and whole % 2 == 1))
    elif mode == "down":
        k = whole
    else:  # up: toward +infinity (for a negative value that is toward zero)
        k = whole + (frac > 0 and not neg)
    k = -k if neg else k
    with localcontext() as ctx:
        ctx.prec = max(28, len(str(abs(k))) + 30)
        return Decimal(k) * quantum


@dataclass(frozen=True, slots=True)
class LineItem:
    """One (service, resource) line of an invoice."""

    service: str
    resource: str
    usage: int  #: summed counter, in ``base_unit``
    base_unit: str
    quantity: Decimal  #: usage in ``unit`` (display; see module docstring)
    unit: str
    unit_price: Decimal  #: per ``unit``
    amount: Decimal  #: rounded once from the exact amount


@dataclass(frozen=True, slots=True)
class Invoice:
    """An invoice for one PSP and one period ``[period_start, period_end)`` (unix seconds)."""

    psp: str
    period_start: float
    period_end: float
    currency: str
    quantum: Decimal
    rounding: str
    lines: tuple[LineItem, ...]
    total: Decimal  #: exactly ``sum(line.amount for line in lines)``
    records: int  #: usage records the invoice is built from
    sites: tuple[str, ...]

    # -- renderings -------------------------------------------------------------------------

    def to_json(self) -> str:
        """JSON with every decimal as a string (no binary floating point)."""
        doc = {
            "psp": self.psp,
            "period": {"from": _iso(self.period_start), "to": _iso(self.period_end)},
            "currency": self.currency,
            "rounding": {"quantum": str(self.quantum), "mode": self.rounding},
            "sites": list(self.sites),
            "records": self.records,
            "lines": [
                {
                    "service": li.service,
                    "resource": li.resource,
                    "usage": li.usage,
                    "base_unit": li.base_unit,
                    "quantity": _fmt(li.quantity),
                    "unit": li.unit,
                    "unit_price": _fmt(li.unit_price),
                    "amount": _fmt(li.amount),
                }
                for li in self.lines
            ],
            "total": _fmt(self.total),
        }
        return json.dumps(doc, indent=2) + "\n"

    def to_csv(self) -> str:
        """CSV, one row per line item, then a ``TOTAL`` row."""
        buf = io.StringIO()
        w = csv.writer(buf, lineterminator="\n")
        w.writerow(
            [
                "service",
                "resource",
                "usage",
                "base_unit",
                "quantity",
                "unit",
                "unit_price",
                "amount",
                "currency",
            ]
        )
        for li in self.lines:
            w.writerow(
                [
                    li.service,
                    li.resource,
                    li.usage,
                    li.base_unit,
                    _fmt(li.quantity),
                    li.unit,
                    _fmt(li.unit_price),
                    _fmt(li.amount),
                    self.currency,
                ]
            )
        w.writerow(["TOTAL", "", "", "", "", "", "", _fmt(self.total), self.currency])
        return buf.getvalue()

    def to_table(self) -> str:
        """A human-readable table."""
        head = [
            f"Invoice for PSP {self.psp}",
            f"Period  {_iso(self.period_start)} .. {_iso(self.period_end)} (end exclusive)",
            f"Sites   {', '.join(self.sites) or '-'}   usage records: {self.records}",
            f"Amounts in {self.currency}, each line rounded {self.rounding.replace('_', ' ')}"
            f" to {self.quantum}",
            "",
        ]
        cols = ["service", "resource", "quantity", "unit", "unit price", "amount"]
        rows = [
            [
                li.service,
                li.resource,
                _fmt(li.quantity),
                li.unit,
                _fmt(li.unit_price),
                _fmt(li.amount),
            ]
            for li in self.lines
        ]
        if not rows:
            rows = [["(no usage in this period)", "", "", "", "", _fmt(self.total)]]
        total_row = ["TOTAL", "", "", "", "", _fmt(self.total)]
        widths = [max(len(r[i]) for r in [cols, *rows, total_row]) for i in range(len(cols))]
        right = {2, 4, 5}

        def line(cells: list[str]) -> str:
            return "  ".join(
                c.rjust(widths[i]) if i in right else c.ljust(widths[i])
                for i, c in enumerate(cells)
            ).rstrip()

        rule = "  ".join("-" * w for w in widths)
        body = [line(cols), rule, *(line(r) for r in rows), rule, line(total_row)]
        return "\n".join(head + body) + "\n"


def _fmt(d: Decimal) -> str:
    return format(d, "f")


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat().replace("+00:00", "Z")


def _quantity(usage: int, per_unit: int) -> Decimal:
    with localcontext() as ctx:
        ctx.prec = 60
        q = Decimal(usage) / Decimal(per_unit)
        exp = q.as_tuple().exponent
        if isinstance(exp, int) and exp < -12:
            q = q.quantize(Decimal("1e-12"))
        return q


def build_invoice(
    records: Iterable[UsageRecord],
    psp: str,
    period_start: float,
    period_end: float,
    prices: PriceSheet,
) -> Invoice:
    """Price the records of ``psp`` whose ``interval_start`` lies in ``[period_start,
    period_end)`` (others are ignored) with ``prices``. Pure: no I/O."""
    if period_end <= period_start:
        raise ValueError("the period must end after it starts")
    per_service: dict[str, Counters] = {}
    sites: set[str] = set()
    n = 0
    for rec in records:
        if rec.psp != psp or not (period_start <= rec.interval_start < period_end):
            continue
        per_service.setdefault(rec.service, Counters()).add(rec.counters)
        sites.add(rec.site)
        n += 1
    lines: list[LineItem] = []
    for service in sorted(per_service):
        counters = per_service[service]
        for res in RESOURCES:
            usage = getattr(counters, res.counter)
            price: Decimal = getattr(prices, res.price_attr)
            if usage == 0 or price == 0:
                continue
            exact = Fraction(usage) * Fraction(price) / res.per_unit
            lines.append(
                LineItem(
                    service=service,
                    resource=res.name,
                    usage=usage,
                    base_unit=res.base_unit,
                    quantity=_quantity(usage, res.per_unit),
                    unit=res.unit,
                    unit_price=price,
                    amount=round_exact(exact, prices.quantum, prices.rounding),
                )
            )
    with localcontext() as ctx:
        ctx.prec = 100  # sums of bounded amounts stay exact
        total = sum((li.amount for li in lines), Decimal(0)).quantize(prices.quantum)
    return Invoice(
        psp=psp,
        period_start=float(period_start),
        period_end=float(period_end),
        currency=prices.currency,
        quantum=prices.quantum,
        rounding=prices.rounding,
        lines=tuple(lines),
        total=total,
        records=n,
        sites=tuple(sorted(sites)),
    )

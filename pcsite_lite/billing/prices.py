"""The price sheet: what a site charges PSPs per unit of metered resource (paper §2.5).

A price sheet is a TOML file (see ``prices.example.toml`` beside this module). Every key is
optional; a missing key takes the default below. Unknown keys, negative or non-numeric prices
and malformed TOML are rejected with :class:`PriceSheetError`, whose message names the file
and the key.

Units (decimal SI, as cloud providers bill): 1 GB = 10^9 bytes; CPU time is metered in
nanoseconds and billed per CPU-hour (3.6 * 10^12 ns); FIS operations and log lines per
million; cache storage per GB written to the node-local cache.

CPU default (paper §3): Google App Engine charged $0.10 per CPU-hour of a 1.2 GHz core; scaled
linearly to the node clock of 2.66 GHz that is 0.10 * 2.66 / 1.2 = 0.22166…, which the paper
rounds to $0.22. The sheet keeps that derivation: ``[cpu]`` gives ``reference_price_per_hour``,
``reference_clock_ghz``, ``node_clock_ghz`` and ``round_to`` (the paper's rounding: to the
cent, half up), or an explicit ``price_per_hour`` that overrides the derivation.
"""

from __future__ import annotations

import math
import os
import tomllib
from dataclasses import dataclass
from decimal import ROUND_CEILING, ROUND_DOWN, ROUND_HALF_EVEN, ROUND_HALF_UP, Decimal
from decimal import InvalidOperation as _InvalidOperation
from pathlib import Path
from typing import Any

__all__ = [
    "EXAMPLE_PATH",
    "ROUNDING_MODES",
    "PriceSheet",
    "PriceSheetError",
    "scaled_cpu_price",
]

#: invoice rounding modes accepted in ``[invoice] rounding``
ROUNDING_MODES: dict[str, str] = {
    "half_up": ROUND_HALF_UP,
    "half_even": ROUND_HALF_EVEN,
    "down": ROUND_DOWN,
    "up": ROUND_CEILING,
}


class PriceSheetError(ValueError):
    """A price sheet is missing, malformed or has a bad value (the message says where)."""


def scaled_cpu_price(
    reference_price: Decimal,
    reference_clock_ghz: Decimal,
    node_clock_ghz: Decimal,
    round_to: Decimal | None = Decimal("0.01"),
) -> Decimal:
    """The paper's CPU price: ``reference_price * node_clock / reference_clock``.

    Rounded half up to ``round_to`` (the paper: 0.10 * 2.66 / 1.2 = 0.2216… → $0.22), or
    unrounded (28 significant digits) when ``round_to`` is None.
    """
    exact = reference_price * node_clock_ghz / reference_clock_ghz
    if round_to is None:
        return exact
    return exact.quantize(round_to, rounding=ROUND_HALF_UP)


# The schema: section -> key -> (kind, default). Kinds: "money"/"number" (non-negative decimal),
# "text", "rounding". The defaults double as the documentation of every key.
_SCHEMA: dict[str, dict[str, tuple[str, object]]] = {
    "": {"currency": ("text", "USD")},
    "cpu": {
        "reference_price_per_hour": ("money", "0.10"),
        "reference_clock_ghz": ("number", "1.2"),
        "node_clock_ghz": ("number", "2.66"),
        "round_to": ("number", "0.01"),
        "price_per_hour": ("money", None),
    },
    "bandwidth": {
        "local_per_gb": ("money", "0.01"),
        "interdomain_per_gb": ("money", "0.12"),
        "ingress_per_gb": ("money", "0"),
    },
    "fis": {
        "reads_per_million": ("money", "0.70"),
        "writes_per_million": ("money", "1.00"),
    },
    "storage": {"cache_per_gb": ("money", "0.01")},
    "logs": {"per_million_lines": ("money", "0.50")},
    "packets": {"per_million": ("money", "0")},
    "invoice": {"quantum": ("number", "0.01"), "rounding": ("rounding", "half_up")},
}


@dataclass(frozen=True, slots=True)
class PriceSheet:
    """Unit prices (all :class:`~decimal.Decimal`, in ``currency``)."""

    currency: str = "USD"
    cpu_per_hour: Decimal = Decimal("0.22")
    local_per_gb: Decimal = Decimal("0.01")
    interdomain_per_gb: Decimal = Decimal("0.12")
    ingress_per_gb: Decimal = Decimal("0")
    fis_reads_per_million: Decimal = Decimal("0.70")
    fis_writes_per_million: Decimal = Decimal("1.00")
    cache_per_gb: Decimal = Decimal("0.01")
    log_lines_per_million: Decimal = Decimal("0.50")
    packets_per_million: Decimal = Decimal("0")
    quantum: Decimal = Decimal("0.01")  #: invoice line items are rounded to this
    rounding: str = "half_up"  #: a key of :data:`ROUNDING_MODES`

    def __post_init__(self) -> None:
        if self.interdomain_per_gb < self.local_per_gb:
            raise PriceSheetError(
                "bandwidth.interdomain_per_gb must not be below bandwidth.local_per_gb"
                f" ({self.interdomain_per_gb} < {self.local_per_gb}): the paper prices"
                " inter-domain traffic above local traffic"
            )
        if self.quantum <= 0:
            raise PriceSheetError(f"invoice.quantum must be positive, got {self.quantum}")
        if self.rounding not in ROUNDING_MODES:
            raise PriceSheetError(
                f"invoice.rounding must be one of {sorted(ROUNDING_MODES)}, got {self.rounding!r}"
            )

    @classmethod
    def default(cls) -> PriceSheet:
        """The built-in sheet (identical to ``prices.example.toml``)."""
        return cls.from_mapping({}, source="<defaults>")

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> PriceSheet:
        """Read and validate a TOML price sheet."""
        p = Path(path)
        try:
            raw = p.read_bytes()
        except FileNotFoundError:
            raise PriceSheetError(f"price sheet {p} does not exist") from None
        except OSError as e:
            raise PriceSheetError(f"cannot read price sheet {p}: {e.strerror}") from None
        return cls.from_toml(raw, source=str(p))

    @classmethod
    def from_toml(cls, text: str | bytes, *, source: str = "<string>") -> PriceSheet:
        """Parse and validate price-sheet TOML text."""
        if isinstance(text, bytes):
            try:
                text = text.decode()
            except UnicodeDecodeError:
                raise PriceSheetError(f"{source}: not UTF-8 text") from None
        try:
            data = tomllib.loads(text)
        except tomllib.TOMLDecodeError as e:
            raise PriceSheetError(f"{source}: not valid TOML: {e}") from None
        return cls.from_mapping(data, source=source)

    @classmethod
    def from_mapping(cls, data: dict[str, Any], *, source: str = "<mapping>") -> PriceSheet:
        """Validate a parsed sheet (``{"cpu": {...}, ...}``) and build the prices."""
        v: dict[str, dict[str, Any]] = {}
        for section, keys in _SCHEMA.items():
            table = data if section == "" else data.get(section, {})
            if not isinstance(table, dict):
                raise PriceSheetError(f"{source}: [{section}] must be a table")
            v[section] = {}
            for key, (kind, default) in keys.items():
                where = f"{section}.{key}" if section else key
                value = table.get(key, default)
                v[section][key] = None if value is None else _convert(source, where, kind, value)
            allowed = set(keys) | (set(_SCHEMA) - {""} if section == "" else set())
            unknown = sorted(set(table) - allowed)
            if unknown:
                prefix = f"{section}." if section else ""
                raise PriceSheetError(
                    f"{source}: unknown key(s) {', '.join(prefix + k for k in unknown)}"
                    f" (allowed in [{section or 'top level'}]: {', '.join(sorted(allowed))})"
                )
        cpu = v["cpu"]
        if cpu["price_per_hour"] is not None:
            cpu_price = cpu["price_per_hour"]
        else:
            if cpu["reference_clock_ghz"] == 0:
                raise PriceSheetError(f"{source}: cpu.reference_clock_ghz must be positive")
            rt = cpu["round_to"]
            cpu_price = scaled_cpu_price(
                cpu["reference_price_per_hour"],
                cpu["reference_clock_ghz"],
                cpu["node_clock_ghz"],
                None if rt == 0 else rt,
            )
        try:
            return cls(
                currency=v[""]["currency"],
                cpu_per_hour=cpu_price,
                local_per_gb=v["bandwidth"]["local_per_gb"],
                interdomain_per_gb=v["bandwidth"]["interdomain_per_gb"],
                ingress_per_gb=v["bandwidth"]["ingress_per_gb"],
                fis_reads_per_million=v["fis"]["reads_per_million"],
                fis_writes_per_million=v["fis"]["writes_per_million"],
                cache_per_gb=v["storage"]["cache_per_gb"],
                log_lines_per_million=v["logs"]["per_million_lines"],
                packets_per_million=v["packets"]["per_million"],
                quantum=v["invoice"]["quantum"],
                rounding=v["invoice"]["rounding"],
            )
        except PriceSheetError as e:
            raise PriceSheetError(f"{source}: {e}") from None


def _convert(source: str, where: str, kind: str, value: object) -> object:
    if kind == "text":
        if not isinstance(value, str) or not value.strip():
            raise PriceSheetError(f"{source}: {where} must be a non-empty string, got {value!r}")
        return value
    if kind == "rounding":
        if value not in ROUNDING_MODES:
            raise PriceSheetError(
                f"{source}: {where} must be one of {sorted(ROUNDING_MODES)}, got {value!r}"
            )
        return value
    # money / number: TOML integers, floats or decimal strings ("0.22"); floats are taken by
    # their shortest decimal repr (0.1 -> Decimal("0.1")), not their binary value.
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise PriceSheetError(f"{source}: {where} must be a number, got {value!r}")
    if isinstance(value, float) and not math.isfinite(value):
        raise PriceSheetError(f"{source}: {where} must be finite, got {value!r}")
    try:
        d = Decimal(str(value).strip())
    except _InvalidOperation:
        raise PriceSheetError(f"{source}: {where} must be a number, got {value!r}") from None
    if not d.is_finite():
        raise PriceSheetError(f"{source}: {where} must be finite, got {value!r}")
    if d < 0:
        raise PriceSheetError(f"{source}: {where} must not be negative, got {value!r}")
    return d


#: the shipped example sheet (it spells out every default)
EXAMPLE_PATH = Path(__file__).with_name("prices.example.toml")

"""The price sheet: the paper's CPU price, the shipped example, clear errors for bad sheets."""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path

import pytest

from pcsite_lite.billing.prices import EXAMPLE_PATH, PriceSheet, PriceSheetError, scaled_cpu_price


def test_default_cpu_price_is_app_engine_scaled_to_the_node_clock_as_the_paper_rounds() -> None:
    # 0.10 $/h at 1.2 GHz -> 2.66 GHz: 0.221666..., which the paper states as $0.22
    exact = scaled_cpu_price(Decimal("0.10"), Decimal("1.2"), Decimal("2.66"), None)
    assert Decimal("0.2216") < exact < Decimal("0.2217")
    assert PriceSheet.default().cpu_per_hour == Decimal("0.22")


def test_the_shipped_example_sheet_is_the_default_sheet() -> None:
    assert PriceSheet.load(EXAMPLE_PATH) == PriceSheet.default()


def test_interdomain_bandwidth_is_priced_above_local_by_default() -> None:
    p = PriceSheet.default()
    assert p.interdomain_per_gb > p.local_per_gb


def test_cpu_derivation_follows_the_clock_and_an_explicit_price_wins() -> None:
    sheet = PriceSheet.from_toml('[cpu]\nnode_clock_ghz = 3.6\nround_to = "0"\n')
    assert sheet.cpu_per_hour == Decimal("0.3")  # 0.10 * 3.6 / 1.2, unrounded
    sheet = PriceSheet.from_toml('[cpu]\nprice_per_hour = "0.5"\nnode_clock_ghz = 9\n')
    assert sheet.cpu_per_hour == Decimal("0.5")


def test_numbers_are_read_by_their_decimal_spelling_not_binary_float() -> None:
    sheet = PriceSheet.from_toml("[bandwidth]\nlocal_per_gb = 0.1\ninterdomain_per_gb = 0.3\n")
    assert sheet.local_per_gb == Decimal("0.1")
    assert sheet.interdomain_per_gb == Decimal("0.3")


@pytest.mark.parametrize(
    "text, message",
    [
        ("[cpu\n", "not valid TOML"),
        ("[cpu]\nprice_per_hour = -1\n", "cpu.price_per_hour must not be negative"),
        ('[fis]\nreads_per_million = "lots"\n', "fis.reads_per_million must be a number"),
        ("[fis]\nreads_per_million = true\n", "fis.reads_per_million must be a number"),
        ("[fis]\nreads_per_million = nan\n", "must be finite"),
        ("[cpu]\nprice_per_houre = 1\n", "unknown key(s) cpu.price_per_houre"),
        ("[gpu]\nprice = 1\n", "unknown key(s) gpu"),
        ("cpu = 1\n", "[cpu] must be a table"),
        ("[bandwidth]\ninterdomain_per_gb = 0.001\n", "must not be below"),
        ('[invoice]\nrounding = "nearest"\n', "invoice.rounding must be one of"),
        ('[invoice]\nquantum = "0"\n', "invoice.quantum must be positive"),
        ("[cpu]\nreference_clock_ghz = 0\n", "reference_clock_ghz must be positive"),
        ('currency = ""\n', "currency must be a non-empty string"),
    ],
)
def test_bad_sheets_are_refused_with_the_file_and_key(
    tmp_path: Path, text: str, message: str
) -> None:
    p = tmp_path / "bad.toml"
    p.write_text(text)
    with pytest.raises(PriceSheetError) as e:
        PriceSheet.load(p)
    assert message in str(e.value)
    assert str(p) in str(e.value)


def test_a_missing_sheet_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(PriceSheetError, match="does not exist"):
        PriceSheet.load(tmp_path / "nope.toml")

"""The §3 cost model reproduces the paper's figures from its inputs; overrides; the plot."""

from __future__ import annotations

import struct
import zlib
from fractions import Fraction
from pathlib import Path

import pytest

from pcsite_lite.billing import costmodel
from pcsite_lite.billing.costmodel import CostInputs, compute, site_cost


def thousands(x: Fraction) -> float:
    """Dollars -> the paper's "$xx.xxK" figure (two decimals)."""
    return round(float(x) / 1000, 2)


def test_the_papers_figures_are_computed_from_its_inputs() -> None:
    r = compute()
    assert r.machines == 14  # 40 Gbps / 2.91 Gbps = 13.75 -> 14 machines
    assert thousands(r.site_yearly_cost) == 42.38  # Eq. 2
    assert thousands(r.node_max_cpu_revenue) == 15.42  # 0.22 * 8 * 24 * 365
    assert thousands(r.node_yearly_cost) == 2.75  # 4128 / 3 * (1 + 1)
    assert r.cpu_price_per_core_hour == Fraction("0.22")  # 0.10 * 2.66 / 1.2, rounded


def test_eq_1_matches_the_papers_eq_2_expression() -> None:
    # Eq. 2 spelled out independently: (14 * 1.1) * (4128 / 3) * (1 + 1)
    assert compute().site_yearly_cost == Fraction(14) * Fraction("1.1") * Fraction(4128, 3) * 2
    assert site_cost(Fraction(1), Fraction(4128), Fraction(3), Fraction(1)) == 2752


def test_at_ten_percent_a_node_earns_a_comparable_share_of_its_cost() -> None:
    # the paper: "even 10% of the maximum revenue is still comparable" to the node's cost
    r = compute()
    ratio = r.node_revenue(Fraction(1, 10)) / r.node_yearly_cost
    assert Fraction(1, 2) < ratio < 1


def test_break_even_utilisation_equates_revenue_and_cost() -> None:
    r = compute()
    assert r.break_even_node is not None and r.break_even_site is not None
    assert r.node_revenue(r.break_even_node) == r.node_yearly_cost
    assert r.site_revenue(r.break_even_site) == r.site_yearly_cost
    assert round(float(r.break_even_node) * 100, 2) == 17.85
    # the site also pays for storage and load balancer, which earn no CPU revenue
    assert r.break_even_site == r.break_even_node * Fraction("1.1")
    assert round(float(r.break_even_site) * 100, 2) == 19.63


def test_every_input_is_overridable() -> None:
    base = compute()
    assert compute(CostInputs().with_overrides(site_gbps="100")).machines == 35  # 34.36 -> 35
    assert compute(CostInputs().with_overrides(machines=20)).machines == 20
    dear = compute(CostInputs().with_overrides(machine_price="8256"))
    assert dear.site_yearly_cost == 2 * base.site_yearly_cost
    fast = compute(CostInputs().with_overrides(node_clock_ghz="3.6"))
    assert fast.cpu_price_per_core_hour == Fraction("0.30")
    priced = compute(CostInputs().with_overrides(cpu_price="0.11", cores_per_node=16))
    assert priced.node_max_cpu_revenue == base.node_max_cpu_revenue
    free = compute(CostInputs().with_overrides(cpu_price="0"))
    assert free.break_even_node is None
    for name in [f for f in CostInputs.__dataclass_fields__ if f not in ("machines", "cpu_price")]:
        changed = CostInputs().with_overrides(**{name: "7"})
        assert getattr(changed, name) == 7


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"node_gbps": "0"}, "node_gbps must be positive"),
        ({"efficiency": "-1"}, "efficiency must not be negative"),
        ({"site_gbps": "lots"}, "not a number"),
        ({"warp_factor": "9"}, "unknown cost-model input"),
    ],
)
def test_bad_overrides_are_refused(overrides: dict[str, str], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        CostInputs().with_overrides(**overrides)


def test_the_plot_is_a_valid_png(tmp_path: Path) -> None:
    out = costmodel.plot(compute(), tmp_path / "cost.png")
    data = out.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    # walk the chunks and check every CRC; IHDR first, IEND last
    pos, chunks = 8, []
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos : pos + 4])
        kind = data[pos + 4 : pos + 8]
        body = data[pos + 8 : pos + 8 + length]
        (crc,) = struct.unpack(">I", data[pos + 8 + length : pos + 12 + length])
        assert zlib.crc32(kind + body) == crc
        chunks.append((kind, body))
        pos += 12 + length
    assert chunks[0][0] == b"IHDR" and chunks[-1][0] == b"IEND"
    width, height = struct.unpack(">II", chunks[0][1][:8])
    assert (width, height) == (1000, 420)
    # and an independent decoder (Pillow, via matplotlib) reads the pixels
    from matplotlib import image

    pixels = image.imread(out)
    assert pixels.shape[:2] == (420, 1000)
    assert pixels.std() > 0  # not a blank image

"""The paper's cost and revenue model for one PacketCloud site (§3, Eq. 1 and 2).

Eq. 1: the yearly cost of a site is ``c_site = N * (c_machine / d) * (E + 1)`` with N machines
of price ``c_machine`` depreciated over ``d`` years and E the other costs (rent, power, cooling,
staff) relative to the machine cost.

The paper's inputs (all overridable through :class:`CostInputs`):

- N: a site designed for 40 Gbps of 64-byte IPsec traffic on PacketShader-class nodes that
  each do 2.91 Gbps needs ``ceil(40 / 2.91) = ceil(13.75) = 14`` machines (the paper's "≈ 14";
  one cannot provision three quarters of a machine, so this module rounds up);
- 10 % more investment for the storage service (FIS) and the load balancer: N_eff = 14 * 1.1;
- c_machine = $4128, d = 3 years, E = 1.

Eq. 2: ``c_site = (14 * 1.1) * (4128 / 3) * (1 + 1) = $42,380.80 ≈ $42.38K/yr``.

Revenue (CPU only, as in the paper): App Engine's $0.10 per CPU-hour at 1.2 GHz scaled to the
2.66 GHz node clock, 0.10 * 2.66 / 1.2 = 0.2216… rounded half up to the cent = $0.22 per
core-hour; an 8-core node at 100 % utilisation earns ``0.22 * 8 * 24 * 365 = $15,417.60 ≈
$15.42K/yr`` against a node cost of ``4128 / 3 * (1 + 1) = $2,752 ≈ $2.75K/yr``.

Break-even utilisation u* (revenue at utilisation u is ``u *`` maximum revenue):

- per node: ``u* = node cost / node max revenue = 2752 / 15417.6 ≈ 17.85 %``;
- per site: only the N compute nodes earn CPU revenue, while the cost includes the 10 % for
  storage and load balancer: ``u* = c_site / (N * node max revenue) = 42380.8 / 215846.4 ≈
  19.63 %``.

All arithmetic is exact (:class:`fractions.Fraction`); results are converted for display only.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, fields, replace
from fractions import Fraction
from pathlib import Path

__all__ = [
    "CostInputs",
    "CostResult",
    "compute",
    "machines_needed",
    "plot",
    "site_cost",
    "yearly_cpu_revenue",
]


def site_cost(
    n: Fraction, machine_price: Fraction, depreciation_years: Fraction, efficiency: Fraction
) -> Fraction:
    """Eq. 1: ``c_site = N * (c_machine / d) * (E + 1)`` (yearly)."""
    return (
        Fraction(n)
        * (Fraction(machine_price) / Fraction(depreciation_years))
        * (Fraction(efficiency) + 1)
    )


def machines_needed(site_gbps: Fraction, node_gbps: Fraction) -> int:
    """Compute nodes for a site's design throughput: ``ceil(site / node)`` (40/2.91 → 14)."""
    return math.ceil(Fraction(site_gbps) / Fraction(node_gbps))


def yearly_cpu_revenue(
    price_per_core_hour: Fraction,
    cores: int,
    hours_per_year: int,
    utilisation: Fraction = Fraction(1),
) -> Fraction:
    """CPU revenue of one node in a year: ``price * cores * hours * utilisation``."""
    return Fraction(price_per_core_hour) * cores * hours_per_year * Fraction(utilisation)


def _round_half_up(x: Fraction, quantum: Fraction) -> Fraction:
    return math.floor(x / quantum + Fraction(1, 2)) * quantum


@dataclass(frozen=True, slots=True)
class CostInputs:
    """Every input of the model, defaulting to the paper's values."""

    site_gbps: Fraction = Fraction(40)  #: design throughput of the site
    node_gbps: Fraction = Fraction("2.91")  #: throughput of one node (64 B IPsec, [14])
    machines: int | None = None  #: N; None derives it from the two throughputs
    extra_investment: Fraction = Fraction("0.1")  #: storage + load balancer, fraction of N
    machine_price: Fraction = Fraction(4128)  #: c_machine, dollars
    depreciation_years: Fraction = Fraction(3)  #: d
    efficiency: Fraction = Fraction(1)  #: E
    cores_per_node: int = 8
    reference_cpu_price: Fraction = Fraction("0.10")  #: App Engine, per CPU-hour
    reference_clock_ghz: Fraction = Fraction("1.2")
    node_clock_ghz: Fraction = Fraction("2.66")
    cpu_price_round_to: Fraction = Fraction("0.01")  #: 0 keeps the unrounded price
    cpu_price: Fraction | None = None  #: per core-hour; None derives it from the clocks
    hours_per_year: int = 24 * 365

    def __post_init__(self) -> None:
        positive = (
            "site_gbps",
            "node_gbps",
            "machine_price",
            "depreciation_years",
            "reference_clock_ghz",
            "cores_per_node",
            "hours_per_year",
        )
        for name in positive:
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        for name in (
            "extra_investment",
            "efficiency",
            "reference_cpu_price",
            "node_clock_ghz",
            "cpu_price_round_to",
        ):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must not be negative, got {getattr(self, name)}")
        if self.machines is not None and self.machines <= 0:
            raise ValueError(f"machines must be positive, got {self.machines}")
        if self.cpu_price is not None and self.cpu_price < 0:
            raise ValueError(f"cpu_price must not be negative, got {self.cpu_price}")

    def with_overrides(self, **overrides: object) -> CostInputs:
        """A copy with some inputs replaced; values are parsed from strings or numbers."""
        known = {f.name: f for f in fields(self)}
        parsed: dict[str, object] = {}
        for name, value in overrides.items():
            if name not in known:
                raise ValueError(f"unknown cost-model input {name!r}")
            if value is None:
                parsed[name] = None
                continue
            try:
                if name in ("machines", "cores_per_node", "hours_per_year"):
                    parsed[name] = int(str(value))
                else:
                    parsed[name] = Fraction(str(value))
            except (ValueError, ZeroDivisionError):
                raise ValueError(f"{name}: not a number: {value!r}") from None
        return replace(self, **parsed)  # type: ignore[arg-type]


@dataclass(frozen=True, slots=True)
class CostResult:
    """The model's outputs (exact), for one set of inputs."""

    inputs: CostInputs
    machines: int  #: N compute nodes
    provisioned_machines: Fraction  #: N * (1 + extra investment)
    node_yearly_cost: Fraction  #: c_machine / d * (E + 1)
    site_yearly_cost: Fraction  #: Eq. 1 with provisioned machines
    cpu_price_per_core_hour: Fraction
    node_max_cpu_revenue: Fraction  #: per year at 100 % utilisation
    site_max_cpu_revenue: Fraction  #: N compute nodes at 100 %
    break_even_node: Fraction | None  #: utilisation in [0, ∞); None if revenue is 0
    break_even_site: Fraction | None

    def node_revenue(self, utilisation: Fraction) -> Fraction:
        return self.node_max_cpu_revenue * Fraction(utilisation)

    def site_revenue(self, utilisation: Fraction) -> Fraction:
        return self.site_max_cpu_revenue * Fraction(utilisation)

    def to_dict(self) -> dict[str, object]:
        """Plain JSON-ready figures (dollars per year; utilisations as fractions of 1)."""
        i = self.inputs
        return {
            "inputs": {
                f.name: (None if getattr(i, f.name) is None else _num(getattr(i, f.name)))
                for f in fields(i)
            },
            "machines": self.machines,
            "provisioned_machines": _num(self.provisioned_machines),
            "node_yearly_cost": _num(self.node_yearly_cost),
            "site_yearly_cost": _num(self.site_yearly_cost),
            "cpu_price_per_core_hour": _num(self.cpu_price_per_core_hour),
            "node_max_cpu_revenue": _num(self.node_max_cpu_revenue),
            "site_max_cpu_revenue": _num(self.site_max_cpu_revenue),
            "break_even_utilisation_node": _opt(self.break_even_node),
            "break_even_utilisation_site": _opt(self.break_even_site),
        }

    def to_text(self) -> str:
        """The figures as the paper states them."""
        i = self.inputs
        lines = [
            "PacketCloud site cost model (paper §3, Eq. 1 and 2)",
            f"  machines N = ceil({_s(i.site_gbps)} Gbps / {_s(i.node_gbps)} Gbps)"
            f" = {self.machines}"
            if i.machines is None
            else f"  machines N = {self.machines}",
            f"  provisioned incl. {_pct(i.extra_investment)} storage + load balancer:"
            f" {_s(self.provisioned_machines)}",
            f"  node yearly cost  = {_s(i.machine_price)}/{_s(i.depreciation_years)}"
            f" * ({_s(i.efficiency)}+1) = ${_k(self.node_yearly_cost)}/yr",
            f"  site yearly cost  = {_s(self.provisioned_machines)} *"
            f" {_s(i.machine_price)}/{_s(i.depreciation_years)} * ({_s(i.efficiency)}+1)"
            f" = ${_k(self.site_yearly_cost)}/yr",
            f"  CPU price         = ${_s(self.cpu_price_per_core_hour)} per core-hour",
            f"  node max CPU revenue = {_s(self.cpu_price_per_core_hour)} *"
            f" {i.cores_per_node} * {i.hours_per_year} h = ${_k(self.node_max_cpu_revenue)}/yr",
            f"  site max CPU revenue = {self.machines} nodes * that"
            f" = ${_k(self.site_max_cpu_revenue)}/yr",
            f"  break-even utilisation: per node {_pct_opt(self.break_even_node)},"
            f" per site {_pct_opt(self.break_even_site)}",
            f"  at 10 % utilisation a node earns ${_k(self.node_revenue(Fraction(1, 10)))}/yr"
            f" against ${_k(self.node_yearly_cost)}/yr cost",
        ]
        return "\n".join(lines) + "\n"


def _num(x: object) -> object:
    if isinstance(x, Fraction):
        return x.numerator if x.denominator == 1 else float(x)
    return x


def _opt(x: Fraction | None) -> float | None:
    return None if x is None else float(x)


def _s(x: Fraction | int) -> str:
    f = Fraction(x)
    if f.denominator == 1:
        return str(f.numerator)
    return f"{float(f):.6g}"


def _k(x: Fraction) -> str:
    return f"{float(x) / 1000:,.2f}K"


def _pct(x: Fraction) -> str:
    return f"{float(x) * 100:.4g} %"


def _pct_opt(x: Fraction | None) -> str:
    if x is None:
        return "never (no revenue)"
    return f"{float(x) * 100:.2f} %" + (" (unreachable: > 100 %)" if x > 1 else "")


def compute(inputs: CostInputs | None = None) -> CostResult:
    """Evaluate the model (the paper's inputs by default)."""
    i = inputs or CostInputs()
    n = i.machines if i.machines is not None else machines_needed(i.site_gbps, i.node_gbps)
    provisioned = n * (1 + i.extra_investment)
    node_cost = site_cost(Fraction(1), i.machine_price, i.depreciation_years, i.efficiency)
    c_site = site_cost(provisioned, i.machine_price, i.depreciation_years, i.efficiency)
    if i.cpu_price is not None:
        price = i.cpu_price
    else:
        price = i.reference_cpu_price * i.node_clock_ghz / i.reference_clock_ghz
        if i.cpu_price_round_to:
            price = _round_half_up(price, i.cpu_price_round_to)
    node_rev = yearly_cpu_revenue(price, i.cores_per_node, i.hours_per_year)
    site_rev = n * node_rev
    return CostResult(
        inputs=i,
        machines=n,
        provisioned_machines=provisioned,
        node_yearly_cost=node_cost,
        site_yearly_cost=c_site,
        cpu_price_per_core_hour=price,
        node_max_cpu_revenue=node_rev,
        site_max_cpu_revenue=site_rev,
        break_even_node=node_cost / node_rev if node_rev else None,
        break_even_site=c_site / site_rev if site_rev else None,
    )


def plot(result: CostResult, path: str | os.PathLike[str]) -> Path:
    """Write a PNG of yearly cost against CPU revenue over utilisation 0..100 %, per node and
    per site, with the break-even points marked. Uses matplotlib's Agg canvas (no display)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(10, 4.2), dpi=100)
    FigureCanvasAgg(fig)
    xs = [u / 100 for u in range(101)]
    panels = [
        (
            "one compute node",
            result.node_yearly_cost,
            result.node_max_cpu_revenue,
            result.break_even_node,
        ),
        (
            f"one site ({result.machines} nodes"
            f" + {_pct(result.inputs.extra_investment)} storage/LB)",
            result.site_yearly_cost,
            result.site_max_cpu_revenue,
            result.break_even_site,
        ),
    ]
    for k, (title, cost, max_rev, be) in enumerate(panels):
        ax = fig.add_subplot(1, 2, k + 1)
        ax.plot(
            [x * 100 for x in xs],
            [float(max_rev) * x / 1000 for x in xs],
            label="CPU revenue",
            color="tab:green",
        )
        ax.plot([0, 100], [float(cost) / 1000] * 2, label="yearly cost", color="tab:red")
        if be is not None and be <= 1:
            ax.axvline(float(be) * 100, color="grey", linestyle="--", linewidth=1)
            ax.annotate(
                f"break-even {float(be) * 100:.2f} %",
                (float(be) * 100, float(cost) / 1000),
                xytext=(8, 12),
                textcoords="offset points",
            )
        ax.set_title(title)
        ax.set_xlabel("CPU utilisation (%)")
        ax.set_ylabel("thousand $ per year")
        ax.set_xlim(0, 100)
        ax.set_ylim(bottom=0)
        ax.grid(True, alpha=0.3)
        ax.legend(loc="upper left")
    fig.suptitle(
        f"PacketCloud cost vs CPU revenue (${_s(result.cpu_price_per_core_hour)}/core-hour,"
        f" {result.inputs.cores_per_node} cores/node)"
    )
    fig.tight_layout()
    out = Path(path)
    fig.savefig(out, format="png", metadata={"Software": None})
    return out

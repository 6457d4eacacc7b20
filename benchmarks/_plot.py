"""``python -m benchmarks --plot DIR``: each benchmark's figures as a picture, from its JSON.

For every ``<results>/<name>.json`` it writes ``DIR/<name>.png`` with up to four panels:

* **against the baseline**: every ratio the benchmark reports (a key with ``_vs_`` or
  ``ratio`` in its name: figure ÷ baseline measured in the same run) as a bar, with the
  baseline drawn as the line at 1;
* **absolute figures**, one panel per unit (ns, µs, ms, s, Mbit/s, pkt/s, read from the key's
  name): the benchmark's own figures in blue, the baselines it measured beside them (keys
  naming a baseline: ``baseline``, ``scapy``, ``noop``, ``kernel``, ``mininet``, ...) in grey.

Where the JSON keeps the values of each round (``rounds: [{"figures": {...}}]``, or ``raw``
lists whose best or median is the reported figure), the bar carries the spread over the rounds
(a line from the smallest to the largest round, and a dot per round). Nothing is measured
here; only the JSON is read.
"""

from __future__ import annotations

import json
import math
import re
import statistics
from pathlib import Path
from typing import Any

__all__ = ["figures_of", "plot_all", "plot_one", "spreads_of"]

_UNITS = (  # (regex on the key, unit label), first match wins
    (r"(_ns\b|_ns_|_ns$)", "ns"),
    (r"(_us\b|_us_|_us$)", "µs"),
    (r"(_ms\b|_ms_|_ms$)", "ms"),
    (r"(mbps|mbit)", "Mbit/s"),
    (r"(_pps\b|_pps_|_pps$|pkt_per_s)", "packets/s"),
    (r"(seconds|_s$|_s_)", "s"),
)
_RATIO = re.compile(r"(_vs_|ratio)")
_BASELINE = re.compile(
    r"(baseline|^(scapy|noop|dict_get|kernel|mininet|passthrough|home_agent|bare|empty_call|"
    r"control_call|udp)_)"
)
_SKIP = re.compile(r"(goal|^count$|^repeats?$|^packets$|samples|^quick$|_bytes$|^senders$)")
BLUE, GREY = "#0072B2", "#999999"


def figures_of(doc: dict[str, Any]) -> dict[str, float]:
    """The numeric figures of a benchmark's JSON (top level, or its ``figures`` table)."""
    nested = doc.get("figures")
    table: dict[str, Any] = nested if isinstance(nested, dict) else doc
    out = {}
    for k, v in table.items():
        if isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v):
            if not _SKIP.search(k):
                out[k] = float(v)
    return out


def spreads_of(doc: dict[str, Any], figures: dict[str, float]) -> dict[str, list[float]]:
    """Figure -> its value in each round, where the JSON keeps them."""
    out: dict[str, list[float]] = {}
    rounds = doc.get("rounds")
    if isinstance(rounds, list) and rounds and all(isinstance(r, dict) for r in rounds):
        for k in figures:
            vals = [r.get("figures", r).get(k) for r in rounds]
            if all(isinstance(v, int | float) and not isinstance(v, bool) for v in vals):
                out[k] = [float(v) for v in vals]
    lists: list[list[float]] = []

    def collect(node: Any, depth: int = 0) -> None:
        if depth > 3:
            return
        if isinstance(node, dict):
            for v in node.values():
                collect(v, depth + 1)
        elif (
            isinstance(node, list)
            and len(node) >= 2
            and all(isinstance(x, int | float) and not isinstance(x, bool) for x in node)
        ):
            lists.append([float(x) for x in node])

    collect(doc.get("raw"))
    for values in lists:  # a round list belongs to the figure that is its best or median
        summaries = (min(values), statistics.median(values), max(values))
        match = [
            k
            for k, v in figures.items()
            if not _RATIO.search(k) and any(math.isclose(v, s, rel_tol=1e-6) for s in summaries)
        ]
        if len(match) == 1 and match[0] not in out:
            out[match[0]] = values
    return out


def _unit(key: str) -> str | None:
    for pattern, unit in _UNITS:
        if re.search(pattern, key):
            return unit
    return None


def plot_one(name: str, doc: dict[str, Any], out: Path) -> Path | None:
    """Draw one benchmark; returns the file, or None if its JSON has no figure to draw."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figures = figures_of(doc)
    spreads = spreads_of(doc, figures)
    panels: list[tuple[str, list[str]]] = []
    ratios = [k for k in figures if _RATIO.search(k)]
    if ratios:
        panels.append(("figure ÷ baseline (same run); dashed: baseline = 1", ratios))
    by_unit: dict[str, list[str]] = {}
    for k in figures:
        unit = _unit(k)
        if unit and k not in ratios:
            by_unit.setdefault(unit, []).append(k)
    for unit, keys in sorted(by_unit.items(), key=lambda x: -len(x[1]))[: 4 - len(panels)]:
        panels.append((unit, keys))
    if not panels:
        return None
    height = sum(0.9 + 0.32 * len(keys) for _, keys in panels)
    fig, axes = plt.subplots(
        len(panels),
        1,
        figsize=(8.5, max(2.5, height)),
        squeeze=False,
        height_ratios=[0.9 + 0.32 * len(k) for _, k in panels],
    )
    for ax, (unit, keys) in zip(axes[:, 0], panels):
        ys = list(range(len(keys)))
        vals = [figures[k] for k in keys]
        is_ratio = unit.startswith("figure")
        colors = [GREY if not is_ratio and _BASELINE.search(k) else BLUE for k in keys]
        ax.barh(ys, vals, color=colors, height=0.6)
        for y, k in zip(ys, keys):
            if k in spreads:
                lo, hi = min(spreads[k]), max(spreads[k])
                ax.plot([lo, hi], [y, y], color="black", linewidth=1.2)
                ax.scatter(spreads[k], [y] * len(spreads[k]), s=10, color="black", zorder=3)
            right = max([figures[k], *spreads.get(k, [])])
            ax.annotate(f"{figures[k]:.4g}", (right, y), xytext=(4, 0),
                        textcoords="offset points", va="center", fontsize=8)  # fmt: skip
        ax.set_yticks(ys, keys, fontsize=8)
        ax.invert_yaxis()
        positive = [v for v in vals if v > 0]
        if is_ratio:
            ax.axvline(1.0, color="#D55E00", linestyle="--", linewidth=1.2)
            positive.append(1.0)
        if positive and max(positive) / min(positive) > 50:
            ax.set_xscale("log")
        ax.set_xlabel("ratio" if is_ratio else unit, fontsize=9)
        title = unit if is_ratio else f"figures in {unit} (grey: baselines)"
        ax.set_title(title, fontsize=9, loc="left")
    spread_note = " · bars with the spread over rounds" if spreads else ""
    fig.suptitle(f"benchmark {name}{spread_note}", fontsize=11)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out


def plot_all(results: Path, out_dir: Path, names: list[str] | None = None) -> list[Path]:
    """Plot every ``results/<name>.json`` (or the named ones) into ``out_dir``."""
    written = []
    for path in sorted(results.glob("*.json")):
        if names and path.stem not in names:
            continue
        try:
            doc = json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            print(f"[benchmarks] {path}: not readable JSON ({exc}); skipped")
            continue
        if not isinstance(doc, dict):
            print(f"[benchmarks] {path}: not a JSON object; skipped")
            continue
        out = plot_one(path.stem, doc, out_dir / f"{path.stem}.png")
        if out is None:
            print(f"[benchmarks] {path}: no figures to draw")
        else:
            written.append(out)
    return written

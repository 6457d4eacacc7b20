"""The demo's report (``python -m pcdemo --report DIR``): pictures beside the JSON.

Writes into DIR:

* ``results.json``: what ``--json`` writes;
* ``<scenario>.svg`` for every scenario that recorded the ways its packets went
  (``Outcome.paths``, hops named by the topology's nodes): the topology's drawing (Fig. 2 by
  default, ``--topology``'s otherwise) with those paths and
  their delivered/dropped counts, drawn by ``testbed graph`` (run as a command, with the
  overlay as plain JSON);
* ``<scenario>.png`` for a scenario that recorded no path (the example services build their
  own networks; a scenario the topology cannot host): its sent/delivered/dropped counts and
  its checks, or why it was not applicable;
* ``latency.png``: the latency distribution of every scenario that measured one;
* ``index.md``: the table and the pictures.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

__all__ = ["file_stem", "write"]

GRAPH_TIMEOUT = 120.0


def file_stem(name: str) -> str:
    """A scenario name as a file name (the same rule as ``testbed graph``'s ``{name}``)."""
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name)[:64] or "overlay"


def _overlay(r: dict[str, Any]) -> dict[str, Any]:
    title = (
        f"{r['name']} ({r['status']}): {r['sent']} sent, {r['received']} delivered, "
        f"{r['dropped']} dropped"
    )
    return {"title": title[:200], "paths": r["paths"], "notes": r.get("counts", {})}


def _counts_picture(r: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax, tx) = plt.subplots(1, 2, figsize=(9, 3.2), width_ratios=[1, 1.6])
    values = [r["sent"], r["received"], r["dropped"]]
    bars = ax.bar(["sent", "delivered", "dropped"], values, color=["#999999", "#009E73", "#D55E00"])
    ax.bar_label(bars)
    ax.set_ylabel("packets")
    ax.set_title(f"{r['name']}: {r['status'].upper()}")
    tx.axis("off")
    lines = [f"{'✓' if ok else '✗'} {what}" for what, ok in r.get("checks", [])][:12]
    lines.append("")
    if r["status"] == "n/a":  # what the topology lacks
        lines.append(r.get("detail", "")[:300])
    else:
        lines.append("(no path recorded: this scenario builds its own network)")
    tx.text(0, 1, "\n".join(lines), va="top", fontsize=9, wrap=True)
    fig.suptitle(r.get("title", "")[:100], fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _latency_picture(results: list[dict[str, Any]], world: str, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    measured = [r for r in results if r.get("latencies_ms")]
    fig, ax = plt.subplots(figsize=(8, 3.5))
    if measured:
        data = [r["latencies_ms"] for r in measured]
        import inspect

        horizontal = (
            {"orientation": "horizontal"}  # matplotlib >= 3.10
            if "orientation" in inspect.signature(ax.boxplot).parameters
            else {"vert": False}
        )
        ax.boxplot(data, showfliers=False, **horizontal)
        for k, values in enumerate(data, 1):  # every packet, jittered around its row
            ys = [k + ((i * 37) % 21 - 10) / 60 for i in range(len(values))]
            ax.scatter(values, ys, s=8, alpha=0.6, color="#0072B2")
        ax.set_yticks(
            range(1, len(measured) + 1),
            [f"{r['name']} (n={len(r['latencies_ms'])})" for r in measured],
        )
        ax.set_xlabel("one-way latency per delivered packet (ms)")
    else:
        ax.text(0.5, 0.5, "no scenario measured latencies", ha="center", va="center")
        ax.axis("off")
    clock = "virtual time of the simulator" if world == "simulator" else "testbed, wall clock"
    ax.set_title(f"demo latency distribution ({clock})")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def write(doc: dict[str, Any], out: Path, topology: Path) -> list[Path]:
    """Write the report of ``doc`` (``{"world", "results"}``) into ``out``; returns the files.

    Raises ``RuntimeError`` if the drawings could not be made (the message says why).
    """
    out.mkdir(parents=True, exist_ok=True)
    written = [out / "results.json"]
    written[0].write_text(json.dumps(doc, indent=2))
    results = doc["results"]
    pictures: dict[str, Path] = {}
    overlays = {r["name"]: _overlay(r) for r in results if r.get("paths")}
    if overlays:
        spec = out / "overlays.json"
        spec.write_text(json.dumps({"overlays": overlays}, indent=1))
        cmd = [
            sys.executable,
            "-m",
            "testbed",
            "graph",
            str(topology),
            "--overlay",
            str(spec),
            "-o",
            str(out / "{name}.svg"),
        ]
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=GRAPH_TIMEOUT)
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise RuntimeError(f"testbed graph did not run: {exc}") from None
        if proc.returncode != 0:
            raise RuntimeError(f"testbed graph failed: {proc.stderr.strip()[-500:]}")
        spec.unlink()
        for name in overlays:
            pictures[name] = out / f"{file_stem(name)}.svg"
    for r in results:
        if r["name"] not in pictures:
            pictures[r["name"]] = out / f"{file_stem(r['name'])}.png"
            _counts_picture(r, pictures[r["name"]])
    missing = [str(p) for p in pictures.values() if not p.exists()]
    if missing:
        raise RuntimeError(f"pictures not written: {', '.join(missing)}")
    _latency_picture(results, doc.get("world", ""), out / "latency.png")
    lines = [
        f"# PacketCloud demo ({doc.get('world', '?')}, topology "
        f"{doc.get('topology', {}).get('name', topology.stem)})",
        "",
        "| scenario | result | sent | delivered | dropped | median latency |",
        "| --- | --- | ---: | ---: | ---: | ---: |",
    ]
    for r in results:
        lat = "-" if r.get("latency_ms") is None else f"{r['latency_ms']:.3f} ms"
        lines.append(
            f"| {r['name']} | {r['status']} | {r['sent']} | {r['received']} | "
            f"{r['dropped']} | {lat} |"
        )
    lines += ["", "![latency distribution](latency.png)", ""]
    for r in results:
        lines += [
            f"## {r['name']}: {r.get('title', '')}",
            "",
            r.get("detail", ""),
            "",
            f"![{r['name']}]({pictures[r['name']].name})",
            "",
        ]
    (out / "index.md").write_text("\n".join(lines))
    return [*written, *pictures.values(), out / "latency.png", out / "index.md"]

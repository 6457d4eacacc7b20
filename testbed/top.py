"""``testbed top RUN``: live packet rates, drops and worker load of a running testbed.

Every second it samples, for the run:

* each data link's kernel counters at its first end (``/proc/net/dev`` inside the namespace):
  packets per second in each direction, bits per second, drops;
* each site daemon's Prometheus metrics (``GET /metrics`` over HTTP, parsed with
  ``prometheus_client``'s text parser): per worker received/sent packets per second and
  liveness, drops per second by reason;
* the CPU used by the processes living in each site's namespace (``/proc/PID/stat``): all of
  them (the daemon's supervisor and workers), and each worker (its PID from the daemon's
  ``GET /v1/status``, counted only while that PID lives in the site's namespace).

and redraws a terminal view (``rich``). Ctrl-C exits cleanly. ``--once`` prints one sample
(rates over ``--interval`` seconds) and exits; ``--json`` prints it as JSON (for scripts).
"""

from __future__ import annotations

import json
import os
import sys
import time
from dataclasses import dataclass, field
from typing import Any

from testbed import live, state
from testbed import plan as planmod

__all__ = ["Sample", "add_parser", "parse_metrics", "rates", "sample"]

TICKS = os.sysconf("SC_CLK_TCK")


@dataclass
class Sample:
    """Raw counters of a run at one instant."""

    t: float
    links: dict[str, live.LinkCounters | None] = field(default_factory=dict)
    metrics: dict[str, dict[str, Any] | None] = field(default_factory=dict)
    cpu_ticks: dict[str, int] = field(default_factory=dict)
    metric_errors: dict[str, str] = field(default_factory=dict)  #: site -> why no metrics
    worker_ticks: dict[str, dict[str, int]] = field(default_factory=dict)  #: site -> worker ->
    problems: list[str] = field(default_factory=list)


def parse_metrics(text: str) -> dict[str, Any]:
    """The parts of a site's exposition ``top`` shows: per worker rx/tx packets and liveness,
    drops by reason (summed over workers), installed circuits."""
    from prometheus_client.parser import text_string_to_metric_families

    workers: dict[str, dict[str, float]] = {}
    drops: dict[str, float] = {}
    gauges: dict[str, float] = {}
    try:
        families = list(text_string_to_metric_families(text))
    except ValueError as exc:
        raise ValueError(f"not the Prometheus text format: {exc}") from None
    for fam in families:
        for s in fam.samples:
            w = s.labels.get("worker")
            if s.name == "pcsite_drops_total":
                reason = s.labels.get("reason", "?")
                drops[reason] = drops.get(reason, 0.0) + s.value
            elif w is not None and s.name in (
                "pcsite_rx_packets_total",
                "pcsite_tx_packets_total",
                "pcsite_worker_up",
                "pcsite_tx_errors_total",
            ):
                workers.setdefault(w, {})[s.name.removeprefix("pcsite_")] = s.value
            elif s.name in ("pcsite_circuits", "pcsite_destinations"):
                gauges[s.name.removeprefix("pcsite_")] = s.value
    return {"workers": workers, "drops": drops, **gauges}


def sample(
    run: state.Run, topo: Any, controls: dict[str, live.Control], plan: planmod.Plan
) -> Sample:
    """Read every counter once."""
    smp = Sample(time.monotonic())
    per_ns: dict[str, dict[str, live.LinkCounters]] = {}
    for lp in plan.links:
        node = lp.spec.a
        if node not in per_ns:
            try:
                per_ns[node] = live.link_counters(run.ns(node))
            except (OSError, TimeoutError) as exc:
                per_ns[node] = {}
                smp.problems.append(f"{node}: {exc}")
        smp.links[lp.spec.name] = per_ns[node].get(lp.a_if.name)
    for s in topo.of_kind("site"):
        smp.cpu_ticks[s.name] = live.processes_cpu_ticks(run.ns(s.name))
        c = controls.get(s.name)
        if c is None:
            smp.metrics[s.name] = None
            smp.metric_errors[s.name] = "no control API registered"
            continue
        try:
            _, text = live.http_get(run.ns(s.name), f"{c.url}/metrics", c.token)
            smp.metrics[s.name] = parse_metrics(text)
            status = live.get_json(run.ns(s.name), f"{c.url}/v1/status", c.token)
            pids = {
                str(w["index"]): w["pid"]
                for w in (status.get("workers", []) if isinstance(status, dict) else [])
                if isinstance(w, dict) and isinstance(w.get("pid"), int) and "index" in w
            }
            smp.worker_ticks[s.name] = live.worker_cpu_ticks(run.ns(s.name), pids)
        except (OSError, ValueError, TimeoutError) as exc:
            smp.metrics[s.name] = None
            smp.metric_errors[s.name] = "metrics not reachable"
            smp.problems.append(f"{s.name}: {exc}")
    return smp


def _rate(new: float, old: float, dt: float) -> float:
    return max(0.0, new - old) / dt if dt > 0 else 0.0


def rates(a: Sample, b: Sample) -> dict[str, Any]:
    """Rates between two samples (``b`` later): the JSON ``--json`` prints."""
    dt = b.t - a.t
    links: dict[str, dict[str, Any] | None] = {}
    for name, new in b.links.items():
        old = a.links.get(name)
        if new is None or old is None:
            links[name] = None
            continue
        links[name] = {
            "pps_ab": round(_rate(new.tx_packets, old.tx_packets, dt), 1),
            "pps_ba": round(_rate(new.rx_packets, old.rx_packets, dt), 1),
            "bps_ab": round(8 * _rate(new.tx_bytes, old.tx_bytes, dt)),
            "bps_ba": round(8 * _rate(new.rx_bytes, old.rx_bytes, dt)),
            "drops_per_s": round(
                _rate(new.rx_drops + new.tx_drops, old.rx_drops + old.tx_drops, dt), 1
            ),
            "packets_total": new.rx_packets + new.tx_packets,
        }
    sites = {}
    for name, new_m in b.metrics.items():
        old_m = a.metrics.get(name)
        cpu = _rate(b.cpu_ticks.get(name, 0), a.cpu_ticks.get(name, 0), dt) / TICKS * 100
        row: dict[str, Any] = {"cpu_percent": round(cpu, 1), "metrics": new_m is not None}
        if name in b.metric_errors:
            row["metrics_error"] = b.metric_errors[name]
        if new_m is not None and old_m is not None:
            row["workers"] = {
                w: {
                    "up": bool(v.get("worker_up", 0)),
                    "rx_pps": round(
                        _rate(
                            v.get("rx_packets_total", 0),
                            old_m["workers"].get(w, {}).get("rx_packets_total", 0),
                            dt,
                        ),
                        1,
                    ),
                    "tx_pps": round(
                        _rate(
                            v.get("tx_packets_total", 0),
                            old_m["workers"].get(w, {}).get("tx_packets_total", 0),
                            dt,
                        ),
                        1,
                    ),
                    "rx_total": int(v.get("rx_packets_total", 0)),
                    "cpu_percent": _cpu(a.worker_ticks, b.worker_ticks, name, w, dt),
                }
                for w, v in sorted(new_m["workers"].items())
            }
            row["drops_per_s"] = {
                r: round(_rate(v, old_m["drops"].get(r, 0), dt), 1)
                for r, v in sorted(new_m["drops"].items())
            }
            row["drops_total"] = {r: int(v) for r, v in sorted(new_m["drops"].items())}
            row["circuits"] = int(new_m.get("circuits", 0))
        sites[name] = row
    return {"interval_s": round(dt, 3), "links": links, "sites": sites, "problems": b.problems}


def _cpu(
    a: dict[str, dict[str, int]], b: dict[str, dict[str, int]], site: str, w: str, dt: float
) -> float | None:
    """Worker ``w``'s CPU % between two samples (None if not known in both)."""
    old, new = a.get(site, {}).get(w), b.get(site, {}).get(w)
    if old is None or new is None or new < old:
        return None
    return round(_rate(new, old, dt) / TICKS * 100, 1)


def _fmt_bps(bps: float) -> str:
    for unit, div in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if bps >= div:
            return f"{bps / div:.1f} {unit}bit/s"
    return f"{bps:.0f} bit/s"


def view(run_name: str, r: dict[str, Any]) -> Any:
    """The rich renderable of one set of rates."""
    from rich.console import Group
    from rich.table import Table
    from rich.text import Text

    lt = Table(title=f"links of run {run_name} (kernel counters, first end)", expand=True)
    for col in ("link", "a→b pkt/s", "b→a pkt/s", "a→b", "b→a", "drops/s"):
        lt.add_column(col, justify="left" if col == "link" else "right")
    for name, v in r["links"].items():
        if v is None:
            lt.add_row(name, "-", "-", "-", "-", "-")
            continue
        lt.add_row(
            name,
            f"{v['pps_ab']:.0f}",
            f"{v['pps_ba']:.0f}",
            _fmt_bps(v["bps_ab"]),
            _fmt_bps(v["bps_ba"]),
            Text(f"{v['drops_per_s']:.0f}", style="red" if v["drops_per_s"] else ""),
        )
    st = Table(title="sites (Prometheus metrics; CPU of the site's processes)", expand=True)
    cols = ("site", "site CPU", "worker", "up", "worker CPU", "rx pkt/s", "tx pkt/s",
            "drops/s by reason")  # fmt: skip
    for col in cols:
        st.add_column(col, justify="left" if col in ("site", "drops/s by reason") else "right")
    for name, v in r["sites"].items():
        cpu = f"{v['cpu_percent']:.0f}%"
        if not v.get("workers"):
            st.add_row(name, cpu, "-", "-", "-", "-", "-", v.get("metrics_error", ""))
            continue
        drops = ", ".join(f"{k} {x:.0f}" for k, x in v["drops_per_s"].items() if x) or "-"
        for k, (w, wv) in enumerate(v["workers"].items()):
            st.add_row(
                name if k == 0 else "",
                cpu if k == 0 else "",
                w,
                "yes" if wv["up"] else Text("NO", style="bold red"),
                "-" if wv.get("cpu_percent") is None else f"{wv['cpu_percent']:.0f}%",
                f"{wv['rx_pps']:.0f}",
                f"{wv['tx_pps']:.0f}",
                Text(drops, style="red" if drops != "-" else "") if k == 0 else "",
            )
    parts: list[Any] = [lt, st]
    for p in r["problems"]:
        parts.append(Text(p, style="yellow"))
    parts.append(Text(f"every {r['interval_s']:.1f} s; Ctrl-C to quit", style="dim"))
    return Group(*parts)


def main(args: Any) -> int:
    """``testbed top`` (see :func:`add_parser`)."""
    from testbed.graph import run_topology

    run = args.pick(args.run)
    try:
        topo = run_topology(run)
    except ValueError as exc:
        print(f"testbed top: {exc}", file=sys.stderr)
        return 2
    if not 0.1 <= args.interval <= 60:
        print("testbed top: --interval must be 0.1..60 s", file=sys.stderr)
        return 2
    plan = planmod.make(topo)
    controls = live.load_control(run)
    if args.token:
        for s in topo.of_kind("site"):
            ctl = plan.nodes[s.name].control
            controls[s.name] = live.Control(
                f"http://{ctl.address if ctl else '127.0.0.1'}:{args.control_port}", args.token
            )
    try:
        prev = sample(run, topo, controls, plan)
        if args.once or args.json:
            time.sleep(args.interval)
            r = rates(prev, sample(run, topo, controls, plan))
            if args.json:
                print(json.dumps(r, indent=1))
            else:
                from rich.console import Console

                Console().print(view(run.name, r))
            return 0
        from rich.console import Console
        from rich.live import Live

        console = Console()
        if not console.is_terminal:  # a pipe or a file: one block per sample, like top -b
            while True:
                time.sleep(args.interval)
                cur = sample(run, topo, controls, plan)
                console.print(view(run.name, rates(prev, cur)))
                sys.stdout.flush()
                prev = cur
        with Live(view(run.name, rates(prev, prev)), console=console, refresh_per_second=4) as lv:
            while True:
                time.sleep(args.interval)
                cur = sample(run, topo, controls, plan)
                lv.update(view(run.name, rates(prev, cur)))
                prev = cur
    except KeyboardInterrupt:
        return 0


def add_parser(sub: Any, pick: Any) -> None:
    """Register ``testbed top`` (``pick`` resolves the run argument)."""
    p = sub.add_parser("top", help="live packet rates, drops by reason and worker load of a run")
    p.add_argument("run", nargs="?")
    p.add_argument("--interval", type=float, default=1.0, help="seconds between samples")
    p.add_argument("--once", action="store_true", help="one sample, then exit")
    p.add_argument("--json", action="store_true", help="one sample as JSON, then exit")
    p.add_argument("--token", help="ISP token of the sites' control APIs (else control.json)")
    p.add_argument("--control-port", type=int, default=8080)
    p.set_defaults(fn=main, pick=pick)

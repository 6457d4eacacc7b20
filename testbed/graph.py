"""Drawings of a topology, and of what a running testbed has installed on it (``testbed graph``).

:func:`drawing` turns a :class:`~testbed.topology.Topology` into a Graphviz graph: hosts,
routers, sites (with their public IPs), DNS/FIS/PSP nodes, every data link with its name and
shaping, and the control network drawn apart (its own cluster, dashed). An :class:`Overlay`
adds what is installed or what packets did, as plain data (JSON-able, so a caller in another
package or process can hand it over):

* ``paths``: coloured paths (a form-1 circuit, or the way a scenario's packets went) given by
  their hops; the nodes between two hops are the ones the static routes really use
  (:func:`testbed.plan.forward_path`); each hop's circuit label is written on the edge entering
  it, and the path's steps are numbered;
* ``diversions``: form-3 destination prefixes a router diverts to its site;
* ``policy``: form-2 policy routes (DSCP 43 to the site) of a router;
* ``notes``: a line of text added under a node (e.g. packets counted there).

Layout and rendering are Graphviz's (``dot``; the Debian ``graphviz`` package), through the
``graphviz`` Python binding, which only writes DOT text and runs the program.
"""

from __future__ import annotations

import html
import ipaddress
import itertools
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import graphviz

from testbed import plan as planmod
from testbed.topology import Topology

__all__ = ["FORMATS", "Overlay", "PathOverlay", "drawing", "render", "write"]

FORMATS = ("svg", "png", "pdf", "dot")
MAX_PATHS = 64
MAX_HOPS = 64
MAX_TEXT = 200
MAX_NODES = 1000  #: larger topologies are refused (2000 nodes took 26 s to draw here)
MAX_OVERLAY_FILE = 1 << 20  #: bytes of an --overlay file
MAX_OVERLAYS = 256  #: drawings from one --overlay file
#: colours of successive paths (colour-blind safe, Okabe-Ito)
PALETTE = ("#0072B2", "#D55E00", "#009E73", "#CC79A7", "#E69F00", "#56B4E9", "#000000")
_STYLE = {  # kind -> node attributes
    "host": {"shape": "box", "style": "rounded,filled", "fillcolor": "#e8f1fb"},
    "router": {"shape": "ellipse", "style": "filled", "fillcolor": "#eeeeee"},
    "site": {"shape": "box3d", "style": "filled", "fillcolor": "#fff2cc"},
    "dns": {"shape": "note", "style": "filled", "fillcolor": "#e2f0d9"},
    "fis": {"shape": "cylinder", "style": "filled", "fillcolor": "#fbe5d6"},
    "psp": {"shape": "hexagon", "style": "filled", "fillcolor": "#ede2f6"},
}
_GRAPH = {"labelloc": "t", "fontsize": "18", "fontname": "Helvetica", "rankdir": "LR",
          "nodesep": "0.45", "ranksep": "0.7", "newrank": "true"}  # fmt: skip
_BRIDGE = {"shape": "circle", "width": "0.3", "fontsize": "8", "style": "dashed",
           "color": "#999999"}  # fmt: skip
_FORM3 = "#C0392B"
_FORM2 = "#7D3C98"


@dataclass
class PathOverlay:
    """A path drawn on the topology: ``hops`` are node names, ``labels`` the circuit label a
    packet carries into each hop (``None`` where there is none)."""

    name: str
    hops: list[str]
    labels: list[int | None] = field(default_factory=list)
    note: str = ""
    color: str = ""

    def __post_init__(self) -> None:
        if not self.labels:
            self.labels = [None] * len(self.hops)
        if len(self.labels) != len(self.hops):
            raise ValueError(
                f"path {self.name!r}: {len(self.hops)} hops but {len(self.labels)} labels"
            )


@dataclass
class Overlay:
    """What to draw over the topology (see the module docstring); all plain data."""

    title: str = ""
    paths: list[PathOverlay] = field(default_factory=list)
    diversions: dict[str, list[str]] = field(default_factory=dict)  #: router -> prefixes
    policy: dict[str, str] = field(default_factory=dict)  #: router -> what it routes to its site
    notes: dict[str, str] = field(default_factory=dict)  #: node -> extra line

    def to_json(self) -> dict[str, Any]:
        return {
            "title": self.title,
            "paths": [
                {
                    "name": p.name,
                    "hops": p.hops,
                    "labels": p.labels,
                    "note": p.note,
                    "color": p.color,
                }
                for p in self.paths
            ],
            "diversions": self.diversions,
            "policy": self.policy,
            "notes": self.notes,
        }

    @classmethod
    def from_json(cls, doc: Any) -> Overlay:
        """Validate an overlay's JSON form (``ValueError`` naming the bad field)."""
        if not isinstance(doc, dict):
            raise ValueError("an overlay is a JSON object")
        unknown = set(doc) - {"title", "paths", "diversions", "policy", "notes"}
        if unknown:
            raise ValueError(f"overlay: unknown field(s) {sorted(unknown)}")
        paths = doc.get("paths", [])
        if not isinstance(paths, list) or len(paths) > MAX_PATHS:
            raise ValueError(f"overlay field 'paths': a list of at most {MAX_PATHS} paths")
        out = cls(title=_text(doc.get("title", ""), "title"))
        for i, p in enumerate(paths):
            where = f"overlay paths[{i}]"
            if not isinstance(p, dict) or not isinstance(p.get("hops"), list):
                raise ValueError(f"{where}: an object with a 'hops' list")
            hops = p["hops"]
            if not 2 <= len(hops) <= MAX_HOPS or not all(isinstance(h, str) for h in hops):
                raise ValueError(f"{where} 'hops': 2..{MAX_HOPS} node names")
            labels = p.get("labels") or [None] * len(hops)
            if not isinstance(labels, list) or not all(
                x is None or (isinstance(x, int) and not isinstance(x, bool) and 0 <= x < 2**32)
                for x in labels
            ):
                raise ValueError(f"{where} 'labels': null or 0..2^32-1 per hop")
            color = _text(p.get("color", ""), f"{where} 'color'")
            if color and not (color.startswith("#") and len(color) in (7, 9)):
                raise ValueError(f"{where} 'color': #rrggbb")
            out.paths.append(
                PathOverlay(
                    _text(p.get("name", f"path {i + 1}"), f"{where} 'name'"),
                    hops,
                    labels,
                    _text(p.get("note", ""), f"{where} 'note'"),
                    color,
                )
            )
        for key in ("diversions", "policy", "notes"):
            value = doc.get(key, {})
            if not isinstance(value, dict) or len(value) > 4 * MAX_PATHS:
                raise ValueError(f"overlay field {key!r}: an object keyed by node name")
            for node, v in value.items():
                if key == "diversions":
                    if not isinstance(v, list) or len(v) > MAX_HOPS:
                        raise ValueError(f"overlay diversions[{node!r}]: a list of prefixes")
                    try:
                        out.diversions[node] = [str(ipaddress.IPv4Network(x)) for x in v]
                    except (TypeError, ValueError) as exc:
                        raise ValueError(f"overlay diversions[{node!r}]: {exc}") from None
                else:
                    getattr(out, key)[node] = _text(v, f"overlay {key}[{node!r}]")
        return out


def _text(value: Any, where: str) -> str:
    if not isinstance(value, str) or len(value) > MAX_TEXT:
        raise ValueError(f"{where}: a string of at most {MAX_TEXT} characters")
    return value


def _shaping(lp: planmod.LinkPlan) -> str:
    s = lp.spec
    parts = []
    if s.delay_ms:
        parts.append(f"{s.delay_ms:g} ms" + (f" ±{s.jitter_ms:g}" if s.jitter_ms else ""))
    if s.loss_pct:
        parts.append(f"{s.loss_pct:g}% loss")
    if s.rate_bps:
        r = s.rate_bps
        parts.append(
            f"{r / 1e9:g} Gbit/s"
            if r >= 10**9
            else f"{r / 1e6:g} Mbit/s"
            if r >= 10**6
            else f"{r / 1e3:g} kbit/s"
        )
    return ", ".join(parts)


def _node_label(topo: Topology, p: planmod.NodePlan, note: str) -> str:
    spec = topo.nodes[p.name]
    rows = [f"<B>{html.escape(p.name)}</B>"]
    if p.kind == "site":
        rows.append(f"site · public {p.public_ip}")
        rows.append(f"{spec.compute_nodes} compute node{'s' if spec.compute_nodes != 1 else ''}")
    elif p.kind == "host":
        rows.append(f"host {p.address or ''}")
        if spec.prefix:
            rows.append(f"owns {spec.prefix}")
    elif p.kind == "dns":
        rows.append(f"DNS (knot) {spec.zone}")
    elif p.kind == "fis":
        rows.append(f"FIS ({spec.engine})")
    elif p.kind == "psp":
        rows.append("PSP")
    else:
        rows.append(p.kind)
    if note:
        rows.append(f'<FONT COLOR="#C0392B">{html.escape(note)}</FONT>')
    return "<" + "<BR/>".join(rows) + ">"


def drawing(
    topo: Topology, overlay: Overlay | None = None, plan: planmod.Plan | None = None
) -> graphviz.Digraph:
    """The Graphviz graph of ``topo`` with ``overlay`` drawn on it.

    Raises ``ValueError`` if the overlay names a node the topology does not have or a path
    whose hops are not connected.
    """
    if len(topo.nodes) > MAX_NODES:
        raise ValueError(f"{topo.name} has {len(topo.nodes)} nodes; drawings stop at {MAX_NODES}")
    plan = plan or planmod.make(topo)
    ov = overlay or Overlay()
    for node in [*ov.diversions, *ov.policy, *ov.notes, *(h for p in ov.paths for h in p.hops)]:
        if node not in topo.nodes:
            raise ValueError(f"overlay names {node!r}, which is not a node of {topo.name}")
    title = f"{topo.name}" + (f": {ov.title}" if ov.title else "")
    g = graphviz.Digraph(topo.name, engine="dot")
    g.attr(label=title, **_GRAPH)
    g.attr("node", fontname="Helvetica", fontsize="11")
    g.attr("edge", fontname="Helvetica", fontsize="10")
    linked = {n for lp in plan.links for n in (lp.spec.a, lp.spec.b)}

    def add_node(sub: graphviz.Digraph, p: planmod.NodePlan, where: str = "") -> None:
        label = _node_label(topo, p, ov.notes.get(p.name, ""))
        sub.node(p.name, label, id=f"node-{p.name}", tooltip=f"{p.name} ({p.kind}{where})",
                 **_STYLE.get(p.kind, {}))  # fmt: skip

    for name, p in plan.nodes.items():
        if name in linked or not p.control:  # control-only nodes go in the control cluster
            add_node(g, p)
    for lp in plan.links:
        shaping = _shaping(lp)
        label = lp.spec.name + (f"\n{shaping}" if shaping else "")
        g.edge(
            lp.spec.a,
            lp.spec.b,
            label=label,
            dir="none",
            color="#777777",
            id=f"link-{lp.spec.name}",
            tooltip=f"{lp.spec.name} {lp.subnet}",
            penwidth="1.5" if shaping else "1",
        )
    if plan.control_ports:
        with g.subgraph(name="cluster_control") as c:
            c.attr(
                label=f"control network {plan.control_subnet}",
                style="dashed,rounded",
                color="#999999",
                fontcolor="#666666",
            )
            c.node("control", "control\nbridge", id="node-control", **_BRIDGE)
            for name, p in plan.nodes.items():
                if name not in linked and p.control:
                    add_node(c, p, ", control network only")
        for name, _port, _idx in plan.control_ports:
            ctl = plan.nodes[name].control
            inside = name not in linked
            g.edge(
                name,
                "control",
                style="dashed",
                color="#aaaaaa",
                dir="none",
                constraint="true" if inside else "false",
                fontcolor="#888888",
                id=f"control-{name}",
                label=ctl.address if ctl and inside else "",
                taillabel=ctl.address if ctl and not inside else "",
            )
    site_of = {s.router: s.name for s in topo.of_kind("site") if s.router}
    attachments = [  # (form, router, text, colour, line style)
        *((3, r, ", ".join(v), _FORM3, "dashed") for r, v in ov.diversions.items() if v),
        *((2, r, v, _FORM2, "dotted") for r, v in ov.policy.items() if v),
    ]
    for form, router, text, color, style in attachments:
        if router in site_of:
            g.edge(router, site_of[router], label=f"form {form}: {text}", color=color,
                   fontcolor=color, style=style, penwidth="2", constraint="false",
                   id=f"form{form}-{router}")  # fmt: skip
    legend = []
    for k, path in enumerate(ov.paths):
        color = path.color or PALETTE[k % len(PALETTE)]
        nodes = _expand(plan, path)
        for step, ((a, _), (b, lb)) in enumerate(itertools.pairwise(nodes), 1):
            label = f"{step}" + (f": label {lb:#x}" if lb is not None else "")
            g.edge(
                a,
                b,
                label=label,
                color=color,
                fontcolor=color,
                penwidth="2.5",
                constraint="false",
                id=f"path{k}-step{step}",
                arrowsize="0.8",
                tooltip=f"{path.name} step {step}: {a} -> {b}",
            )
        hops = " → ".join(
            h + (f" [{lab:#x}]" if lab is not None else "")
            for h, lab in zip(path.hops, path.labels)
        )
        legend.append(
            f'<TR><TD ALIGN="LEFT"><FONT COLOR="{color}"><B>{html.escape(path.name)}</B>: '
            f"{html.escape(hops)}"
            + (f" — {html.escape(path.note)}" if path.note else "")
            + "</FONT></TD></TR>"
        )
    if legend:
        g.node(
            "legend",
            '<<TABLE BORDER="0" CELLBORDER="0" CELLSPACING="2">' + "".join(legend) + "</TABLE>>",
            shape="box",
            style="rounded",
            color="#cccccc",
            id="legend",
        )
    return g


def _expand(plan: planmod.Plan, p: PathOverlay) -> list[tuple[str, int | None]]:
    """The path's hops with the nodes the routes use between them: (node, label into it)."""
    out: list[tuple[str, int | None]] = [(p.hops[0], p.labels[0])]
    for hop, label in zip(p.hops[1:], p.labels[1:]):
        try:
            between = planmod.forward_path(plan, out[-1][0], hop)
        except ValueError as exc:
            raise ValueError(f"path {p.name!r}: {exc}") from None
        out += [(n, None) for n in between[1:-1]]
        out.append((hop, label))
    return out


def render(g: graphviz.Digraph, out: str | Path) -> Path:
    """Lay ``g`` out and write it to ``out``; the format is the file's suffix (``FORMATS``)."""
    path = Path(out)
    fmt = path.suffix.lstrip(".").lower()
    if fmt not in FORMATS:
        raise ValueError(f"{path}: the output must end in one of .{', .'.join(FORMATS)}")
    path.parent.mkdir(parents=True, exist_ok=True)
    if fmt == "dot":
        path.write_text(g.source)
        return path
    if fmt == "png":
        g = g.copy()
        g.attr(dpi="110")
    try:
        data = g.pipe(format=fmt, encoding=None)
    except graphviz.ExecutableNotFound:
        raise ValueError(
            "Graphviz's 'dot' program is not installed (Debian: apt-get install graphviz)"
        ) from None
    path.write_bytes(data)
    return path


def write(topo: Topology, out: str | Path, overlay: Overlay | None = None) -> Path:
    """:func:`drawing` then :func:`render`."""
    return render(drawing(topo, overlay), out)


# --- a running testbed ----------------------------------------------------------------------


def run_topology(run: Any) -> Topology:
    """The topology a run was built from (recorded in its state, addresses included)."""
    from testbed.topology import from_dict

    data = run.data.get("topology_data")
    if not data:
        raise ValueError(f"run {run.name} recorded no topology (phase {run.data.get('phase')})")
    return from_dict(data, source=f"run {run.name}")


def live_overlay(
    run: Any, topo: Topology, controls: dict[str, Any] | None = None
) -> tuple[Overlay, list[str]]:
    """(overlay, problems): what ``run`` has installed right now.

    Form-3 diversions and form-2 policy routes from each router's kernel; circuits from the
    control API of every site in ``controls`` (default: those registered for the run).
    Something that cannot be read is reported in ``problems``, not raised.
    """
    from testbed import live

    plan = planmod.make(topo)
    ov = Overlay(title=f"installed in run {run.name}")
    problems: list[str] = []
    for s in topo.of_kind("site"):
        router = str(s.router)
        try:
            rs = live.router_state(run.ns(router))
        except (OSError, ValueError) as exc:
            problems.append(f"{router}: {exc}")
            continue
        if rs.diversions:
            n = f" ({rs.form3_packets} pkts)" if rs.form3_packets is not None else ""
            ov.diversions[router] = rs.diversions
            ov.notes[router] = f"form 3 diverted{n}"
        if any("DSCP 43" in r for r in rs.policy_rules):
            n = f" ({rs.form2_packets} pkts)" if rs.form2_packets is not None else ""
            ov.policy[router] = f"DSCP 43{n}"
    addresses = {}
    for name, p in plan.nodes.items():
        for i in p.ifaces:
            addresses[i.address] = name
        if p.public_ip:
            addresses[p.public_ip] = name
    controls = live.load_control(run) if controls is None else controls
    circuits, more = live.installed_circuits(run, controls, addresses)
    problems += more
    for c in circuits[:MAX_PATHS]:
        ov.paths.append(PathOverlay(c["name"], c["hops"], c["labels"]))
    if not controls:
        problems.append(
            "no site control API registered for this run: circuits not shown "
            "(pass --token and --psp)"
        )
    return ov, problems


def main(args: Any) -> int:
    """``testbed graph`` (see :func:`add_parser`)."""
    import json
    import sys

    from testbed import live, state

    out = Path(args.output)
    run = None
    try:
        run = state.Run.load(args.target)
    except (LookupError, OSError):
        pass
    try:
        if run is not None:
            topo = run_topology(run)
        else:
            topo = args.load(args.target)
        overlays: dict[str, Overlay] = {"": Overlay()}
        if run is not None and not args.no_live:
            controls = live.load_control(run)
            if args.token:
                plan = planmod.make(topo)
                for s in topo.of_kind("site"):
                    ctl = plan.nodes[s.name].control
                    host = ctl.address if ctl else "127.0.0.1"
                    controls[s.name] = live.Control(
                        f"http://{host}:{args.control_port}", args.token, args.psp or []
                    )
            ov, problems = live_overlay(run, topo, controls)
            for p in problems:
                print(f"testbed graph: {p}", file=sys.stderr)
            overlays = {"": ov}
        if args.overlay:
            try:
                with open(args.overlay, "rb") as fh:
                    raw = fh.read(MAX_OVERLAY_FILE + 1)
                if len(raw) > MAX_OVERLAY_FILE:
                    raise ValueError(f"larger than {MAX_OVERLAY_FILE} bytes")
                doc = json.loads(raw)
            except (OSError, ValueError) as exc:
                raise ValueError(f"overlay {args.overlay}: {exc}") from None
            if isinstance(doc, dict) and isinstance(doc.get("overlays"), dict):
                if "{name}" not in args.output:
                    raise ValueError("several overlays need an output like 'DIR/{name}.svg'")
                if len(doc["overlays"]) > MAX_OVERLAYS:
                    raise ValueError(f"at most {MAX_OVERLAYS} overlays in one file")
                overlays = {n: Overlay.from_json(o) for n, o in doc["overlays"].items()}
            else:
                given = Overlay.from_json(doc)
                base = overlays[""]
                base.paths += given.paths
                base.diversions.update(given.diversions)
                base.policy.update(given.policy)
                base.notes.update(given.notes)
                base.title = given.title or base.title
        for name, ov in overlays.items():
            path = Path(str(out).replace("{name}", _safe(name)))
            render(drawing(topo, ov), path)
            print(f"wrote {path}" + (f" ({len(ov.paths)} paths)" if ov.paths else ""))
    except ValueError as exc:
        print(f"testbed graph: {exc}", file=sys.stderr)
        return 2
    return 0


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name)[:64] or "overlay"


def add_parser(sub: Any, load: Any) -> None:
    """Register ``testbed graph`` on the CLI's subparsers (``load`` reads a topology arg)."""
    p = sub.add_parser(
        "graph",
        help="draw a topology, or a run with what is installed on it (Graphviz)",
        description="Draw TOPOLOGY (a file, a shipped name, line:K) or a RUN: nodes, links "
        "with their shaping, the control network; for a run also its circuits, form-3 "
        "diversions and form-2 policy routes.",
    )
    p.add_argument("target", help="topology (file, shipped name, line:K) or run name")
    p.add_argument(
        "-o",
        "--output",
        required=True,
        help="FILE.svg, .png, .pdf or .dot ('{name}' for several overlays)",
    )
    p.add_argument(
        "--overlay",
        metavar="JSON",
        help="extra overlay as plain data (paths, diversions, policy, notes), or "
        '{"overlays": {name: overlay}} for one drawing each',
    )
    p.add_argument("--no-live", action="store_true", help="a run's topology only")
    p.add_argument("--token", help="ISP token of the sites' control APIs (else control.json)")
    p.add_argument("--psp", action="append", help="PSP whose circuits to list (repeatable)")
    p.add_argument("--control-port", type=int, default=8080)
    p.set_defaults(fn=main, load=load)

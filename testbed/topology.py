"""Topology files: the nodes, links and networks of a testbed, loaded and validated.

A topology is a TOML file (read with the standard library's ``tomllib``)::

    name = "example"
    [control]                       # the separate control network (optional)
    subnet = "198.19.0.0/24"

    [[node]]
    name = "S"
    kind = "host"                   # host | router | site | dns | fis | psp
    prefix = "198.18.10.0/24"       # host only: subnet of its (first) link

    [[node]]
    name = "C1"
    kind = "site"
    router = "R1"                   # co-located router (a link to it is implied)
    public_ip = "198.18.254.1"      # optional, allocated when absent

    [[link]]
    a = "S"
    b = "R1"
    delay = "5ms"                   # one way, each direction
    jitter = "1ms"
    loss = 0.5                      # percent
    rate = "20mbit"

Every mistake is reported as a :class:`TopologyError` naming the file, the line and the field,
e.g. ``fig2.toml:14: node "C1" field "router": "R9" is not a node``.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import re
import tomllib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = [
    "KINDS",
    "LINK_FIELDS",
    "NODE_FIELDS",
    "TESTBED_SPACE",
    "LinkSpec",
    "NodeSpec",
    "Topology",
    "TopologyError",
    "load",
    "parse",
]

#: Every testbed address comes from here (RFC 2544 benchmarking space).
TESTBED_SPACE = ipaddress.IPv4Network("198.18.0.0/15")
KINDS = ("host", "router", "site", "dns", "fis", "psp")
_CONTROL_BY_DEFAULT = {"site", "dns", "fis", "psp"}
_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_]{0,23}$")
_TOP_KEYS = {"name", "description", "control", "node", "link", "demo"}
_TIME = re.compile(r"^\s*([0-9]*\.?[0-9]+)\s*(us|ms|s)\s*$")
_RATE = re.compile(r"^\s*([0-9]*\.?[0-9]+)\s*(bit|kbit|mbit|gbit)\s*$", re.IGNORECASE)
_RATE_MULT = {"bit": 1, "kbit": 10**3, "mbit": 10**6, "gbit": 10**9}
_TIME_MULT = {"us": 0.001, "ms": 1.0, "s": 1000.0}


class TopologyError(ValueError):
    """A topology that cannot be built; the message names file, line and field.

    ``errors`` holds every mistake found (in line order), each a :class:`TopologyError`;
    the message of one raised for several starts with the first and lists all, one a line.
    """

    def __init__(self, source: str, line: int | None, where: str, message: str) -> None:
        loc = f"{source}:{line}" if line else source
        super().__init__(f"{loc}: {where}: {message}" if where else f"{loc}: {message}")
        self.source = source
        self.line = line
        self.where = where
        self.message = message
        self.errors: list[TopologyError] = [self]

    @classmethod
    def of(cls, errors: list[TopologyError]) -> TopologyError:
        """One exception for ``errors`` (at least one), sorted by line."""
        errors = sorted(errors, key=lambda e: (e.line is None, e.line or 0))
        head = errors[0]
        exc = cls(head.source, head.line, head.where, head.message)
        if len(errors) > 1:
            exc.args = ("\n".join(str(e) for e in errors) + f"\n({len(errors)} errors)",)
        exc.errors = errors
        return exc


@dataclass(frozen=True)
class LinkSpec:
    """A point-to-point data link; shaping applies to each direction."""

    a: str
    b: str
    delay_ms: float = 0.0
    jitter_ms: float = 0.0
    loss_pct: float = 0.0
    rate_bps: int | None = None
    subnet: ipaddress.IPv4Network | None = None
    name: str = ""

    @property
    def shaped(self) -> bool:
        return bool(self.delay_ms or self.jitter_ms or self.loss_pct or self.rate_bps)


@dataclass
class NodeSpec:
    """A node: a network namespace of one kind."""

    name: str
    kind: str
    control: bool = False
    router: str | None = None  # site: its co-located router
    public_ip: ipaddress.IPv4Address | None = None  # site
    compute_nodes: int = 1  # site
    nodes: int = 1  # site: compute-node machines (> 1: an LB and an internal network)
    fis_replicas: int = 0  # site: FIS machines (a Redis primary, M-1 replicas, M Sentinels)
    prefix: ipaddress.IPv4Network | None = None  # host
    zone: str = "pc.test."  # dns: the discovery zone
    signed_reverse: list[ipaddress.IPv4Network] = field(default_factory=list)  # dns
    engine: str = "sqlite"  # fis: "redis" starts a Redis server
    description: str = ""


@dataclass
class Topology:
    """A validated topology (see :func:`load`)."""

    name: str
    nodes: dict[str, NodeSpec]
    links: list[LinkSpec]
    control_subnet: ipaddress.IPv4Network = field(
        default_factory=lambda: ipaddress.IPv4Network("198.19.0.0/24")
    )
    source: str = "<topology>"
    description: str = ""
    #: the optional ``[demo]`` table: hints for the end-to-end demo (which hosts, sites, PSP and
    #: DNS its scenarios use). The testbed only checks that it is a table; the demo (``pcdemo``,
    #: which sits above the testbed) validates its keys.
    demo: dict[str, Any] = field(default_factory=dict)

    def of_kind(self, kind: str) -> list[NodeSpec]:
        return [n for n in self.nodes.values() if n.kind == kind]

    def neighbours(self, name: str) -> list[str]:
        return [lk.b if lk.a == name else lk.a for lk in self.links if name in (lk.a, lk.b)]


class _Locator:
    """Finds the line of a field in the TOML text, for error messages."""

    def __init__(self, text: str) -> None:
        self.lines = text.splitlines()

    def table_line(self, table: str, index: int) -> int | None:
        count = -1
        for no, line in enumerate(self.lines, 1):
            if line.strip().startswith(f"[[{table}]]"):
                count += 1
                if count == index:
                    return no
        return None

    def key_line(self, table: str | None, index: int, key: str | None) -> int | None:
        start = self.table_line(table, index) if table else 0
        if table and start is None:
            return None
        if key is None:
            return start
        pat = re.compile(rf"^\s*{re.escape(key)}\s*=")
        for no in range((start or 0) + (1 if table else 0), len(self.lines) + 1):
            line = self.lines[no - 1]
            if table and line.strip().startswith("["):
                break
            if pat.match(line):
                return no
        return start


def parse_time_ms(value: Any) -> float:
    """``"10ms"`` / ``"1.5ms"`` / ``"500us"`` / ``"1s"`` / a number of ms -> milliseconds."""
    if isinstance(value, bool):
        raise ValueError(f"{value!r} is not a duration")
    if isinstance(value, int | float):
        ms = float(value)
    else:
        m = _TIME.match(str(value))
        if not m:
            raise ValueError(f"{value!r} is not a duration like '10ms', '500us' or '1s'")
        ms = float(m.group(1)) * _TIME_MULT[m.group(2)]
    if ms < 0 or ms > 60_000:
        raise ValueError(f"{value!r} is out of range (0..60s)")
    return ms


def parse_rate_bps(value: Any) -> int:
    """``"20mbit"`` / ``"500kbit"`` / ``"1gbit"`` -> bits per second."""
    m = _RATE.match(str(value)) if isinstance(value, str) else None
    if not m:
        raise ValueError(f"{value!r} is not a rate like '20mbit', '500kbit' or '1gbit'")
    bps = int(float(m.group(1)) * _RATE_MULT[m.group(2).lower()])
    if bps < 8000:
        raise ValueError(f"{value!r} is below 8kbit")
    return bps


def load(path: str | Path) -> Topology:
    """Read and validate a topology file."""
    p = Path(path)
    try:
        text = p.read_text()
    except OSError as exc:
        raise TopologyError(str(p), None, "", f"cannot read: {exc.strerror}") from None
    return parse(text, source=str(p))


def parse(text: str, source: str = "<topology>") -> Topology:
    """Validate topology TOML ``text`` (``source`` names it in errors)."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        m = re.search(r"line (\d+)", str(exc))
        raise TopologyError(
            source, int(m.group(1)) if m else None, "", f"not TOML: {exc}"
        ) from None
    return from_dict(data, source=source, text=text)


# --- field tables: one row per key (add a key = add a row) -----------------------------------


@dataclass(frozen=True)
class Field:
    """One key of a ``[[node]]`` or ``[[link]]`` table.

    ``conv`` turns the TOML value into the spec's value or raises ``ValueError`` with the
    message; ``kinds`` are the node kinds that may carry it (None: every kind); ``required``
    (with ``missing``, the message) applies to those kinds.
    """

    key: str
    attr: str
    conv: Callable[[Any], Any]
    kinds: tuple[str, ...] | None = None
    required: bool = False
    missing: str = "required"


def _node_name(v: Any) -> str:
    if not isinstance(v, str) or not _NAME.match(v):
        raise ValueError(f"{v!r} must be a letter then up to 23 letters, digits or _")
    return v


def _kind(v: Any) -> str:
    if v not in KINDS:
        raise ValueError(f"{v!r} is not one of {list(KINDS)}")
    return str(v)


def _bool(v: Any) -> bool:
    if not isinstance(v, bool):
        raise ValueError("must be true or false")
    return v


def _text(v: Any) -> str:
    if not isinstance(v, str):
        raise ValueError(f"{v!r} must be a string")
    return v


def _int_in(lo: int, hi: int) -> Callable[[Any], int]:
    def conv(v: Any) -> int:
        if not isinstance(v, int) or isinstance(v, bool) or not lo <= v <= hi:
            raise ValueError(f"must be {lo}..{hi}")
        return v

    return conv


def _one_of(*choices: str) -> Callable[[Any], str]:
    def conv(v: Any) -> str:
        if v not in choices:
            raise ValueError(f"must be {' or '.join(repr(c) for c in choices)}")
        return str(v)

    return conv


def _zone(v: Any) -> str:
    if not isinstance(v, str) or not re.match(r"^([A-Za-z0-9-]+\.)+$", v):
        raise ValueError(f"{v!r} is not an absolute name like 'pc.test.'")
    return v


def _small_subnet(what: str) -> Callable[[Any], ipaddress.IPv4Network]:
    def conv(v: Any) -> ipaddress.IPv4Network:
        net = _subnet(v)
        if net.prefixlen > 30:
            raise ValueError(f"{what} must be /30 or larger")
        return net

    return conv


def _reverse_prefixes(v: Any) -> list[ipaddress.IPv4Network]:
    if not isinstance(v, list):
        raise ValueError("must be a list of prefixes")
    nets = [_subnet(p) for p in v]
    for p in nets:
        if p.prefixlen % 8:
            raise ValueError(f"{p} must end on an octet boundary (/8, /16 or /24)")
    return nets


def _percent(v: Any) -> float:
    if isinstance(v, bool) or not isinstance(v, int | float) or not 0 <= v <= 100:
        raise ValueError(f"{v!r} must be a percentage 0..100")
    return float(v)


NODE_FIELDS: tuple[Field, ...] = (
    Field("name", "name", _node_name, required=True),
    Field("kind", "kind", _kind, required=True),
    Field("control", "control", _bool),
    Field("description", "description", _text),
    Field("router", "router", _node_name, ("site",), True, "the name of its co-located router"),
    Field("public_ip", "public_ip", lambda v: _address(v), ("site",)),
    Field("compute_nodes", "compute_nodes", _int_in(1, 64), ("site",)),
    # a multi-machine site (docs/cluster.md): an LB namespace, ``nodes`` compute-node
    # namespaces on an internal bridge, ``fis_replicas`` FIS machines on it (testbed/cluster.py)
    Field("nodes", "nodes", _int_in(1, 16), ("site",)),
    Field("fis_replicas", "fis_replicas", _int_in(0, 4), ("site",)),
    Field("prefix", "prefix", _small_subnet("a host prefix"), ("host",)),
    Field("zone", "zone", _zone, ("dns",)),
    Field("signed_reverse", "signed_reverse", _reverse_prefixes, ("dns",)),
    Field("engine", "engine", _one_of("sqlite", "redis"), ("fis",)),
)
LINK_FIELDS: tuple[Field, ...] = (
    Field("a", "a", _text, required=True, missing="the name of a node"),
    Field("b", "b", _text, required=True, missing="the name of a node"),
    Field("delay", "delay_ms", parse_time_ms),
    Field("jitter", "jitter_ms", parse_time_ms),
    Field("loss", "loss_pct", _percent),
    Field("rate", "rate_bps", parse_rate_bps),
    Field("subnet", "subnet", _small_subnet("a link subnet")),
    Field("name", "name", _text),
)
CONTROL_FIELDS: tuple[Field, ...] = (Field("subnet", "subnet", lambda v: _subnet(v)),)


class _Checker:
    """Collects every mistake (with its line) instead of stopping at the first."""

    def __init__(self, source: str, text: str) -> None:
        self.source = source
        self.loc = _Locator(text)
        self.has_text = bool(text)
        self.errors: list[TopologyError] = []

    def err(self, table: str | None, index: int, key: str | None, where: str, msg: str) -> None:
        line = self.loc.key_line(table, index, key) if self.has_text else None
        self.errors.append(TopologyError(self.source, line, where, msg))

    def fields(
        self,
        raw: dict[str, Any],
        rows: tuple[Field, ...],
        table: str | None,
        index: int,
        where: str,
        kind: str | None = None,
    ) -> dict[str, Any]:
        """The converted values of ``raw`` per ``rows``; every problem is recorded.

        ``kind`` None with node rows: the kind itself is wrong, so kind rules are not checked.
        """
        known = {f.key for f in rows}
        for key in raw:
            if key not in known:
                self.err(table, index, key, f'{where} field "{key}"',
                         f"unknown (expected one of {sorted(known)})")  # fmt: skip
        out: dict[str, Any] = {}
        for f in rows:
            applies = f.kinds is None or kind is None or kind in f.kinds
            if f.key not in raw:
                if f.required and applies and (f.kinds is None or kind is not None):
                    self.err(table, index, None, f'{where} field "{f.key}"', f.missing)
                continue
            if not applies:
                assert f.kinds is not None
                self.err(table, index, f.key, f'{where} field "{f.key}"',
                         f"only allowed for {'/'.join(f.kinds)} nodes")  # fmt: skip
                continue
            try:
                out[f.attr] = f.conv(raw[f.key])
            except ValueError as exc:
                self.err(table, index, f.key, f'{where} field "{f.key}"', str(exc))
        return out


def from_dict(data: dict[str, Any], source: str = "<topology>", text: str = "") -> Topology:
    """Validate an already-parsed topology (the dict form of the TOML file).

    Every mistake is reported, each with its line: the raised :class:`TopologyError` lists
    them all (``.errors``).
    """
    ck = _Checker(source, text)
    for key in data:
        if key not in _TOP_KEYS:
            ck.err(None, 0, key, f'field "{key}"', f"unknown (expected one of {sorted(_TOP_KEYS)})")
    raw_nodes = data.get("node", [])
    raw_links = data.get("link", [])
    if not isinstance(raw_nodes, list) or not raw_nodes:
        ck.err(None, 0, None, "", "a topology needs at least one [[node]]")
        raw_nodes = []
    if not isinstance(raw_links, list):
        ck.err(None, 0, "link", 'field "link"', "must be an array of tables ([[link]])")
        raw_links = []

    nodes: dict[str, NodeSpec] = {}
    node_index: dict[str, int] = {}  # name -> index of its [[node]] table
    named = {r.get("name") for r in raw_nodes if isinstance(r, dict)}  # valid or not
    for i, raw in enumerate(raw_nodes):
        if not isinstance(raw, dict):
            ck.err("node", i, None, f"node #{i + 1}", "must be a table")
            continue
        name = raw.get("name")
        ok_name = isinstance(name, str) and bool(_NAME.match(name))
        where = f'node "{name}"' if ok_name else f"node #{i + 1}"
        kind = raw.get("kind") if raw.get("kind") in KINDS else None
        vals = ck.fields(raw, NODE_FIELDS, "node", i, where, kind)
        if ok_name and name in nodes:
            ck.err("node", i, "name", f'{where} field "name"', "duplicate node name")
            continue
        if "name" not in vals or "kind" not in vals:
            continue
        vals.setdefault("control", vals["kind"] in _CONTROL_BY_DEFAULT)
        nodes[vals["name"]] = NodeSpec(**vals)
        node_index[vals["name"]] = i

    for name, spec in nodes.items():
        if (
            spec.kind == "site"
            and spec.router is not None
            and (spec.router not in nodes or nodes[spec.router].kind != "router")
        ):
            ck.err("node", node_index[name], "router", f'node "{name}" field "router"',
                   f"{spec.router!r} is not a router node")  # fmt: skip
        if spec.fis_replicas and spec.nodes <= 1:
            ck.err("node", node_index[name], "fis_replicas", f'node "{name}" field "fis_replicas"',
                   "needs nodes > 1 (the FIS machines sit on a multi-machine site's internal "
                   "network)")  # fmt: skip

    links: list[LinkSpec] = []
    pairs: set[frozenset[str]] = set()
    for i, raw in enumerate(raw_links):
        if not isinstance(raw, dict):
            ck.err("link", i, None, f"link #{i + 1}", "must be a table")
            continue
        a, b = raw.get("a"), raw.get("b")
        ends_ok = a in nodes and b in nodes
        where = f"link {a}-{b}" if ends_ok else f"link #{i + 1}"
        vals = ck.fields(raw, LINK_FIELDS, "link", i, where)
        for end in ("a", "b"):
            if end in raw and raw[end] not in nodes and raw[end] not in named:
                ck.err("link", i, end, f'{where} field "{end}"', f"{raw[end]!r} is not a node")
        if vals.get("jitter_ms") and not vals.get("delay_ms"):
            ck.err("link", i, "jitter", f'{where} field "jitter"', "jitter needs a delay")
        if not ends_ok:
            continue
        if a == b:
            ck.err("link", i, "b", f'{where} field "b"', "a link needs two different nodes")
            continue
        if frozenset((a, b)) in pairs:
            ck.err("link", i, "b", where, "duplicate link between the same nodes")
            continue
        pairs.add(frozenset((a, b)))
        vals.setdefault("name", f"{a}-{b}")
        links.append(LinkSpec(**vals))

    # implied site <-> router links
    for spec in nodes.values():
        if spec.kind == "site" and spec.router in nodes:
            if frozenset((spec.name, spec.router)) not in pairs:
                assert spec.router is not None
                links.append(
                    LinkSpec(a=spec.router, b=spec.name, name=f"{spec.router}-{spec.name}")
                )
                pairs.add(frozenset((spec.name, spec.router)))

    mentioned = {r.get(end) for r in raw_links if isinstance(r, dict) for end in ("a", "b")}
    # host prefixes become the subnet of the host's first link
    for name, spec in nodes.items():
        i = node_index[name]
        if spec.kind == "host" and not any(name in (lk.a, lk.b) for lk in links):
            if name not in mentioned:  # else its link is wrong, and reported already
                ck.err("node", i, "name", f'node "{name}"', "a host needs at least one link")
            continue
        if spec.prefix is None:
            continue
        idx = next(k for k, lk in enumerate(links) if name in (lk.a, lk.b))
        old = links[idx]
        if old.subnet is not None and old.subnet != spec.prefix:
            ck.err("node", i, "prefix", f'node "{name}" field "prefix"',
                   f"conflicts with subnet {old.subnet} of link {old.name}")  # fmt: skip
            continue
        links[idx] = dataclasses.replace(old, subnet=spec.prefix)

    control_subnet = ipaddress.IPv4Network("198.19.0.0/24")
    control = data.get("control", {})
    if not isinstance(control, dict):
        ck.err(None, 0, "control", 'field "control"', "must be a table")
    else:
        control_subnet = ck.fields(control, CONTROL_FIELDS, "control", 0, "[control]").get(
            "subnet", control_subnet
        )

    # address overlaps
    used: list[tuple[ipaddress.IPv4Network, str]] = [(control_subnet, "the control network")]
    used += [(lk.subnet, f"link {lk.name}") for lk in links if lk.subnet is not None]
    used += [
        (ipaddress.IPv4Network(spec.public_ip), f"public IP of site {spec.name}")
        for spec in nodes.values()
        if spec.public_ip is not None
    ]
    for x in range(len(used)):
        for y in range(x + 1, len(used)):
            if used[x][0].overlaps(used[y][0]):
                what = f"{used[x][1]} ({used[x][0]}) overlaps {used[y][1]} ({used[y][0]})"
                ck.errors.append(TopologyError(source, None, "addresses", what))
    demo = data.get("demo", {})
    if not isinstance(demo, dict):
        ck.err(None, 0, "demo", 'field "demo"', "must be a table ([demo])")
    if ck.errors:
        raise TopologyError.of(ck.errors)
    name = data.get("name", Path(source).stem)
    return Topology(
        name=str(name),
        nodes=nodes,
        links=links,
        control_subnet=control_subnet,
        source=source,
        description=str(data.get("description", "")),
        demo=demo,
    )


def _subnet(value: Any) -> ipaddress.IPv4Network:
    try:
        net = ipaddress.IPv4Network(str(value), strict=True)
    except ValueError as exc:
        raise ValueError(f"{value!r} is not an IPv4 prefix with host bits zero ({exc})") from None
    if not net.subnet_of(TESTBED_SPACE):
        raise ValueError(f"{net} is outside the testbed space {TESTBED_SPACE}")
    return net


def _address(value: Any) -> ipaddress.IPv4Address:
    try:
        addr = ipaddress.IPv4Address(str(value))
    except ValueError:
        raise ValueError(f"{value!r} is not an IPv4 address") from None
    if addr not in TESTBED_SPACE:
        raise ValueError(f"{addr} is outside the testbed space {TESTBED_SPACE}")
    return addr


def line(k: int, name: str | None = None) -> Topology:
    """A line of ``k`` routers, each with one host: ``2k`` nodes and ``2k-1`` links.

    The same node and link count as Mininet's ``--topo linear,k`` (k switches, k hosts).
    """
    if not 1 <= k <= 4000:
        raise ValueError("k must be 1..4000")
    data: dict[str, Any] = {"name": name or f"line{k}", "node": [], "link": []}
    for i in range(1, k + 1):
        data["node"].append({"name": f"r{i}", "kind": "router"})
        data["node"].append({"name": f"h{i}", "kind": "host"})
        data["link"].append({"a": f"h{i}", "b": f"r{i}"})
        if i > 1:
            data["link"].append({"a": f"r{i - 1}", "b": f"r{i}"})
    return from_dict(data, source=f"<line {k}>")

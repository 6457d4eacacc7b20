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

import ipaddress
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = [
    "KINDS",
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
_NODE_KEYS = {
    "name",
    "kind",
    "prefix",
    "router",
    "public_ip",
    "compute_nodes",
    "control",
    "zone",
    "signed_reverse",
    "engine",
    "description",
}
_LINK_KEYS = {"a", "b", "delay", "jitter", "loss", "rate", "subnet", "name"}
_TOP_KEYS = {"name", "description", "control", "node", "link"}
_TIME = re.compile(r"^\s*([0-9]*\.?[0-9]+)\s*(us|ms|s)\s*$")
_RATE = re.compile(r"^\s*([0-9]*\.?[0-9]+)\s*(bit|kbit|mbit|gbit)\s*$", re.IGNORECASE)
_RATE_MULT = {"bit": 1, "kbit": 10**3, "mbit": 10**6, "gbit": 10**9}
_TIME_MULT = {"us": 0.001, "ms": 1.0, "s": 1000.0}


class TopologyError(ValueError):
    """A topology that cannot be built; the message names file, line and field."""

    def __init__(self, source: str, line: int | None, where: str, message: str) -> None:
        loc = f"{source}:{line}" if line else source
        super().__init__(f"{loc}: {where}: {message}" if where else f"{loc}: {message}")
        self.source = source
        self.line = line
        self.where = where


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


def from_dict(data: dict[str, Any], source: str = "<topology>", text: str = "") -> Topology:
    """Validate an already-parsed topology (the dict form of the TOML file)."""
    loc = _Locator(text)

    def fail(table: str | None, index: int, key: str | None, where: str, msg: str) -> None:
        raise TopologyError(source, loc.key_line(table, index, key) if text else None, where, msg)

    for key in data:
        if key not in _TOP_KEYS:
            fail(None, 0, key, f'field "{key}"', f"unknown (expected one of {sorted(_TOP_KEYS)})")
    raw_nodes = data.get("node", [])
    raw_links = data.get("link", [])
    if not isinstance(raw_nodes, list) or not raw_nodes:
        fail(None, 0, None, "", "a topology needs at least one [[node]]")
    if not isinstance(raw_links, list):
        fail(None, 0, "link", 'field "link"', "must be an array of tables ([[link]])")

    nodes: dict[str, NodeSpec] = {}
    for i, raw in enumerate(raw_nodes):
        where = f"node #{i + 1}"
        if not isinstance(raw, dict):
            fail("node", i, None, where, "must be a table")
        for key in raw:
            if key not in _NODE_KEYS:
                fail(
                    "node",
                    i,
                    key,
                    f'{where} field "{key}"',
                    f"unknown (expected one of {sorted(_NODE_KEYS)})",
                )
        name = raw.get("name")
        if not isinstance(name, str) or not _NAME.match(name):
            fail(
                "node",
                i,
                "name",
                f'{where} field "name"',
                f"{name!r} must be a letter then up to 23 letters, digits or _",
            )
        where = f'node "{name}"'
        if name in nodes:
            fail("node", i, "name", f'{where} field "name"', "duplicate node name")
        kind = raw.get("kind")
        if kind not in KINDS:
            fail(
                "node", i, "kind", f'{where} field "kind"', f"{kind!r} is not one of {list(KINDS)}"
            )
        spec = NodeSpec(name=name, kind=kind, control=kind in _CONTROL_BY_DEFAULT)
        if "control" in raw:
            if not isinstance(raw["control"], bool):
                fail("node", i, "control", f'{where} field "control"', "must be true or false")
            spec.control = raw["control"]
        if "description" in raw:
            spec.description = str(raw["description"])

        def only(kinds: tuple[str, ...], key: str, raw=raw, kind=kind, i=i, where=where) -> None:
            if key in raw and kind not in kinds:
                fail(
                    "node",
                    i,
                    key,
                    f'{where} field "{key}"',
                    f"only allowed for {'/'.join(kinds)} nodes",
                )

        for key, kinds in (
            ("router", ("site",)),
            ("public_ip", ("site",)),
            ("compute_nodes", ("site",)),
            ("prefix", ("host",)),
            ("zone", ("dns",)),
            ("signed_reverse", ("dns",)),
            ("engine", ("fis",)),
        ):
            only(kinds, key)
        try:
            if "prefix" in raw:
                spec.prefix = _subnet(raw["prefix"])
            if "public_ip" in raw:
                spec.public_ip = _address(raw["public_ip"])
            if "signed_reverse" in raw:
                if not isinstance(raw["signed_reverse"], list):
                    raise ValueError("must be a list of prefixes")
                spec.signed_reverse = [_subnet(p) for p in raw["signed_reverse"]]
                for p in spec.signed_reverse:
                    if p.prefixlen % 8:
                        raise ValueError(f"{p} must end on an octet boundary (/8, /16 or /24)")
        except ValueError as exc:
            key = next(k for k in ("prefix", "public_ip", "signed_reverse") if k in raw)
            fail("node", i, key, f'{where} field "{key}"', str(exc))
        if kind == "site":
            if not isinstance(raw.get("router"), str):
                fail(
                    "node",
                    i,
                    "router" if "router" in raw else None,
                    f'{where} field "router"',
                    "a site needs the name of its co-located router",
                )
            spec.router = raw["router"]
            cn = raw.get("compute_nodes", 1)
            if not isinstance(cn, int) or isinstance(cn, bool) or not 1 <= cn <= 64:
                fail("node", i, "compute_nodes", f'{where} field "compute_nodes"', "must be 1..64")
            spec.compute_nodes = cn
        if kind == "dns" and "zone" in raw:
            zone = raw["zone"]
            if not isinstance(zone, str) or not re.match(r"^([A-Za-z0-9-]+\.)+$", zone):
                fail(
                    "node",
                    i,
                    "zone",
                    f'{where} field "zone"',
                    f"{zone!r} is not an absolute name like 'pc.test.'",
                )
            spec.zone = zone
        if kind == "fis" and "engine" in raw:
            if raw["engine"] not in ("sqlite", "redis"):
                fail("node", i, "engine", f'{where} field "engine"', "must be 'sqlite' or 'redis'")
            spec.engine = raw["engine"]
        nodes[name] = spec

    for i, raw in enumerate(raw_nodes):
        spec = nodes[raw["name"]]
        if spec.kind == "site" and (
            spec.router not in nodes or nodes[spec.router].kind != "router"
        ):
            fail(
                "node",
                i,
                "router",
                f'node "{spec.name}" field "router"',
                f"{spec.router!r} is not a router node",
            )

    links: list[LinkSpec] = []
    pairs: set[frozenset[str]] = set()
    for i, raw in enumerate(raw_links):
        where = f"link #{i + 1}"
        if not isinstance(raw, dict):
            fail("link", i, None, where, "must be a table")
        for key in raw:
            if key not in _LINK_KEYS:
                fail(
                    "link",
                    i,
                    key,
                    f'{where} field "{key}"',
                    f"unknown (expected one of {sorted(_LINK_KEYS)})",
                )
        for end in ("a", "b"):
            if raw.get(end) not in nodes:
                fail(
                    "link",
                    i,
                    end if end in raw else None,
                    f'{where} field "{end}"',
                    f"{raw.get(end)!r} is not a node",
                )
        a, b = raw["a"], raw["b"]
        where = f"link {a}-{b}"
        if a == b:
            fail("link", i, "b", f'{where} field "b"', "a link needs two different nodes")
        if frozenset((a, b)) in pairs:
            fail("link", i, "b", where, "duplicate link between the same nodes")
        pairs.add(frozenset((a, b)))
        kw: dict[str, Any] = {}
        for key, conv, attr in (
            ("delay", parse_time_ms, "delay_ms"),
            ("jitter", parse_time_ms, "jitter_ms"),
            ("rate", parse_rate_bps, "rate_bps"),
            ("subnet", _subnet, "subnet"),
        ):
            if key in raw:
                try:
                    kw[attr] = conv(raw[key])
                except ValueError as exc:
                    fail("link", i, key, f'{where} field "{key}"', str(exc))
        if "loss" in raw:
            loss = raw["loss"]
            if isinstance(loss, bool) or not isinstance(loss, int | float) or not 0 <= loss <= 100:
                fail(
                    "link",
                    i,
                    "loss",
                    f'{where} field "loss"',
                    f"{loss!r} must be a percentage 0..100",
                )
            kw["loss_pct"] = float(loss)
        if kw.get("jitter_ms") and not kw.get("delay_ms"):
            fail("link", i, "jitter", f'{where} field "jitter"', "jitter needs a delay")
        if kw.get("subnet") is not None and kw["subnet"].prefixlen > 30:
            fail(
                "link",
                i,
                "subnet",
                f'{where} field "subnet"',
                "a link subnet must be /30 or larger",
            )
        links.append(LinkSpec(a=a, b=b, name=str(raw.get("name", f"{a}-{b}")), **kw))

    # implied site <-> router links
    for spec in nodes.values():
        if spec.kind == "site" and frozenset((spec.name, spec.router)) not in pairs:
            assert spec.router is not None
            links.append(LinkSpec(a=spec.router, b=spec.name, name=f"{spec.router}-{spec.name}"))
            pairs.add(frozenset((spec.name, spec.router)))

    # host prefixes become the subnet of the host's first link
    for i, raw in enumerate(raw_nodes):
        spec = nodes[raw["name"]]
        if spec.prefix is None:
            continue
        idx = next((k for k, lk in enumerate(links) if spec.name in (lk.a, lk.b)), None)
        if idx is None:
            fail("node", i, "prefix", f'node "{spec.name}" field "prefix"', "the host has no link")
        assert idx is not None
        if links[idx].subnet is not None and links[idx].subnet != spec.prefix:
            fail(
                "node",
                i,
                "prefix",
                f'node "{spec.name}" field "prefix"',
                f"conflicts with subnet {links[idx].subnet} of link {links[idx].name}",
            )
        if spec.prefix.prefixlen > 30:
            fail("node", i, "prefix", f'node "{spec.name}" field "prefix"', "must be /30 or larger")
        old = links[idx]
        links[idx] = LinkSpec(
            old.a,
            old.b,
            old.delay_ms,
            old.jitter_ms,
            old.loss_pct,
            old.rate_bps,
            spec.prefix,
            old.name,
        )

    for i, raw in enumerate(raw_nodes):
        spec = nodes[raw["name"]]
        if spec.kind == "host" and not any(spec.name in (lk.a, lk.b) for lk in links):
            fail("node", i, "name", f'node "{spec.name}"', "a host needs at least one link")

    control = data.get("control", {})
    if not isinstance(control, dict):
        fail(None, 0, "control", 'field "control"', "must be a table")
    control_subnet = ipaddress.IPv4Network("198.19.0.0/24")
    for key in control:
        if key != "subnet":
            fail(None, 0, key, f'[control] field "{key}"', "unknown (expected subnet)")
    if "subnet" in control:
        try:
            control_subnet = _subnet(control["subnet"])
        except ValueError as exc:
            fail(None, 0, "subnet", '[control] field "subnet"', str(exc))

    # address overlaps
    used: list[tuple[ipaddress.IPv4Network, str]] = [(control_subnet, "the control network")]
    for link in links:
        if link.subnet is not None:
            used.append((link.subnet, f"link {link.name}"))
    for spec in nodes.values():
        if spec.public_ip is not None:
            used.append((ipaddress.IPv4Network(spec.public_ip), f"public IP of site {spec.name}"))
    for x in range(len(used)):
        for y in range(x + 1, len(used)):
            if used[x][0].overlaps(used[y][0]):
                raise TopologyError(
                    source,
                    None,
                    "addresses",
                    f"{used[x][1]} ({used[x][0]}) overlaps {used[y][1]} ({used[y][0]})",
                )
    name = data.get("name", Path(source).stem)
    return Topology(
        name=str(name),
        nodes=nodes,
        links=links,
        control_subnet=control_subnet,
        source=source,
        description=str(data.get("description", "")),
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

"""Who plays which part in each demo scenario, chosen from a topology (``--topology FILE``).

Pure: a :class:`testbed.topology.Topology` (and its address plan) in, a :class:`Roles` out; both
worlds (testbed and simulator) use the same choice, so both say the same thing about a
topology. A scenario asks :meth:`Roles.cast` for its :class:`Cast` (sender, receiver, the
sender's path, its sites); when the topology lacks something the scenario needs,
:class:`NotApplicable` says what, and the demo reports the scenario as not applicable with
that reason (never skips it silently).

Choices (each can be pinned by a hint in the topology's optional ``[demo]`` table, see
docs/testbed.md, "The demo on your own topology"):

* **sender, receiver**: two hosts; by default the pair whose forward path (the routers' own
  shortest-path routes, :func:`testbed.plan.forward_path`) has a router with a site on it,
  longest path first, then file order;
* **PSP** (forms 1, 1+3): a ``psp`` node with a **data link** (hosts reach its lookup service
  over the data network; the control network is for sites, DNS, FIS and PSP only) and on the
  control network (it reaches the sites' control APIs);
* **DNS** (forms 1, 3, 1+3): a ``dns`` node with a data link (the sender finds the lookup
  service there; the receiver's owner publishes its ownership proof there);
* **form 1 sites**: the site nearest the sender, then the site nearest the receiver;
* **form 2 site**: the *first* router with a site on the sender's path. Its site daemon serves
  the flagged packet and clears the flag, so routers further on forward it normally: a later
  site on the path never sees it;
* **form 3 site**: a router with a site on the path (the first by default) diverts the
  receiver's prefix to its site.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from typing import Any

from testbed.plan import Plan, forward_path, make
from testbed.topology import Topology

__all__ = [
    "CORE_HINTS",
    "Cast",
    "HintError",
    "NotApplicable",
    "Roles",
]

#: The keys of each core scenario's ``[demo.<scenario>]`` table.
CORE_HINTS: dict[str, frozenset[str]] = {
    "form1": frozenset({"sender", "receiver", "sites"}),
    "form2": frozenset({"sender", "receiver", "site"}),
    "form3": frozenset({"sender", "receiver", "site"}),
    "form1+3": frozenset({"sender", "receiver", "sites"}),
}
#: The keys of ``[demo]`` itself (besides the per-scenario tables).
TOP_HINTS = frozenset({"sender", "receiver", "psp", "dns"})
MAX_CANDIDATES = 16  #: hosts considered when choosing the sender/receiver pair
MAX_SITES = 2  #: sites on a form-1 circuit chosen automatically


class NotApplicable(Exception):
    """The topology lacks something this scenario needs; the message says what."""


class HintError(ValueError):
    """A ``[demo]`` hint that names no such node, the wrong kind of node, or an unknown key."""


@dataclass(frozen=True)
class Cast:
    """One scenario's roles on a topology."""

    sender: str
    receiver: str
    path: tuple[str, ...]  #: sender -> receiver, every node crossed (both ends included)
    sites: tuple[str, ...]  #: form 1: the circuit's sites in order; forms 2, 3: the one site
    prefix: str  #: the receiver's prefix (what form 3 signs up)

    @property
    def route(self) -> str:
        return " -> ".join(self.path)


class Roles:
    """The roles of every scenario on ``topo`` (hints from ``topo.demo``)."""

    def __init__(self, topo: Topology, plan: Plan | None = None,
                 extra_scenarios: frozenset[str] = frozenset()) -> None:  # fmt: skip
        self.topo = topo
        self.plan = plan or make(topo)
        self.hints = self._validate(topo.demo, extra_scenarios)
        self.hosts = [n.name for n in topo.of_kind("host")]
        self.sites = {s.name: str(s.router) for s in topo.of_kind("site")}
        self._paths: dict[tuple[str, str], tuple[str, ...] | None] = {}
        self.psp, self.psp_problem = self._pick_service("psp", "PSP", needs_control=True)
        self.dns, self.dns_problem = self._pick_service("dns", "DNS", needs_control=False)

    # --- hints
    def _where(self) -> str:
        return self.topo.source

    def _fail(self, where: str, msg: str) -> HintError:
        return HintError(f"{self._where()}: [demo{where}]: {msg}")

    def _node(self, where: str, key: str, value: Any, kind: str) -> str:
        node = self.topo.nodes.get(value) if isinstance(value, str) else None
        if node is None:
            raise self._fail(where, f'field "{key}": {value!r} is not a node')
        if node.kind != kind:
            raise self._fail(where, f'field "{key}": {value!r} is a {node.kind}, not a {kind}')
        return str(value)

    def _validate(self, demo: dict[str, Any], extra: frozenset[str]) -> dict[str, dict[str, Any]]:
        out: dict[str, dict[str, Any]] = {"": {}}
        kinds = {"sender": "host", "receiver": "host", "psp": "psp", "dns": "dns", "site": "site"}
        for key, value in demo.items():
            if isinstance(value, dict):
                if key not in CORE_HINTS and key not in extra:
                    known = sorted([*CORE_HINTS, *extra])
                    raise self._fail(f".{key}", f"no such scenario (one of {known})")
                allowed = CORE_HINTS.get(key)
                table: dict[str, Any] = {}
                for k, v in value.items():
                    if allowed is not None and k not in allowed:
                        raise self._fail(
                            f".{key}", f'unknown field "{k}" (one of {sorted(allowed)})'
                        )
                    if k == "sites":
                        if not isinstance(v, list) or not v:
                            raise self._fail(
                                f".{key}", 'field "sites" must be a list of site names'
                            )
                        table[k] = [self._node(f".{key}", k, s, "site") for s in v]
                        if len(set(table[k])) != len(table[k]):
                            raise self._fail(f".{key}", 'field "sites" names a site twice')
                    elif k in kinds:
                        table[k] = self._node(f".{key}", k, v, kinds[k])
                    else:
                        table[k] = v
                out[key] = table
            elif key in TOP_HINTS:
                out[""][key] = self._node("", key, value, kinds[key])
            else:
                raise self._fail("", f'unknown field "{key}" (one of {sorted(TOP_HINTS)} or a '
                                     "[demo.<scenario>] table)")  # fmt: skip
        return out

    def hint(self, scenario: str, key: str) -> Any:
        """A hint for ``scenario`` (its own table first, then ``[demo]``), or None."""
        return self.hints.get(scenario, {}).get(key, self.hints[""].get(key))

    # --- nodes
    def _data_links(self, name: str) -> list[str]:
        return [lp.spec.b if lp.spec.a == name else lp.spec.a
                for lp in self.plan.links if name in (lp.spec.a, lp.spec.b)]  # fmt: skip

    def _pick_service(self, kind: str, label: str, *, needs_control: bool
                      ) -> tuple[str | None, str]:  # fmt: skip
        """(node, "") or (None, why not)."""
        hinted = self.hints[""].get(kind)
        nodes = [hinted] if hinted else [n.name for n in self.topo.of_kind(kind)]
        if not nodes:
            return None, f"the topology has no {kind} node"
        for name in nodes:
            spec = self.topo.nodes[name]
            if self._data_links(name) and (spec.control or not needs_control):
                return name, ""
        name = nodes[0]
        if not self._data_links(name):
            why = {"psp": "its lookup service", "dns": "its name server"}[kind]
            return None, (
                f"the {label} node {name} has no data link, so hosts cannot reach {why} "
                f"(the control network is not routed to hosts): add a [[link]] from {name} "
                "to a router"
            )
        return None, f"the {label} node {name} is not on the control network (control = false)"

    def path(self, src: str, dst: str) -> tuple[str, ...] | None:
        key = (src, dst)
        if key not in self._paths:
            try:
                self._paths[key] = tuple(forward_path(self.plan, src, dst))
            except ValueError:
                self._paths[key] = None
        return self._paths[key]

    def sites_on(self, path: tuple[str, ...]) -> list[str]:
        """The sites whose router is on ``path``, in path order (controllable ones only)."""
        out = []
        for node in path:
            out += [s for s, r in self.sites.items() if r == node and self._usable(s)]
        return out

    def _usable(self, site: str) -> bool:
        return self.topo.nodes[site].control

    def receiver_prefix(self, host: str) -> str:
        spec = self.topo.nodes[host]
        if spec.prefix is not None:
            return str(spec.prefix)
        lp = next(lp for lp in self.plan.links if host in (lp.spec.a, lp.spec.b))
        return str(lp.subnet)

    def _distance(self, a: str, b: str) -> int:
        p = self.path(a, b)
        return len(p) if p else 1 << 30

    # --- the pair
    def pair(self, scenario: str = "") -> tuple[str, str]:
        """(sender, receiver) for ``scenario`` (hints first; raises NotApplicable)."""
        sender, receiver = self.hint(scenario, "sender"), self.hint(scenario, "receiver")
        if len(self.hosts) < 2 and not (sender and receiver):
            raise NotApplicable(
                f"needs two hosts (a sender and a receiver); the topology has {len(self.hosts)}"
            )
        if sender and receiver:
            if sender == receiver:
                raise NotApplicable(f"the sender and the receiver are both {sender}")
            return sender, receiver
        best: tuple[tuple[int, int, int], str, str] | None = None
        candidates = self.hosts[:MAX_CANDIDATES]
        order = 0
        for s in [sender] if sender else candidates:
            for r in [receiver] if receiver else candidates:
                if s == r:
                    continue
                order += 1
                p = self.path(s, r)
                if p is None:
                    continue
                score = (bool(self.sites_on(p)), len(p), -order)
                if best is None or score > best[0]:
                    best = (score, s, r)
        if best is None:
            raise NotApplicable("no host can reach another host")
        return best[1], best[2]

    # --- what each scenario needs
    def cast(self, scenario: str) -> Cast:
        """The roles of ``scenario`` (one of :data:`CORE_HINTS`); raises NotApplicable."""
        sender, receiver = self.pair(scenario)
        p = self.path(sender, receiver)
        if p is None:
            raise NotApplicable(f"{receiver} cannot be reached from {sender}")
        prefix = self.receiver_prefix(receiver)
        route = " -> ".join(p)
        if scenario in ("form1", "form1+3"):
            if self.psp is None:
                raise NotApplicable(f"{_FORM[scenario]} needs a PSP node: {self.psp_problem}")
            if self.dns is None:
                raise NotApplicable(
                    f"{_FORM[scenario]} needs a DNS node (the sender finds the PSP's lookup "
                    f"service there): {self.dns_problem}"
                )
            sites = self._circuit_sites(scenario, sender, receiver)
        else:
            on_path = self.sites_on(p)
            if not on_path:
                raise NotApplicable(
                    f"{_FORM[scenario]} needs a router with a site on the sender's path "
                    f"({route} has none)"
                )
            hinted = self.hint(scenario, "site") if scenario in ("form2", "form3") else None
            if hinted and not self._usable(hinted):
                raise NotApplicable(f"site {hinted} is not on the control network")
            if scenario == "form2":
                if hinted and hinted != on_path[0]:
                    raise NotApplicable(
                        f"form 2 on {route}: {on_path[0]}'s router is the first with a site on "
                        f"the path; its site daemon serves the flagged packets and clears the "
                        f'flag, so {hinted} never sees them (hint site = "{on_path[0]}")'
                    )
                sites = (on_path[0],)
            elif scenario == "form3":
                if hinted and hinted not in on_path:
                    raise NotApplicable(
                        f"form 3: {hinted}'s router {self.sites[hinted]} is not on the path "
                        f"{route}, so diverting {prefix} there catches nothing"
                    )
                if self.dns is None:
                    raise NotApplicable(
                        f"form 3 needs a DNS node (the receiver's ownership proof is published "
                        f"there): {self.dns_problem}"
                    )
                sites = (hinted or on_path[0],)
            else:
                raise ValueError(f"no such core scenario: {scenario}")
        if scenario in ("form3", "form1+3"):
            net = ipaddress.IPv4Network(prefix)
            if net.prefixlen not in (8, 16, 24) and net.prefixlen < 25:
                raise NotApplicable(
                    f"{_FORM[scenario]}: the receiver's prefix {prefix} is not one reverse zone "
                    "(use a /8, /16, /24 or a longer prefix)"
                )
        return Cast(sender, receiver, p, tuple(sites), prefix)

    def _circuit_sites(self, scenario: str, sender: str, receiver: str) -> tuple[str, ...]:
        hinted = self.hint(scenario, "sites") or self.hints.get("form1", {}).get("sites")
        if hinted:
            bad = [s for s in hinted if not self._usable(s)]
            if bad:
                raise NotApplicable(f"site(s) {', '.join(bad)} not on the control network")
            return tuple(hinted)
        usable = [s for s in self.sites if self._usable(s)]
        if not usable:
            raise NotApplicable(
                f"{_FORM[scenario]} needs a site (on the control network) for its circuit"
            )
        near_sender = min(usable, key=lambda s: self._distance(sender, self.sites[s]))
        rest = [s for s in usable if s != near_sender]
        if not rest or MAX_SITES < 2:
            return (near_sender,)
        near_receiver = min(rest, key=lambda s: self._distance(self.sites[s], receiver))
        return (near_sender, near_receiver)

    def hosts_used(self, scenarios: list[str]) -> list[str]:
        """Every host some applicable scenario sends from or to (endpoints are made up front)."""
        out: list[str] = []
        for name in scenarios:
            if name not in CORE_HINTS:  # another scenario chooses (or builds) its own hosts
                continue
            try:
                c = self.cast(name)
            except NotApplicable:
                continue
            out += [h for h in (c.sender, c.receiver) if h not in out]
        return out


_FORM = {"form1": "form 1", "form2": "form 2", "form3": "form 3", "form1+3": "form 1+3"}

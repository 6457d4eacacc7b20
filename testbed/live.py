"""What a running testbed has installed and what it counts, read from outside its processes.

Used by ``testbed graph RUN`` (the overlay) and ``testbed top RUN`` (rates). Everything comes
from sources the testbed can read itself, never from another package's code:

* the kernel, inside the run's namespaces: link counters (``/proc/thread-self/net/dev`` read by
  a thread that entered the namespace), the routers' nftables set and counters and policy rules
  (``nft -j``, ``ip -j rule`` through ``nsenter``), the CPU time of the processes living in a
  namespace (``/proc/PID/stat``);
* the site daemons' control API over HTTP (``urllib``, JSON and the Prometheus text format):
  ``GET /metrics``, ``GET /v1/status`` and ``GET /v1/psps/{psp}/circuits``. Where a site's API
  listens and with which credential is written into the run's directory by whoever started the
  daemons (:func:`register_control`, file ``control.json``, mode 0600) or given on the command
  line.
"""

from __future__ import annotations

import json
import os
import subprocess
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from testbed import netns, state
from testbed.router import MARK_DESTINATION, MARK_SERVICE, NFT_TABLE, SITE_TABLE

__all__ = [
    "CONTROL_FILE",
    "Control",
    "LinkCounters",
    "circuit_paths",
    "link_counters",
    "load_control",
    "register_control",
]

CONTROL_FILE = "control.json"
HTTP_TIMEOUT = 2.0
MAX_BODY = 4 << 20  #: bytes read from a control API answer at most
TOOL_TIMEOUT = 5.0


@dataclass
class Control:
    """How to reach one site daemon's control API (from inside the site's namespace)."""

    url: str
    token: str
    psps: list[str] = field(default_factory=list)


def register_control(run_dir: str | Path, site: str, url: str, token: str, psps: list[str]) -> None:
    """Record where ``site``'s control API listens (``url``), with an ISP ``token`` and the
    PSPs whose circuits to list, in the run directory (``control.json``, mode 0600)."""
    path = Path(run_dir) / CONTROL_FILE
    doc = _read_json(path) or {}
    doc[site] = {"url": url.rstrip("/"), "token": token, "psps": list(psps)}
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        json.dump(doc, fh)
    os.replace(tmp, path)


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def load_control(run: state.Run) -> dict[str, Control]:
    """The control API of each site that registered one for ``run`` (may be empty)."""
    doc = _read_json(run.dir / CONTROL_FILE)
    out: dict[str, Control] = {}
    if isinstance(doc, dict):
        for site, c in doc.items():
            if isinstance(c, dict) and isinstance(c.get("url"), str):
                out[site] = Control(
                    c["url"], str(c.get("token", "")), [str(p) for p in c.get("psps", [])]
                )
    return out


def http_get(ns: str, url: str, token: str, timeout: float = HTTP_TIMEOUT) -> tuple[str, str]:
    """GET ``url`` from inside namespace ``ns``: (content type, body text). Raises
    ``OSError`` (unreachable, HTTP error, too large) with a one-line reason."""

    def get() -> tuple[str, str]:
        req = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"})
        try:
            with urllib.request.urlopen(req, timeout=timeout) as resp:
                body = resp.read(MAX_BODY + 1)
                ctype = resp.headers.get("Content-Type", "")
        except urllib.error.HTTPError as exc:
            raise OSError(f"{url}: HTTP {exc.code}") from None
        except (urllib.error.URLError, TimeoutError) as exc:
            raise OSError(f"{url}: {getattr(exc, 'reason', exc)}") from None
        if len(body) > MAX_BODY:
            raise OSError(f"{url}: answer larger than {MAX_BODY} bytes")
        return ctype, body.decode("utf-8", "replace")

    return netns.call_in(ns, get, timeout=timeout + 3)


def get_json(ns: str, url: str, token: str) -> Any:
    _, body = http_get(ns, url, token)
    try:
        return json.loads(body)
    except ValueError:
        raise OSError(f"{url}: not JSON") from None


# --- the kernel ------------------------------------------------------------------------------


@dataclass(frozen=True)
class LinkCounters:
    """One interface's kernel counters (``/proc/net/dev``)."""

    rx_packets: int
    rx_bytes: int
    rx_drops: int
    tx_packets: int
    tx_bytes: int
    tx_drops: int


def parse_net_dev(text: str) -> dict[str, LinkCounters]:
    """``/proc/net/dev`` text -> interface -> counters."""
    out = {}
    for line in text.splitlines()[2:]:
        name, sep, rest = line.partition(":")
        f = rest.split()
        if not sep or len(f) < 16 or not all(x.isdigit() for x in f):
            continue
        v = [int(x) for x in f]
        out[name.strip()] = LinkCounters(v[1], v[0], v[3], v[9], v[8], v[11])
    return out


def link_counters(ns: str) -> dict[str, LinkCounters]:
    """The counters of every interface in namespace ``ns`` (no fork: a thread enters it)."""

    def read() -> str:
        with open("/proc/thread-self/net/dev") as fh:
            return fh.read()

    return parse_net_dev(netns.call_in(ns, read, timeout=5.0))


def _in_ns(ns: str, argv: list[str]) -> str:
    try:
        out = subprocess.run(
            ["nsenter", f"--net={netns.path(ns)}", "--", *argv],
            capture_output=True,
            text=True,
            timeout=TOOL_TIMEOUT,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise OSError(f"{' '.join(argv)} in {ns}: {exc}") from None
    if out.returncode != 0:
        raise OSError(f"{' '.join(argv)} in {ns}: {out.stderr.strip()[:200]}")
    return out.stdout


@dataclass
class RouterState:
    """A router's PacketCloud attachments as installed in its kernel right now."""

    diversions: list[str] = field(default_factory=list)  #: form-3 prefixes (nft set)
    form2_packets: int | None = None  #: nft counter of the DSCP-43 rule
    form3_packets: int | None = None  #: nft counter of the divert_dst rule
    policy_rules: list[str] = field(default_factory=list)  #: fwmark rules to the site table


def router_state(ns: str) -> RouterState:
    """Read ``ns``'s nftables table ``packetcloud`` and its fwmark rules."""
    st = RouterState()
    doc = json.loads(_in_ns(ns, ["nft", "-j", "list", "table", "ip", NFT_TABLE]))
    for item in doc.get("nftables", []):
        for elem in item.get("set", {}).get("elem", []) if "set" in item else []:
            if isinstance(elem, dict) and "prefix" in elem:
                st.diversions.append(f"{elem['prefix']['addr']}/{elem['prefix']['len']}")
            elif isinstance(elem, str):
                st.diversions.append(f"{elem}/32")
        rule = item.get("rule")
        if isinstance(rule, dict):
            packets = next(
                (
                    e["counter"]["packets"]
                    for e in rule.get("expr", [])
                    if isinstance(e, dict) and "counter" in e
                ),
                None,
            )
            comment = str(rule.get("comment", ""))
            if comment.startswith("form 3"):
                st.form3_packets = packets
            elif comment.startswith("form 2"):
                st.form2_packets = packets
    for rule in json.loads(_in_ns(ns, ["ip", "-j", "rule", "show"]) or "[]"):
        mark = rule.get("fwmark")
        if str(rule.get("table")) == str(SITE_TABLE) and mark is not None:
            what = {MARK_SERVICE: "DSCP 43", MARK_DESTINATION: "diverted prefixes"}.get(
                int(str(mark), 0), str(mark)
            )
            st.policy_rules.append(f"fwmark {mark} ({what}) -> table {SITE_TABLE}")
    return st


def cpu_ticks(pid: int) -> int | None:
    """User + system CPU clock ticks of process ``pid`` (None if it is gone)."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            data = fh.read()
    except OSError:
        return None
    f = data[data.rindex(")") + 2 :].split()
    return int(f[11]) + int(f[12])


def processes_cpu_ticks(ns: str) -> int:
    """User + system CPU clock ticks of every process living in namespace ``ns``."""
    return sum(cpu_ticks(pid) or 0 for pid in state.processes_in([ns]))


def worker_cpu_ticks(ns: str, pids: dict[str, int]) -> dict[str, int]:
    """CPU ticks of each worker (name -> pid) that lives in namespace ``ns`` (a PID that is
    gone or was reused outside the namespace is left out)."""
    here = set(state.processes_in([ns]))
    out = {}
    for name, pid in pids.items():
        ticks = cpu_ticks(pid) if pid in here else None
        if ticks is not None:
            out[name] = ticks
    return out


# --- circuits --------------------------------------------------------------------------------


def _clean_hop(h: Any) -> dict[str, Any] | None:
    """A hop view with the fields chaining needs, or None if it does not have them."""
    if not isinstance(h, dict) or not _is_label(h.get("label")):
        return None
    outs = h.get("out", [])
    if not isinstance(outs, list):
        return None
    out = [
        {"label": o["label"], "next_hop": o["next_hop"], "final": bool(o.get("final"))}
        for o in outs[:MAX_BRANCHES]
        if isinstance(o, dict) and _is_label(o.get("label")) and isinstance(o.get("next_hop"), str)
    ]
    dest = h.get("destination")
    return {"label": h["label"], "out": out, "destination": dest if isinstance(dest, str) else None}


def _is_label(x: Any) -> bool:
    return isinstance(x, int) and not isinstance(x, bool) and 0 <= x < 2**32


MAX_BRANCHES = 16  #: out hops of one hop followed (multicast)
MAX_CIRCUIT_PATHS = 64


def circuit_paths(
    hops: dict[str, list[dict[str, Any]]], addresses: dict[str, str]
) -> list[dict[str, Any]]:
    """Chain the circuit hops installed at each site into end-to-end circuits.

    ``hops`` maps site -> its hop views (``GET .../circuits``: ``label``, ``out`` with
    ``label``/``next_hop``/``final``); ``addresses`` maps IPv4 address -> node. Returns one
    ``{"name", "hops", "labels"}`` per circuit and branch (a hop with several out hops, e.g.
    multicast, gives one path per branch): the first site is one no other hop leads to, the
    last hop's delivery address names the destination when it is a node. Malformed hop views
    are skipped; loops end the path; at most ``MAX_CIRCUIT_PATHS`` paths of 64 hops.
    """
    by_key: dict[tuple[str, int], dict[str, Any]] = {}
    for site, hs in hops.items():
        for raw in hs:
            h = _clean_hop(raw)
            if h is not None:
                by_key[(site, h["label"])] = h
    site_at = {ip: n for ip, n in addresses.items() if n in hops}
    fed = {
        (site_at[o["next_hop"]], o["label"])
        for h in by_key.values()
        for o in h["out"]
        if not o["final"] and o["next_hop"] in site_at
    }
    out: list[dict[str, Any]] = []

    def walk(key: tuple[str, int], nodes: list[str], labels: list[int | None], seen: set) -> None:
        h = by_key[key]
        ends: list[tuple[list[str], list[int | None]]] = []
        for o in h["out"]:
            nxt = site_at.get(o["next_hop"]) if not o["final"] else None
            step = (nxt, o["label"]) if nxt is not None else None
            if step is not None and step in by_key and step not in seen and len(nodes) < 64:
                walk(step, [*nodes, step[0]], [*labels, step[1]], seen | {step})
            else:
                dest = addresses.get(o["next_hop"])
                ends.append(([*nodes, dest], [*labels, None]) if dest else (nodes, labels))
        if not h["out"]:
            dest = addresses.get(h["destination"] or "")
            ends.append(([*nodes, dest], [*labels, None]) if dest else (nodes, labels))
        for n, lab in ends:
            if len(out) < MAX_CIRCUIT_PATHS:
                name = f"circuit {labels[0]:#x} at {nodes[0]}"
                out.append({"name": name, "hops": n, "labels": lab})

    for site, label in sorted(k for k in by_key if k not in fed):
        walk((site, label), [site], [label], {(site, label)})
    return out


def installed_circuits(
    run: state.Run, controls: dict[str, Control], addresses: dict[str, str]
) -> tuple[list[dict[str, Any]], list[str]]:
    """(circuits, problems): the hops every registered site has installed, chained."""
    hops: dict[str, list[dict[str, Any]]] = {}
    problems = []
    for site, c in controls.items():
        hops[site] = []
        for psp in c.psps:
            try:
                doc = get_json(run.ns(site), f"{c.url}/v1/psps/{psp}/circuits", c.token)
            except OSError as exc:
                problems.append(f"{site}: {exc}")
                continue
            listed = doc.get("circuits", []) if isinstance(doc, dict) else []
            hops[site] += listed if isinstance(listed, list) else []
    return circuit_paths(hops, addresses), problems

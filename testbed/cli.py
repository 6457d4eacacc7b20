"""``testbed``: build, inspect and remove PacketCloud namespace testbeds from the shell.

testbed validate FILE                       # check a topology (every error, with its line)
testbed up testbed/topologies/fig2.toml     # build, print what was built and the timings
testbed status                              # every run on this machine
testbed inspect [RUN] [--json]              # nodes, addresses, links, sites, processes
testbed exec [--run RUN] NODE CMD...        # run a command in a node's namespace
                                            # (RUN: --run, else $TESTBED_RUN, else the only run up)
testbed capture [--run RUN] LINK [-w F]     # pcap of a link (tcpdump on its first end)
testbed down [RUN]                          # stop the run's processes, remove its namespaces
testbed clean --run RUN | --all-stale       # same, for runs whose owner died (even SIGKILL)
testbed divert [--run RUN] ROUTER PREFIX    # form 3: divert a destination prefix to the site
testbed dns zones|zone|sign|owner|anchor|key  # a run's DNS (see testbed dns --help)
testbed demo [TOPOLOGY]                     # end-to-end scenarios with real packets
testbed graph TOPOLOGY|RUN -o F.svg         # drawing (a run: with what is installed on it)
testbed top [RUN] [--once] [--json]         # live packet rates, drops, worker load
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from testbed import cluster as clustermod
from testbed import graph, netns, state, top
from testbed.attach import attach
from testbed.net import Testbed, default_progress
from testbed.router import divert_argv
from testbed.topology import Topology, TopologyError, line, load

TOPOLOGIES = Path(__file__).parent / "topologies"


def _topology_path(arg: str) -> Path:
    p = Path(arg)
    if p.exists():
        return p
    shipped = TOPOLOGIES / (arg if arg.endswith(".toml") else f"{arg}.toml")
    if shipped.exists():
        return shipped
    raise SystemExit(
        f"testbed: no topology {arg!r} (shipped: "
        f"{', '.join(sorted(x.stem for x in TOPOLOGIES.glob('*.toml')))})"
    )


def _pick_run(name: str | None) -> state.Run:
    name = name or os.environ.get("TESTBED_RUN") or None
    if name:
        try:
            return state.Run.load(name)
        except LookupError as exc:
            raise SystemExit(f"testbed: {exc}") from None
    try:
        return attach().run_state
    except LookupError as exc:
        raise SystemExit(f"testbed: {exc}; pass --run") from None


def cmd_dns(args: argparse.Namespace) -> int:
    """A run's DNS server: list, add/replace, sign zones; ownership records; anchors; keys."""
    from dns.exception import DNSException  # dnspython, as testbed.dns uses it

    _need_root()
    try:
        live = attach(args.run or os.environ.get("TESTBED_RUN") or None)
    except LookupError as exc:
        raise SystemExit(f"testbed: {exc}") from None
    dns = live.dns
    if dns is None:
        raise SystemExit(f"testbed: run {live.run} runs no DNS server (a node of kind dns)")
    origin = getattr(args, "zone", None)
    if origin is not None and not origin.endswith("."):
        origin += "."
    try:
        if args.action == "zones":
            for z in sorted(dns.zones):
                signed = "signed" if dns.signing_key(z) is not None else "unsigned"
                print(f"{z:<40} {signed}")
            print(f"served at {', '.join(dns.addresses)} (port 53)")
        elif args.action == "zone":
            dns.set_zone(origin, Path(args.file).read_text())
            print(f"serving {origin} from {args.file}")
        elif args.action == "sign":
            dns.set_signed_zone(origin, Path(args.file).read_text())
            print(f"serving {origin} signed; trust anchor:\n{dns.anchor_text(origin)}")
        elif args.action == "owner":
            now = time.time()
            rec = dns.publish_owner(
                args.prefix, args.owner, args.service, now - 60, now + args.days * 86400
            )
            print(rec)
        elif args.action == "anchor":
            print(dns.anchor_text(origin, dnskey=args.dnskey))
        elif args.action == "key":
            sys.stdout.write(dns.key_pem(origin).decode())
    except KeyError as exc:
        print(f"testbed: {exc.args[0]}", file=sys.stderr)
        return 1
    except (OSError, RuntimeError, TimeoutError) as exc:
        print(f"testbed: {exc}", file=sys.stderr)
        return 1
    except ValueError as exc:  # bad input: a prefix, an owner or service name, a zone name
        print(f"testbed: {exc}", file=sys.stderr)
        return 2
    except DNSException as exc:  # a zone file that does not parse
        print(f"testbed: {origin or args.prefix}: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 2
    return 0


def _dns_parser(sub: Any) -> None:
    p = sub.add_parser("dns", help="manage a running testbed's DNS zones (form-3 sign-up)")
    p.add_argument("--run")
    acts = p.add_subparsers(dest="action", required=True)
    acts.add_parser("zones", help="the zones served, and which are signed")
    a = acts.add_parser("zone", help="add or replace a zone from a zone file (served as is)")
    a.add_argument("zone")
    a.add_argument("file")
    a = acts.add_parser(
        "sign", help="sign a zone file (with the zone's kept key, else a new one) and serve it"
    )
    a.add_argument("zone")
    a.add_argument("file")
    a = acts.add_parser(
        "owner", help="publish a destination-ownership TXT record in the prefix's reverse zone"
    )
    a.add_argument("prefix", help="e.g. 198.18.64.0/24 (its reverse zone must be served)")
    a.add_argument("--owner", required=True, help="the PSP the owner authorises")
    a.add_argument("--service", required=True)
    a.add_argument("--days", type=float, default=30.0)
    a = acts.add_parser("anchor", help="print a signed zone's trust anchor (DS, or --dnskey)")
    a.add_argument("zone")
    a.add_argument("--dnskey", action="store_true")
    a = acts.add_parser("key", help="print a signed zone's key (pcsock signup publish --key)")
    a.add_argument("zone")
    p.set_defaults(fn=cmd_dns)


def _need_root() -> None:
    if os.geteuid() != 0:
        raise SystemExit("testbed: needs root (network namespaces)")


def _load(arg: str) -> Topology:
    """A topology file, a shipped topology's name, or ``line:K`` (the benchmark's line)."""
    m = re.fullmatch(r"line:(\d+)", arg)
    if m:
        return line(int(m.group(1)))
    return load(_topology_path(arg))


def cmd_validate(args: argparse.Namespace) -> int:
    """Check a topology as ``up`` would (parse, validate, plan the addresses), build nothing."""
    from testbed import plan

    status = 0
    for arg in args.topology:
        try:
            topo = _load(arg)
            p = plan.make(topo)
        except TopologyError as exc:
            for e in exc.errors:
                print(e, file=sys.stderr)
            print(f"{arg}: {len(exc.errors)} error(s)", file=sys.stderr)
            status = 2
            continue
        except ValueError as exc:  # the plan: e.g. addresses run out
            print(f"{arg}: {exc}", file=sys.stderr)
            status = 2
            continue
        kinds: dict[str, int] = {}
        for n in topo.nodes.values():
            kinds[n.kind] = kinds.get(n.kind, 0) + 1
        print(
            f"{arg}: ok: topology {topo.name}, {len(topo.nodes)} nodes "
            f"({', '.join(f'{v} {k}' for k, v in sorted(kinds.items()))}), "
            f"{len(p.links)} links, control network {topo.control_subnet}"
        )
    return status


def cmd_up(args: argparse.Namespace) -> int:
    try:
        tb = Testbed(
            _load(args.topology),
            prefix=args.prefix,
            progress=None if args.quiet else default_progress,
            persistent=True,
        )
    except (TopologyError, ValueError) as exc:
        print(f"testbed: {exc}", file=sys.stderr)
        return 2
    _need_root()
    try:
        tb.up()
    except Exception as exc:  # the build tore itself down; say why without a traceback
        print(f"testbed: build failed (everything it created was removed): {exc}", file=sys.stderr)
        return 1
    # the processes now belong to the run, not to this command
    for proc in tb.processes:
        proc.popen.returncode = 0  # do not let Popen.__del__ reap or warn
    summary = tb.summary()
    if args.quiet:
        print(tb.run)
    elif args.json:
        print(json.dumps(summary, indent=1))
    else:
        _print_summary(summary)
        print(
            f"\nup in {tb.timings['up']:.2f} s. run: {tb.run}   "
            f"(testbed exec --run {tb.run} NODE CMD; testbed down {tb.run})"
        )
    return 0


def _print_summary(s: dict) -> None:
    print(f"run {s['run']}  topology {s['topology']}  control netns {s['control_netns']}")
    print(f"{'NODE':<8} {'KIND':<7} {'NETNS':<18} {'ADDRESSES':<40} CONTROL")
    for n in s["nodes"]:
        addrs = " ".join(f"{i['name']}={i['address']}" for i in n["interfaces"])
        if n["public_ip"]:
            addrs = f"public={n['public_ip']} " + addrs
        print(f"{n['name']:<8} {n['kind']:<7} {n['netns']:<18} {addrs:<40} {n['control'] or '-'}")
    print(f"{'LINK':<10} {'A':<10} {'B':<10} {'SUBNET':<18} SHAPING")
    for lk in s["links"]:
        print(
            f"{lk['name']:<10} {lk['a']:<10} {lk['b']:<10} {lk['subnet']:<18} "
            f"{lk['shaping'] or '-'}"
        )
    for site, c in (s.get("clusters") or {}).items():
        print(f"site {site}: LB {c['lb_address']} on internal {c['internal']}, "
              f"fis_replicas {c['fis_replicas']}")  # fmt: skip
        for m in c["nodes"]:
            print(f"  compute node {m['name']:<10} {c['netns'][m['name']]:<22} {m['address']}")
        for m in c.get("fis", []):
            print(
                f"  FIS machine  {m['name']:<10} {c['netns'][m['name']]:<22} {m['address']} "
                "(Redis 6379, Sentinel 26379)"
            )
    for p in s.get("processes", []):
        print(f"process {p['name']} on {p['node']} pid {p['pid']}")
    if s.get("dns"):
        print(f"dns {s['dns']}")
    if s.get("redis"):
        print(f"redis {s['redis']}")


def cmd_down(args: argparse.Namespace) -> int:
    _need_root()
    run = _pick_run(args.run)
    rep = state.clean(run.name)
    print(
        f"down {rep.run}: {rep.processes} processes stopped, {rep.namespaces} namespaces removed "
        f"in {rep.seconds:.2f} s"
    )
    return 0 if not rep.leftovers else 1


def cmd_status(args: argparse.Namespace) -> int:
    runs = state.list_runs()
    rows = []
    for r in runs:
        live = sum(state.alive(p["pid"], p.get("start")) for p in r.data.get("processes", []))
        rows.append(
            {
                "run": r.name,
                "topology": r.data.get("topology"),
                "phase": r.status,  # "dead": the build's owner died (clean --all-stale)
                "owner_alive": r.owner_alive,
                "persistent": r.data.get("persistent"),
                "stale": r.stale,
                "namespaces": len(state.run_namespaces(r.name)),
                "processes_alive": live,
            }
        )
    if args.json:
        print(json.dumps(rows, indent=1))
        return 0
    if not rows:
        print("no testbed runs")
    for row in rows:
        print(
            f"{row['run']:<10} {row['topology'] or '?':<14} {row['phase']:<9} "
            f"{row['namespaces']:>4} netns {row['processes_alive']:>3} procs"
            f"{'  STALE (testbed clean --all-stale)' if row['stale'] else ''}"
        )
    return 0


def cmd_inspect(args: argparse.Namespace) -> int:
    run = _pick_run(args.run)
    summary = run.data.get("summary") or {}
    if args.json:
        print(json.dumps(summary, indent=1))
    elif summary:
        _print_summary(summary)
    else:
        print(f"run {run.name} is {run.data.get('phase')}: nothing to inspect yet")
    return 0


def _node_ns(run_name: str | None, node: str) -> tuple[state.Run, str]:
    """The run (as root) and the namespace of its ``node``; exits if there is none."""
    _need_root()
    run = _pick_run(run_name)
    ns = run.ns(node)
    if not netns.exists(ns):
        raise SystemExit(f"testbed: run {run.name} has no node {node!r}")
    return run, ns


def cmd_exec(args: argparse.Namespace) -> int:
    _run, ns = _node_ns(args.run, args.node)
    cmd = args.cmd or ["sh"]
    return subprocess.call(["nsenter", f"--net={netns.path(ns)}", "--", *cmd])


def cmd_fail(args: argparse.Namespace) -> int:
    """``testbed fail NODE`` / ``testbed recover NODE``: cut or restore a compute node's
    internal link (the processes keep running: the LB sees the node fall silent). A FIS
    machine (``<site>_f<j>``) crashes too: its Redis and Sentinel are killed (SIGKILL) and
    ``recover`` starts them again as they were started."""
    _need_root()
    run = _pick_run(args.run)
    clusters = (run.data.get("summary") or {}).get("clusters") or {}
    if not any(args.node in c.get("netns", {}) for c in clusters.values()):
        names = [n for c in clusters.values() for n in c.get("netns", {})]
        raise SystemExit(f"testbed: {args.node!r} is not a compute node or FIS machine of run "
                         f"{run.name} (machines: {', '.join(names) or 'none'})")  # fmt: skip
    up = args.command == "recover"
    c = next(c for c in clusters.values() if args.node in c.get("netns", {}))
    fis = any(f["name"] == args.node for f in c.get("fis", []))
    if fis and not up:
        print(f"{args.node}: {state.kill_node(run, args.node)} processes killed")
    clustermod.set_link(run.ns(args.node), up, c["lb_address"])
    if fis and up:
        print(f"{args.node}: {state.restart_node(run, args.node)} processes started")
    print(f"{args.node}: internal link {'restored' if up else 'cut'}")
    return 0


def cmd_capture(args: argparse.Namespace) -> int:
    _need_root()
    run = _pick_run(args.run)
    links = run.data.get("summary", {}).get("links", [])
    link = next((lk for lk in links if lk["name"] == args.link), None)
    if link is None:
        raise SystemExit(
            f"testbed: no link {args.link!r} (links: {', '.join(lk['name'] for lk in links)})"
        )
    node, iface = link["a"].split(":")
    out = args.write or f"{args.link}.pcap"
    cmd = [
        "nsenter",
        f"--net={netns.path(run.ns(node))}",
        "--",
        "tcpdump",
        "-i",
        iface,
        "-U",
        "-w",
        out,
    ]
    if args.count:
        cmd += ["-c", str(args.count)]
    print(f"capturing {args.link} ({node}:{iface}) to {out}; Ctrl-C to stop", file=sys.stderr)
    try:
        return subprocess.call(cmd, timeout=args.duration)
    except subprocess.TimeoutExpired:
        return 0
    except KeyboardInterrupt:
        return 0


def cmd_divert(args: argparse.Namespace) -> int:
    """Add/remove a destination diversion (form 3) on a router of a running testbed."""
    run, ns = _node_ns(args.run, args.router)
    atts = run.data.get("summary", {}).get("attachments", {})
    if args.router not in atts:
        raise SystemExit(f"testbed: {args.router} has no co-located site")
    out = subprocess.run(
        ["nsenter", f"--net={netns.path(ns)}", "--", *divert_argv(args.prefix, args.remove)],
        capture_output=True,
        text=True,
    )
    if out.returncode != 0:
        print(f"testbed: nft: {out.stderr.strip()}", file=sys.stderr)
        return 1
    print(f"{'removed' if args.remove else 'diverting'} {args.prefix} at {args.router}")
    return 0


def cmd_clean(args: argparse.Namespace) -> int:
    _need_root()
    if args.run:
        names = [args.run]
    elif args.all_stale:
        names = [r.name for r in state.list_runs() if r.stale]
        state.clean_unborn()
    else:
        raise SystemExit("testbed clean: pass --run RUN or --all-stale")
    status = 0
    for name in names:
        rep = state.clean(name, timeout=args.timeout)
        print(
            f"cleaned {rep.run}: {rep.processes} processes, {rep.namespaces} namespaces, "
            f"{rep.seconds:.2f} s" + (f"; LEFT: {rep.leftovers}" if rep.leftovers else "")
        )
        status |= bool(rep.leftovers)
    if not names:
        print("nothing stale")
    return status


def cmd_demo(args: argparse.Namespace) -> int:
    _need_root()
    from testbed import scenarios

    t0 = time.monotonic()
    failed = 0
    with Testbed(_load(args.topology), prefix=args.prefix, progress=default_progress) as tb:
        print(f"\nscenarios on {tb.topo.name} (run {tb.run}):")
        for outcome in scenarios.run_all(tb):
            failed += not outcome.ok
            print(f"  [{'ok' if outcome.ok else 'FAIL'}] {outcome.name}: {outcome.detail}")
    if args.testbed_only:
        pass
    elif importlib.util.find_spec("pcdemo") is not None:
        # a command, not an import: the testbed imports nothing of the packages above it
        # on the same topology: its scenarios choose their hosts and sites from it by role
        where = (
            args.topology
            if re.fullmatch(r"line:\d+", args.topology)
            else str(_topology_path(args.topology).resolve())
        )
        print(f"\nrunning the end-to-end service demo (python -m pcdemo --topology {where})")
        cmd = [sys.executable, "-m", "pcdemo", "--topology", where, "--prefix", args.prefix]
        failed += subprocess.call(cmd) != 0
    else:
        print(
            "\nnot installed: pcdemo (the end-to-end service demo); "
            "only the testbed's own scenarios ran"
        )
    print(
        f"demo finished in {time.monotonic() - t0:.1f} s: "
        f"{'all ok' if not failed else f'{failed} failed'}"
    )
    return 1 if failed else 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="testbed", description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="command", required=True)
    p = sub.add_parser("validate", help="check topology files without building anything")
    p.add_argument("topology", nargs="+", help="a .toml file, a shipped name or line:K")
    p.set_defaults(fn=cmd_validate)
    p = sub.add_parser("up", help="validate and build a topology, wait until ready")
    p.add_argument("topology", help="a .toml file, a shipped name (fig2, multidomain) or line:K")
    p.add_argument("--prefix", default="pct", help="name prefix of the run (default pct)")
    p.add_argument("--json", action="store_true")
    p.add_argument(
        "-q",
        "--quiet",
        action="store_true",
        help="print only the run name (export TESTBED_RUN=...)",
    )
    p.set_defaults(fn=cmd_up)
    p = sub.add_parser("down", help="tear a run down")
    p.add_argument("run", nargs="?")
    p.set_defaults(fn=cmd_down)
    p = sub.add_parser("status", help="list runs")
    p.add_argument("--json", action="store_true")
    p.set_defaults(fn=cmd_status)
    p = sub.add_parser("inspect", help="describe a run")
    p.add_argument("run", nargs="?")
    p.add_argument("--json", action="store_true")
    p.set_defaults(fn=cmd_inspect)
    p = sub.add_parser("exec", help="run a command in a node's namespace")
    p.add_argument("--run")
    p.add_argument("node")
    p.add_argument("cmd", nargs=argparse.REMAINDER)
    p.set_defaults(fn=cmd_exec)
    for name, what in (("fail", "cut"), ("recover", "restore")):
        p = sub.add_parser(
            name,
            help=f"{what} a compute node's internal link or a FIS machine "
            "(nodes = N, fis_replicas = M sites)",
        )
        p.add_argument("--run")
        p.add_argument("node")
        p.set_defaults(fn=cmd_fail)
    p = sub.add_parser("capture", help="write a pcap of a link")
    p.add_argument("--run")
    p.add_argument("link")
    p.add_argument("-w", "--write")
    p.add_argument("-c", "--count", type=int)
    p.add_argument("--duration", type=float, help="stop after this many seconds")
    p.set_defaults(fn=cmd_capture)
    p = sub.add_parser("divert", help="divert a destination prefix to a router's site (form 3)")
    p.add_argument("--run")
    p.add_argument("--remove", action="store_true")
    p.add_argument("router")
    p.add_argument("prefix")
    p.set_defaults(fn=cmd_divert)
    p = sub.add_parser("clean", help="remove a run's leftovers (scoped by run id)")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--run")
    g.add_argument("--all-stale", action="store_true")
    p.add_argument("--timeout", type=float, default=15.0)
    p.set_defaults(fn=cmd_clean)
    p = sub.add_parser("demo", help="run the end-to-end scenarios")
    p.add_argument("topology", nargs="?", default="fig2")
    p.add_argument("--prefix", default="pct")
    p.add_argument(
        "--testbed-only",
        action="store_true",
        help="only the testbed's own scenarios, not the end-to-end demo (python -m pcdemo)",
    )
    p.set_defaults(fn=cmd_demo)
    _dns_parser(sub)
    graph.add_parser(sub, _load)
    top.add_parser(sub, _pick_run)
    args = ap.parse_args(argv)
    try:
        return int(args.fn(args))
    except ValueError as exc:
        print(f"testbed: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # a build in progress has already torn itself down
        print("testbed: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())

"""``pcsite``: run a PacketCloud site, or check its configuration.

pcsite run --config site.toml        # foreground; SIGHUP reloads, SIGTERM stops cleanly
pcsite pki ca --out DIR              # control API TLS: a CA, then site certificates
pcsite pki cert --ca DIR --name 198.18.0.1 --out DIR
pcsite check-config --config site.toml     # or: pcsite validate -c site.toml
pcsite cleanup --config site.toml    # remove what a killed instance left in the kernel
pcsite cluster-acl --nodes n1,n2 --passwords roles.json [--prefix pcfis]   # Redis ACL file
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys

from pcsite_lite.daemon.config import ConfigError, load

__all__ = ["main"]


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["pki"]:
        from pcsite_lite.pki import main as pki_main

        return pki_main(argv[1:])
    ap = argparse.ArgumentParser(prog="pcsite", description="PacketCloud site daemon")
    sub = ap.add_subparsers(dest="cmd", required=True)
    run = sub.add_parser("run", help="run the site in the foreground")
    run.add_argument("--config", "-c", required=True)
    run.add_argument("--role", default="",
                     help="lb, node, controller or a comma-separated mix (needs [cluster]); "
                     "default: the whole site on this machine")  # fmt: skip
    sub.add_parser("pki", help="control API certificates (pcsite pki --help)")
    chk = sub.add_parser(
        "check-config", aliases=["validate"], help="validate a configuration file (every mistake)"
    )
    chk.add_argument("--config", "-c", required=True)
    chk.add_argument("--json", action="store_true", help="print the parsed settings as JSON")
    cln = sub.add_parser(
        "cleanup",
        help="remove the kernel state (nft table, rules, TUN devices, address) a killed "
        "instance left; refused while the site runs",
    )
    cln.add_argument("--config", "-c", required=True)
    acl = sub.add_parser(
        "cluster-acl",
        help="print the Redis ACL file of a multi-machine site: one user per role "
        "(controller, lb, node-<name>)",
    )
    acl.add_argument("--nodes", required=True, help="the compute nodes' cluster.node names, "
                     "comma-separated")  # fmt: skip
    acl.add_argument("--passwords", required=True, help="a JSON file: role user -> password "
                     '({"controller": ..., "lb": ..., "node-n1": ...})')  # fmt: skip
    acl.add_argument("--prefix", default="pcfis", help="the FIS key prefix (default pcfis)")
    args = ap.parse_args(argv)
    if args.cmd == "cluster-acl":
        return _cluster_acl(args)
    try:
        cfg = load(args.config)
    except ConfigError as exc:
        for e in exc.errors:  # every mistake found, one a line, with its line in the file
            print(f"pcsite: bad configuration: {args.config}: {e}", file=sys.stderr)
        return 2
    if args.cmd in ("check-config", "validate"):
        if args.json:
            print(json.dumps({"name": cfg.name, "public_ip": cfg.public_ip,
                              "workers": cfg.workers, "mode": cfg.mode, "fis": cfg.fis_url,
                              "control": f"{cfg.control.host}:{cfg.control.port}",
                              "psps": [p.name for p in cfg.control.psps],
                              "tls": cfg.tls is not None,
                              "limits": dataclasses.asdict(cfg.limits)}))  # fmt: skip
        else:
            print(f"{args.config}: ok (site {cfg.name}, {cfg.public_ip}, {cfg.workers} workers)")
        return 0
    if args.cmd == "cleanup":
        from pcsite_lite.daemon.supervisor import cleanup

        status, found = cleanup(cfg)
        if status:
            print(f"pcsite: cleanup refused: {found[0]}", file=sys.stderr)
        else:
            print(f"removed: {', '.join(found)}" if found else "nothing to remove")
        return status
    from pcsite_lite.daemon.supervisor import ALL_IN_ONE, run_daemon

    roles = ALL_IN_ONE
    if args.role:
        from pcsite_lite.cluster.config import parse_roles

        try:
            roles = parse_roles(args.role)
        except ValueError as exc:
            print(f"pcsite: {exc}", file=sys.stderr)
            return 2
    try:
        return run_daemon(cfg, roles)
    except Exception as exc:
        print(f"pcsite: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1


def _cluster_acl(args: argparse.Namespace) -> int:
    from pcsite_lite.cluster.engine import acl_file

    nodes = [n.strip() for n in args.nodes.split(",") if n.strip()]
    try:
        with open(args.passwords) as f:
            passwords = json.load(f)
        if not isinstance(passwords, dict):
            raise ValueError(f"{args.passwords}: a JSON object (role user -> password)")
        print(acl_file(args.prefix, passwords, nodes), end="")
    except KeyError as exc:
        print(f"pcsite: cluster-acl: {args.passwords} has no password for {exc}", file=sys.stderr)
        return 2
    except (OSError, ValueError) as exc:
        print(f"pcsite: cluster-acl: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""``pcsock``: the SDK's command line.

pcsock signup keygen  --zone 64.18.198.in-addr.arpa. --out owner.key
pcsock signup publish --key owner.key --prefix 198.18.64.0/24 --owner acme --service firewall
                      [--days 30] [--parent-key root.key] > zone.txt
pcsock signup proof   --prefix 198.18.64.0/24 --server 198.18.0.18 [--anchor-zone ZONE]
pcsock signup submit  --prefix ... --service firewall --proof proof.txt \\
                      --site http://198.19.0.1:8080 --token ... --psp acme
pcsock signup check   --prefix ... --proof proof.txt --anchor anchor.txt [--owner acme]
pcsock lookupd --config lookupd.json [--wait-sites 20]   # a PSP's circuit lookup service
pcsock discover sites isp.example --server 198.18.0.18
pcsock discover psp psp.example --server 198.18.0.18
pcsock send --lookup 198.18.99.2:7053 --service srcroute --to 198.18.64.2 --sites C2,C3 hello
            [--wait 5] [--linger 1] [--retry 20]
pcsock recv --on 198.18.64.2 [--count 1] [--reply ack]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

__all__ = ["load_lookupd_config", "main"]


def _err(msg: str) -> int:
    print(f"pcsock: {msg}", file=sys.stderr)
    return 1


# --- signup -------------------------------------------------------------------------------------


def _signup(args: argparse.Namespace) -> int:
    from pcsock import ownership

    try:
        if args.action == "keygen":
            key = ownership.ZoneKey.generate(args.zone)
            Path(args.out).write_bytes(key.to_pem())
            Path(args.out).chmod(0o600)
            print(key.ds_text())
            return 0
        if args.action == "publish":
            key = ownership.ZoneKey.from_pem(Path(args.key).read_bytes())
            now = time.time()
            claim = ownership.OwnershipClaim(
                args.prefix, args.owner, args.service, now - 60, now + args.days * 86400
            )
            if ownership.reverse_zone(args.prefix) != key.zone:
                return _err(f"{args.prefix} is not in {key.zone} (its zone is "
                            f"{ownership.reverse_zone(args.prefix)})")  # fmt: skip
            text = ownership.signed_zone_text(
                key,
                records=[ownership.ownership_rrset([claim])],
                inception=now - 3600,
                expiration=now + args.days * 86400,
            )
            sys.stdout.write(text)
            print(f"; DS for the parent zone: {key.ds_text()}", file=sys.stderr)
            return 0
        if args.action == "proof":
            rev = ownership.reverse_zone(args.prefix).to_text()
            anchor_zone = args.anchor_zone or rev
            if not anchor_zone.endswith("."):
                anchor_zone += "."
            proof = ownership.fetch_proof(
                args.prefix, server=args.server, port=args.port, anchor_zone=anchor_zone
            )
            keyed = {
                f[0].lower()
                for f in (line.split() for line in proof.text.splitlines())
                if len(f) > 3 and f[3] == "DNSKEY"
            }
            for zone, role in ((anchor_zone, "the anchor zone"), (rev, "the reverse zone")):
                if zone.lower() not in keyed:
                    return _err(
                        f"proof incomplete: {args.server} returned no DNSKEY for {role} {zone} "
                        f"(is {zone} served there, and signed?)"
                        + (" Name a signed zone it serves with --anchor-zone, by default the "
                           f"reverse zone {rev} itself." if zone != rev else "")
                    )  # fmt: skip
            sys.stdout.write(proof.text)
            return 0
        if args.action == "check":
            claim = ownership.validate_proof(
                Path(args.proof).read_text(),
                args.prefix,
                Path(args.anchor).read_text(),
                time.time(),
                owner=args.owner,
                service=args.service,
            )
            until = time.strftime("%Y-%m-%d %H:%M:%SZ", time.gmtime(claim.not_after))
            print(
                f"valid: {claim.prefix} owner={claim.owner} service={claim.service} until {until}"
            )
            return 0
        if args.action == "submit":
            from pcsock.control import ControlClient, ControlError

            client = ControlClient(args.site, token=args.token, psp=args.psp,
                                   ca_file=args.ca_file)  # fmt: skip
            proof_text = Path(args.proof).read_text()
            deadline = time.monotonic() + args.wait
            while True:
                try:
                    reg = client.register_destination(args.prefix, args.service, proof_text)
                    break
                except ControlError as exc:
                    refused = isinstance(exc.__cause__, ConnectionRefusedError)
                    if refused and time.monotonic() < deadline:  # the site never saw it
                        time.sleep(0.1)
                        continue
                    if exc.code == "connection":
                        return _err(f"cannot reach the site: {exc.message}")
                    return _err(f"the site refused the sign-up: {exc.code}: {exc.message}")
            print(json.dumps(reg))
            return 0
    except ownership.OwnershipError as exc:
        return _err(f"ownership {exc.reason}: {exc.detail}")
    except OSError as exc:
        return _err(str(exc))
    return _err(f"unknown signup action {args.action}")


# --- lookupd ------------------------------------------------------------------------------------


def load_lookupd_config(path: str | Path) -> dict[str, Any]:
    """Read a lookupd configuration (JSON)::

    {"psp": "acme", "listen": "198.19.0.5:7053", "measure": true,
     "sites": [{"name": "C1", "address": "198.18.254.1",
                "control": "http://198.19.0.1:8080", "token": "..."}, ...]}

    A site whose control URL is ``https://`` may name ``"ca_file"``, the CA certificate its
    certificate is verified against.
    """
    try:
        cfg = json.loads(Path(path).read_text())
    except (OSError, ValueError) as exc:
        raise ValueError(f"{path}: {exc}") from exc
    for key in ("psp", "listen", "sites"):
        if key not in cfg:
            raise ValueError(f"{path}: missing {key!r}")
    for i, s in enumerate(cfg["sites"]):
        for key in ("name", "address", "control", "token"):
            if key not in s:
                raise ValueError(f"{path}: sites[{i}] lacks {key!r}")
    return dict(cfg)


def _lookupd(args: argparse.Namespace) -> int:
    from pcsock.lookup import CircuitBroker, HttpSiteControl, LookupServer, SiteEntry

    try:
        cfg = load_lookupd_config(args.config)
    except ValueError as exc:
        return _err(f"bad configuration: {exc}")
    entries = [
        SiteEntry(
            s["name"],
            s["address"],
            HttpSiteControl(
                s["control"], token=s["token"], psp=cfg["psp"], ca_file=s.get("ca_file")
            ),
            port=int(s.get("port", 6253)),
        )
        for s in cfg["sites"]
    ]
    broker = CircuitBroker(cfg["psp"], entries, default_hops=int(cfg.get("default_hops", 1)))
    deadline = time.monotonic() + args.wait_sites
    while args.wait_sites > 0:
        down = []
        for e in entries:
            try:
                e.control.ping()
            except OSError as exc:  # LookupServiceError is one
                down.append(f"{e.name} ({exc})")
        if not down:
            break
        if time.monotonic() >= deadline:
            print(f"pcsock lookupd: sites not answering after {args.wait_sites:g} s: "
                  f"{'; '.join(down)}", file=sys.stderr, flush=True)  # fmt: skip
            break
        time.sleep(0.2)
    if cfg.get("measure", True):
        rtt = broker.measure()
        print("site RTTs: " + ", ".join(f"{n}={v * 1e3:.2f}ms" for n, v in rtt.items()),
              flush=True)  # fmt: skip
    host, _, port = cfg["listen"].rpartition(":")
    try:
        srv = LookupServer(broker, host, int(port))
    except OSError as exc:
        return _err(f"cannot listen on {cfg['listen']}: {exc}")
    print(f"pcsock lookupd: PSP {cfg['psp']} serving on {srv.address[0]}:{srv.address[1]} "
          f"with {len(entries)} sites", flush=True)  # fmt: skip
    try:
        srv.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        broker.close()
    return 0


# --- discover, send, recv -----------------------------------------------------------------------


def _discover(args: argparse.Namespace) -> int:
    from pcsock.discovery import DiscoveryError, Resolver

    r = Resolver([args.server], port=args.port)
    try:
        if args.what == "sites":
            rows: list[dict[str, Any]] = [
                {
                    "name": s.name,
                    "addresses": list(s.addresses),
                    "port": s.port,
                    "forms": list(s.forms),
                    "control": s.control,
                }
                for s in r.sites(args.domain)
            ]
        else:
            rows = [
                {"psp": x.psp, "host": x.host, "port": x.port, "services": list(x.services)}
                for x in r.lookup_services(args.domain)
            ]
    except DiscoveryError as exc:
        return _err(f"discovery failed: {exc}")
    print(json.dumps(rows, indent=2))
    return 0


def _send(args: argparse.Namespace) -> int:
    import pcsock
    from pcsock.lookup import LookupClient, LookupServiceError

    host, _, port = args.lookup.rpartition(":")
    sites = args.sites.split(",") if args.sites else None
    lookup = LookupClient(host, int(port))
    deadline = time.monotonic() + args.retry
    while args.retry > 0:  # wait for the lookup service to listen (nothing was sent yet)
        try:
            lookup.call({"op": "sites"})
            break
        except LookupServiceError as exc:
            if not isinstance(exc.__cause__, ConnectionRefusedError):
                break  # open_circuit reports it
            if time.monotonic() >= deadline:
                return _err(str(exc))
            time.sleep(0.1)
    try:
        with pcsock.open_circuit(
            args.to, args.service, lookup=lookup, sites=sites, mode=args.mode,
            port=args.port, timeout=args.wait,
        ) as s:  # fmt: skip
            for _ in range(args.count):
                s.send(args.message.encode(), metadata=args.metadata)
            print(f"sent {args.count} on circuit {s.circuit.circuit_id} via "
                  f"{'->'.join(s.circuit.sites)} (first hop {s.circuit.first_hop})",
                  flush=True)  # fmt: skip
            if args.wait:
                try:
                    d = s.recv()
                    print(f"reply from {d.source}: {d.payload!r}")
                except TimeoutError:
                    return _err(f"no reply within {args.wait} s")
            elif args.linger > 0:
                # leaving the block tears the circuit down at every site: a packet still on
                # its way would die at the next site as unknown_label (issue #13 item 6)
                time.sleep(args.linger)
            if args.wait:
                when = "after the reply"
            elif args.linger > 0:
                when = f"after {args.linger:g} s (--linger)"
            else:
                when = "at once (--linger 0): packets still in flight are dropped by the sites"
            print(f"circuit {s.circuit.circuit_id} torn down {when}", flush=True)
    except OSError as exc:
        return _err(str(exc))
    return 0


def _recv(args: argparse.Namespace) -> int:
    import pcsock

    try:
        with pcsock.listen(args.on, mode=args.mode, timeout=args.timeout) as s:
            for _ in range(args.count):
                d = s.recv()
                row = {
                    "source": d.source,
                    "via": d.via,
                    "form": d.form,
                    "label": d.label,
                    "service_id": d.service_id,
                    "metadata": d.metadata,
                    "dport": d.dport,
                    "payload": d.payload.decode(errors="replace"),
                }
                print(json.dumps(row), flush=True)
                if args.reply is not None:
                    s.reply(d, args.reply.encode())
    except TimeoutError:
        return _err(f"nothing received within {args.timeout} s")
    except OSError as exc:
        return _err(str(exc))
    return 0


def _seconds(p: argparse.ArgumentParser, flag: str, what: str, default: float = 0.0) -> None:
    """A duration option: ``flag SECONDS`` (``what`` it does; ``default`` seconds)."""
    p.add_argument(flag, type=float, default=default, metavar="SECONDS",
                   help=f"{what} (default {default:g})")  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="pcsock", description="PacketCloud SDK tools")
    sub = ap.add_subparsers(dest="cmd", required=True)

    su = sub.add_parser("signup", help="destination sign-up (DNSSEC ownership proofs)")
    sa = su.add_subparsers(dest="action", required=True)
    p = sa.add_parser("keygen", help="create a zone signing key (prints its DS)")
    p.add_argument("--zone", required=True)
    p.add_argument("--out", required=True)
    p = sa.add_parser("publish", help="print the signed reverse zone with the ownership record")
    p.add_argument("--key", required=True)
    p.add_argument("--prefix", required=True)
    p.add_argument("--owner", required=True, help="the PSP allowed to serve the prefix")
    p.add_argument("--service", required=True)
    p.add_argument("--days", type=float, default=30.0)
    p = sa.add_parser("proof", help="collect the proof from DNS")
    p.add_argument("--prefix", required=True)
    p.add_argument("--server", required=True)
    p.add_argument("--port", type=int, default=53)
    p.add_argument(
        "--anchor-zone",
        help="the zone whose DS/DNSKEY the site trusts (default: the prefix's reverse zone)",
    )
    p = sa.add_parser("check", help="validate a proof against a trust anchor")
    p.add_argument("--prefix", required=True)
    p.add_argument("--proof", required=True)
    p.add_argument("--anchor", required=True, help="file with DS or DNSKEY records")
    p.add_argument("--owner")
    p.add_argument("--service")
    p = sa.add_parser("submit", help="submit the claim to a site's control API")
    p.add_argument("--prefix", required=True)
    p.add_argument("--service", required=True)
    p.add_argument("--proof", required=True)
    p.add_argument("--site", required=True, help="control API URL, http(s)://host:port")
    p.add_argument("--ca-file", help="CA certificate that signed the site's (https URLs)")
    p.add_argument("--token", required=True)
    p.add_argument("--psp", required=True)
    _seconds(p, "--wait", "keep trying while the site's control API refuses connections "
             "(a daemon still starting)")  # fmt: skip

    p = sub.add_parser("lookupd", help="run a PSP circuit lookup service")
    p.add_argument("--config", required=True)
    _seconds(p, "--wait-sites", "before serving, wait that long for every site's control API")

    p = sub.add_parser("discover", help="find sites or PSP lookup services in DNS")
    p.add_argument("what", choices=("sites", "psp"))
    p.add_argument("domain")
    p.add_argument("--server", required=True)
    p.add_argument("--port", type=int, default=53)

    p = sub.add_parser("send", help="open a circuit and send datagrams")
    p.add_argument("message")
    p.add_argument("--lookup", required=True, help="host:port of the PSP lookup service")
    p.add_argument("--service", required=True)
    p.add_argument("--to", required=True)
    p.add_argument("--sites", help="comma-separated site names (default: the PSP chooses)")
    p.add_argument("--mode", choices=("udp", "ip"), default="udp")
    p.add_argument("--port", type=int, default=0, help="destination application port")
    p.add_argument("--metadata", type=int, default=0)
    p.add_argument("--count", type=int, default=1)
    _seconds(p, "--wait", "wait that long for a reply")
    _seconds(p, "--retry", "keep trying that long while the lookup service refuses connections")
    _seconds(p, "--linger", "without --wait: the circuit stays up that long after sending, so "
             "the packets can cross every site before the teardown reaches them", 1.0)  # fmt: skip

    p = sub.add_parser("recv", help="receive PacketCloud datagrams (and reply)")
    p.add_argument("--on", required=True, help="local address")
    p.add_argument("--mode", choices=("udp", "ip"), default="udp")
    p.add_argument("--count", type=int, default=1)
    p.add_argument("--timeout", type=float, default=None)
    p.add_argument("--reply")

    args = ap.parse_args(argv)
    handlers = {
        "signup": _signup,
        "lookupd": _lookupd,
        "discover": _discover,
        "send": _send,
        "recv": _recv,
    }
    return handlers[args.cmd](args)


if __name__ == "__main__":
    sys.exit(main())

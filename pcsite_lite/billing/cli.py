"""``pcbill``: invoices, ledger export/import, service logs and the §3 cost model.

Examples::

    pcbill invoice --ledger site.ledger --psp acme --from 2026-11-01 --to 2026-12-01
    pcbill invoice --ledger site.ledger --psp acme --from 2026-11-01 --to 2026-12-01 \\
        --format csv --prices prices.toml
    pcbill collect --url http://198.18.0.1:8080 --ledger central.ledger --interval 60
    pcbill export --ledger site.ledger --from 2026-11-01 --to 2026-12-01 -o nov.jsonl
    pcbill import --ledger central.ledger nov.jsonl
    pcbill logs --ledger site.ledger --psp acme --service mcast
    pcbill prices --prices prices.toml
    pcbill costmodel --plot cost.png --site-gbps 100 --json

Dates are ``YYYY-MM-DD`` (midnight UTC), an ISO 8601 time (no offset means UTC) or unix
seconds; ``--to`` is exclusive. Errors print one line on stderr and exit with status 1
(status 2 for usage errors).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from dataclasses import fields
from datetime import UTC, datetime
from pathlib import Path

from pcsite_lite.billing import costmodel
from pcsite_lite.billing.invoice import build_invoice
from pcsite_lite.billing.ledger import Ledger, LedgerError
from pcsite_lite.billing.prices import PriceSheet, PriceSheetError

__all__ = ["main", "parse_time"]


class CliError(Exception):
    """A user-facing error: printed as one line, exit status 1."""


def parse_time(text: str) -> float:
    """``YYYY-MM-DD``, ISO 8601 date-time (naive = UTC) or unix seconds → unix seconds."""
    t = text.strip()
    try:
        return float(t) if t and (t[0].isdigit() and "-" not in t and ":" not in t) else _iso(t)
    except ValueError:
        raise CliError(
            f"bad date {text!r}: expected YYYY-MM-DD, an ISO 8601 time such as"
            " 2026-11-25T18:00:00Z, or unix seconds"
        ) from None


def _iso(t: str) -> float:
    if t.endswith(("Z", "z")):
        t = t[:-1] + "+00:00"
    dt = datetime.fromisoformat(t)
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    return dt.timestamp()


def _open_ledger(path: str, *, create: bool = False) -> Ledger:
    try:
        return Ledger(path, create=create)
    except LedgerError as e:
        raise CliError(str(e)) from None


def _period(args: argparse.Namespace, *, required: bool) -> tuple[float | None, float | None]:
    start = parse_time(args.from_) if args.from_ is not None else None
    end = parse_time(args.to) if args.to is not None else None
    if required and (start is None or end is None):
        raise CliError("--from and --to are required")
    if start is not None and end is not None and end <= start:
        raise CliError(f"--to ({args.to}) must be after --from ({args.from_})")
    return start, end


def _write(args: argparse.Namespace, data: str | bytes) -> None:
    out = getattr(args, "output", None)
    if out in (None, "-"):
        if isinstance(data, bytes):
            sys.stdout.flush()
            sys.stdout.buffer.write(data)
            sys.stdout.buffer.flush()
        else:
            sys.stdout.write(data)
        return
    try:
        p = Path(out)
        if isinstance(data, bytes):
            p.write_bytes(data)
        else:
            p.write_text(data)
    except OSError as e:
        raise CliError(f"cannot write {out}: {e.strerror}") from None


def _check_psp(ledger: Ledger, psp: str) -> None:
    known = ledger.psps()
    if psp not in known:
        have = ", ".join(known) if known else "no PSPs at all"
        raise CliError(f"unknown PSP {psp!r}: the ledger {ledger.path} has {have}")


def cmd_invoice(args: argparse.Namespace) -> None:
    start, end = _period(args, required=True)
    assert start is not None and end is not None
    prices = PriceSheet.load(args.prices) if args.prices else PriceSheet.default()
    with _open_ledger(args.ledger) as ledger:
        _check_psp(ledger, args.psp)
        inv = build_invoice(ledger.records(args.psp, start, end), args.psp, start, end, prices)
    render = {"table": inv.to_table, "csv": inv.to_csv, "json": inv.to_json}[args.format]
    _write(args, render())


def cmd_export(args: argparse.Namespace) -> None:
    start, end = _period(args, required=False)
    with _open_ledger(args.ledger) as ledger:
        if args.psp is not None:
            _check_psp(ledger, args.psp)
        data = ledger.export(start, end, args.psp)
    _write(args, data)


def cmd_import(args: argparse.Namespace) -> None:
    docs: list[tuple[str, bytes]] = []
    for name in args.files:
        try:
            data = sys.stdin.buffer.read() if name == "-" else Path(name).read_bytes()
        except FileNotFoundError:
            raise CliError(f"export file {name} does not exist") from None
        except OSError as e:
            raise CliError(f"cannot read {name}: {e.strerror}") from None
        docs.append((name, data))
    with _open_ledger(args.ledger, create=True) as ledger:
        for name, data in docs:
            try:
                r = ledger.import_export(data)
            except LedgerError as e:
                raise CliError(f"{name}: {e}") from None
            print(
                f"{name}: {r.records_added} records added, {r.records_skipped} already present;"
                f" {r.logs_added} log lines added, {r.logs_skipped} already present"
            )


def cmd_logs(args: argparse.Namespace) -> None:
    start, end = _period(args, required=False)
    with _open_ledger(args.ledger) as ledger:
        _check_psp(ledger, args.psp)
        lines = ledger.logs(args.psp, start, end, service=args.service)
    out = []
    for ln in lines:
        when = datetime.fromtimestamp(ln.ts, UTC).isoformat(timespec="microseconds")
        out.append(f"{when.replace('+00:00', 'Z')} {ln.site} {ln.service}: {ln.text}\n")
    _write(args, "".join(out))


def cmd_collect(args: argparse.Namespace) -> None:
    import os
    import time

    from pcsite_lite.billing.collect import MetricsError, UsageCollector, collect_export
    from pcsite_lite.billing.ledger import LedgerConflict
    from pcsite_lite.control.client import ControlClient, ControlError

    token = os.environ.get("PCBILL_TOKEN") if args.token is None else args.token
    if not token:
        raise CliError("an ISP token is needed: --token or the PCBILL_TOKEN environment variable")
    if args.interval <= 0 or (args.count is not None and args.count < 1):
        raise CliError("--interval must be positive and --count at least 1")
    if args.retry_delay <= 0 or (args.max_failures is not None and args.max_failures < 1):
        raise CliError("--retry-delay must be positive and --max-failures at least 1")
    client = ControlClient(args.url, token=token, psp=None)
    name = args.name or args.url
    with _open_ledger(args.ledger, create=True) as ledger:
        scraper = UsageCollector(ledger, name)
        n = failures = 0
        while True:
            try:
                if args.source == "export":
                    result, cursor = collect_export(ledger, name, client.usage_export)
                    what = (
                        f"{result.records_added} usage records added,"
                        f" {result.records_skipped} already present (up to {cursor!r})"
                    )
                else:
                    records = scraper.observe(client.metrics(), time.time())
                    names = ", ".join(f"{r.psp}/{r.service}" for r in records) or "baseline"
                    what = f"{len(records)} usage records ({names})"
            except LedgerConflict as e:  # the central ledger disagrees: a person must look
                raise CliError(f"{args.url}: {e}") from None
            except (ControlError, OSError, MetricsError, LedgerError) as e:
                failures += 1
                reason = f"cannot reach {args.url}: {e}" if isinstance(e, OSError) else str(e)
                if args.max_failures is not None and failures >= args.max_failures:
                    raise CliError(f"{reason} ({failures} failed attempts in a row)") from None
                delay = min(args.interval, args.retry_delay * 2 ** (failures - 1))
                print(
                    f"pcbill: warning: {reason}; retry {failures} in {delay:g} s",
                    file=sys.stderr,
                    flush=True,
                )
                time.sleep(delay)
                continue
            failures = 0
            n += 1
            print(f"collection {n}: {what}", flush=True)
            if args.count is not None and n >= args.count:
                return
            time.sleep(args.interval)


def cmd_prices(args: argparse.Namespace) -> None:
    sheet = PriceSheet.load(args.prices) if args.prices else PriceSheet.default()
    rows = [(f.name, str(getattr(sheet, f.name))) for f in fields(sheet)]
    width = max(len(n) for n, _ in rows)
    _write(args, "".join(f"{n.ljust(width)}  {v}\n" for n, v in rows))


_COST_INPUTS = [f.name for f in fields(costmodel.CostInputs)]
_COST_HELP = {
    "site_gbps": "design throughput of the site, Gbps",
    "node_gbps": "throughput of one node, Gbps (PacketShader, 64 B IPsec)",
    "machines": "N compute nodes (overrides the throughput derivation)",
    "extra_investment": "storage + load balancer, as a fraction of N",
    "machine_price": "c_machine, dollars",
    "depreciation_years": "d, years",
    "efficiency": "E, other costs relative to machine cost",
    "cores_per_node": "CPU cores per node",
    "reference_cpu_price": "App Engine price per CPU-hour",
    "reference_clock_ghz": "clock of App Engine's reference CPU",
    "node_clock_ghz": "clock of the node's CPU",
    "cpu_price_round_to": "round the scaled CPU price half up to this (0: no rounding)",
    "cpu_price": "price per core-hour (overrides the clock scaling)",
    "hours_per_year": "hours in a year",
}


def cmd_costmodel(args: argparse.Namespace) -> None:
    overrides = {n: getattr(args, n) for n in _COST_INPUTS if getattr(args, n) is not None}
    try:
        inputs = costmodel.CostInputs().with_overrides(**overrides)
    except ValueError as e:
        raise CliError(f"bad cost-model input: {e}") from None
    result = costmodel.compute(inputs)
    if args.plot:
        try:
            costmodel.plot(result, args.plot)
        except OSError as e:
            raise CliError(f"cannot write plot {args.plot}: {e.strerror}") from None
    if args.json:
        import json

        doc = result.to_dict()
        if args.plot:
            doc["plot"] = str(args.plot)
        print(json.dumps(doc, indent=2))
    else:
        sys.stdout.write(result.to_text())
        if args.plot:
            print(f"plot written to {args.plot}")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="pcbill",
        description="PacketCloud billing: invoices, ledger export/import, logs, cost model.",
    )
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def period(sp: argparse.ArgumentParser, required: bool) -> None:
        sp.add_argument(
            "--from",
            dest="from_",
            required=required,
            metavar="DATE",
            help="start (inclusive): YYYY-MM-DD, ISO 8601 or unix seconds",
        )
        sp.add_argument("--to", required=required, metavar="DATE", help="end (exclusive)")

    sp = sub.add_parser("invoice", help="invoice one PSP for one period")
    sp.add_argument("--ledger", required=True, metavar="PATH")
    sp.add_argument("--psp", required=True, metavar="NAME")
    period(sp, True)
    sp.add_argument("--format", choices=["table", "csv", "json"], default="table")
    sp.add_argument("--prices", metavar="FILE", help="TOML price sheet (default: built-in)")
    sp.add_argument("-o", "--output", metavar="FILE", help="write here instead of stdout")
    sp.set_defaults(func=cmd_invoice)

    sp = sub.add_parser("export", help="canonical JSON-lines export of a period")
    sp.add_argument("--ledger", required=True, metavar="PATH")
    sp.add_argument("--psp", metavar="NAME", help="only this PSP")
    period(sp, False)
    sp.add_argument("-o", "--output", metavar="FILE", help="write here instead of stdout")
    sp.set_defaults(func=cmd_export)

    sp = sub.add_parser("import", help="merge exports into a ledger (duplicates are ignored)")
    sp.add_argument("--ledger", required=True, metavar="PATH", help="created if missing")
    sp.add_argument("files", nargs="+", metavar="FILE", help="export files ('-' = stdin)")
    sp.set_defaults(func=cmd_import)

    sp = sub.add_parser("logs", help="the accounting log lines of a PSP's services")
    sp.add_argument("--ledger", required=True, metavar="PATH")
    sp.add_argument("--psp", required=True, metavar="NAME")
    sp.add_argument("--service", metavar="NAME")
    period(sp, False)
    sp.add_argument("-o", "--output", metavar="FILE")
    sp.set_defaults(func=cmd_logs)

    sp = sub.add_parser("collect", help="collect a site daemon's metered usage into a ledger")
    sp.add_argument(
        "--url", required=True, help="the site's control API, e.g. http://198.18.0.1:8080"
    )
    sp.add_argument("--token", help="ISP token (default: $PCBILL_TOKEN)")
    sp.add_argument("--ledger", required=True, metavar="PATH", help="created if missing")
    sp.add_argument("--interval", type=float, default=60.0, help="seconds between scrapes")
    sp.add_argument("--count", type=int, help="stop after this many scrapes")
    sp.add_argument("--name", help="checkpoint name of this site (default: the URL)")
    sp.add_argument(
        "--source",
        choices=["export", "metrics"],
        default="export",
        help="export: the site's own usage ledger (default); metrics: scrape /metrics",
    )
    sp.add_argument(
        "--retry-delay",
        type=float,
        default=1.0,
        metavar="S",
        help="first retry after a failed collection; doubles up to --interval (default 1)",
    )
    sp.add_argument(
        "--max-failures",
        type=int,
        metavar="N",
        help="give up after N failed attempts in a row (default: never)",
    )
    sp.set_defaults(func=cmd_collect)

    sp = sub.add_parser("prices", help="validate and show a price sheet")
    sp.add_argument("--prices", metavar="FILE", help="TOML price sheet (default: built-in)")
    sp.set_defaults(func=cmd_prices)

    sp = sub.add_parser("costmodel", help="the paper's §3 cost/revenue model")
    sp.add_argument("--plot", metavar="PNG", help="write the cost/revenue plot here")
    sp.add_argument("--json", action="store_true", help="print JSON")
    defaults = costmodel.CostInputs()
    for name in _COST_INPUTS:
        default = getattr(defaults, name)
        shown = "derived" if default is None else f"{float(default):g}"
        sp.add_argument(
            f"--{name.replace('_', '-')}",
            dest=name,
            metavar="X",
            help=f"{_COST_HELP.get(name, name)} (default {shown})",
        )
    sp.set_defaults(func=cmd_costmodel)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``pcbill`` console script; returns the exit status."""
    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except (CliError, LedgerError, PriceSheetError) as e:
        print(f"pcbill: error: {e}", file=sys.stderr)
        return 1
    except BrokenPipeError:
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Run benchmarks: ``python -m benchmarks [names...] [--quick] [--results DIR]``.

``python -m benchmarks --plot DIR [names...]`` runs nothing: it draws each benchmark's figures
from ``--results`` (``results/<name>.json``) into ``DIR/<name>.png`` (see ``benchmarks._plot``).

Every benchmark module in ``benchmarks/`` (or only the named ones) runs in its own interpreter
as ``python -m benchmarks.<name> --json results/<name>.json [--quick]``. The runner then lists
what it ran, with the exit status, the wall time and the figures each one wrote. It exits
non-zero if any benchmark failed (the others still run).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

from benchmarks import available

ROOT = Path(__file__).resolve().parent.parent


def _figures(path: Path) -> str:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return "(no JSON written)"
    shown = [
        f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
        for k, v in data.items()
        if isinstance(v, int | float) and not isinstance(v, bool)
    ]
    return ", ".join(shown[:6])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__)
    parser.add_argument("names", nargs="*", help="benchmarks to run (default: all)")
    parser.add_argument("--quick", action="store_true", help="tiny iteration counts")
    parser.add_argument("--results", default=str(ROOT / "results"), help="output directory")
    parser.add_argument("--list", action="store_true", help="list the benchmarks and exit")
    parser.add_argument(
        "--plot",
        metavar="DIR",
        help="run nothing: draw each benchmark's figures from --results into DIR/<name>.png",
    )
    args = parser.parse_args(argv)

    names = available()
    if args.list:
        print("\n".join(names))
        return 0
    unknown = [n for n in args.names if n not in names]
    if unknown:
        parser.error(f"unknown benchmark(s): {', '.join(unknown)}; available: {', '.join(names)}")
    if args.plot:
        from benchmarks._plot import plot_all

        written = plot_all(Path(args.results), Path(args.plot), args.names or None)
        for path in written:
            print(f"[benchmarks] wrote {path}")
        if not written:
            print(f"[benchmarks] no results to plot in {args.results} (run the benchmarks first)")
            return 2
        return 0
    chosen = args.names or names
    out_dir = Path(args.results)
    out_dir.mkdir(parents=True, exist_ok=True)

    ran: list[tuple[str, int, float, Path]] = []
    for name in chosen:
        out = out_dir / f"{name}.json"
        cmd = [sys.executable, "-m", f"benchmarks.{name}", "--json", str(out)]
        if args.quick:
            cmd.append("--quick")
        print(f"[benchmarks] running {name}: {' '.join(cmd[1:])}", flush=True)
        t0 = time.perf_counter()
        rc = subprocess.call(cmd, cwd=ROOT)
        ran.append((name, rc, time.perf_counter() - t0, out))

    print("\n[benchmarks] ran:")
    for name, rc, secs, out in ran:
        status = "ok" if rc == 0 else f"FAILED (exit {rc})"
        print(f"  {name:20s} {status:16s} {secs:7.1f} s  {out}  {_figures(out) if rc == 0 else ''}")
    return 0 if all(rc == 0 for _, rc, _, _ in ran) else 1


if __name__ == "__main__":
    sys.exit(main())

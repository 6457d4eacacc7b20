"""What the benchmarks share: their command line (:func:`arguments`) and their output (print
the figures, write them as JSON with ``--json PATH``: :func:`emit`)."""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any


def emit(figures: dict[str, Any], json_path: str | None) -> None:
    """Add the interpreter and machine, print numeric figures aligned, write JSON if asked."""
    figures["python"] = sys.version.split()[0]
    figures["machine"] = platform.machine()
    for key, value in figures.items():
        if isinstance(value, float):
            print(f"{key:45s} {value:10.3f}")
        elif isinstance(value, int) and not isinstance(value, bool):
            print(f"{key:45s} {value:10d}")
    write_json(figures, json_path)


def write_json(figures: dict[str, Any], json_path: str | None) -> None:
    """Write ``figures`` as JSON to ``json_path`` (its folder made), if there is one."""
    if json_path:
        path = Path(json_path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(figures, indent=2, sort_keys=True) + "\n")


#: an option of a benchmark's command line: (type, default, help)
Option = tuple[type, Any, str]


def arguments(argv: list[str] | None, prog: str, doc: str | None, options: dict[str, Option],
              *, root: str | None = None) -> argparse.Namespace | None:  # fmt: skip
    """Parse a benchmark's command line: ``--json PATH`` plus ``options`` (``"--rate": (float,
    2000.0, "packets/s")``; a bool type is a flag). With ``root`` (what it needs root for),
    None (after saying so) unless running as root."""
    ap = argparse.ArgumentParser(prog=prog, description=(doc or "").split("\n")[0])
    ap.add_argument("--json", metavar="PATH", help="write the figures as JSON to this path")
    for flag, (kind, default, what) in options.items():
        if kind is bool:
            ap.add_argument(flag, action="store_true", help=what)
        else:
            ap.add_argument(flag, type=kind, default=default, help=what)
    args = ap.parse_args(argv)
    if root is not None and os.geteuid() != 0:
        print(f"{prog}: needs root ({root})", file=sys.stderr)
        return None
    return args


#: ``--quick``, ``--packets``, ``--repeat``: the in-process example benchmarks' options
QUICK_OPTIONS: dict[str, Option] = {
    "--quick": (bool, False, "tiny counts (checks it works)"),
    "--packets": (int, 20000, "packets per measurement"),
    "--repeat": (int, 7, "repetitions (the median is reported)"),
}


def quick_main(argv: list[str] | None, name: str, doc: str | None, quick: int,
               measure: Callable[[int, int, bool], dict[str, Any]]) -> int:  # fmt: skip
    """``main`` of an in-process benchmark with :data:`QUICK_OPTIONS`: ``measure(packets,
    repeat, quick)`` gives the figures (``--quick``: ``quick`` packets, 2 repetitions)."""
    args = arguments(argv, f"python -m benchmarks.{name}", doc, QUICK_OPTIONS)
    assert args is not None
    n, repeat = (quick, 2) if args.quick else (args.packets, args.repeat)
    emit({"benchmark": name, "packets": n, "repeat": repeat, **measure(n, repeat, args.quick)},
         args.json)  # fmt: skip
    return 0


def options_main(argv: list[str] | None, name: str, doc: str | None,
                 options: dict[str, Option], run: Callable[..., dict[str, Any]],
                 *, root: str | None = None) -> int:  # fmt: skip
    """``main`` of a benchmark whose options are the keywords of its ``run`` (``--kill-after``
    is ``kill_after``): parse them (see :func:`arguments`), run, :func:`emit` the figures;
    2 without root where it needs root."""
    args = arguments(argv, name, doc, options, root=root)
    if args is None:
        return 2
    names = [flag[2:].replace("-", "_") for flag in options]  # argparse's names of the options
    emit(run(**{n: getattr(args, n) for n in names}), args.json)
    return 0

"""Small topology files for the testbed tests, written table by table: ``topology_toml("t",
node("h", "host"), node("r", "router"), link("h", "r"))`` is the text of a file with those
``[[node]]`` and ``[[link]]`` tables in that order (one key a line, as a person writes it, so
the line numbers the tests expect in error messages are the ones of the text)."""

from __future__ import annotations

from typing import Any

from pcdemo.rig import toml_value

__all__ = ["link", "node", "topology_toml"]


def _table(kind: str, fields: dict[str, Any]) -> str:
    return f"[[{kind}]]\n" + "".join(f"{k} = {toml_value(v)}\n" for k, v in fields.items())


def node(name: str, kind: str, **fields: Any) -> str:
    """A ``[[node]]`` table: its name, its kind, then ``fields`` in order."""
    return _table("node", {"name": name, "kind": kind, **fields})


def link(a: str, b: str, **fields: Any) -> str:
    """A ``[[link]]`` table between ``a`` and ``b``, then ``fields`` (delay, rate, ...)."""
    return _table("link", {"a": a, "b": b, **fields})


def topology_toml(name: str, *tables: str) -> str:
    """The text of a topology file named ``name`` with ``tables`` in order."""
    return f'name = "{name}"\n' + "".join(tables)

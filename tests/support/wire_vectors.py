"""Read the test vectors out of docs/protocol.md (so the spec and the tests cannot drift)."""

from __future__ import annotations

import re
from pathlib import Path

DOC = Path(__file__).resolve().parents[2] / "docs" / "protocol.md"
_BLOCK = re.compile(r"^```(vector|hop|reject)\n(.*?)^```", re.S | re.M)


def _parse_block(text: str) -> dict[str, str]:
    fields: dict[str, str] = {}
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        key, _, value = lines[i].partition(":")
        if key == "packet":
            hexlines = []
            i += 1
            while i < len(lines) and lines[i].startswith("  "):
                hexlines.append(lines[i])
                i += 1
            fields["packet"] = "".join("".join(hexlines).split())
            continue
        fields[key.strip()] = value.strip()
        i += 1
    return fields


def load(kind: str) -> list[dict[str, str]]:
    """All blocks of one kind ("vector", "hop" or "reject") in document order."""
    return [_parse_block(body) for k, body in _BLOCK.findall(DOC.read_text()) if k == kind]


def by_name() -> dict[str, dict[str, str]]:
    return {v["name"]: v for kind in ("vector", "hop", "reject") for v in load(kind)}


def packet(v: dict[str, str]) -> bytes:
    return bytes.fromhex(v["packet"])


def num(v: dict[str, str], key: str) -> int:
    return int(v[key], 0)

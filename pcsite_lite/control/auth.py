"""Who is calling: per-PSP bearer tokens and the ISP's admin token.

Credentials come from the site config (``[control.psps.<name>] token = ...``,
``[control] admin_token = ...``). Only SHA-256 digests of tokens are kept in memory and a
presented token is hashed before the lookup, so lookup time does not depend on how much of a
guess matches a real token.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

from .errors import ApiError

__all__ = ["MIN_TOKEN_LEN", "Credentials", "Principal"]

#: Tokens shorter than this are a configuration error (guessable).
MIN_TOKEN_LEN = 16


@dataclass(frozen=True, slots=True)
class Principal:
    """An authenticated caller: the ISP operator or one PSP."""

    role: Literal["isp", "psp"]
    name: str

    @property
    def is_isp(self) -> bool:
        return self.role == "isp"

    def may_act_for(self, psp: str) -> bool:
        """Ownership rule: a PSP acts only for itself; the ISP acts for anyone."""
        return self.is_isp or self.name == psp


def _digest(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()


class Credentials:
    """The table of accepted bearer tokens."""

    def __init__(self, *, admin_token: str | None, psp_tokens: Mapping[str, str]) -> None:
        self._by_digest: dict[bytes, Principal] = {}
        if admin_token is not None:
            self._add(admin_token, Principal("isp", "isp"), "the ISP admin token")
        for psp, token in psp_tokens.items():
            if not psp or not all(c.isalnum() or c in "-_." for c in psp):
                raise ValueError(f"PSP name {psp!r}: use letters, digits, '-', '_', '.'")
            self._add(token, Principal("psp", psp), f"PSP {psp!r}'s token")

    def _add(self, token: str, who: Principal, what: str) -> None:
        if not isinstance(token, str) or len(token) < MIN_TOKEN_LEN:
            raise ValueError(f"{what} must be a string of at least {MIN_TOKEN_LEN} characters")
        d = _digest(token)
        if d in self._by_digest:
            raise ValueError(f"{what} is the same as another credential's")
        self._by_digest[d] = who

    @property
    def psps(self) -> list[str]:
        return sorted(p.name for p in self._by_digest.values() if p.role == "psp")

    def authenticate(self, authorization: str | None) -> Principal:
        """The principal of an ``Authorization: Bearer <token>`` header value."""
        if not authorization:
            raise ApiError("unauthenticated", "an 'Authorization: Bearer <token>' header is needed")
        scheme, _, token = authorization.strip().partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise ApiError("unauthenticated", "only the Bearer scheme is accepted")
        who = self._by_digest.get(_digest(token.strip()))
        if who is None:
            raise ApiError("unauthenticated", "unknown credential")
        return who

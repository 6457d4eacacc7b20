"""The SDK's and the site's refusals: an error with a machine-readable token from a closed set.

Each subclass names its set (``CODES``); ``code`` is the token (``reason`` is the same value,
the name the data path and ownership proofs use), ``detail`` is for people, and ``str(e)`` is
``"token: detail"``.
"""

from __future__ import annotations

from typing import ClassVar

__all__ = ["CodedError"]


class CodedError(Exception):
    """An error carrying ``code``, one of the class's ``CODES``, and a ``detail``."""

    CODES: ClassVar[frozenset[str]] = frozenset()

    def __init__(self, code: str, detail: str = "") -> None:
        assert code in self.CODES, code
        self.code = code
        self.detail = detail
        super().__init__(f"{code}: {detail}" if detail else code)

    @property
    def reason(self) -> str:
        """``code`` (the name :class:`~pcsock.wire.WireError` and ownership errors use)."""
        return self.code

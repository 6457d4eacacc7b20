"""Messages of any size between the supervisor and a worker over SOCK_SEQPACKET.

A message is one JSON document. SOCK_SEQPACKET keeps message boundaries, but one datagram
must fit the socket's send buffer (about 200 KB by default): a circuit hop with thousands of
out hops is bigger ("Message too long"). So every message travels as frames of at most
:data:`FRAME` bytes, each a one-byte header (:data:`MORE` or :data:`LAST`) and a slice of the
JSON text; :class:`Reassembler` joins them, bounded by :data:`MAX_MESSAGE`.
"""

from __future__ import annotations

import json
from typing import Any, Final

__all__ = ["FRAME", "LAST", "MAX_MESSAGE", "MORE", "ChannelError", "Reassembler", "frames"]

FRAME: Final = 32 * 1024  #: largest frame on the wire, header included
MORE: Final = b"+"
LAST: Final = b"."
MAX_MESSAGE: Final = 64 << 20  #: a message larger than this is refused by the receiver


class ChannelError(Exception):
    """A frame sequence that is not a valid message (the reassembler starts over)."""


def frames(doc: Any) -> list[bytes]:
    """``doc`` as JSON, cut into frames."""
    data = json.dumps(doc, separators=(",", ":")).encode()
    step = FRAME - 1
    if len(data) <= step:
        return [LAST + data]
    out = [MORE + data[i : i + step] for i in range(0, len(data), step)]
    out[-1] = LAST + out[-1][1:]
    return out


class Reassembler:
    """Feed frames in order; :meth:`feed` returns each complete message once."""

    def __init__(self, max_message: int = MAX_MESSAGE) -> None:
        self._parts: list[bytes] = []
        self._size = 0
        self._max = max_message

    def feed(self, frame: bytes) -> Any | None:
        """The decoded message if ``frame`` completes one, else None (ChannelError if bad)."""
        head, body = frame[:1], frame[1:]
        if head not in (MORE, LAST):
            self._reset()
            raise ChannelError(f"bad frame header {head!r}")
        self._size += len(body)
        if self._size > self._max:
            self._reset()
            raise ChannelError(f"message larger than {self._max} bytes")
        self._parts.append(body)
        if head == MORE:
            return None
        data = b"".join(self._parts)
        self._reset()
        try:
            return json.loads(data)
        except (ValueError, RecursionError) as exc:  # JSONDecodeError, UnicodeDecodeError
            raise ChannelError(f"message is not JSON: {exc}") from None

    def _reset(self) -> None:
        self._parts = []
        self._size = 0

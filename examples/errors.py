"""The one error type of the examples' own code: a refusal with a machine-readable reason.

A PSP-side control plane refuses a request (a filter, a binding update, a rule) and a packet
codec refuses a packet (a tunnel, a multicast header) with a short ``reason`` token -- what a
site counts a drop under, or what a PSP answers -- and an optional ``detail`` for people.
Each example names its own subclass for what it refuses.
"""

from __future__ import annotations

__all__ = ["ReasonError"]


class ReasonError(ValueError):
    """A refusal; ``reason`` is a machine-readable token, ``detail`` says more."""

    def __init__(self, reason: str, detail: str = "") -> None:
        self.reason = reason
        self.detail = detail
        super().__init__(f"{reason}: {detail}" if detail else reason)

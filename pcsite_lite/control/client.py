"""The site control API's client, as the site's side names it.

The client is part of the SDK (:mod:`pcsock.control`: PSP control planes and prefix owners
call it, and ``pcsock`` imports nothing of the site); it is re-exported here so site tools
(``pcbill``) and scripts can import it beside the server.
"""

from __future__ import annotations

from pcsock.control import ControlClient, ControlError, OutHop

__all__ = ["ControlClient", "ControlError", "OutHop"]

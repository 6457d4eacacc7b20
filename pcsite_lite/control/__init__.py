"""The site's control API (PSP- and ISP-facing): HTTP/1.1 + JSON on trio, OpenAPI-described.

- :mod:`.app`: the pure request -> response function (routes, auth, validation, OpenAPI)
- :mod:`.limits`: the ``[limits]`` bounds and the pure checks behind them (body shape, token
  buckets, connection admission)
- :mod:`.server`: trio + h11 adapter (optional TLS), enforcing the connection-level limits
- :mod:`.client`: the SDK's client of this API (:mod:`pcsock.control`), re-exported
- :mod:`.site_backend`: the site operations behind the routes
"""

from .auth import Credentials, Principal
from .errors import CODES, ApiError

__all__ = ["CODES", "ApiError", "Credentials", "Principal"]

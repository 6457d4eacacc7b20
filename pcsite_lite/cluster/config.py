"""``[cluster]``: where a site's roles find each other on the internal network.

Absent, the site is one machine (``pcsite run`` as before). Every key is checked at load and
a mistake is a :class:`~pcsite_lite.daemon.config.ConfigError` naming it::

    [cluster]
    internal_dev = "int0"            # this machine's interface on the internal network
    internal_ip = "198.19.0.2"       # this machine's address on it
    lb = "198.19.0.1:6254"           # the LB's heartbeat address (UDP)
    controller = "198.19.0.1:6255"   # the controller's TCP state feed (a site without a
                                     # Redis FIS: with one, the roles meet on the engine)
    node = "n1"                      # this compute node's name (unique in the site)
    secret = "..."                   # >= 16 characters: authenticates heartbeats, the state
                                     # stream's ops and usage batches, the TCP feed's lines
    heartbeat = 0.1                  # s between a node's heartbeats
    ttl = 0.5                        # s of silence after which the LB counts a node dead
    table_size = 4093                # Maglev positions (a prime)
    drain_grace = 0.3                # s a draining node keeps forwarding after it is out
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from typing import Any, Final

from .maglev import MAX_SIZE, is_prime

__all__ = ["ROLES", "ClusterConfig", "parse_cluster", "parse_roles"]

ROLES: Final = ("lb", "node", "controller")
HEARTBEAT_PORT: Final = 6254
FEED_PORT: Final = 6255


@dataclass(frozen=True, slots=True)
class ClusterConfig:
    internal_dev: str
    internal_ip: str
    lb: tuple[str, int]
    controller: tuple[str, int]
    node: str
    secret: bytes
    heartbeat: float = 0.1
    ttl: float = 0.5
    table_size: int = 4093
    drain_grace: float = 0.3


def parse_roles(text: str) -> frozenset[str]:
    """``--role lb,controller`` -> the role set; a clear ValueError for a bad one."""
    roles = frozenset(r.strip() for r in text.split(",") if r.strip())
    bad = sorted(roles - set(ROLES))
    if bad or not roles:
        raise ValueError(f"--role: {', '.join(bad) or '(empty)'} is not one of {', '.join(ROLES)}")
    if "lb" in roles and "node" in roles:
        raise ValueError(
            "--role: an LB and a compute node cannot share a machine (both split the public "
            "IP's traffic); for one machine run the default all-in-one site (no --role)"
        )
    return roles


def _endpoint(err: Any, key: str, v: Any, default_port: int) -> tuple[str, int]:
    if not isinstance(v, str):
        raise err(f"cluster.{key}", "must be a string host:port")
    host, _, port = v.rpartition(":") if ":" in v else (v, "", str(default_port))
    try:
        ipaddress.IPv4Address(host)
        p = int(port)
    except ValueError:
        raise err(f"cluster.{key}", f"{v!r} is not IPv4:port") from None
    if not 1 <= p <= 65535:
        raise err(f"cluster.{key}", f"port {p} out of range")
    return host, p


def parse_cluster(sec: Any, err: Any) -> ClusterConfig | None:
    """The ``[cluster]`` table (None if absent); ``err(key, message)`` builds the error."""
    if sec is None:
        return None
    if not isinstance(sec, dict):
        raise err("cluster", "must be a table")
    known = {"internal_dev", "internal_ip", "lb", "controller", "node", "secret", "heartbeat",
             "ttl", "table_size", "drain_grace"}  # fmt: skip
    extra = sorted(set(sec) - known)
    if extra:
        raise err(f"cluster.{extra[0]}", "unknown key")
    for key in ("internal_dev", "internal_ip", "lb", "controller", "secret"):
        if key not in sec:
            raise err(f"cluster.{key}", "is required")
    dev = sec["internal_dev"]
    if not isinstance(dev, str) or not 1 <= len(dev) <= 15:
        raise err("cluster.internal_dev", "must be an interface name")
    try:
        ip = str(ipaddress.IPv4Address(sec["internal_ip"]))
    except (ValueError, TypeError):
        raise err("cluster.internal_ip", "must be an IPv4 address") from None
    secret = sec["secret"]
    if not isinstance(secret, str) or len(secret) < 16:
        raise err("cluster.secret", "must be a string of at least 16 characters")
    node = sec.get("node", f"n-{ip}")
    if not isinstance(node, str) or not 1 <= len(node) <= 32:
        raise err("cluster.node", "must be 1-32 characters")

    def num(key: str, default: float, lo: float, hi: float) -> float:
        v = sec.get(key, default)
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not lo <= v <= hi:
            raise err(f"cluster.{key}", f"must be a number in {lo}..{hi}")
        return float(v)

    hb = num("heartbeat", 0.1, 0.01, 10.0)
    ttl = num("ttl", 0.5, 0.05, 60.0)
    if ttl < 2 * hb:
        raise err("cluster.ttl", "must be at least twice cluster.heartbeat")
    size = sec.get("table_size", 4093)
    if (
        not isinstance(size, int)
        or isinstance(size, bool)
        or not (2 < size <= MAX_SIZE and is_prime(size))
    ):
        raise err("cluster.table_size", f"must be a prime in 3..{MAX_SIZE}")
    return ClusterConfig(
        internal_dev=dev, internal_ip=ip,
        lb=_endpoint(err, "lb", sec["lb"], HEARTBEAT_PORT),
        controller=_endpoint(err, "controller", sec["controller"], FEED_PORT),
        node=node, secret=secret.encode(), heartbeat=hb, ttl=ttl, table_size=size,
        drain_grace=num("drain_grace", 0.3, 0.0, 30.0),
    )  # fmt: skip

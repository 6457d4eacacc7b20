"""Congestion-aware forwarding (paper §2.2 form 2, §2.3's adaptive forwarding example).

A sender flags its packets with the service's ID (form 2) and addresses them to the real
destination; the ISP's routers divert them to the nearest site, where this service picks the
**less congested** of the destination's egress gateways and tunnels the packet there (IP-in-IP,
the Packet API's ``encapsulate``; the gateway decapsulates and delivers).

* PSP FIS, LPM table ``"egress"``: destination prefix -> ``{"via": [gateway, ...]}``;
* ISP FIS (namespace ``isp``), LPM table ``"congestion"`` (``pcsite_lite.fis.CONGESTION``):
  gateway (or link) prefix -> ``{"level": 0.0..1.0}``, published by the ISP on line.

Per packet: the gateway with the lowest level wins (ties: the first listed; no entry counts as
0.0). A destination with no ``egress`` entry continues on its ordinary route. The choice
follows the ISP's table as fast as the site's FIS cache sees it (staleness bound 5 ms).
"""

EGRESS = "egress"
CONGESTION = "congestion"


def choose(vias, levels):
    """The gateway in ``vias`` with the lowest level (``levels[i]`` for ``vias[i]``)."""
    best, best_level = None, 2.0
    for via, level in zip(vias, levels):
        if level < best_level:
            best, best_level = via, level
    return best


def level_of(entry):
    if entry is None:
        return 0.0
    return entry["level"]


def process(pkt):
    """Packet API entry point (``pcsite_lite/api.py``)."""
    route = pkt.lookup(EGRESS, pkt.dst)
    if route is None:
        return None
    vias = route["via"]
    if not vias:
        return pkt.drop("cg_no_gateway")
    levels = [level_of(pkt.isp_lookup(CONGESTION, via)) for via in vias]
    pkt.encapsulate(choose(vias, levels))
    return None

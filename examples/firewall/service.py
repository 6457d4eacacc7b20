"""Destination-controlled firewall with StopIt filters (paper §2.6.2, the web-service example).

Deployed as a form-3 service for the owner's prefix (after the DNSSEC sign-up) at the sites
nearest the sources, so that unwanted traffic is dropped before it crosses the core. Per packet:

1. a live StopIt filter for (source, destination) -- FIS key ``"stopit:<src>><dst>"`` with
   ``{"until": t}`` -- drops (the destination asked for it, even for a whitelisted source);
2. a source in the FIS longest-prefix table ``"whitelist"`` passes;
3. otherwise only TCP to a port in FIS key ``"ports"`` (default 80 and 443) passes.

Every FIS item changes on line (``control.py``) without redeploying this code.

A circuit (form 1) packet toward the prefix meets this service in the site's receiver-first
stage; its source is then the shim's original source (the IP source is the previous hop).
"""

IPPROTO_TCP = 6
WEB_PORTS = (80, 443)


def filter_key(src, dst):
    """FIS key of the StopIt filter for (src, dst), dotted quads."""
    return "stopit:" + src + ">" + dst


def decide(proto, dport, whitelisted, block_until, now, ports):
    """None to allow, else the drop reason. ``dport`` is None when the TCP header is cut."""
    if block_until is not None and now < block_until:
        return "fw_stopit"
    if whitelisted:
        return None
    if proto != IPPROTO_TCP:
        return "fw_not_tcp"
    if dport is None:
        return "fw_truncated"
    if dport not in ports:
        return "fw_port"
    return None


def process(pkt):
    """Packet API entry point (``pcsite_lite/api.py``)."""
    src = pkt.shim.orig_src if pkt.form == 1 else pkt.src
    dst = pkt.dst
    blocked = pkt.fetch(filter_key(src, dst))
    until = None if blocked is None else blocked["until"]
    whitelisted = pkt.lookup("whitelist", src) is not None
    dport = None
    if pkt.length >= 4:
        head = pkt.read(2, 2)
        dport = head[0] << 8 | head[1]
    ports = pkt.fetch("ports")
    if ports is None:
        ports = WEB_PORTS
    reason = decide(pkt.proto, dport, whitelisted, until, pkt.now, ports)
    if reason is not None:
        pkt.drop(reason)
        return
    pkt.forward_to(dst)

"""In-network mobility: tunnel a mobile network's traffic to its mobile router (paper §2.6.1).

Deployed destination-controlled (form 3) for the mobile network's prefix ``p`` at the sites
that together see all traffic toward ``p``. For each packet to ``p`` the service looks up the
mobile router's current care-of address in its FIS longest-prefix table ``"bindings"``
(``p -> {"care_of": address, "seq": n}``, written by ``control.py`` after it verified the
router's signed binding update) and tunnels the packet there, IP-in-IP (RFC 2003; the site
builds the outer header with its own address as source). The mobile router decapsulates and
forwards into ``p``. No binding (the network is at home): the packet goes on unchanged.

Circuit (form 1) and service-ID (form 2) packets toward ``p`` meet this service in the site's
receiver-first stage, which may drop or pass a packet but not redirect it (paper §2.2); they
go on unchanged rather than failing (a refused ``encapsulate`` would count against the
service and, repeated, disable it).
"""


def process(pkt):
    """Packet API entry point (``pcsite_lite/api.py``)."""
    if pkt.form != 0:
        pkt.forward_to(pkt.dst)
        return
    binding = pkt.lookup("bindings", pkt.dst)
    if binding is None:
        pkt.forward_to(pkt.dst)
        return
    pkt.encapsulate(binding["care_of"])

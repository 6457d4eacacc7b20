"""Legacy routers' PacketCloud attachments: plain Linux configuration, no PacketCloud code.

A router with a co-located site gets three attachments (paper §2.1-2.2):

1. **Site reachable at its public IP** (form 1): a static route ``<public_ip>/32 via <site>``
   (the testbed's shortest-path routes carry it to every other router).
2. **Policy routing of the reserved DSCP to the site** (form 2): nftables sets firewall mark
   ``0x2b`` on ``ip dscp 43`` packets and ``ip rule fwmark 0x2b`` sends them to a table whose
   only route leads to the site. ``ip rule tos`` cannot do this: the kernel's IPv4 rules only
   accept the old TOS bits (``tos & ~0x1e`` must be zero, so 0xac is refused with EINVAL), and
   the newer ``ip rule ... dscp`` selector needs kernel >= 6.13 *and* iproute2 >= 6.13; the
   nftables mark works on every kernel with nftables and is what an ISP can rely on.
3. **Diversion of registered destination prefixes** (form 3): nftables marks packets whose
   destination is in the set ``divert_dst`` (``0x2c``), same table. Elements are added and
   removed at run time (after an ownership proof) with ``nft add/delete element``.

Loops are impossible by construction: the first rule returns for packets entering from the
site's interface, so whatever the site sends back (forwarded form-2 packets still carrying
DSCP 43, or traffic to a diverted prefix) follows the normal table. Packets addressed to the
router itself are never diverted.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

from testbed.netlink import Batch
from testbed.plan import NodePlan, site_link

__all__ = [
    "MARK_DESTINATION",
    "MARK_SERVICE",
    "SITE_TABLE",
    "Attachment",
    "attachment_for",
    "divert_argv",
]

MARK_SERVICE = 0x2B  #: form 2 (DSCP 43)
MARK_DESTINATION = 0x2C  #: form 3 (registered destination prefix)
SITE_TABLE = 43  #: routing table whose only route leads to the co-located site
RULE_PRIORITY = 1000
NFT_TABLE = "packetcloud"


@dataclass(frozen=True)
class Attachment:
    """The attachments of one router to its co-located site."""

    router: str
    site: str
    site_iface: str  # router's interface toward the site
    site_index: int
    site_address: str  # the site's address on that link (next hop)
    public_ip: str
    world: str  # what table SITE_TABLE routes to the site ("default" on a real router)

    def nft_ruleset(self) -> str:
        """The nftables ruleset (``nft -f``) of attachments 2 and 3."""
        return f"""\
table ip {NFT_TABLE} {{
    set divert_dst {{
        type ipv4_addr
        flags interval
        comment "form 3: destination prefixes registered after an ownership proof"
    }}
    chain prerouting {{
        type filter hook prerouting priority mangle; policy accept;
        iifname "{self.site_iface}" return comment "from the site: never divert again"
        fib daddr type local return comment "for the router itself"
        ip daddr @divert_dst meta mark set {MARK_DESTINATION:#x} counter comment "form 3"
        meta mark != {MARK_DESTINATION:#x} ip dscp {43} meta mark set {MARK_SERVICE:#x} \
counter comment "form 2: DSCP 43"
    }}
}}
"""

    def netlink(self, batch: Batch, delete: bool = False) -> None:
        """Add the policy rules and the site table to ``batch`` (attachments 2 and 3)."""
        if not delete:
            batch.route(self.world, self.site_address, table=SITE_TABLE)
        for k, mark in enumerate((MARK_SERVICE, MARK_DESTINATION)):
            batch.rule_fwmark(mark, SITE_TABLE, RULE_PRIORITY + k, delete=delete)

    def snippet(self) -> str:
        """What an ISP would put on a real Linux router (shell + nft), for the docs."""
        return f"""\
# (1) the site {self.site} is reachable at its public IP
ip route add {self.public_ip}/32 via {self.site_address} dev {self.site_iface}
# the site forwards traffic with foreign source addresses: loose reverse-path filtering
sysctl -w net.ipv4.conf.{self.site_iface}.rp_filter=2
# (2)+(3) policy routing: marked packets use table {SITE_TABLE}, which leads to the site
ip route add default via {self.site_address} dev {self.site_iface} table {SITE_TABLE}
ip rule add fwmark {MARK_SERVICE:#x} table {SITE_TABLE} priority {RULE_PRIORITY}
ip rule add fwmark {MARK_DESTINATION:#x} table {SITE_TABLE} priority {RULE_PRIORITY + 1}
nft -f - <<'EOF'
{self.nft_ruleset()}EOF
# (3) at run time, after the prefix owner's proof validated:
nft add element ip {NFT_TABLE} divert_dst {{ 198.18.64.0/24 }}
nft delete element ip {NFT_TABLE} divert_dst {{ 198.18.64.0/24 }}
"""


def divert_argv(prefix: str, remove: bool = False) -> list[str]:
    """The ``nft`` command (run in the router's namespace) adding/removing a diverted prefix."""
    net = ipaddress.IPv4Network(prefix)
    verb = "delete" if remove else "add"
    return ["nft", verb, "element", "ip", NFT_TABLE, "divert_dst", f"{{ {net} }}"]


def attachment_for(router: NodePlan, site: NodePlan, world: str) -> Attachment:
    site_side, iface = site_link(site, router)
    assert site.public_ip is not None  # site_link checked it
    return Attachment(router=router.name, site=site.name, site_iface=iface.name,
                      site_index=iface.index, site_address=site_side.address,
                      public_ip=site.public_ip, world=world)  # fmt: skip

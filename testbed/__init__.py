"""testbed: one-command Linux-namespace testbeds for PacketCloud.

``with Testbed.from_file("testbed/topologies/fig2.toml") as tb:`` builds the topology (legacy
routers with their site attachments, sites, DNS, FIS, control network) and always tears it
down. See ``docs/testbed.md``.
"""

from testbed.net import Node, Process, Result, SiteInfo, Testbed
from testbed.topology import Topology, TopologyError, load, parse

__version__ = "0.1.0"
__all__ = [
    "Node",
    "Process",
    "Result",
    "SiteInfo",
    "Testbed",
    "Topology",
    "TopologyError",
    "load",
    "parse",
]

"""testbed: one-command Linux-namespace testbeds for PacketCloud.

``with Testbed.from_file("testbed/topologies/fig2.toml") as tb:`` builds the topology (legacy
routers with their site attachments, sites, DNS, FIS, control network) and always tears it
down. ``testbed.attach(run)`` returns a run that is already up (``testbed up``) as an object:
its nodes, its DNS (zones, signing, ownership records, trust anchors) and its routers'
diversions. See ``docs/testbed.md``.
"""

from testbed.attach import LiveTestbed, attach
from testbed.net import Node, Process, Result, SiteInfo, Testbed
from testbed.topology import Topology, TopologyError, load, parse

__version__ = "0.1.0"
__all__ = [
    "LiveTestbed",
    "Node",
    "Process",
    "Result",
    "SiteInfo",
    "Testbed",
    "Topology",
    "TopologyError",
    "attach",
    "load",
    "parse",
]

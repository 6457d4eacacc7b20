"""pcsock: the PacketCloud end-host SDK.

``pcsock.wire`` is the sans-IO wire format (docs/protocol.md); ``pcsock.scapy`` adds scapy
layers for crafting and dissection.
"""

__version__ = "0.1.0"

"""pcsite_lite: a compact PacketCloud site that hosts services next to a legacy router."""

__version__ = "0.1.0"

"""testbed: one-command Linux-namespace testbeds for PacketCloud."""

__version__ = "0.1.0"

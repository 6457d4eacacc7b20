"""In-network mobility support as a PacketCloud service (paper §2.6.1, NEMO-like)."""

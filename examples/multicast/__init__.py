"""Inter-domain multicast as a PacketCloud service (paper §2.6.2, Free Riding Multicast)."""

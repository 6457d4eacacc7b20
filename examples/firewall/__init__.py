"""Destination-controlled in-network firewall with StopIt filters (paper §2.6.2)."""

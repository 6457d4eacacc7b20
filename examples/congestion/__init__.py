"""Congestion-aware forwarding over ISP-published congestion (paper §2.2 form 2, §2.3)."""

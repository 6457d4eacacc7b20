"""Protocol-independent redundancy elimination between a site pair (paper §2.6.2)."""

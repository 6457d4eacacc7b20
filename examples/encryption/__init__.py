"""Encryption offload between an ingress and an egress site (paper §2.6.1)."""

"""Rule-based forwarding with certified rules (paper §2.6.2, RBF)."""

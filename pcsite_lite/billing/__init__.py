"""Billing for PacketCloud sites (paper §2.5 and §3).

- :mod:`pcsite_lite.billing.ledger`: the durable usage ledger (SQLite, WAL) that sites append
  metered :class:`~pcsite_lite.metering.UsageRecord` rows and service log lines to.
- :mod:`pcsite_lite.billing.prices`: the price sheet (TOML).
- :mod:`pcsite_lite.billing.invoice`: per-PSP invoices with exact decimal line items.
- :mod:`pcsite_lite.billing.costmodel`: the §3 cost/revenue model (Eq. 1 and 2).
- :mod:`pcsite_lite.billing.cli`: the ``pcbill`` command.
"""

from __future__ import annotations

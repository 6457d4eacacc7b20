"""One site driven in process, without a daemon or a network: what the pipeline's tests and
benchmarks set up. A PSP's control plane opens a circuit in two API calls (reserve a label,
then install its hops); here both happen in one step, :func:`open_circuit`."""

from __future__ import annotations

from typing import Any

from pcsite_lite.site import Site

__all__ = ["open_circuit"]


def open_circuit(site: Site, *, psp: str, now: float = 0.0, **circuit: Any) -> int:
    """Reserve a label for ``psp`` at ``site`` at time ``now`` and install the circuit on it;
    the label. ``circuit`` is the rest of what :meth:`pcsite_lite.circuits.CircuitTable.install`
    takes: ``service``, ``in_key``, ``out_hops``, ``expires`` and maybe ``destination``."""
    label = site.circuits.allocate(psp, now=now)
    site.circuits.install(label, psp=psp, **circuit)
    return label

"""A FIS outage is the site's fault, not the service's: packets whose entries are cached keep
forwarding; the others drop as ``fis_unavailable``, a site drop that never counts against the
service (no disable), is never metered to it, and is logged once per second at most."""

from __future__ import annotations

from pathlib import Path

from pcsite_lite.fis import CachedFIS, namespace, open_engine
from pcsite_lite.runtime import ACTIVE
from pcsite_lite.verdicts import Drop, Forward
from tests.support.site_topo import PSP, circuit, circuit_packet, one_site

FETCHES = """
def process(pkt):
    hop = pkt.fetch(pkt.shim.read().label)
    if hop is None:
        return pkt.drop("no route")
"""


def test_fis_outage_drops_only_uncached_packets_and_never_disables_the_service(
    tmp_path: Path,
) -> None:
    # a cache that held one circuit's entry when its engine went away
    site, pipe, _ = one_site(fis=CachedFIS(open_engine(f"unix://{tmp_path}/gone.sock")))
    site.deploy(PSP, "fetches", FETCHES)
    cached, uncached = circuit(site, "fetches"), circuit(site, "fetches")
    ns = namespace(PSP, "fetches")
    site.runtime.fis._kv[(ns, str(cached))] = {"next": 1}  # what it held before

    for i in range(3 * site.runtime.max_failures):
        [ok] = pipe.process(circuit_packet(cached), now=float(i) / 10)
        assert isinstance(ok, Forward)
        [dropped] = pipe.process(circuit_packet(uncached), now=float(i) / 10)
        assert isinstance(dropped, Drop) and dropped.reason == "fis_unavailable"
        assert dropped.service is None  # the site's drop, not the service's
    slot = site.runtime.slot(PSP, "fetches")
    assert slot.status == ACTIVE and slot.failures == 0 and slot.consecutive_failures == 0
    counters = site.runtime.counters(PSP, "fetches")
    n = 3 * site.runtime.max_failures
    assert counters.packets == n and counters.drops == 0  # only the forwarded ones metered
    assert site.drops["fis_unavailable"] == n
    faults = [e for e in site.runtime.events if e.kind == "fis_unavailable"]
    assert 1 <= len(faults) <= 3 and "FIS engine unavailable" in faults[0].detail

"""Services load from the signed repository on first use; a new version rolls out live."""

from __future__ import annotations

from pathlib import Path

from pcsite_lite.pipeline import Pipeline
from pcsite_lite.repository import (
    Repository,
    ServiceCache,
    generate_key,
    public_key_bytes,
    sign_service,
)
from pcsite_lite.runtime import ACTIVE, UNAVAILABLE, load_from_repository, repository_resolver
from pcsite_lite.site import Site
from pcsite_lite.verdicts import Drop, Forward
from tests.support.site_topo import NEXT_IP, PSP, circuit, circuit_packet

V1 = b"def process(pkt):\n    pkt.log('v1')\n"
V2 = b"def process(pkt):\n    pkt.log('v2')\n"


def test_first_use_load_and_live_rollout(tmp_path: Path) -> None:
    repo = Repository(tmp_path / "repo")
    key = generate_key()
    repo.register_psp(PSP, public_key_bytes(key))
    repo.upload(PSP, "svc", "1", V1, sign_service(key, PSP, "svc", "1", V1))
    repo.activate(PSP, "svc", "1")
    clock = [0.0]
    cache = ServiceCache(repo, loader=load_from_repository, clock=lambda: clock[0])
    lines: list[str] = []
    site = Site(
        "c", "198.18.5.1", resolver=repository_resolver(cache), log_sinks=lambda p, s: lines.append
    )
    pipe = Pipeline(site)
    label = circuit(site, "svc", expires=1e9)
    [v] = pipe.process(circuit_packet(label), 1.0)
    assert isinstance(v, Forward) and v.next_hop == NEXT_IP
    assert lines == ["v1"] and site.runtime.slot(PSP, "svc").version == "1"
    # the PSP uploads and activates version 2; the node picks it up without a restart
    repo.upload(PSP, "svc", "2", V2, sign_service(key, PSP, "svc", "2", V2))
    repo.activate(PSP, "svc", "2")
    clock[0] += 10.0
    site.runtime.refresh()
    pipe.process(circuit_packet(label), 2.0)
    assert lines == ["v1", "v2"] and site.runtime.slot(PSP, "svc").version == "2"
    assert site.runtime.counters(PSP, "svc").packets == 2  # counters carried over


def test_unsigned_or_refused_code_leaves_the_service_unavailable(tmp_path: Path) -> None:
    repo = Repository(tmp_path / "repo")
    key = generate_key()
    repo.register_psp(PSP, public_key_bytes(key))
    bad = b"import os\ndef process(pkt):\n    pass\n"
    repo.upload(PSP, "svc", "1", bad, sign_service(key, PSP, "svc", "1", bad))
    repo.activate(PSP, "svc", "1")
    site = Site(
        "c",
        "198.18.5.1",
        resolver=repository_resolver(ServiceCache(repo, loader=load_from_repository)),
    )
    label = circuit(site, "svc")
    [v] = Pipeline(site).process(circuit_packet(label), 1.0)
    assert isinstance(v, Drop) and v.reason == "service_unavailable"
    slot = site.runtime.slot(PSP, "svc")
    assert slot.status == UNAVAILABLE and "forbidden_import" in slot.status_detail
    assert site.runtime.events[-1].kind == "load_failed"
    assert ACTIVE != slot.status

"""The typed replication ops (pcsite_lite.daemon.state): each kind's JSON document (what the
supervisor frames to workers and the store keeps) decodes back to the same op, a replica
applies the typed op and its document alike, and a malformed document is a ValueError."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from pcsite_lite.daemon import channel
from pcsite_lite.daemon.config import parse
from pcsite_lite.daemon.state import (
    CircuitOp,
    DestinationOp,
    EnableOp,
    HopDoc,
    ReleaseDestinationOp,
    ReleaseIdOp,
    RenewOp,
    ServiceIdOp,
    SyncedOp,
    TeardownOp,
    WorkerSite,
    decode_op,
)

K_IN, K_OUT = bytes(range(16)), bytes(range(3, 19))
HOP = HopDoc(4242, "198.18.9.3", K_OUT.hex(), False, False)
OPS = [
    CircuitOp(77, "acme", "relay", K_IN.hex(), 1e9, None, (HOP,)),
    CircuitOp(
        78,
        "acme",
        "relay",
        K_IN.hex(),
        1e9,
        "198.18.9.9",
        (HopDoc(0, "198.18.9.9", None, True, True),),
    ),
    TeardownOp(77),
    RenewOp(77, 2e9),
    ServiceIdOp(5, "acme", "fw"),
    ReleaseIdOp(5),
    DestinationOp("198.18.64.0/24", "acme", "fw", ("198.18.65.0/24",)),
    EnableOp("acme", "fw"),
    ReleaseDestinationOp("198.18.64.0/24"),
    SyncedOp(),
]


@pytest.mark.parametrize("op", OPS, ids=lambda op: op.KIND)
def test_every_op_survives_the_channel_framing(op: object) -> None:
    doc = op.to_json()  # type: ignore[attr-defined]
    reasm = channel.Reassembler()
    got = None
    for frame in channel.frames({**doc, "seq": 9}):
        got = reasm.feed(frame)
    assert got is not None and got["seq"] == 9
    assert decode_op(got) == op


@pytest.mark.parametrize(
    "doc",
    [
        {"op": "teleport"},
        {"label": 1},
        ["op", "teardown"],
        {"op": "teardown", "label": "77"},
        {"op": "teardown", "label": True},
        {"op": "renew", "label": 1},
        {"op": "service_id", "id": 5, "psp": "acme"},
        {"op": "circuit", "label": 1, "psp": "a", "service": "s", "in_key": "00",
         "expires": 1.0, "out": "no"},
        {"op": "circuit", "label": 1, "psp": "a", "service": "s", "in_key": "00",
         "expires": 1.0, "out": [{"label": 1}]},
        {"op": "destination", "prefix": "198.18.64.0/24", "psp": "a", "service": "s",
         "redirect_prefixes": "198.18.0.0/15"},
    ],
)  # fmt: skip
def test_a_malformed_op_document_is_a_value_error(doc: object) -> None:
    with pytest.raises(ValueError):
        decode_op(doc)


def test_a_replica_applies_typed_ops_and_documents_alike(tmp_path: Path) -> None:
    cfg = parse({"site": {"name": "ops-t", "public_ip": "198.18.9.1",
                          "fis": f"sqlite://{tmp_path / 'fis.db'}", "state_dir": str(tmp_path)},
                 "control": {"admin_token": "ops-admin-token-0123456789abcdef"}})  # fmt: skip
    a, b = WorkerSite(cfg), WorkerSite(cfg)
    try:
        ops = [CircuitOp(77, "acme", "relay", K_IN.hex(), time.time() + 600, None, (HOP,)),
               RenewOp(77, time.time() + 900), ServiceIdOp(5, "acme", "fw"),
               DestinationOp("198.18.64.0/24", "acme", "fw", ("198.18.65.0/24",))]  # fmt: skip
        for op in ops:
            a.apply(op)
            b.apply(op.to_json())
        for site in (a.site, b.site):
            c = site.circuits.get(77)
            assert c is not None and c.expires == ops[1].expires
            assert [h.label for h in c.out_hops] == [4242] and c.out_hops[0].key.key == K_OUT
            assert site.service_ids[5].service == "fw"
            assert site.destinations.get("198.18.64.0/24").redirect_prefixes == ["198.18.65.0/24"]
        a.apply(TeardownOp(77))
        b.apply({"op": "teardown", "label": 77})
        assert a.site.circuits.get(77) is None and b.site.circuits.get(77) is None
    finally:
        a.site.runtime.close()
        b.site.runtime.close()

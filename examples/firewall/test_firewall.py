"""The firewall in the simulator: sign-up, filtering near the sources, on-line changes, StopIt."""

from __future__ import annotations

import pytest
from scapy.layers.inet import IP, TCP, UDP

from examples.firewall.scenario import (
    ADDRESS,
    NOW,
    OWNER,
    PREFIX,
    SERVER,
    World,
    build_world,
    proof,
    traffic_mix,
)
from examples.firewall.stopit import FilterError
from pcsock.ownership import OwnershipError

ATTACKER, CLIENT, PARTNER = ADDRESS["A"], ADDRESS["G"], ADDRESS["W"]
NET = ATTACKER.rsplit(".", 1)[0]  # the attacker's /24: other sources there


def _send(w: World, who: str, l4: object, dst: str = SERVER) -> None:
    h = w.hosts[who]
    w.hosts[who].send(bytes(IP(src=h.ip, dst=dst, ttl=64) / l4))
    w.net.run()


def _server_got(w: World) -> list[tuple[str, int, int]]:
    out = []
    for r in w.hosts["server"].inbox:
        p = IP(r.data)
        out.append((p.src, p.proto, p[TCP].dport if TCP in p else p[UDP].dport))
    return out


def test_only_web_traffic_and_whitelisted_sources_reach_the_server_and_drops_stay_at_the_edge() -> (
    None
):
    w = build_world()
    w.psp.allow_source(f"{PARTNER.rsplit('.', 1)[0]}.0/24")  # the partner network
    core_before = w.core["RA"].sent
    _send(w, "attacker", UDP(dport=53))
    _send(w, "attacker", TCP(dport=22))
    _send(w, "attacker", TCP(dport=3389))
    _send(w, "client", TCP(dport=443))
    _send(w, "client", TCP(dport=80))
    _send(w, "partner", UDP(dport=161))
    assert _server_got(w) == [
        (CLIENT, 6, 443),
        (CLIENT, 6, 80),
        (PARTNER, 17, 161),
    ]
    # the three unwanted packets were dropped at CA: only the two web packets used the core link
    assert w.core["RA"].sent - core_before == 2
    details = sorted(d.detail for d in w.sites["CA"].drops)
    assert details == ["fw_not_tcp", "fw_port", "fw_port"]
    assert all(d.reason == "service_drop" for d in w.sites["CA"].drops)


def test_whitelist_and_ports_change_on_line_without_redeploying() -> None:
    w = build_world()
    slot = w.sites["CA"].site.runtime.slot(OWNER, "firewall")
    version = slot.version
    _send(w, "attacker", UDP(dport=5000))
    assert _server_got(w) == []
    w.psp.allow_source(f"{ATTACKER}/32")
    _send(w, "attacker", UDP(dport=5000))
    assert _server_got(w) == [(ATTACKER, 17, 5000)]
    w.psp.revoke_source(f"{ATTACKER}/32")
    w.psp.set_ports([8443])
    _send(w, "attacker", UDP(dport=5000))
    _send(w, "client", TCP(dport=443))
    _send(w, "client", TCP(dport=8443))
    assert _server_got(w)[1:] == [(CLIENT, 6, 8443)]
    assert w.sites["CA"].site.runtime.slot(OWNER, "firewall").version == version


def test_stopit_filters_block_a_pair_until_they_expire_within_quota() -> None:
    w = build_world()
    w.psp.allow_source(f"{ATTACKER}/32")  # even a whitelisted source can be stopped
    f = w.psp.stopit(ATTACKER, SERVER, duration=0.5, now=w.net.now)
    core_before = w.core["RA"].sent
    _send(w, "attacker", TCP(dport=80))
    _send(w, "client", TCP(dport=80))  # another source to the same server is unaffected
    assert [s for s, _, _ in _server_got(w)] == [CLIENT]
    assert w.core["RA"].sent - core_before == 1
    assert w.sites["CA"].drops[-1].detail == "fw_stopit"
    # quota: 2 live filters per owner
    w.psp.stopit(f"{NET}.11", SERVER, duration=10, now=w.net.now)
    with pytest.raises(FilterError) as e:
        w.psp.stopit(f"{NET}.12", SERVER, duration=10, now=w.net.now)
    assert e.value.reason == "quota"
    # only for the owner's own destinations
    with pytest.raises(FilterError) as e:
        w.psp.stopit(ATTACKER, "198.18.70.9", duration=10, now=w.net.now)
    assert e.value.reason == "not_owner"
    # after expiry the pair passes again (the service checks the time; control cleans up)
    w.net.schedule(f.until - w.net.now + 0.001, lambda: None)
    w.net.run()
    _send(w, "attacker", TCP(dport=80))
    assert [s for s, _, _ in _server_got(w)][-1] == ATTACKER
    assert [g.src for g in w.psp.expire(w.net.now)] == [ATTACKER]
    w.psp.stopit(f"{NET}.12", SERVER, duration=10, now=w.net.now)  # room again


def test_sign_up_needs_a_valid_ownership_proof() -> None:
    w = build_world(sign_up=False)
    text, anchor = proof(owner="someone-else")
    with pytest.raises(OwnershipError):
        w.psp.sign_up(PREFIX, text, anchor, now=NOW)
    # nothing deployed: the router does not divert, the server gets everything
    _send(w, "attacker", UDP(dport=53))
    assert _server_got(w) == [(ATTACKER, 17, 53)]
    assert not w.sites["CA"].drops


def test_unwanted_traffic_never_crosses_the_core_compared_with_filtering_at_the_destination() -> (
    None
):
    wanted, core, got = traffic_mix(build_world())
    assert (wanted, core, got) == (250, 250, 250)
    # baseline: no sign-up, the destination would filter at home: all 1000 cross the core
    _, core_base, got_base = traffic_mix(build_world(sign_up=False))
    assert (core_base, got_base) == (1000, 1000)


def test_circuit_traffic_to_the_prefix_is_filtered_by_its_original_source() -> None:
    """Form 1 + form 3: the receiver's firewall runs first and judges the shim's original
    source (the IP source of a circuit packet is only the previous hop)."""
    import struct

    from examples.firewall.control import SERVICE_SOURCE
    from pcsite_lite.circuits import OutHopEntry as OutHop
    from pcsite_lite.fis import namespace
    from pcsite_lite.pipeline import Pipeline
    from pcsite_lite.sandbox import tick_budget
    from pcsite_lite.site import Site
    from pcsite_lite.verdicts import Deliver, Drop
    from pcsock.wire import build_circuit_packet

    site = Site("C1", "198.18.254.1", budget=tick_budget())
    site.deploy(OWNER, "firewall", SERVICE_SOURCE)
    site.register_destination(PREFIX, OWNER, "firewall")
    site.deploy("relay", "srcroute", "def process(pkt):\n    pass\n")
    label = site.circuits.allocate("relay", now=0.0)
    key = bytes(16)
    site.circuits.install(
        label,
        psp="relay",
        service="srcroute",
        in_key=key,
        out_hops=[OutHop(label=1, next_hop=SERVER, final=True)],
        destination=SERVER,
        expires=100.0,
    )
    pipe = Pipeline(site)
    udp53 = struct.pack("!HHHH", 5000, 53, 8, 0)

    def send(orig: str) -> type:
        pkt = build_circuit_packet(
            src="198.18.77.1", dst=site.public_ip, label=label, key=key, payload=udp53,
            orig_src=orig,
        )  # fmt: skip
        (v,) = pipe.process(bytes(pkt), 1.0)
        return type(v)

    assert send(ATTACKER) is Drop
    site.fis.lpm_put(namespace(OWNER, "firewall"), "whitelist", f"{ATTACKER}/32", {}, writer=OWNER)
    assert send(ATTACKER) is Deliver
    assert send("198.18.77.1") is Drop  # the previous hop's address is not what counts


def test_files_a_process_polls_are_replaced_whole(tmp_path) -> None:
    """A file a demo's process polls is replaced by a rename: a reader holding the old file
    reads it whole, a new reader reads the new one, never a truncated mix; no temp file is
    left."""
    from pcdemo.example_testbed import write_atomic

    path = tmp_path / "stats.json"
    write_atomic(path, "old" * 1000)
    with path.open() as reader:
        write_atomic(path, "new")
        assert reader.read() == "old" * 1000
    assert path.read_text() == "new"
    assert [p.name for p in tmp_path.iterdir()] == ["stats.json"]

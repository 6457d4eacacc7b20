"""A run built by ``testbed up`` is an object (``testbed.attach``) whose DNS can be managed from
the shell (``testbed dns``): zones added and replaced, signed with a key the run keeps,
ownership records published; mistakes get a clear error (issue #13 item 3)."""

from __future__ import annotations

import subprocess
import sys
import time

import dns.dnssec
import dns.message
import dns.name
import dns.query
import dns.rdatatype
import pytest

import testbed
from testbed.cli import main
from tests.support.topologies import link, node, topology_toml

pytestmark = pytest.mark.netns

MINI = topology_toml(
    "mini",
    node("D", "host", prefix="198.18.64.0/24"),
    node("R1", "router"),
    node("C1", "site", router="R1"),
    node("DNS", "dns", signed_reverse=["198.18.64.0/24"]),
    link("D", "R1"),
    link("DNS", "R1"),
)
REV = "64.18.198.in-addr.arpa."


@pytest.fixture
def run(tmp_path):
    (tmp_path / "mini.toml").write_text(MINI)
    out = subprocess.run(
        [sys.executable, "-m", "testbed", "up", str(tmp_path / "mini.toml"), "-q", "--prefix",
         "pcat"], capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    name = out.stdout.strip()
    try:
        yield name
    finally:
        subprocess.run([sys.executable, "-m", "testbed", "down", name], capture_output=True)


def _ask(live, name: str, rdtype: str) -> dns.message.Message:
    q = dns.message.make_query(name, rdtype, want_dnssec=True)
    addr = live.dns.address
    return live.node("D").call(lambda: dns.query.udp(q, addr, timeout=2))


def test_owner_record_is_published_signed_with_the_kept_key(run, capsys) -> None:
    live = testbed.attach(run)
    assert live.topology.name == "mini" and live.dns.addresses[0] == live.summary["dns"]
    assert main(["dns", "--run", run, "anchor", REV]) == 0
    ds_before = capsys.readouterr().out.strip()
    assert main(["dns", "--run", run, "owner", "198.18.64.0/24", "--owner", "acme",
                 "--service", "firewall"]) == 0  # fmt: skip
    assert "v=pcown1 prefix=198.18.64.0/24 owner=acme service=firewall" in capsys.readouterr().out
    assert main(["dns", "--run", run, "owner", "198.18.64.0/24", "--owner", "acme",
                 "--service", "fw2"]) == 0  # fmt: skip
    capsys.readouterr()
    # one record (replaced), signed by the zone's key, whose DS did not change
    ans = _ask(live, f"_packetcloud-owner.{REV}", "TXT")
    txt = next(r for r in ans.answer if r.rdtype == dns.rdatatype.TXT)
    sig = next(r for r in ans.answer if r.rdtype == dns.rdatatype.RRSIG)
    assert len(txt) == 1 and "service=fw2" in txt[0].to_text()
    keys = next(r for r in _ask(live, REV, "DNSKEY").answer if r.rdtype == dns.rdatatype.DNSKEY)
    dns.dnssec.validate(txt, sig, {dns.name.from_text(REV): keys})
    assert testbed.attach(run).dns.anchor_text(REV) == ds_before
    ds = dns.dnssec.make_ds(REV, keys[0], "SHA256")
    assert ds_before == f"{REV} IN DS {ds.to_text()}"


def test_a_zone_is_added_signed_and_replaced_from_the_shell(run, tmp_path, capsys) -> None:
    zone = tmp_path / "ex.zone"
    zone.write_text(
        "$TTL 300\nexample. 300 IN SOA ns.pc.test. h.example. 1 3600 600 86400 60\n"
        "example. 300 IN NS ns.pc.test.\nwww.example. 300 IN A 198.18.64.2\n"
    )
    assert main(["dns", "--run", run, "sign", "example", str(zone)]) == 0
    assert "example. IN DS " in capsys.readouterr().out
    live = testbed.attach(run)
    assert _ask(live, "www.example.", "A").answer[0][0].to_text() == "198.18.64.2"
    zone.write_text(zone.read_text().replace(" 1 3600", " 2 3600").replace(".64.2", ".64.9"))
    assert main(["dns", "--run", run, "zone", "example.", str(zone)]) == 0
    assert _ask(live, "www.example.", "A").answer[0][0].to_text() == "198.18.64.9"
    assert main(["dns", "--run", run, "zones"]) == 0
    listed = capsys.readouterr().out
    assert "example." in listed and f"{REV}" in listed and "pc.test." in listed
    assert main(["dns", "--run", run, "key", "example."]) == 0
    assert capsys.readouterr().out.startswith("# zone example.\n-----BEGIN PRIVATE KEY-----")


def test_mistakes_get_a_clear_error(run, tmp_path, capsys) -> None:
    assert main(["dns", "--run", run, "owner", "198.18.65.0/24", "--owner", "a",
                 "--service", "s"]) == 1  # fmt: skip
    assert "serves no zone 65.18.198.in-addr.arpa." in capsys.readouterr().err
    assert main(["dns", "--run", run, "anchor", "pc.test."]) == 1
    assert "pc.test. was not signed by this testbed" in capsys.readouterr().err
    (tmp_path / "junk").write_text("this is not a zone\n")
    assert main(["dns", "--run", run, "zone", "junk.", str(tmp_path / "junk")]) == 2
    assert capsys.readouterr().err.startswith("testbed: junk.: ")
    with pytest.raises(LookupError, match="no testbed run named 'pcatffff'"):
        testbed.attach("pcatffff")
    before = time.time()
    assert main(["dns", "--run", run, "owner", "198.18.64.0/24", "--owner", "bad name",
                 "--service", "s"]) == 2  # fmt: skip
    assert "must be 1-64 of letters" in capsys.readouterr().err
    assert time.time() - before < 10

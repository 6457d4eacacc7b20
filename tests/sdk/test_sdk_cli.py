"""The pcsock command: sign-up steps and their error paths, lookupd configuration, discovery."""

from __future__ import annotations

import json
import time

import pytest

from pcsock import ownership
from pcsock.cli import load_lookupd_config, main

PREFIX = "198.18.64.0/24"


def test_keygen_publish_and_check_a_proof(tmp_path, capsys):
    key = tmp_path / "owner.key"
    assert main(["signup", "keygen", "--zone", "64.18.198.in-addr.arpa.", "--out", str(key)]) == 0
    assert capsys.readouterr().out.startswith("64.18.198.in-addr.arpa. IN DS ")
    assert key.stat().st_mode & 0o777 == 0o600
    assert main(["signup", "publish", "--key", str(key), "--prefix", PREFIX, "--owner", "acme",
                 "--service", "firewall"]) == 0  # fmt: skip
    zone = capsys.readouterr().out
    assert "_packetcloud-owner.64.18.198.in-addr.arpa." in zone and "RRSIG TXT" in zone
    # a proof built with that key, anchored at the key itself (DNSKEY anchor)
    owner = ownership.ZoneKey.from_pem(key.read_bytes())
    now = time.time()
    claim = ownership.OwnershipClaim(PREFIX, "acme", "firewall", now - 60, now + 3600)
    proof = ownership.build_proof([claim], owner, inception=now - 60, expiration=now + 3600)
    (tmp_path / "proof.txt").write_text(proof.text)
    (tmp_path / "anchor.txt").write_text(owner.dnskey_text())
    args = ["signup", "check", "--prefix", PREFIX, "--proof", str(tmp_path / "proof.txt"),
            "--anchor", str(tmp_path / "anchor.txt")]  # fmt: skip
    assert main([*args, "--owner", "acme"]) == 0
    assert "valid: 198.18.64.0/24 owner=acme service=firewall" in capsys.readouterr().out
    # negative paths: wrong owner, forged record
    assert main([*args, "--owner", "mallory"]) == 1
    assert "ownership wrong_owner" in capsys.readouterr().err
    (tmp_path / "proof.txt").write_text(proof.text.replace("owner=acme", "owner=evil"))
    assert main(args) == 1
    assert "ownership bad_signature" in capsys.readouterr().err


def test_publish_refuses_a_prefix_outside_the_keys_zone(tmp_path, capsys):
    key = tmp_path / "k"
    main(["signup", "keygen", "--zone", "65.18.198.in-addr.arpa.", "--out", str(key)])
    capsys.readouterr()
    assert main(["signup", "publish", "--key", str(key), "--prefix", PREFIX, "--owner", "a",
                 "--service", "b"]) == 1  # fmt: skip
    assert "is not in 65.18.198.in-addr.arpa." in capsys.readouterr().err


def test_check_of_a_missing_file_is_a_clear_error(tmp_path, capsys):
    assert main(["signup", "check", "--prefix", PREFIX, "--proof", str(tmp_path / "nope"),
                 "--anchor", str(tmp_path / "nope")]) == 1  # fmt: skip
    assert "No such file" in capsys.readouterr().err


def test_lookupd_configuration_is_validated(tmp_path, capsys):
    bad = tmp_path / "l.json"
    bad.write_text(json.dumps({"psp": "acme", "listen": "198.18.0.1:7053",
                               "sites": [{"name": "C1"}]}))  # fmt: skip
    with pytest.raises(ValueError, match="lacks 'address'"):
        load_lookupd_config(bad)
    assert main(["lookupd", "--config", str(bad)]) == 1
    assert "bad configuration" in capsys.readouterr().err
    bad.write_text("{not json")
    assert main(["lookupd", "--config", str(bad)]) == 1


@pytest.mark.netns
def test_discover_against_an_unreachable_server_fails_cleanly(capsys):
    from tests.support.netns import call_in, netns

    with netns(["198.18.205.1"]) as ns:  # no route to the server inside this namespace
        rc = call_in(ns, lambda: main(["discover", "sites", "isp.example.",
                                       "--server", "198.18.205.99"]))  # fmt: skip
    assert rc == 1 and "discovery failed" in capsys.readouterr().err

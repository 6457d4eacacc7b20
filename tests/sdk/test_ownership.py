"""Destination sign-up proofs: DNSSEC-signed ownership records and their validation."""

from __future__ import annotations

import dns.rrset
import pytest

from pcsock.ownership import (
    OwnershipClaim,
    OwnershipError,
    ZoneKey,
    build_proof,
    fetch_proof,
    owner_record_name,
    ownership_rrset,
    reverse_zone,
    signed_zone_text,
    validate_proof,
)
from tests.support.knot import knot
from tests.support.netns import call_in, netns

NOW = 1_795_000_000.0
PREFIX = "198.18.5.0/24"


@pytest.fixture(scope="module")
def keys():
    return ZoneKey.generate("in-addr.arpa."), ZoneKey.generate(reverse_zone(PREFIX))


def claim(**kw):
    base = dict(prefix=PREFIX, owner="acme", service="firewall",
                not_before=NOW - 3600, not_after=NOW + 86400)  # fmt: skip
    base.update(kw)
    return OwnershipClaim(**base)


def proof(keys, claims=None, inception=NOW - 60, expiration=NOW + 3600):
    root, own = keys
    return build_proof(claims or [claim()], own, chain=[root], inception=inception,
                       expiration=expiration)  # fmt: skip


def reason(fn):
    with pytest.raises(OwnershipError) as e:
        fn()
    return e.value.reason


def test_reverse_zone_for_octet_and_classless_prefixes():
    assert reverse_zone("198.18.5.0/24").to_text() == "5.18.198.in-addr.arpa."
    assert reverse_zone("198.18.0.0/16").to_text() == "18.198.in-addr.arpa."
    assert reverse_zone("198.0.0.0/8").to_text() == "198.in-addr.arpa."
    assert reverse_zone("198.18.5.64/26").to_text() == "64/26.5.18.198.in-addr.arpa."
    assert owner_record_name(PREFIX).to_text() == "_packetcloud-owner.5.18.198.in-addr.arpa."
    assert reason(lambda: reverse_zone("198.18.4.0/22")) == "unsupported_prefix"
    assert reason(lambda: reverse_zone("198.18.5.1/24")) == "unsupported_prefix"


def test_claim_text_round_trips():
    c = claim()
    assert OwnershipClaim.from_txt(c.to_txt()) == c
    assert reason(lambda: OwnershipClaim.from_txt("v=other x=1")) == "malformed"
    assert reason(lambda: OwnershipClaim.from_txt("v=pcown1 prefix=198.18.5.0/24")) == "malformed"


@pytest.mark.parametrize("anchor", ["ds", "dnskey"])
def test_valid_proof_validates_from_ds_or_dnskey_anchor(keys, anchor):
    root = keys[0]
    ta = root.ds_text() if anchor == "ds" else root.dnskey_text()
    got = validate_proof(proof(keys), PREFIX, ta, NOW, owner="acme", service="firewall")
    assert got == claim()


def test_proof_serialises_as_text(keys):
    p = proof(keys)
    assert validate_proof(str(p), PREFIX, keys[0].ds_text(), NOW).owner == "acme"


def test_unsigned_record_is_rejected(keys):
    text = "\n".join(ln for ln in proof(keys).text.splitlines() if "RRSIG TXT" not in ln)
    assert reason(lambda: validate_proof(text, PREFIX, keys[0].ds_text(), NOW)) == "unsigned"


def test_forged_record_is_rejected(keys):
    forged = proof(keys).text.replace("owner=acme", "owner=evil")
    r = reason(lambda: validate_proof(forged, PREFIX, keys[0].ds_text(), NOW, owner="evil"))
    assert r == "bad_signature"


def test_record_signed_by_a_key_outside_the_chain_is_rejected(keys):
    root, _ = keys
    impostor = ZoneKey.generate(reverse_zone(PREFIX))
    p = build_proof([claim()], impostor, chain=[root], inception=NOW - 60,
                    expiration=NOW + 3600)  # fmt: skip
    # the impostor's DS is signed by the real root in this proof, so swap in the real DS chain
    real = proof(keys).text.splitlines()
    mixed = "\n".join(real[:4] + p.text.splitlines()[4:])
    assert reason(lambda: validate_proof(mixed, PREFIX, root.ds_text(), NOW)) == "untrusted"


def test_other_trust_anchor_is_rejected(keys):
    other = ZoneKey.generate("in-addr.arpa.")
    assert reason(lambda: validate_proof(proof(keys), PREFIX, other.ds_text(), NOW)) == "untrusted"


def test_expired_signatures_are_rejected(keys):
    p = proof(keys, inception=NOW - 7200, expiration=NOW - 60)
    assert reason(lambda: validate_proof(p, PREFIX, keys[0].ds_text(), NOW)) == "expired"


def test_signature_not_yet_valid_is_rejected(keys):
    p = proof(keys, inception=NOW + 600, expiration=NOW + 7200)
    assert reason(lambda: validate_proof(p, PREFIX, keys[0].ds_text(), NOW)) == "not_yet_valid"


def test_expired_claim_is_rejected_even_with_fresh_signatures(keys):
    p = proof(keys, claims=[claim(not_before=NOW - 7200, not_after=NOW - 1)])
    assert reason(lambda: validate_proof(p, PREFIX, keys[0].ds_text(), NOW)) == "expired"


def test_wrong_prefix_is_rejected(keys):
    ta = keys[0].ds_text()
    assert reason(lambda: validate_proof(proof(keys), "198.18.6.0/24", ta, NOW)) == "wrong_prefix"
    assert reason(lambda: validate_proof(proof(keys), "198.18.0.0/16", ta, NOW)) == "wrong_prefix"


def test_claim_naming_another_prefix_is_rejected(keys):
    # a correctly signed record in 198.18.5.0/24's zone whose text claims 198.18.6.0/24
    root, own = keys
    text = proof(keys).text.replace("prefix=198.18.5.0/24", "prefix=198.18.6.0/24")
    lines = [ln for ln in text.splitlines() if " TXT " not in ln]
    bad = ownership_rrset([claim()])
    bad = dns.rrset.from_text(bad.name, 300, "IN", "TXT",
                              '"' + claim(prefix="198.18.6.0/24").to_txt() + '"')  # fmt: skip
    lines += [bad.to_text(), own.sign(bad, NOW - 60, NOW + 3600).to_text()]
    r = reason(lambda: validate_proof("\n".join(lines), PREFIX, root.ds_text(), NOW))
    assert r == "wrong_prefix"


def test_wrong_owner_or_service_is_rejected(keys):
    ta = keys[0].ds_text()
    assert reason(lambda: validate_proof(proof(keys), PREFIX, ta, NOW, owner="bob")) == (
        "wrong_owner"
    )
    r = reason(lambda: validate_proof(proof(keys), PREFIX, ta, NOW, owner="acme", service="nat"))
    assert r == "wrong_owner"


def test_garbage_proof_and_anchor_are_malformed(keys):
    ta = keys[0].ds_text()
    assert reason(lambda: validate_proof("not a zone line", PREFIX, ta, NOW)) == "malformed"
    assert reason(lambda: validate_proof(proof(keys), PREFIX, "junk", NOW)) == "malformed"


def test_key_file_round_trips(keys):
    own = keys[1]
    again = ZoneKey.from_pem(own.to_pem())
    assert again.zone == own.zone and again.dnskey == own.dnskey
    assert reason(lambda: ZoneKey.from_pem(b"-----BEGIN")) == "malformed"


@pytest.mark.netns
def test_proof_fetched_from_a_real_signed_dns_server_validates(keys):
    root, own = keys
    import time

    now = time.time()
    c = claim(not_before=now - 60, not_after=now + 3600)
    rec = ownership_rrset([c])
    dns_ip = "198.18.202.53"
    zones = {
        "in-addr.arpa.": signed_zone_text(root, children=[own], inception=now - 60,
                                          expiration=now + 3600),
        own.zone.to_text(): signed_zone_text(own, records=[rec], inception=now - 60,
                                             expiration=now + 3600),
    }  # fmt: skip
    with netns([dns_ip]) as ns, knot(ns, dns_ip, zones):
        p = call_in(ns, lambda: fetch_proof(PREFIX, server=dns_ip, anchor_zone="in-addr.arpa."))
    got = validate_proof(p, PREFIX, root.ds_text(), now, owner="acme", service="firewall")
    assert got.prefix == PREFIX

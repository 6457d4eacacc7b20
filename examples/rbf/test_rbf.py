"""Rule-based forwarding: the rule language, certification, and forwarding in the simulator."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from examples.encryption.scenario import TOPOLOGY
from examples.rbf import service as rbf
from examples.rbf.control import CertifiedRule, RuleAuthority, RuleRejected, carry
from examples.rbf.scenario import build_world, send
from pcdemo.example_testbed import addresses

ADDRESS = addresses(TOPOLOGY)  #: the example's one topology (chain.toml)
C1, C2, D, S = ADDRESS["C1"], ADDRESS["C2"], ADDRESS["D"], ADDRESS["S"]
S_NET = S.rsplit(".", 1)[0] + ".0/24"
RULE = (
    f"if len > 100 then drop too_big else if site == C2 then forward "
    f"else if src in {S_NET} and not congestion@{C2} > 0.5 then meta 7, forward {C2} "
    f"else forward {D}"
)


def test_a_certified_rule_bound_to_the_circuit_chooses_the_hop_and_the_metadata() -> None:
    w = build_world()
    w.psp.bind(w.circuit, w.authority.certify(RULE))
    assert send(w, b"small") == [(C2, 7, b"small")]  # through C2, marked
    w.handles["C1"].isp_lpm_put("congestion", f"{C2}/32", {"level": 0.9})
    assert send(w, b"small") == [(C1, 0, b"small")]  # C2 congested: straight to D
    assert send(w, b"x" * 101) == []
    assert [d.detail for d in w.sites["C1"].drops] == ["rbf:too_big"]


def test_a_rule_carried_in_the_payload_runs_only_once_admitted_and_only_unaltered() -> None:
    w = build_world()
    rule = w.authority.certify(f"if site == C1 then forward {C2} else forward")
    payload = carry(rule, b"data")
    assert send(w, payload) == []  # certified, but not admitted at the sites yet
    w.psp.admit(rule)
    assert send(w, payload) == [(C2, 0, payload)]  # C1 chose C2; C2 delivered
    # a tampered rule (even a single byte) or signature is dropped with a reason
    evil = payload.replace(b"forward 198", b"forward 197")
    bad_sig = bytearray(payload)
    bad_sig[-5] ^= 1
    assert send(w, evil) == [] and send(w, bytes(bad_sig)) == []
    assert send(w, b"RBF1\x00\xff\x00\x40") == []
    assert [d.detail for d in w.sites["C1"].drops] == [
        "rbf_uncertified",
        "rbf_uncertified",
        "rbf_uncertified",
        "rbf_malformed",
    ]


def test_only_the_configured_authority_can_certify() -> None:
    w = build_world()
    mallory = RuleAuthority()
    with pytest.raises(RuleRejected) as err:
        w.psp.bind(w.circuit, mallory.certify(f"forward {D}"))
    assert err.value.reason == "bad_signature"
    with pytest.raises(RuleRejected):
        w.psp.admit(mallory.certify(f"forward {D}"))
    forged = CertifiedRule(f"forward {C2}", w.authority.certify(f"forward {D}").signature)
    with pytest.raises(RuleRejected):
        w.psp.bind(w.circuit, forged)
    # nothing was published: the circuit has no rule
    assert send(w, b"x") == []
    assert [d.detail for d in w.sites["C1"].drops] == ["rbf_no_rule"]


def test_a_rule_may_only_forward_to_the_circuits_own_hops() -> None:
    w = build_world()
    w.psp.bind(w.circuit, w.authority.certify("forward 198.18.9.9"))
    assert send(w, b"x") == []
    assert [d.reason for d in w.sites["C1"].drops] == ["spoof_attempt"]


@pytest.mark.parametrize(
    "text",
    [
        "",
        "if",
        "if len > 1 then",
        "if len >> 1 then drop",
        "if bogus == 1 then drop",
        "if src in 10.0.0.1 then drop",
        "meta 256",
        "forward 1.2.3",
        "drop x y",
        "if ( len > 1 then drop",
        "__import__('os')",
        "if " + "(" * 40 + "len > 1" + ")" * 40 + " then drop",  # nested too deeply
    ],
)
def test_the_parser_refuses_what_is_not_in_the_language(text: str) -> None:
    with pytest.raises(ValueError):
        rbf.parse(text)


def test_the_interpreter_evaluates_conditions_like_python_would() -> None:
    attrs = {"len": 50, "proto": 17, "src": rbf.ip_to_int("198.18.1.10"), "site": "C1"}
    tree = rbf.parse(
        "if (len >= 50 and proto != 6) or site == C9 then meta 1 else if not src in "
        "198.18.0.0/16 then drop far else meta 2, forward"
    )
    assert rbf.run(tree, attrs.get) == (("meta", 1),)
    attrs["len"] = 10
    assert rbf.run(tree, attrs.get) == (("meta", 2), ("forward", None))
    attrs["src"] = rbf.ip_to_int("10.1.2.3")
    assert rbf.run(tree, attrs.get) == (("drop", "far"),)


_words = st.sampled_from(
    ["if", "then", "else", "and", "or", "not", "(", ")", ",", "len", "src", "==", "<", "in",
     "7", "0.5", "198.18.0.0/16", "1.2.3.4", "forward", "drop", "meta", "x", "site", "@"]
)  # fmt: skip


@settings(max_examples=300, deadline=None)
@given(st.lists(_words, max_size=30))
def test_any_token_soup_parses_or_raises_value_error_never_anything_else(words: list[str]):
    try:
        tree = rbf.parse(" ".join(words))
    except ValueError:
        return
    attrs = {"len": 1, "src": 0, "site": "x"}
    for act in rbf.run(tree, attrs.get):
        assert act[0] in {"forward", "drop", "meta"}

"""Pure parts of the firewall example: the service's decision and StopIt filter management."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from examples.firewall.service import WEB_PORTS, decide
from examples.firewall.stopit import FilterError, FilterManager, filter_key


@given(dport=st.integers(0, 65535), proto=st.sampled_from([6, 17, 1]))
def test_only_tcp_80_443_passes_for_strangers(dport: int, proto: int) -> None:
    reason = decide(proto, dport, False, None, 0.0, WEB_PORTS)
    assert (reason is None) == (proto == 6 and dport in (80, 443))
    if reason is not None:
        assert reason == ("fw_port" if proto == 6 else "fw_not_tcp")


def test_whitelisted_sources_pass_anything_but_a_live_stopit_filter_wins() -> None:
    assert decide(17, 53, True, None, 5.0, WEB_PORTS) is None
    assert decide(17, 53, True, 10.0, 5.0, WEB_PORTS) == "fw_stopit"
    assert decide(6, 80, False, 10.0, 5.0, WEB_PORTS) == "fw_stopit"
    assert decide(6, 80, False, 10.0, 10.0, WEB_PORTS) is None  # expired at t = until
    assert decide(6, None, False, None, 0.0, WEB_PORTS) == "fw_truncated"
    assert decide(6, 8080, False, None, 0.0, [8080]) is None


def test_stopit_requests_respect_ownership_quota_and_expiry() -> None:
    m = FilterManager(quota=2, max_duration=100)
    m.add_owner("g", ["198.19.0.0/24"])
    m.add_owner("h", ["198.19.1.0/24"])
    f1 = m.request("g", src="198.18.66.1", dst="198.19.0.80", duration=10, now=0)
    assert f1.key == filter_key("198.18.66.1", "198.19.0.80") == "stopit:198.18.66.1>198.19.0.80"
    m.request("g", src="198.18.66.2", dst="198.19.0.80", duration=1000, now=0)
    assert max(f.until for f in m.live("g")) == 100  # duration capped
    with pytest.raises(FilterError) as e:
        m.request("g", src="198.18.66.3", dst="198.19.0.80", duration=10, now=1)
    assert e.value.reason == "quota"
    # renewing an existing filter does not count against the quota
    assert m.request("g", src="198.18.66.1", dst="198.19.0.80", duration=20, now=1).until == 21
    with pytest.raises(FilterError) as e:
        m.request("g", src="198.18.66.3", dst="198.19.1.9", duration=10, now=1)
    assert e.value.reason == "not_owner"
    with pytest.raises(FilterError) as e:
        m.request("x", src="198.18.66.3", dst="198.19.1.9", duration=10, now=1)
    assert e.value.reason == "unknown_owner"
    # h's quota is independent of g's
    m.request("h", src="198.18.66.3", dst="198.19.1.9", duration=10, now=1)
    gone = m.expire(21)
    assert {f.src for f in gone} == {"198.18.66.1", "198.18.66.3"}
    assert len(m.live("g")) == 1
    m.request("g", src="198.18.66.4", dst="198.19.0.80", duration=10, now=21)  # room again
    assert m.cancel("h", src="198.18.66.4", dst="198.19.0.80") is None  # not h's
    assert m.cancel("g", src="198.18.66.4", dst="198.19.0.80") is not None

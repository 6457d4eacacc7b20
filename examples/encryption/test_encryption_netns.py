"""Encryption offload with real packets in a namespace testbed (root; prefix "pcx")."""

from __future__ import annotations

import pytest

from examples.encryption import demo
from examples.encryption.demo import passed
from pcdemo.example_testbed import run_simulator, run_testbed


def test_the_demo_flow_passes_in_the_simulator() -> None:
    res = run_simulator(demo, n=20)
    assert res["received_plaintext_ok"] == 20 and res["core_sealed"] == 20
    assert res["tampered_dropped"] == 1 and passed(res)


@pytest.mark.netns
def test_only_ciphertext_crosses_the_core_and_tampering_is_dropped_with_real_packets() -> None:
    res = run_testbed(demo, n=100)
    assert res["received_plaintext_ok"] == 100
    assert res["core_packets"] == 100 and res["core_sealed"] == 100
    assert res["core_plaintext_leaks"] == 0
    assert res["tampered_delivered"] == 0 and res["tampered_dropped"] == 1
    assert passed(res)

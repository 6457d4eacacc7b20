"""Which services are confined: the policy, the trusted lane, the ``[services]`` config."""

from __future__ import annotations

from pathlib import Path

import pytest

from pcsite_lite.confine import ConfinedService, IsolationPolicy
from pcsite_lite.daemon.config import ConfigError, parse
from pcsite_lite.runtime import load_code

NOOP = "def process(pkt):\n    pass\n"


def _doc(tmp: Path, services: dict[str, object]) -> dict[str, object]:
    return {
        "site": {"name": "t", "public_ip": "198.18.9.1", "state_dir": str(tmp)},
        "control": {"admin_token": "admin-token-0123456789"},
        "services": services,
    }


def test_trusted_services_load_in_the_worker_and_others_are_confined() -> None:
    policy = IsolationPolicy(trusted=("acme/srcroute",), deadline_ms=2000)
    trusted = load_code(NOOP, "x", psp="acme", service="srcroute", version="1", isolation=policy)
    assert not isinstance(trusted.process, ConfinedService) and trusted.namespace
    confined = load_code(NOOP, "y", psp="acme", service="fw", version="1", isolation=policy)
    assert isinstance(confined.process, ConfinedService)
    confined.process.close()
    inprocess = IsolationPolicy("inprocess")
    assert not inprocess.confined("acme", "fw")
    with pytest.raises(ValueError):
        IsolationPolicy("wasm")


def test_services_section_defaults_and_validation(tmp_path: Path) -> None:
    cfg = parse(_doc(tmp_path, {}))
    assert cfg.services.isolation == "process" and cfg.services.replicate_per_packet == 16
    pol = parse(_doc(tmp_path, {"trusted": ["a/b"], "cpus": [1], "deadline_ms": 5})).services
    policy = pol.policy()
    assert policy.trusted == {"a/b"} and policy.cpus == {1} and policy.deadline_ms == 5
    assert policy.spin_us == 200  # the default poll window of a confined process
    assert parse(_doc(tmp_path, {"spin_us": 0})).services.policy().spin_us == 0
    for bad in (
        {"spin_us": -1},
        {"spin_us": 10_001},
        {"spin_us": 1.5},
        {"isolation": "none"},
        {"trusted": ["ab"]},
        {"deadline_ms": 0},
        {"memory_mb": 1},
        {"replicate_per_packet": 65},
        {"cpus": ["x"]},
        {"unknown": 1},
    ):
        with pytest.raises(ConfigError) as e:
            parse(_doc(tmp_path, bad))
        assert e.value.key.startswith("services."), bad

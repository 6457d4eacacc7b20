"""Every codec test runs twice: on the C accelerator (pcsock._accel) and on the pure-Python
reference, so both pass the same tests (``PACKETCLOUD_PURE=1`` leaves only the pure run).
Tests of other programs (the benchmark runner, tshark) run once."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from pcsock import wire

IMPLEMENTATIONS = ["accel", "pure"] if wire._accel is not None else ["pure"]
_ONCE = {"test_benchmark_codec", "test_wireshark", "test_accel_differential"}


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if metafunc.module.__name__.rpartition(".")[2] not in _ONCE:
        metafunc.parametrize("codec", IMPLEMENTATIONS, indirect=True)


@pytest.fixture(autouse=True)
def codec(request: pytest.FixtureRequest) -> Iterator[str]:
    """The implementation this run of the test uses ("accel" or "pure")."""
    which = getattr(request, "param", IMPLEMENTATIONS[0])
    previous = wire.use_accelerator(which == "accel")
    try:
        yield which
    finally:
        wire.use_accelerator(previous)

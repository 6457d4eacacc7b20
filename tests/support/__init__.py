"""Helpers shared by the tests: ``from tests.support import wait_until``.

Sub-modules: :mod:`tests.support.sites` (site daemons in line on a small testbed, the tests'
keys and tokens), :mod:`tests.support.netns` (a throw-away namespace with loopback addresses).
"""

from __future__ import annotations

import subprocess

from pcdemo.rig import wait_until  # the one poll-until helper (tests, demos, the rig)

__all__ = ["FakeClock", "stop_process", "wait_until"]


def stop_process(proc: subprocess.Popen[bytes], grace: float = 5.0) -> None:
    """SIGTERM ``proc``, SIGKILL it if it is still there after ``grace`` seconds; reap it."""
    proc.terminate()
    try:
        proc.wait(grace)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(grace)


class FakeClock:
    """A clock a test sets by hand: reads give ``now``; :meth:`advance` moves it. With
    ``step``, every read first advances it by ``step`` (a CPU clock that ticks per read)."""

    def __init__(self, now: float = 0, step: float = 0) -> None:
        self.now = now
        self.step = step

    def __call__(self) -> float:
        self.now += self.step
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds

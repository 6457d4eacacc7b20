"""Helpers shared by the tests: ``from tests.support import wait_until``.

Sub-modules: :mod:`tests.support.sites` (site daemons in line on a small testbed, the tests'
keys and tokens), :mod:`tests.support.netns` (a throw-away namespace with loopback addresses).
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Callable

__all__ = ["FakeClock", "stop_process", "wait_until"]


def wait_until(pred: Callable[[], object], timeout: float = 10.0, interval: float = 0.02) -> bool:
    """Poll ``pred`` every ``interval`` seconds until it is true or ``timeout`` seconds have
    passed; whether it became true. Tests wait for the condition they need, with a generous
    timeout, instead of sleeping a fixed time and hoping a loaded machine kept up."""
    end = time.monotonic() + timeout
    while not pred():
        if time.monotonic() >= end:
            return bool(pred())
        time.sleep(interval)
    return True


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

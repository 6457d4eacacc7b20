"""Helpers shared by the tests: ``from tests.support import wait_until``.

Sub-modules: :mod:`tests.support.sites` (site daemons in line on a small testbed, the tests'
keys and tokens), :mod:`tests.support.netns` (a throw-away namespace with loopback addresses).
"""

from __future__ import annotations

import subprocess
from collections.abc import Callable
from typing import Any, TypeVar

import trio

from pcdemo.rig import wait_until  # the one poll-until helper (tests, demos, the rig)

__all__ = ["Changes", "FakeClock", "stop_process", "wait_until"]

F = TypeVar("F", bound=Callable[..., Any])


def stop_process(proc: subprocess.Popen[bytes], grace: float = 5.0) -> None:
    """SIGTERM ``proc``, SIGKILL it if it is still there after ``grace`` seconds; reap it."""
    proc.terminate()
    try:
        proc.wait(grace)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(grace)


class Changes:
    """``wait_until`` for trio code, without polling: wrap the callbacks that the code under
    test calls in the trio thread right after its state changed (``on_op``, ``on_synced``,
    ``log``, ...); ``await changes.until(pred, timeout, what)`` checks ``pred`` again after each
    call and fails with ``what`` if it is still false after ``timeout`` seconds."""

    def __init__(self) -> None:
        self._changed = trio.Event()

    def wrap(self, fn: F) -> F:
        def called(*args: Any, **kwargs: Any) -> Any:
            try:
                return fn(*args, **kwargs)
            finally:
                self._changed.set()

        return called  # type: ignore[return-value]

    async def until(
        self, pred: Callable[[], object], timeout: float = 10.0,
        what: str | Callable[[], str] = "the condition",
    ) -> None:  # fmt: skip
        with trio.move_on_after(timeout):
            while not pred():
                # no checkpoint between the check and the wait: a call in between is not missed
                self._changed = trio.Event()
                await self._changed.wait()
            return
        text = what() if callable(what) else what
        raise AssertionError(f"timed out after {timeout} s waiting for {text}")


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

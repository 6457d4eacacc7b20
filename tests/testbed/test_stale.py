"""A run whose builder died is stale at once, even while the builder is an unreaped zombie."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.support import wait_until

pytestmark = pytest.mark.netns

BUILDER = """
import sys, time
from testbed import netns, state
run = state.Run.new("pcz", "stale-test")
ns = run.ns("n1")
run.data["namespaces"] = [ns]
run.save()
netns.create(ns)
print(run.name, flush=True)
time.sleep(600)  # kept, the workload: the builder idles until the test kills it
"""


def _tb(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "testbed", *args], capture_output=True, text=True, env=env,
        timeout=60,
    )  # fmt: skip


def test_sigkilled_builder_is_dead_and_cleaned_at_once(tmp_path: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root")
    env = {**os.environ, "PACKETCLOUD_TESTBED_STATE": str(tmp_path / "state")}
    builder = subprocess.Popen(
        [sys.executable, "-c", BUILDER], stdout=subprocess.PIPE, text=True, env=env
    )
    try:
        assert builder.stdout is not None
        run = builder.stdout.readline().strip()
        assert run.startswith("pcz"), run
        assert os.path.exists(f"/run/netns/{run}-n1")
        st = json.loads(_tb(env, "status", "--json").stdout)
        assert [(r["run"], r["phase"], r["stale"]) for r in st] == [(run, "building", False)]
        # SIGKILL and do not reap: the builder stays a zombie with its /proc entry
        os.kill(builder.pid, signal.SIGKILL)
        stat = Path(f"/proc/{builder.pid}/stat")
        assert wait_until(lambda: stat.read_text().split(") ")[1][0] == "Z", 10, 0.01)
        t0 = time.monotonic()
        st = json.loads(_tb(env, "status", "--json").stdout)
        assert [(r["run"], r["phase"], r["stale"]) for r in st] == [(run, "dead", True)]
        out = _tb(env, "clean", "--all-stale")
        assert out.returncode == 0, out.stdout + out.stderr
        assert f"cleaned {run}: 0 processes, 1 namespaces" in out.stdout
        assert time.monotonic() - t0 < 30  # not the 60 s grace of before
        assert not os.path.exists(f"/run/netns/{run}-n1")
        assert os.listdir(tmp_path / "state") == []
        assert "nothing stale" in _tb(env, "clean", "--all-stale").stdout
    finally:
        builder.kill()
        builder.wait()
        subprocess.run(["ip", "netns", "del", f"{run}-n1"], capture_output=True)


def test_run_directory_appears_with_its_owner(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from testbed import state

    monkeypatch.setattr(state, "STATE_ROOT", tmp_path)
    run = state.Run.new("pcy", "t")
    assert os.listdir(tmp_path) == [run.name]  # no temporary directory left behind
    data = json.loads((tmp_path / run.name / "state.json").read_text())
    assert data["owner_pid"] == os.getpid() and not state.Run.load(run.name).stale
    # a temporary directory of a creator that died is removed by clean_unborn
    (tmp_path / ".new-999999999-1-abcd").mkdir()
    (tmp_path / f".new-{os.getpid()}-{state.proc_start_time(os.getpid())}-ef01").mkdir()
    assert [r.name for r in state.list_runs()] == [run.name]
    assert state.clean_unborn() == 1
    assert sorted(os.listdir(tmp_path)) == sorted(
        [run.name, f".new-{os.getpid()}-{state.proc_start_time(os.getpid())}-ef01"]
    )

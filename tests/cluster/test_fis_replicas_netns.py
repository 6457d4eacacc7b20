"""A site whose FIS is replicated on three machines of the testbed (root): ``nodes = 3,
fis_replicas = 3`` builds a Redis primary, two replicas and three Sentinels on the site's
internal network; every machine of the site reaches the FIS by its Sentinel URL.

``testbed fail`` (the command) on the FIS primary (SIGKILL of its Redis and Sentinel, link
cut): form-1 circuits keep forwarding from the compute nodes' state; FIS writes fail with the
clear error while there is no primary and succeed again after the Sentinels' failover; an
acknowledged write made before the kill is still there; ``testbed recover`` brings the old
primary back as a replica of the new one.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time

import pytest

from benchmarks._cluster_rig import ClusterSite, Load
from pcsite_lite.fis import FISUnavailableError, namespace, open_engine
from testbed.netns import call_in
from tests.support import wait_until

pytestmark = [pytest.mark.netns, pytest.mark.timeout(180)]

K = 6  #: circuits
NS = namespace("acme", "relay")


def _cli(*args: str) -> str:
    out = subprocess.run([sys.executable, "-m", "testbed", *args], capture_output=True,
                         text=True, timeout=60)  # fmt: skip
    assert out.returncode == 0, out.stderr
    return out.stdout


def test_fis_primary_kill_keeps_forwarding_and_writes_resume_after_failover(tmp_path) -> None:
    with ClusterSite(tmp_path, nodes=3, fis_replicas=3, prefix="pcl15t") as cs:
        tb = cs.tb
        cp = tb.cluster("s1")
        assert [m.name for m in cp.fis] == ["s1_f1", "s1_f2", "s1_f3"]
        assert cs.fis.startswith("redis+sentinel://site:")  # what every machine was given
        assert tb.fis_primary("s1") == "s1_f1"
        doc = tb.summary()["clusters"]["s1"]  # what `testbed inspect --json` prints
        assert [f["name"] for f in doc["fis"]] == ["s1_f1", "s1_f2", "s1_f3"]
        assert doc["fis_url"].startswith("redis+sentinel://198.19.128.201:26379,")  # no secret
        lb = tb.node("s1").ns
        fis = call_in(lb, lambda: open_engine(cs.fis))
        call_in(lb, lambda: fis.put(NS, "before", 1, writer="acme"))  # acknowledged by a replica

        labels = cs.circuits(K)
        with Load(cs, labels, rate=100) as load:
            assert wait_until(lambda: len(load.got) >= 2 * K, 15), "no traffic through the site"
            t_kill = time.monotonic()
            assert _cli("fail", "--run", tb.run, "s1_f1").endswith("internal link cut\n")
            refused: list[str] = []

            def write() -> bool:
                try:
                    fis.put(NS, "after", 2, writer="acme")
                    return True
                except FISUnavailableError as exc:
                    refused.append(str(exc))
                    return False

            assert wait_until(lambda: call_in(lb, write), 30, interval=0.1), refused[-3:]
            t_back = time.monotonic()
            # every circuit delivered a packet sent after: one sent before that is missing
            # was lost, not in flight
            assert wait_until(lambda: load.delivered(set(range(K)), t_back) >= 1, 10)
        # forwarding never needed the FIS primary: nothing sent meanwhile was lost
        window = [k for k, t in load.sent.items() if t_kill <= t <= t_back]
        assert len({i for i, _ in window}) == K and len(window) >= K * 50
        assert not sorted({s for i, s in window if (i, s) not in load.got})
        assert refused and "FIS" in refused[0]  # the clear error while there was no primary
        assert 1.0 <= t_back - t_kill <= 30  # Sentinel's detection time (1 s) comes first
        assert tb.fis_primary("s1") in ("s1_f2", "s1_f3")
        assert call_in(lb, lambda: (fis.get(NS, "before"), fis.get(NS, "after"))) == (1, 2)

        # `testbed recover` restarts the machine; the Sentinels make it a replica
        assert "2 processes started" in _cli("recover", "--run", tb.run, "s1_f1")
        f1 = cp.fis[0]

        def role() -> str:
            argv = ["redis-cli", "--raw", "-h", f1.address, "--user", "sentinel", "--pass",
                    tb.redis_passwords["sentinel"], "--no-auth-warning", "ROLE"]  # fmt: skip
            return tb.node("s1_f1").run(argv, timeout=5).stdout.split("\n")[0]

        assert wait_until(lambda: role() == "slave", 30), role()
        listed = json.loads(_cli("inspect", tb.run, "--json"))
        assert "s1_f1" in listed["clusters"]["s1"]["netns"]
        assert "FIS machine  s1_f2" in _cli("inspect", tb.run)
        fis.close()

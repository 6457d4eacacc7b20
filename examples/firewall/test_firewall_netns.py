"""The firewall with real packets in a namespace testbed (root; prefix "pce")."""

from __future__ import annotations

from pathlib import Path

import pytest

from examples.firewall import demo
from examples.firewall.demo import passed
from pcdemo.example_testbed import main, run_testbed


@pytest.mark.netns
def test_firewall_drops_unwanted_traffic_at_the_source_side_site_with_real_packets() -> None:
    """On the real site daemon: signed upload, control-API sign-up (the daemon validates the
    DNSSEC proof), FIS changes through the control API, the daemon's TUN dataplane."""
    res = run_testbed(demo, n=200)
    assert res["wanted"] == 50
    # captured on the core router's interface: only the 50 web packets crossed the core
    assert res["core_link_packets"] == 50
    assert res["server_packets"] == 50
    # the kernel's counter of the core interface agrees (give or take an ARP frame)
    assert 50 <= res["core_iface_tx_delta"] <= 53
    assert res["site_drops"] == {"service_drop": 150}
    # on-line whitelist passes a UDP probe; a StopIt filter then stops it
    assert res["whitelisted_probe_at_server"] == 1
    assert res["stopped_probe_at_server"] == 0
    assert passed(res)


def test_help_prints_help_and_runs_nothing(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(demo, ["--help"])
    assert exc.value.code == 0
    assert "--topology FILE" in capsys.readouterr().out


def test_a_topology_without_the_demo_nodes_is_refused_naming_what_it_lacks(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    topo = tmp_path / "two.toml"
    topo.write_text(
        'name = "two"\n[[node]]\nname = "A"\nkind = "host"\n'
        '[[node]]\nname = "RA"\nkind = "router"\n[[link]]\na = "A"\nb = "RA"\n'
    )
    assert main(demo, ["--topology", str(topo), "--world", "testbed"]) == 2
    err = capsys.readouterr().err
    assert "a host named 'G'" in err and "a site named 'CA'" in err and "a link RA -- RC" in err

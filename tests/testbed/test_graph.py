"""``testbed graph`` and ``testbed top``: drawings name what they draw, overlays follow the
routes, circuits installed in a live run are drawn hop by hop, rates come from real counters."""

from __future__ import annotations

import json
import re
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from testbed import graph, live, top
from testbed.cli import main as cli
from testbed.plan import make
from testbed.topology import line, load
from tests.support import wait_until

TOPOLOGIES = Path(__file__).resolve().parents[2] / "testbed" / "topologies"
SVG = "{http://www.w3.org/2000/svg}"


def _svg(path: Path) -> tuple[set[str], dict[str, str]]:
    """(every text of the SVG, element id -> its <title>)."""
    root = ET.parse(path).getroot()
    texts = {"".join(t.itertext()).strip() for t in root.iter(f"{SVG}text")}
    titles = {}
    for g in root.iter(f"{SVG}g"):
        t = g.find(f"{SVG}title")
        if g.get("id") and t is not None and t.text:
            titles[g.get("id", "")] = t.text
    return texts, titles


@pytest.mark.parametrize("name", sorted(p.stem for p in TOPOLOGIES.glob("*.toml")))
def test_svg_of_each_shipped_topology_names_every_node_and_link(name: str, tmp_path: Path) -> None:
    out = tmp_path / f"{name}.svg"
    assert cli(["graph", name, "-o", str(out)]) == 0
    topo = load(TOPOLOGIES / f"{name}.toml")
    texts, titles = _svg(out)
    for node in topo.nodes:
        assert node in texts, f"node {node} not named in the drawing"
        assert f"node-{node}" in titles
    for lk in topo.links:  # implied site links included
        assert any(t.startswith(lk.name) for t in texts), f"link {lk.name} not named"
        assert titles[f"link-{lk.name}"] in (f"{lk.a}->{lk.b}", f"{lk.a}--{lk.b}")
    plan = make(topo)
    for p in plan.nodes.values():
        if p.public_ip:
            assert any(p.public_ip in t for t in texts), "a site's public IP is shown"
        if p.control:
            assert p.control.address in texts, "control addresses are on the control edges"
    assert any(t.startswith("control network") for t in texts)
    for lk in topo.links:
        if lk.delay_ms:
            assert f"{lk.delay_ms:g} ms" in texts


def test_png_and_shaping_labels(tmp_path: Path) -> None:
    topo = line(2)
    topo.links[1] = type(topo.links[1])(
        "r1", "r2", delay_ms=5, jitter_ms=1, loss_pct=0.5, rate_bps=20_000_000, name="r1-r2"
    )
    png = graph.write(topo, tmp_path / "l.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    svg = graph.write(topo, tmp_path / "l.svg")
    texts, _ = _svg(svg)
    assert "5 ms ±1, 0.5% loss, 20 Mbit/s" in texts
    with pytest.raises(ValueError, match="must end in"):
        graph.write(topo, tmp_path / "l.jpg")
    with pytest.raises(ValueError, match="drawings stop at"):
        graph.drawing(line(graph.MAX_NODES // 2 + 1))


def test_path_overlay_follows_the_static_routes_with_labels(tmp_path: Path) -> None:
    topo = load(TOPOLOGIES / "fig2.toml")
    ov = graph.Overlay(
        paths=[graph.PathOverlay("c", ["S", "C2", "C3", "D"], [None, 5, 7, None])],
        diversions={"R1": ["198.18.64.0/24"]},
        policy={"R1": "DSCP 43"},
    )
    out = graph.write(topo, tmp_path / "p.svg", ov)
    texts, titles = _svg(out)
    steps = sorted((int(k.split("step")[1]), v) for k, v in titles.items() if k.startswith("path0"))
    hops = [steps[0][1].split("->")[0]] + [v.split("->")[1] for _, v in steps]
    assert hops == ["S", "R1", "R2", "C2", "R2", "R3", "C3", "R3", "R4", "D"]
    assert "3: label 0x5" in texts and "6: label 0x7" in texts
    assert titles["form3-R1"] == "R1->C1" and "form 3: 198.18.64.0/24" in texts
    assert "form 2: DSCP 43" in texts


def test_overlay_json_is_validated() -> None:
    topo = load(TOPOLOGIES / "fig2.toml")
    for bad, msg in (
        ([], "JSON object"),
        ({"paths": [{"hops": ["S"]}]}, "hops"),
        ({"paths": [{"hops": ["S", "D"], "labels": [1]}]}, "labels"),
        ({"paths": [{"hops": ["S", "D"], "labels": [None, -1]}]}, "labels"),
        ({"diversions": {"R1": ["not a prefix"]}}, "diversions"),
        ({"title": "x" * 500}, "title"),
        ({"bogus": 1}, "unknown"),
    ):
        with pytest.raises(ValueError, match=msg):
            graph.Overlay.from_json(bad)
    with pytest.raises(ValueError, match="not a node"):
        graph.drawing(topo, graph.Overlay.from_json({"paths": [{"hops": ["S", "X9"]}]}))
    doc = {
        "title": "t",
        "paths": [{"name": "a", "hops": ["S", "D"], "labels": [None, 3]}],
        "diversions": {"R1": ["198.18.64.0/24"]},
        "notes": {"C1": "20 pkts"},
    }
    assert graph.Overlay.from_json(graph.Overlay.from_json(doc).to_json()).to_json()["paths"][0][
        "labels"
    ] == [None, 3]


def test_several_overlays_one_drawing_each(tmp_path: Path) -> None:
    f = tmp_path / "ov.json"
    f.write_text(
        json.dumps(
            {
                "overlays": {
                    "form1": {"paths": [{"hops": ["S", "C2", "D"]}]},
                    "form 3": {"notes": {"C1": "40 packets"}},
                }
            }
        )
    )
    assert cli(["graph", "fig2", "--overlay", str(f), "-o", str(tmp_path / "{name}.svg")]) == 0
    assert (tmp_path / "form1.svg").exists() and (tmp_path / "form_3.svg").exists()
    assert "40 packets" in _svg(tmp_path / "form_3.svg")[0]
    assert cli(["graph", "fig2", "--overlay", str(f), "-o", str(tmp_path / "x.svg")]) == 2


def test_circuit_hops_chain_into_paths() -> None:
    addresses = {
        "198.18.254.2": "C2",
        "198.18.254.3": "C3",
        "198.18.64.2": "D",
        "198.18.254.1": "C1",
    }
    hops = {
        "C3": [{"label": 7, "out": [{"label": 7, "next_hop": "198.18.64.2", "final": True}]}],
        "C2": [
            {"label": 5, "out": [{"label": 7, "next_hop": "198.18.254.3", "final": False}]},
            {"label": 9, "out": [], "destination": "198.18.64.2"},
        ],
        "C1": [],
    }
    paths = live.circuit_paths(hops, addresses)
    assert [(p["hops"], p["labels"]) for p in paths] == [
        (["C2", "C3", "D"], [5, 7, None]),
        (["C2", "D"], [9, None]),
    ]
    # a multicast hop gives a path per branch; malformed views are skipped, not raised
    addresses["198.18.31.2"] = "R1"
    mc = {
        "C2": [
            {
                "label": 1,
                "out": [
                    {"label": 7, "next_hop": "198.18.254.3"},
                    {"label": 0, "next_hop": "198.18.31.2", "final": True},
                ],
            },
            {"label": "x"},
            {"out": "junk"},
            5,
        ],
        "C3": [{"label": 7, "out": [{"label": 0, "next_hop": "198.18.64.2", "final": True}]}],
    }
    assert [p["hops"] for p in live.circuit_paths(mc, addresses)] == [
        ["C2", "C3", "D"],
        ["C2", "R1"],
    ]
    # a loop of hops ends instead of spinning
    loop = {
        "C2": [{"label": 1, "out": [{"label": 2, "next_hop": "198.18.254.3"}]}],
        "C3": [{"label": 2, "out": [{"label": 1, "next_hop": "198.18.254.2"}]}],
    }
    assert all(len(p["hops"]) <= 3 for p in live.circuit_paths(loop, addresses))


def test_top_parses_the_site_exposition_and_computes_rates() -> None:
    from pcsite_lite.metrics import WorkerStats, render

    def text(rx: int, drops: int) -> str:
        ws = {
            0: WorkerStats(rx_packets=rx, tx_packets=rx - drops, drops={"bad_mac": drops}),
            1: WorkerStats(rx_packets=1, alive=False),
        }
        return render(ws, {}, site="C2", gauges={"circuits": ("c", 3.0)})

    a, b = top.Sample(10.0), top.Sample(12.0)
    a.metrics["C2"], b.metrics["C2"] = (
        top.parse_metrics(text(100, 4)),
        top.parse_metrics(text(300, 10)),
    )
    a.cpu_ticks["C2"], b.cpu_ticks["C2"] = 0, top.TICKS  # one CPU second in two seconds
    a.worker_ticks["C2"], b.worker_ticks["C2"] = {"0": 10}, {"0": 10 + top.TICKS // 2}
    a.links["S-R1"] = live.LinkCounters(10, 1000, 0, 20, 2000, 0)
    b.links["S-R1"] = live.LinkCounters(30, 3000, 2, 60, 6000, 0)
    r = top.rates(a, b)
    assert r["links"]["S-R1"]["pps_ab"] == 20 and r["links"]["S-R1"]["pps_ba"] == 10
    assert r["links"]["S-R1"]["bps_ab"] == 16000 and r["links"]["S-R1"]["drops_per_s"] == 1
    site = r["sites"]["C2"]
    assert site["workers"]["0"] == {
        "up": True, "rx_pps": 100, "tx_pps": 97, "rx_total": 300, "cpu_percent": 25,
    }  # fmt: skip
    assert site["workers"]["1"]["up"] is False and site["workers"]["1"]["cpu_percent"] is None
    assert site["drops_per_s"] == {"bad_mac": 3} and site["circuits"] == 3
    assert site["cpu_percent"] == 50
    with pytest.raises(ValueError):
        top.parse_metrics("pcsite_rx_packets_total{worker=0 1\n")
    top.view("run", r)  # renders without a terminal


def test_net_dev_parser() -> None:
    text = (
        "Inter-|   Receive                                                |  Transmit\n"
        " face |bytes    packets errs drop fifo frame compressed multicast|bytes    packets "
        "errs drop fifo colls carrier compressed\n"
        "  eth0:    1500      10    0    2    0     0          0         0     3000      20 "
        "   0    1    0     0       0          0\n"
        " junk line\n"
    )
    assert live.parse_net_dev(text) == {"eth0": live.LinkCounters(10, 1500, 2, 20, 3000, 1)}


# --- a live run -------------------------------------------------------------------------------

K2, K3 = bytes(range(16)), bytes(range(5, 21))
ADMIN, PSP_TOKEN = "graph-isp-admin-0123456789", "graph-acme-token-0123456789"


@pytest.mark.netns
@pytest.mark.timeout(180)
def test_drawing_of_a_live_run_shows_each_installed_circuit_in_order(tmp_path: Path) -> None:
    import os

    if os.geteuid() != 0:
        pytest.skip("needs root")
    from pcdemo.rig import start_pcsite
    from pcsite_lite.control.client import ControlClient, OutHop
    from testbed import Testbed

    with Testbed.from_file(TOPOLOGIES / "fig2.toml", prefix="pcgr") as tb:
        for name in ("C2", "C3"):
            info = tb.site(name)
            (tmp_path / name).mkdir()
            cfg = tmp_path / f"{name}.toml"
            cfg.write_text(
                f'[site]\nname = "{name}"\npublic_ip = "{info.public_ip}"\nworkers = 1\n'
                f'state_dir = "{tmp_path / name}"\n\n[dataplane]\ntun_prefix = "pcgw"\n\n'
                f'[control]\nlisten = "127.0.0.1:8080"\nadmin_token = "{ADMIN}"\n\n'
                f'[control.psps.acme]\ntoken = "{PSP_TOKEN}"\n'
            )
            start_pcsite(tb.node(name), cfg)
            tb.register_control(name, "http://127.0.0.1:8080", ADMIN, ["acme"])

        def client() -> ControlClient:
            return ControlClient("http://127.0.0.1:8080", token=PSP_TOKEN, psp="acme")

        d_addr = str(tb.node("D").address)
        c2, c3 = client(), client()
        circuits = []
        for _ in range(2):  # two circuits S->C2->C3->D
            l3 = tb.node("C3").call(lambda: c3.allocate_circuit("srcroute")["label"])
            tb.node("C3").call(lambda l3=l3: c3.install_hop(l3, in_key=K3, deliver=d_addr))
            l2 = tb.node("C2").call(lambda: c2.allocate_circuit("srcroute")["label"])
            c3_ip = tb.site("C3").public_ip
            tb.node("C2").call(
                lambda l2=l2, l3=l3, ip=c3_ip: c2.install_hop(
                    l2, in_key=K2, out=[OutHop(l3, ip, K3)]
                )
            )
            circuits.append((l2, l3))
        tb.divert("R1", "198.18.64.0/24")

        out = tmp_path / "live.svg"
        assert cli(["graph", tb.run, "-o", str(out)]) == 0
        texts, titles = _svg(out)
        for k, (l2, l3) in enumerate(sorted(circuits)):
            steps = sorted(
                (int(i.split("step")[1]), v) for i, v in titles.items() if i.startswith(f"path{k}-")
            )
            hops = [steps[0][1].split("->")[0]] + [v.split("->")[1] for _, v in steps]
            assert hops == ["C2", "R2", "R3", "C3", "R3", "R4", "D"], hops
            labelled = [t for t in texts if re.fullmatch(r"\d+: label 0x[0-9a-f]+", t)]
            assert f"3: label {l3:#x}" in labelled
            legend = f"C2 [{l2:#x}] → C3 [{l3:#x}] → D"
            assert any(legend in t for t in texts), (legend, texts)
        assert "form 3: 198.18.64.0/24" in texts

        # testbed top reads the same daemons' metrics and the kernel's counters
        import contextlib
        import io

        buf = io.StringIO()
        with contextlib.redirect_stdout(buf):
            assert cli(["top", tb.run, "--json", "--interval", "0.3"]) == 0
        r = json.loads(buf.getvalue())
        assert set(r["links"]) == {lk.name for lk in tb.topo.links}
        assert r["sites"]["C2"]["workers"]["0"]["up"] is True
        assert r["sites"]["C2"]["workers"]["0"]["cpu_percent"] is not None  # its PID, in C2
        assert r["sites"]["C2"]["circuits"] == 2 and r["sites"]["C1"]["metrics"] is False
        assert r["sites"]["C1"]["metrics_error"] == "no control API registered"

        # the live view refreshes until Ctrl-C, then exits cleanly
        import select
        import signal
        import subprocess

        view = subprocess.Popen(
            [sys.executable, "-m", "testbed", "top", tb.run, "--interval", "0.2"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        try:
            samples = 0
            assert view.stdout is not None

            def sampled_twice() -> bool:  # a pipe gets one block per sample
                nonlocal samples
                assert view.poll() is None, "top exited"
                if select.select([view.stdout], [], [], 0.2)[0]:
                    samples += "links of run" in view.stdout.readline()
                return samples >= 2

            assert wait_until(sampled_twice, 20, 0), "no output"
            view.send_signal(signal.SIGINT)  # while it loops over samples
            _, err = view.communicate(timeout=10)
        finally:
            if view.poll() is None:
                view.kill()
                view.wait()
        assert view.returncode == 0 and "Traceback" not in err, err

"""``python -m pcdemo --report DIR``: a picture for every scenario and the latencies."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from pcdemo import scenarios as demo

SVG = "{http://www.w3.org/2000/svg}"


def _steps(svg: Path, k: int) -> tuple[list[str], set[str]]:
    """(the nodes path ``k`` crosses, in order; every text of the drawing)."""
    root = ET.parse(svg).getroot()
    titles = {}
    for g in root.iter(f"{SVG}g"):
        t = g.find(f"{SVG}title")
        if (g.get("id") or "").startswith(f"path{k}-step") and t is not None and t.text:
            titles[int(g.get("id", "").split("step")[1])] = t.text
    steps = [titles[i] for i in sorted(titles)]
    texts = {"".join(t.itertext()).strip() for t in root.iter(f"{SVG}text")}
    return [steps[0].split("->")[0]] + [s.split("->")[1] for s in steps], texts


def _ownnet(world):
    out = demo.Outcome("ownnet", sent=10, received=7, dropped=3)
    out.check("seven arrived", True)
    return out


def test_report_has_a_picture_of_every_scenario_and_the_latencies(tmp_path):
    report = tmp_path / "report"
    names = [*demo.CORE_SCENARIOS, "ownnet"]
    args = ["--world", "simulator", "--report", str(report)]
    demo.scenario("ownnet", "a scenario on its own network (records no path)")(_ownnet)
    try:
        assert demo.main([*args, *(x for n in names for x in ("--only", n))]) == 0
    finally:
        del demo.SCENARIOS["ownnet"]
    doc = json.loads((report / "results.json").read_text())
    assert [r["name"] for r in doc["results"]] == names
    # the packets' paths on Fig. 2, through the routers the static routes use
    hops, texts = _steps(report / "form1.svg", 0)
    assert hops == ["S", "R1", "R2", "C2", "R2", "R3", "C3", "R3", "R4", "D"]
    assert "fig2: form1 (pass): 20 sent, 20 delivered, 0 dropped" in texts
    assert any(t.startswith("3: label 0x") for t in texts)  # the circuit's label into C2
    hops, texts = _steps(report / "form2.svg", 0)
    assert hops == ["S", "R1", "C1", "R1", "R4", "D"]
    assert "marked 20" in texts  # counted at C1
    hops, texts = _steps(report / "form3.svg", 1)
    assert hops == ["S", "R1", "C1"]  # port 7 ends at C1's firewall
    assert "fig2: form3 (pass): 40 sent, 20 delivered, 20 dropped" in texts
    assert (report / "form1_3.svg").exists()
    assert (report / "ownnet.png").read_bytes()[:4] == b"\x89PNG"
    assert (report / "latency.png").read_bytes()[:4] == b"\x89PNG"
    rows = {r["name"]: r for r in doc["results"]}
    assert len(rows["form1"]["latencies_ms"]) == 20
    assert rows["form1"]["latencies_ms"][0] == pytest.approx(3.0)
    index = (report / "index.md").read_text()
    for pic in ("form1.svg", "form2.svg", "form3.svg", "form1_3.svg", "ownnet.png", "latency.png"):
        assert f"]({pic})" in index


def test_a_report_that_cannot_be_written_fails_the_demo(tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    assert demo.main(["--world", "simulator", "--only", "form2", "--report", str(blocker)]) == 1
    assert "report:" in capsys.readouterr().err

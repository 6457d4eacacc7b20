"""``python -m benchmarks --plot DIR``: each benchmark's figures drawn from its JSON."""

from __future__ import annotations

import json

from benchmarks import _plot
from benchmarks.__main__ import main
from tests.support.bench import run_benchmark


def test_figures_ratios_and_round_spreads_are_found() -> None:
    doc = {
        "codec_us_per_packet": 3.0,
        "scapy_us_per_packet": 700.0,
        "codec_vs_scapy": 233.3,
        "count": 200,
        "quick": True,
        "raw": {"runs": {"codec": [3.0, 3.4, 3.2], "scapy": [700.0, 710.0]}},
    }
    figures = _plot.figures_of(doc)
    assert figures == {"codec_us_per_packet": 3.0, "scapy_us_per_packet": 700.0,
                       "codec_vs_scapy": 233.3}  # fmt: skip
    spreads = _plot.spreads_of(doc, figures)
    assert spreads == {"codec_us_per_packet": [3.0, 3.4, 3.2],
                       "scapy_us_per_packet": [700.0, 710.0]}  # fmt: skip
    nested = {"rounds": [{"figures": {"site_vs_kernel_1w": x}} for x in (0.2, 0.3, 0.25)],
              "figures": {"site_vs_kernel_1w": 0.25}}  # fmt: skip
    assert _plot.spreads_of(nested, _plot.figures_of(nested)) == {
        "site_vs_kernel_1w": [0.2, 0.3, 0.25]
    }


def test_plot_draws_every_result_and_says_when_there_is_none(tmp_path, capsys) -> None:
    results = tmp_path / "results"
    results.mkdir()
    # real output of two benchmarks, tiny counts
    for name in ("pipeline", "codec"):
        run_benchmark(name, results, "--quick")
    (results / "broken.json").write_text("{not json")
    (results / "empty.json").write_text(json.dumps({"python": "3.11"}))
    out = tmp_path / "plots"
    assert main(["--plot", str(out), "--results", str(results)]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["codec.png", "pipeline.png"]
    for p in out.iterdir():
        assert p.read_bytes()[:4] == b"\x89PNG"
    text = capsys.readouterr().out
    assert "broken.json: not readable JSON" in text and "empty.json: no figures" in text
    pipeline = json.loads((results / "pipeline.json").read_text())
    assert "pipeline_us_per_packet" in _plot.spreads_of(pipeline, _plot.figures_of(pipeline))
    assert main(["--plot", str(out), "--results", str(tmp_path / "none")]) == 2

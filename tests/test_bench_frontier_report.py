"""Tests for raggedvit.bench.frontier_report: the table, the plot, the description and --merge (CPU)."""

from __future__ import annotations

import argparse
import json

import pytest

from raggedvit.bench import frontier
from raggedvit.bench import frontier_report as report
from raggedvit.runtime.errors import UsageError


def _args(tmp_path, *extra):
    parser = argparse.ArgumentParser()
    frontier.add_arguments(parser)
    return parser.parse_args(["--out", str(tmp_path), "--device", "cpu", *extra])


def test_speed_table_has_the_unpruned_packed_row(tmp_path):
    """The dense setting carries raggedvit's unpruned packed graph next to dense_compiled: its own row, ratio to
    dense_compiled, no padded ratio; a pruned setting reads its own raggedvit_graph row."""
    def row(setting, pipeline, ips, **kw):
        return dict(weights="trained", setting=setting, pipeline=pipeline, batch=8, status="ok", images_per_s=ips, **kw)
    rows = [row("dense", "dense_compiled", 100.0), row(report.UNPRUNED, "raggedvit_graph", 115.0,
                                                        speedup_vs_dense_compiled=1.15),
            row("evit fixed keep_rate=0.8", "raggedvit_graph", 150.0, speedup_vs_dense_compiled=1.5,
                speedup_vs_padded_best=1.25)]
    results = [dict(setting="dense", method="none", variant="", status="ok", top1=80.0, kept_stages=[]),
               dict(setting="evit fixed keep_rate=0.8", method="evit", variant="fixed", status="ok", top1=79.5,
                    kept_stages=[dict(mean=150.0)])]
    frontier._attach_speed(results, rows, 80.0)
    assert results[0]["speed"][8]["images_per_s"] == 100.0 and results[0]["speed_unpruned"][8]["images_per_s"] == 115.0
    assert "speed_unpruned" not in results[1] and results[1]["speed"][8]["speedup_vs_padded_best"] == 1.25
    md = report.markdown_table(dict(config=dict(batches=[8]), settings=results, rows=rows))
    lines = md.splitlines()
    assert lines[2].startswith("| dense | 80.0 |") and lines[2].endswith("| 100 |")
    assert lines[3] == f"| {report.UNPRUNED} | (dense) | - | - | 115 (1.15x) |"
    assert lines[4].endswith("| 150 (1.50x / 1.25x) |") and "-0.5" in lines[4]
    # the plot, also from JSON (batch keys become strings), with the unpruned point
    result = json.loads(json.dumps(dict(config=dict(batches=[8], model="m", dtype="float16"), env={"gpu": "G"},
                                        settings=results, rows=rows)))
    png = tmp_path / "f.png"
    assert report.plot_frontier(result, png) == png and png.stat().st_size > 0


def _run_result(batch: int, ips: float, top1: float = 79.5) -> dict:
    """A frontier result as read back from JSON (batch keys are strings) with one pruned setting at ``batch``."""
    speed = {str(batch): dict(status="ok", images_per_s=ips, speedup_vs_dense_compiled=ips / 100,
                              speedup_vs_padded_best=ips / 120, padded_best="padded_compiled")}
    dense = {str(batch): dict(status="ok", images_per_s=100.0)}
    settings = [dict(setting="dense", method="none", variant="", status="ok", top1=80.0, kept_stages=[],
                     speed=dense, speed_unpruned=dense),
                dict(setting="evit fixed keep_rate=0.8", method="evit", variant="fixed", status="ok", top1=top1,
                     top1_delta=top1 - 80, kept_stages=[dict(mean=150.0, min=150, max=150)], speed=speed)]
    config = dict(model="m", checkpoint="c", images="i", calibration="c", dtype="float16", live_rows="auto",
                  batches=[batch], padded_compiled=[batch])
    env = dict(gpu="G", torch="t", triton="t", timm="t", date=f"d{batch}", command=f"run b{batch}")
    return json.loads(json.dumps(dict(kind="frontier", env=env, config=config, settings=settings,
                                      rows=[dict(batch=batch, pipeline="raggedvit_graph")])))


def test_merge_joins_batch_sizes_of_separate_runs(tmp_path, capsys):
    """Two runs at batch 8 and 64: one table with both columns, each cell from its own run; runs that differ
    in anything but batch sizes, or overlap in a batch size, are refused."""
    a, b = tmp_path / "a.json", tmp_path / "b.json"
    a.write_text(json.dumps(_run_result(64, 300.0)))
    b.write_text(json.dumps(_run_result(8, 150.0)))
    out = tmp_path / "merged"
    assert frontier.main(_args(out, "--merge", f"{a},{b}")) == 0  # through the command
    merged = json.loads(next(out.glob("frontier-*.json")).read_text())
    assert merged["config"]["batches"] == [8, 64] and merged["config"]["padded_compiled"] == [8, 64]
    assert merged["env"]["command"] == "run b64 ; run b8" and len(merged["rows"]) == 2
    md = next(out.glob("frontier-*.md")).read_text()
    assert "| evit fixed keep_rate=0.8 | 79.5 | -0.5 | 150 | 150 (1.50x / 1.25x) | 300 (3.00x / 2.50x) |" in md
    assert next(out.glob("frontier-*.png")).stat().st_size > 0
    with pytest.raises(UsageError, match="setting 'evit fixed keep_rate=0.8'"):
        report.merge_results([_run_result(8, 150.0), _run_result(64, 300.0, top1=79.0)])
    with pytest.raises(UsageError, match="batch \\[8\\]"):
        report.merge_results([_run_result(8, 150.0), _run_result(8, 160.0)])
    other = _run_result(64, 300.0)
    other["config"]["dtype"] = "float32"
    with pytest.raises(UsageError, match="dtype"):
        report.merge_results([_run_result(8, 150.0), other])
    # a run cut short (fewer settings, marked incomplete): its settings fill their cells, the others stay empty
    short = _run_result(64, 300.0)
    short["settings"], short["config"]["complete"] = short["settings"][:1], False
    both = report.merge_results([_run_result(8, 150.0), short])
    assert both["config"]["complete"] is False and [s["setting"] for s in both["settings"]] == [
        "dense", "evit fixed keep_rate=0.8"]
    assert set(both["settings"][1]["speed"]) == {8} and set(both["settings"][0]["speed"]) == {8, 64}
    assert "| 150 (1.50x / 1.25x) | - |" in report.markdown_table(both)
    env = dict(gpu="G", torch="t", triton="t", timm="t", date="d", command="c")
    assert "Incomplete" in report.describe(dict(env=env, config=both["config"]))
    assert frontier.main(_args(out, "--merge", f"{a},{tmp_path / 'missing.json'}")) == 2
    capsys.readouterr()


def test_description_names_the_padded_modes():
    env = dict(gpu="G", torch="t", triton="t", timm="t", date="d", command="c")
    cfg = dict(model="m", checkpoint="c", images="i", dtype="float16", calibration="c", padded_compiled=[64])
    assert "at batch 64 also static-capacity padding under torch.compile" in report.describe(dict(env=env, config=cfg))
    assert "not compiled" in report.describe(dict(env=env, config=dict(cfg, padded_compiled=[])))
    assert "Incomplete" not in report.describe(dict(env=env, config=cfg))


def test_plot_has_one_legend_and_colour_per_setting_across_panels(tmp_path, monkeypatch):
    """A merged run with a setting at batch 8 only: the legend still lists it, and each method keeps its colour
    in every panel."""
    import matplotlib
    matplotlib.use("Agg")
    from matplotlib.axes import Axes

    short = _run_result(64, 300.0)
    short["settings"] = short["settings"][:1]
    merged = report.merge_results([_run_result(8, 150.0), short])
    merged["settings"].append(dict(merged["settings"][1], setting="ats fixed keep_rate=0.9", method="ats",
                                   speed={64: dict(status="ok", images_per_s=200.0)}))
    seen = {}
    real_plot, real_legend = Axes.plot, Axes.legend

    def plot(ax, *a, **kw):
        lines = real_plot(ax, *a, **kw)
        seen.setdefault(ax.get_title() or id(ax), []).append((lines[0].get_xdata()[0], lines[0].get_color()))
        return lines

    def legend(ax, handles, labels, **kw):
        seen["legend"] = labels
        return real_legend(ax, handles, labels, **kw)

    monkeypatch.setattr(Axes, "plot", plot)
    monkeypatch.setattr(Axes, "legend", legend)
    assert report.plot_frontier(merged, tmp_path / "p.png") is not None
    assert seen["legend"] == ["dense (torch.compile)", report.UNPRUNED, "evit fixed", "ats fixed"]
    colours = {x: c for panel, pts in seen.items() if panel != "legend" for x, c in pts}
    assert colours[150.0] != colours[200.0]  # evit at batch 8, ats at batch 64: different methods, colours

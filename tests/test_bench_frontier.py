"""Tests for raggedvit bench frontier: the sweep, accuracy on the trained ViT-Tiny, outputs (CPU: no speed)."""

from __future__ import annotations

import argparse
import json

import pytest

from raggedvit.bench import frontier


def _args(tmp_path, *extra):
    parser = argparse.ArgumentParser()
    frontier.add_arguments(parser)
    return parser.parse_args(["--out", str(tmp_path), "--device", "cpu", *extra])


def test_settings_and_labels():
    quick = frontier.settings(["evit", "ats"], quick=True)
    full = frontier.settings(["evit", "ats"], quick=False)
    assert len(quick) < len(full) and all(s in full for s in quick)
    assert frontier.settings(["none_such"], quick=True) == [("none_such", {})]  # no sweep: its defaults
    assert frontier.label("evit", dict(variant="fixed", keep_rate=0.8)) == "evit fixed keep_rate=0.8"


def test_frontier_on_the_trained_model(tmp_path, sample_data_root, monkeypatch):
    """Top-1 on labelled photos for dense and every setting, the method's own kept counts, JSON + markdown."""
    monkeypatch.setitem(frontier.QUICK, "evit", (0, 1, 2))
    monkeypatch.setitem(frontier.QUICK, "threshold_l2", (0,))
    assert frontier.main(_args(tmp_path, "--quick", "--methods", "evit,threshold_l2", "--num-images", "4",
                               "--calib-images", "4")) == 0
    path = next(tmp_path.glob("frontier-cpu-*.json"))
    data = json.loads(path.read_text())
    assert data["kind"] == "frontier" and data["rows"] == []  # no speed without CUDA
    res = data["settings"]
    assert res[0]["setting"] == "dense" and res[0]["images"] == 4
    names = [r["setting"] for r in res]
    assert "evit fixed keep_rate=0.78" in names and "threshold_l2 adaptive calibrate=0.9" in names
    for r in res:
        assert r["status"] == "ok", r
        assert 0.0 <= r["top1"] <= 100.0
        if r["method"] != "none":
            assert len(r["kept_stages"]) == 3
            means = [s["mean"] for s in r["kept_stages"]]
            assert means == sorted(means, reverse=True) and means[0] <= 197
            assert all(s["min"] <= s["mean"] <= s["max"] for s in r["kept_stages"])
    evit = {r["options"]["keep_rate"]: r for r in res if r["method"] == "evit" and r["variant"] == "fixed"}
    assert evit[0.7]["kept_stages"][-1]["mean"] < evit[0.9]["kept_stages"][-1]["mean"]
    md = path.with_suffix(".md").read_text()
    assert "| dense |" in md and "evit fixed keep_rate=0.78" in md


def test_bad_arguments(tmp_path, sample_data_root):
    assert frontier.main(_args(tmp_path, "--methods", "bogus")) == 2
    assert frontier.main(_args(tmp_path, "--num-images", "600")) == 2
    with pytest.raises(SystemExit):
        _args(tmp_path, "--batches", "x")


def test_speed_table_has_the_unpruned_packed_row(tmp_path):
    """The dense setting carries raggedvit's unpruned packed graph next to dense_compiled: its own row, ratio to
    dense_compiled, no padded ratio; a pruned setting reads its own raggedvit_graph row."""
    def row(setting, pipeline, ips, **kw):
        return dict(weights="trained", setting=setting, pipeline=pipeline, batch=8, status="ok", images_per_s=ips, **kw)
    rows = [row("dense", "dense_compiled", 100.0), row(frontier.UNPRUNED, "raggedvit_graph", 115.0,
                                                        speedup_vs_dense_compiled=1.15),
            row("evit fixed keep_rate=0.8", "raggedvit_graph", 150.0, speedup_vs_dense_compiled=1.5,
                speedup_vs_padded_best=1.25)]
    results = [dict(setting="dense", method="none", variant="", status="ok", top1=80.0, kept_stages=[]),
               dict(setting="evit fixed keep_rate=0.8", method="evit", variant="fixed", status="ok", top1=79.5,
                    kept_stages=[dict(mean=150.0)])]
    frontier._attach_speed(results, rows, 80.0)
    assert results[0]["speed"][8]["images_per_s"] == 100.0 and results[0]["speed_unpruned"][8]["images_per_s"] == 115.0
    assert "speed_unpruned" not in results[1] and results[1]["speed"][8]["speedup_vs_padded_best"] == 1.25
    md = frontier.markdown_table(dict(config=dict(batches=[8]), settings=results, rows=rows))
    lines = md.splitlines()
    assert lines[2].startswith("| dense | 80.0 |") and lines[2].endswith("| 100 |")
    assert lines[3] == f"| {frontier.UNPRUNED} | (dense) | - | - | 115 (1.15x) |"
    assert lines[4].endswith("| 150 (1.50x / 1.25x) |") and "-0.5" in lines[4]
    # the plot, also from JSON (batch keys become strings), with the unpruned point
    result = json.loads(json.dumps(dict(config=dict(batches=[8], model="m", dtype="float16"), env={"gpu": "G"},
                                        settings=results, rows=rows)))
    png = tmp_path / "f.png"
    assert frontier.plot_frontier(result, png) == png and png.stat().st_size > 0


def test_padded_compiled_batches(tmp_path, sample_data_root, monkeypatch):
    """--padded-compiled B: the compiled padded baseline is timed next to the others at those batch sizes only
    (and the description says so); batch sizes outside --batches are an error before anything runs."""
    assert frontier.main(_args(tmp_path, "--batches", "8", "--padded-compiled", "64")) == 2
    ran = []

    class FakePoint:
        def __init__(self, ctx, model, method, variant, b, options, base, x):
            self.b, self.method = b, method

        def setup(self):
            pass

        def run(self, pipeline):
            ran.append((self.method, self.b, pipeline))
            return dict(pipeline=pipeline, batch=self.b)

    class Bar:
        def update(self, n):
            pass

    monkeypatch.setattr(frontier, "Point", FakePoint)
    import torch
    frontier._speed_rows({}, None, "evit", dict(variant="fixed"), [8, 64], torch.zeros(64, 3, 4, 4), {}, {}, [0],
                         Bar(), padded_compiled=(64,))
    pruned = [(b, p) for m, b, p in ran if m == "evit"]
    assert (64, "padded_compiled") in pruned and (8, "padded_compiled") not in pruned
    assert {p for b, p in pruned if b == 8} == set(frontier.SPEED_PIPELINES)
    env = dict(gpu="G", torch="t", triton="t", timm="t", date="d", command="c")
    cfg = dict(model="m", checkpoint="c", images="i", dtype="float16", calibration="c", padded_compiled=[64])
    assert "at batch 64 also static-capacity padding under torch.compile" in frontier._describe(
        dict(env=env, config=cfg))
    assert "not compiled" in frontier._describe(dict(env=env, config=dict(cfg, padded_compiled=[])))


def test_padded_compiled_defaults_to_every_batch(tmp_path):
    """The padded baseline's best mode includes torch.compile unless asked otherwise."""
    assert _args(tmp_path).padded_compiled == "all"
    assert _args(tmp_path, "--padded-compiled", "none").padded_compiled == "none"
    assert _args(tmp_path, "--padded-compiled", "8,64").padded_compiled == [8, 64]
    with pytest.raises(SystemExit):
        _args(tmp_path, "--padded-compiled", "some")


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
    assert frontier.main(_args(out, "--merge", f"{a},{b}")) == 0
    merged = json.loads(next(out.glob("frontier-*.json")).read_text())
    assert merged["config"]["batches"] == [8, 64] and merged["config"]["padded_compiled"] == [8, 64]
    assert merged["env"]["command"] == "run b64 ; run b8" and len(merged["rows"]) == 2
    md = next(out.glob("frontier-*.md")).read_text()
    assert "| evit fixed keep_rate=0.8 | 79.5 | -0.5 | 150 | 150 (1.50x / 1.25x) | 300 (3.00x / 2.50x) |" in md
    assert next(out.glob("frontier-*.png")).stat().st_size > 0
    with pytest.raises(frontier.UsageError, match="setting 'evit fixed keep_rate=0.8'"):
        frontier.merge_results([_run_result(8, 150.0), _run_result(64, 300.0, top1=79.0)])
    with pytest.raises(frontier.UsageError, match="batch \\[8\\]"):
        frontier.merge_results([_run_result(8, 150.0), _run_result(8, 160.0)])
    other = _run_result(64, 300.0)
    other["config"]["dtype"] = "float32"
    with pytest.raises(frontier.UsageError, match="dtype"):
        frontier.merge_results([_run_result(8, 150.0), other])
    # a run cut short (fewer settings, marked incomplete): its settings fill their cells, the others stay empty
    short = _run_result(64, 300.0)
    short["settings"], short["config"]["complete"] = short["settings"][:1], False
    both = frontier.merge_results([_run_result(8, 150.0), short])
    assert both["config"]["complete"] is False and [s["setting"] for s in both["settings"]] == [
        "dense", "evit fixed keep_rate=0.8"]
    assert set(both["settings"][1]["speed"]) == {8} and set(both["settings"][0]["speed"]) == {8, 64}
    assert "| 150 (1.50x / 1.25x) | - |" in frontier.markdown_table(both)
    env = dict(gpu="G", torch="t", triton="t", timm="t", date="d", command="c")
    assert "Incomplete" in frontier._describe(dict(env=env, config=both["config"]))
    assert frontier.main(_args(out, "--merge", f"{a},{tmp_path / 'missing.json'}")) == 2
    capsys.readouterr()


def test_assemble_leaves_the_running_rows_intact():
    """The partial JSON written after every setting is built from copies: the rows keep their point ids for the
    next setting's ratios, and the final document equals one built once at the end."""
    rows = [dict(weights="trained", setting="dense", pipeline="dense_compiled", batch=8, status="ok",
                 images_per_s=100.0, mode="compiled", _point=1),
            dict(weights="trained", setting="evit fixed keep_rate=0.8", pipeline="raggedvit_graph", batch=8,
                 status="ok", images_per_s=150.0, mode="graph", variant="fixed", _point=1)]
    results = [dict(setting="dense", method="none", variant="", status="ok", top1=80.0, kept_stages=[]),
               dict(setting="evit fixed keep_rate=0.8", method="evit", variant="fixed", status="ok", top1=79.5,
                    kept_stages=[dict(mean=150.0)])]
    assemble = frontier._assembler(dict(gpu="G"), dict(batches=[8]))
    partial = assemble(results[:1], rows[:1], complete=False)
    assert partial["config"]["complete"] is False and len(partial["settings"]) == 1
    assert all("_point" in r for r in rows) and "speed" not in results[0]
    final = assemble(results, rows, complete=True)
    assert final["settings"][1]["speed"][8]["speedup_vs_dense_compiled"] == 1.5
    assert final == assemble(results, rows, complete=True)

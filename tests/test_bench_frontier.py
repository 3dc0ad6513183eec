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


def test_padded_compiled_batches(tmp_path, sample_data_root, monkeypatch):
    """--padded-compiled B: the compiled padded baseline is timed next to the others at those batch sizes only;
    batch sizes outside --batches are an error before anything runs."""
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


def test_padded_compiled_defaults_to_every_batch(tmp_path):
    """The padded baseline's best mode includes torch.compile unless asked otherwise."""
    assert _args(tmp_path).padded_compiled == "all"
    assert _args(tmp_path, "--padded-compiled", "none").padded_compiled == "none"
    assert _args(tmp_path, "--padded-compiled", "8,64").padded_compiled == [8, 64]
    with pytest.raises(SystemExit):
        _args(tmp_path, "--padded-compiled", "some")


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

"""``raggedvit eval`` over temporary image folders (deit_tiny, random weights, batch 2, worker processes)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from raggedvit.cli import main

TINY = ["--model", "deit_tiny_patch16_224", "--weights", "random", "--batch-size", "2"]


def _write_images(folder, n: int, rng) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        size = (int(rng.integers(40, 90)), int(rng.integers(40, 90)))
        Image.fromarray(rng.integers(0, 256, (*size, 3), dtype=np.uint8)).save(folder / f"img{i}.png")


@pytest.mark.timeout(120)
def test_eval_imagenet_folder_json(tmp_path, capsys):
    rng = np.random.default_rng(0)
    _write_images(tmp_path / "data" / "n01440764", 2, rng)  # tench = class 0
    _write_images(tmp_path / "data" / "n01443537", 1, rng)  # goldfish = class 1
    out = tmp_path / "res.json"
    rc = main(["eval", "--data", str(tmp_path / "data"), *TINY, "--workers", "1", "--method", "threshold_l2", "evit",
               "--json", str(out)])
    text = capsys.readouterr().out
    assert rc == 0, text
    backend = "triton" if torch.cuda.is_available() else "reference"  # eval picks the backend for the device
    assert "synset" in text and backend in text and "RANDOM" in text
    assert "threshold_l2: thresholds" in text and "first batch" in text
    res = json.loads(out.read_text())
    assert res["kind"] == "eval" and res["config"]["labelled"] is True and res["config"]["images"] == 3
    rows = {r["pipeline"]: r for r in res["rows"]}
    assert set(rows) == {"dense", "threshold_l2 (packed)", "evit (packed)"}
    for name, r in rows.items():
        assert r["images"] == 3
        assert 0.0 <= r["top1"] <= 1.0 and 0.0 <= r["agreement"] <= 1.0
        assert r["images_per_s"] > 0
        if name != "dense":
            assert len(r["kept_mean"]) == len(r["stage_blocks"]) >= 3
            assert all(lo <= m <= hi <= 197 for m, lo, hi in zip(r["kept_mean"], r["kept_min"], r["kept_max"]))
            assert 0 < r["patches_kept_mean"] < 196
    evit = rows["evit (packed)"]  # fixed keep rate 0.7 with the fused token: CLS + ceil(0.7 * 196) + fused = 140 tokens
    assert evit["kept_min"][0] == evit["kept_max"][0] == 140


def test_eval_flat_folder_agreement_only_and_unreadable(tmp_path, capsys):
    rng = np.random.default_rng(1)
    _write_images(tmp_path, 3, rng)
    (tmp_path / "broken.jpg").write_bytes(b"not a jpeg")
    argv = ["eval", "--data", str(tmp_path), *TINY, "--workers", "0", "--method", "evit", "--layout", "padded"]
    assert main(argv) == 2
    assert "broken.jpg" in capsys.readouterr().err
    assert main([*argv, "--skip-unreadable"]) == 0
    text = capsys.readouterr().out
    assert "agreement with the dense model only" in text and "skipped 1 unreadable" in text
    assert "no labels: top-1 not available" in text

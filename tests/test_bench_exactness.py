"""``raggedvit bench exactness`` on CPU: the image generator, a tiny fp32 run, and argument errors."""

from __future__ import annotations

import argparse
import json

import pytest
import torch

from raggedvit.bench import exactness
from raggedvit.runtime.photos import make_images

pytest.importorskip("skimage")

CFG = {"input_size": (3, 64, 48), "mean": (0.485, 0.456, 0.406), "std": (0.229, 0.224, 0.225),
       "interpolation": "bicubic", "crop_pct": 0.875}


def _main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser()
    exactness.add_arguments(parser)
    return exactness.main(parser.parse_args(argv))


def test_make_images_distinct_deterministic():
    images, names = make_images(40, CFG, seed=0)
    assert images.shape == (40, 3, 64, 48) and images.dtype == torch.float32
    assert len(names) == 40 and len(set(names)) == 40
    flat = images.flatten(1)
    assert torch.unique(flat, dim=0).shape[0] == 40, "images are not distinct"
    again, names_again = make_images(40, CFG, seed=0)
    assert torch.equal(images, again) and names == names_again
    prefix, _ = make_images(15, CFG, seed=0)
    assert torch.equal(prefix, images[:15])  # evaluated images never overlap the calibration tail
    other, _ = make_images(40, CFG, seed=1)
    fixed = sum("crop" not in n for n in names)  # the photos and their mirror images come first, unseeded
    assert fixed >= 2 and torch.equal(other[:fixed], images[:fixed]) and not torch.equal(other[fixed:], images[fixed:])
    assert any("flipped" in n for n in names) and any("crop" in n for n in names)
    # the model's normalisation: undoing it gives pixels in [0, 1]
    mean, std = torch.tensor(CFG["mean"]).view(1, 3, 1, 1), torch.tensor(CFG["std"]).view(1, 3, 1, 1)
    pixels = images * std + mean
    assert pixels.min() > -1e-4 and pixels.max() < 1 + 1e-4 and pixels.std() > 0.05


@pytest.mark.timeout(300)  # a CPU run: slow when the GPU suite runs 4 workers on the same cores
def test_tiny_run_fp32_exact(tmp_path, capsys):
    out = tmp_path / "res"
    rc = _main(["--models", "deit_tiny", "--methods", "evit,threshold_l2", "--variants", "fixed", "adaptive",
                "--num-images", "6", "--calib-images", "4", "--batch-size", "4", "--device", "cpu",
                "--dtype", "float32", "--attention", "reference", "--weights", "random", "--out", str(out)])
    text = capsys.readouterr().out
    assert rc == 0, text
    files = sorted(out.glob("exactness-cpu-*.json"))
    assert len(files) == 1 and files[0].with_suffix(".md").is_file()
    result = json.loads(files[0].read_text())
    assert result["kind"] == "exactness" and result["env"]["torch"] == torch.__version__
    assert result["settings"]["n"] == 6 and result["settings"]["attention"] == "reference"
    info = result["models"]["deit_tiny_patch16_224"]
    assert "RANDOM" in info["weights"] and len(info["images"]) == 6
    assert any("calibrated on 4 generated images disjoint from the 6 evaluated" in n for n in info["notes"])
    rows = result["rows"]
    assert [(r["method"], r["variant"]) for r in rows] == [("evit", "fixed"), ("evit", "adaptive"),
                                                          ("threshold_l2", "fixed"), ("threshold_l2", "adaptive")]
    for r in rows:
        assert r["max_logit_diff"] <= 1e-4 and r["max_logit_diff_same_decisions"] <= 1e-4, r
        assert r["top1_agree"] == 6 and r["decisions_identical"] == 6 and r["decision_diff_images"] == [], r
        assert r["packed_vs_fp32"] <= 1e-4 and r["padded_vs_fp32"] == 0.0, r
        assert r["noise_max_logit_diff"] <= 1e-4 and r["noise_decisions_identical"] == 6, r  # math SDPA run
        assert [k["block"] for k in r["kept_stages"]] == [3, 6, 9], r
        assert all(1 <= k["min"] <= k["mean"] <= k["max"] <= 197 for k in r["kept_stages"]), r
        assert r["status"] == "pass", r
    assert all(k["min"] == k["max"] for k in rows[0]["kept_stages"])  # fixed variant: exact counts
    table = [line for line in text.splitlines() if line.startswith("| deit_tiny |")]
    assert len(table) == 4 and text.rstrip().splitlines()[-1].startswith("4/4 rows pass")


@pytest.mark.parametrize("argv, message", [
    (["--methods", "evitt"], "unknown method(s) evitt"),
    (["--variants", "fast"], "unknown variant(s) fast"),
    (["--num-images", "0"], "--num-images 0: must be at least 1"),
    (["--batch-size", "-1"], "--batch-size -1: must be at least 1"),
    (["--models", "deit_tiny", "deit_small", "--checkpoint", "x.pth"], "1 file(s) for 2 model(s)"),
    (["--models", "deit_tinny_patch16_224"], "unknown model 'deit_tinny_patch16_224'"),
    (["--attention", "nope"], "unknown attention backend 'nope'"),
])
def test_bad_arguments(tmp_path, capsys, argv, message):
    rc = _main(["--device", "cpu", "--weights", "random", "--out", str(tmp_path), *argv])
    err = capsys.readouterr().err
    assert rc == 2 and "raggedvit bench exactness: error:" in err and message in err, err
    assert not list(tmp_path.glob("*.json"))


@pytest.mark.skipif(torch.cuda.is_available(), reason="float16 is refused on CPU only")
def test_float16_on_cpu_refused(tmp_path, capsys):
    rc = _main(["--device", "cpu", "--dtype", "float16", "--out", str(tmp_path)])
    assert rc == 2 and "--dtype float16 needs a CUDA GPU" in capsys.readouterr().err


@pytest.mark.timeout(300)
def test_sample_data_run_reports_top1(tmp_path, capsys, sample_data_root):
    """Trained ViT-Tiny on the labelled sample photos: top-1 per layout, packed == padded in fp32."""
    out = tmp_path / "res"
    weights = sample_data_root / "weights" / "vit_tiny_patch16_224.augreg_in21k_ft_in1k.safetensors"
    rc = _main(["--sample-data", "--models", "vit_tiny_patch16_224.augreg_in21k_ft_in1k", "--checkpoint",
                str(weights), "--methods", "none", "evit", "--variants", "fixed", "--num-images", "8",
                "--calib-images", "2", "--batch-size", "4", "--device", "cpu", "--dtype", "float32",
                "--attention", "reference", "--strict", "--out", str(out)])
    text = capsys.readouterr().out
    assert rc == 0, text
    result = json.loads(next(out.glob("exactness-cpu-*.json")).read_text())
    assert "labelled ImageNet sample photos" in result["settings"]["images"]
    rows = {r["method"]: r for r in result["rows"]}
    assert set(rows) == {"none", "evit"}
    for r in rows.values():
        assert 0.5 <= r["packed_top1"] <= 1.0 and r["packed_top1"] == r["padded_top1"]
        assert r["max_logit_diff"] <= 1e-4 and r["decisions_identical"] == 8
    assert "top-1 packed / padded" in text

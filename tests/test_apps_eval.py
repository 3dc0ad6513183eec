"""``raggedvit eval`` over temporary image folders (deit_tiny, random weights, batch 2, worker processes)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from raggedvit.cli import main

from conftest import requires_gpu

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
    evit = rows["evit (packed)"]  # fixed keep rate 0.78 + fused token: CLS + ceil(0.78 * 196) + fused = 155 tokens
    assert evit["kept_min"][0] == evit["kept_max"][0] == 155


@pytest.mark.timeout(180)
def test_eval_passes_time_the_later_passes_and_count_the_first(tmp_path, capsys):
    """``--passes 3``: accuracy and kept tokens from the first pass (the same as one pass), speed over the two
    later passes (every image twice, no batch left out as a warm-up)."""
    rng = np.random.default_rng(1)
    _write_images(tmp_path / "data" / "n01440764", 3, rng)
    runs = {}
    for passes in (1, 3):
        torch.manual_seed(0)  # the same random weights in both runs
        out = tmp_path / f"res{passes}.json"
        rc = main(["eval", "--data", str(tmp_path / "data"), *TINY, "--workers", "1", "--method", "evit",
                   "--passes", str(passes), "--json", str(out)])  # a worker process reads ahead across passes
        text = capsys.readouterr().out
        assert rc == 0, text
        runs[passes] = (text, json.loads(out.read_text()))
    text, res = runs[3]
    assert "over passes 2-3 of the data" in text and res["config"]["passes"] == 3
    one = {r["pipeline"]: r for r in runs[1][1]["rows"]}
    for r in res["rows"]:
        assert r["images"] == 3 and r["timed_images"] == 6  # 3 images counted once, timed in passes 2 and 3
        assert one[r["pipeline"]]["timed_images"] == 1  # one pass: the last batch (1 image) after the warm-up
        for key in ("top1", "agreement", "kept_mean", "kept_min", "kept_max", "patches_kept_mean"):
            assert r[key] == one[r["pipeline"]][key], key
    assert main(["eval", "--data", str(tmp_path / "data"), *TINY, "--passes", "0"]) == 2
    assert "--passes 0: must be at least 1" in capsys.readouterr().err


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


def _write_jpegs(folder, n: int, rng) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        size = (int(rng.integers(40, 90)), int(rng.integers(40, 90)))
        Image.fromarray(rng.integers(0, 256, (*size, 3), dtype=np.uint8)).save(folder / f"img{i}.jpg", quality=90)


@pytest.mark.timeout(180)
def test_eval_gpu_decode_path_on_cpu_matches_cpu_decode(tmp_path, capsys, monkeypatch):
    """``--decode gpu``'s code (file bytes in the workers, torchvision decoding and the tensor transform in the main
    process) run on CPU tensors: the same images, labels and decisions as PIL + timm's transform, up to a few
    1/255 steps of input difference; a PNG and a grayscale JPEG go through the fallback, a broken file is named."""
    from raggedvit.apps import evaluate

    rng = np.random.default_rng(2)
    _write_jpegs(tmp_path / "data" / "n01440764", 2, rng)
    _write_images(tmp_path / "data" / "n01443537", 1, rng)  # a PNG: decoded by the CPU fallback
    Image.fromarray(rng.integers(0, 256, (50, 70), dtype=np.uint8)).save(tmp_path / "data" / "n01443537" / "g.jpg")
    base = ["eval", "--data", str(tmp_path / "data"), *TINY, "--workers", "0", "--method", "evit", "--device", "cpu",
            "--layout", "padded"]  # the decoding is the same for both layouts; padded skips the Triton interpreter
    (tmp_path / "data" / "n01443537" / "broken.jpg").write_bytes(b"\xff\xd8\xff not really a jpeg")
    out_cpu, out_gpu = tmp_path / "cpu.json", tmp_path / "gpu.json"
    assert main([*base, "--skip-unreadable", "--json", str(out_cpu)]) == 0
    assert "PIL decoding" in capsys.readouterr().out
    assert main([*base, "--decode", "gpu"]) == 2  # no CUDA here: refused before loading anything
    assert "--decode gpu: it decodes on a CUDA device" in capsys.readouterr().err
    monkeypatch.setattr(evaluate, "gpu_decode_unavailable", lambda device: None)
    assert main([*base, "--decode", "gpu"]) == 2
    assert "broken.jpg: cannot decode" in capsys.readouterr().err
    assert main([*base, "--decode", "gpu", "--skip-unreadable", "--json", str(out_gpu)]) == 0
    text = capsys.readouterr().out
    assert "nvJPEG decoding" in text and "skipped 1 unreadable" in text
    a, b = json.loads(out_cpu.read_text()), json.loads(out_gpu.read_text())
    assert a["config"]["decode"] == "cpu" and b["config"]["decode"] == "gpu"
    assert a["config"]["skipped"] == b["config"]["skipped"] == 1
    for ra, rb in zip(a["rows"], b["rows"]):
        assert ra["images"] == rb["images"] == 4 and ra["images_per_s_e2e"] > 0 and rb["images_per_s_e2e"] > 0


def test_tensor_transform_matches_timm(tmp_path):
    """The on-device eval transform against timm's PIL transform, on JPEGs of several sizes and a non-square
    PNG: at most 2 steps of 1/255 (JPEG IDCT and resampling rounding differ), identical shapes."""
    import timm
    from timm.data import create_transform, resolve_data_config

    from raggedvit.apps.images import TensorEvalTransform, decode_images

    model = timm.create_model("deit_tiny_patch16_224", pretrained=False)
    cfg = resolve_data_config({}, model=model)
    tf = create_transform(**cfg)
    smooth = torch.nn.functional.interpolate(torch.rand(1, 3, 12, 12), size=(300, 400), mode="bicubic")
    base = (smooth[0].permute(1, 2, 0).clamp(0, 1) * 255).byte().numpy()
    paths = []
    for i, (h, w) in enumerate([(300, 400), (256, 256), (180, 250), (400, 300)]):
        img = Image.fromarray(base).resize((w, h))
        p = tmp_path / f"{i}.{'png' if i == 2 else 'jpg'}"
        img.save(p, quality=90) if p.suffix == ".jpg" else img.save(p)
        paths.append(p)
    data = [torch.frombuffer(bytearray(p.read_bytes()), dtype=torch.uint8) for p in paths]
    decoded, errors = decode_images(data, torch.device("cpu"))
    assert errors == [None] * 4
    got = TensorEvalTransform(cfg)(decoded)
    ref = torch.stack([tf(Image.open(p).convert("RGB")) for p in paths])
    std = torch.tensor(cfg["std"]).view(1, 3, 1, 1)
    assert got.shape == ref.shape == (4, 3, 224, 224)
    assert ((got - ref).abs() * std).max() <= 2.5 / 255
    with pytest.raises(ValueError, match="crop_mode 'border'"):
        TensorEvalTransform({**cfg, "crop_mode": "border"})


def test_tensor_transform_on_sample_photos(sample_data_root):
    """On 40 of the labelled sample photos with the trained model's data config (mean = std = 0.5): within
    2 steps of 1/255 of timm's transform (the full 500: see the report of benchmarks/defaults_sweep.py)."""
    from PIL import Image as PILImage
    from timm.data import create_transform, resolve_data_config

    from raggedvit import sample_data
    from raggedvit.apps.images import TensorEvalTransform, decode_images

    model = sample_data.load_model(sample_data_root)
    cfg = resolve_data_config({}, model=model)
    files = sample_data.sample_files(sample_data_root)[::12]
    data = [torch.frombuffer(bytearray(p.read_bytes()), dtype=torch.uint8) for p, _ in files]
    decoded, errors = decode_images(data, torch.device("cpu"))
    got = TensorEvalTransform(cfg)(decoded)
    ref = torch.stack([create_transform(**cfg)(PILImage.open(p).convert("RGB")) for p, _ in files])
    assert ((got - ref).abs() * 0.5).max() <= 2.5 / 255


def test_eval_refuses_bad_modes_and_untrained_dynamicvit(tmp_path, capsys):
    rng = np.random.default_rng(4)
    _write_images(tmp_path / "n01440764", 1, rng)
    base = ["eval", "--data", str(tmp_path), *TINY, "--workers", "0", "--device", "cpu"]
    assert main([*base, "--mode", "graph"]) == 2
    assert "--mode graph: CUDA graphs need a CUDA device" in capsys.readouterr().err
    assert main([*base, "--method", "dynamicvit"]) == 2
    err = capsys.readouterr().err
    assert "dynamicvit needs trained keep predictors" in err and "score_predictor" in err
    assert "--random-predictors" in err
    assert main([*base, "--method", "dynamicvit", "--random-predictors", "--layout", "padded"]) == 0
    assert "randomly initialised" in capsys.readouterr().out


@requires_gpu
@pytest.mark.timeout(600)
def test_eval_cuda_graphs_match_eager(tmp_path):
    """On CUDA: graphs per batch size (a remainder batch of 1) give the eager run's predictions and kept
    counts; the JSON has both speeds and says which mode ran."""
    rng = np.random.default_rng(5)
    _write_jpegs(tmp_path / "data" / "n01440764", 5, rng)
    base = ["eval", "--data", str(tmp_path / "data"), "--model", "deit_tiny_patch16_224", "--weights", "random",
            "--batch-size", "2", "--workers", "0", "--method", "evit", "ats", "--dtype", "float32"]
    res = {}
    for mode in ("graph", "eager"):
        out = tmp_path / f"{mode}.json"
        assert main([*base, "--mode", mode, "--json", str(out)]) == 0
        res[mode] = json.loads(out.read_text())
    assert res["graph"]["config"]["decode"] == "gpu"
    assert res["graph"]["config"]["dense"] == "compiled"
    for i, (g, e) in enumerate(zip(res["graph"]["rows"], res["eager"]["rows"])):
        assert g["mode"] == ("compiled" if i == 0 else "graph") and e["mode"] == "eager"
        assert g["images"] == e["images"] == 5
        assert g["kept_mean"] == pytest.approx(e["kept_mean"]) and g["kept_min"] == e["kept_min"]
        assert g["agreement"] >= 0.8 and g["images_per_s"] > 0 and g["images_per_s_e2e"] > 0
        assert g["images_per_s_e2e"] <= g["images_per_s"]


def test_eval_runs_the_padded_layout_compiled_on_cuda(tmp_path):
    """Runner choice (no GPU needed: nothing is compiled until the first batch): on a CUDA device ``--layout
    padded`` builds every pruned model at static capacity and runs it through BatchGraphs (PaddedCompiled),
    marked "compiled"; ``--mode eager`` keeps batch-maximum padding, eager."""
    import argparse

    from raggedvit.apps import evaluate
    from raggedvit.runtime.graphs import BatchGraphs
    from raggedvit.runtime.loading import load_model

    loaded = load_model("deit_tiny_patch16_224", weights="random", device=torch.device("cpu"), dtype=torch.float32)
    x = torch.randn(2, 3, 224, 224)
    for mode, want in (("auto", "static"), ("eager", "max")):
        args = argparse.Namespace(layout="padded", mode=mode, variant="default", keep_rate=None,
                                  random_predictors=True, dense="compiled")
        tallies = [evaluate.Tally("dense", "dense"), evaluate.Tally("evit (padded)", "evit"),
                   evaluate.Tally("tome (padded)", "tome")]
        runners = evaluate._build_runners(args, loaded, ["evit", "tome"], tallies, "reference", x, torch.device("cuda"),
                                          torch.float32, lambda s: None)
        pruned = runners[1:]
        if want == "static":
            assert all(isinstance(r, BatchGraphs) and r.model.padding == "static" for r in pruned)
            assert [t.mode for t in tallies[1:]] == ["compiled", "compiled"]
        else:
            assert all(not isinstance(r, BatchGraphs) and r.padding == "max" for r in pruned)


@requires_gpu
@pytest.mark.timeout(600)
def test_eval_cuda_padded_compiled_matches_eager(tmp_path):
    """On CUDA: ``--layout padded`` compiled at static capacity (a remainder batch of 1: a second compile) gives
    the eager batch-maximum run's kept counts and (up to one near-tie in five random-weight images) its
    predictions, and says it ran compiled."""
    rng = np.random.default_rng(6)
    _write_jpegs(tmp_path / "data" / "n01440764", 5, rng)
    base = ["eval", "--data", str(tmp_path / "data"), "--model", "deit_tiny_patch16_224", "--weights", "random",
            "--batch-size", "2", "--workers", "0", "--method", "evit", "tome",
            "--layout", "padded", "--dtype", "float32"]
    res = {}
    for mode in ("auto", "eager"):
        out = tmp_path / f"{mode}.json"
        assert main([*base, "--mode", mode, "--json", str(out)]) == 0
        res[mode] = json.loads(out.read_text())
    for c, e in zip(res["auto"]["rows"], res["eager"]["rows"]):
        assert c["mode"] == "compiled" and e["mode"] == "eager"
        assert c["images"] == e["images"] == 5
        assert c["kept_mean"] == pytest.approx(e["kept_mean"]) and c["kept_max"] == e["kept_max"]
        assert c["agreement"] == pytest.approx(e["agreement"], abs=0.2) and c["images_per_s"] > 0

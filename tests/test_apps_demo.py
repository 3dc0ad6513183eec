"""``raggedvit demo`` on CPU: a small model, 2 bundled photos, every method in both layouts, PNGs written."""

from __future__ import annotations

import pytest

from raggedvit.cli import main


@pytest.mark.timeout(180)
def test_demo_cpu_two_photos(tmp_path, capsys):
    pytest.importorskip("skimage")
    out = tmp_path / "demo"
    rc = main(["demo", "--model", "deit_tiny_patch16_224", "--weights", "random", "--device", "cpu",
               "--photos", "astronaut", "chelsea", "--repeats", "1", "--out", str(out), "--random-predictors"])
    text = capsys.readouterr().out
    assert rc == 0, text
    assert "reference" in text and "the Triton kernel needs a CUDA GPU" in text  # backend said, with why
    assert "RANDOM weights" in text
    assert "calibrated on these 2 demo photos" in text
    for method in ("threshold_l2", "dynamicvit", "evit", "ats", "tome"):
        for layout in ("padded", "packed"):
            assert any(line.startswith(f"{method:<13}{layout}") for line in text.splitlines()), (method, layout)
    # The two layouts run the same pruned model: same kept patches, same predictions. Threshold-L2 is left
    # out: its thresholds are calibrated on these very photos, so one token's norm sits exactly on a
    # threshold and a 1e-7 difference between the layouts' attention may flip it.
    lines = {line.split()[0]: line for line in text.splitlines() if "max |logit diff|" in line}
    assert set(lines) == {"threshold_l2", "dynamicvit", "evit", "ats", "tome"}, text
    for method in ("dynamicvit", "evit", "ats", "tome"):
        assert "kept patches identical" in lines[method] and "same top-1 2/2" in lines[method], lines[method]
    for name in ("astronaut", "chelsea"):
        png = out / f"{name}.png"
        assert png.is_file() and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_demo_skips_untrained_dynamicvit(capsys):
    """``all`` without trained DynamicViT predictors: DynamicViT is left out with a note saying how to add it;
    named explicitly it is an error before anything runs."""
    pytest.importorskip("skimage")
    base = ["demo", "--model", "deit_tiny_patch16_224", "--weights", "random", "--device", "cpu", "--photos",
            "astronaut", "--repeats", "1", "--no-figures", "--layouts", "padded"]
    assert main([*base, "--methods", "evit", "dynamicvit"]) == 2
    err = capsys.readouterr().err
    assert "dynamicvit needs trained keep predictors" in err and "--random-predictors" in err
    assert main([*base, "--methods", "all"]) == 0
    text = capsys.readouterr().out
    assert "dynamicvit skipped: no trained keep predictors" in text and "score_predictor" in text
    assert not any(line.startswith("dynamicvit") for line in text.splitlines())
    assert any(line.startswith(f"{'evit':<13}padded") for line in text.splitlines())

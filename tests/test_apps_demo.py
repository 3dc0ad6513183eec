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
    # The two layouts run the same pruned model: same kept patches, same predictions. Threshold-L2 included:
    # its thresholds are calibrated on these very photos, half-way between distinct token norms, so no norm
    # sits within the layouts' ~1e-6 rounding difference of a threshold (the nearest is ~1e-3 away here).
    lines = {line.split()[0]: line for line in text.splitlines() if "max |logit diff|" in line}
    assert set(lines) == {"threshold_l2", "dynamicvit", "evit", "ats", "tome"}, text
    for method in ("threshold_l2", "dynamicvit", "evit", "ats", "tome"):
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


def test_layout_check_reports_per_stage_count_differences(capsys):
    """Final kept patches can agree while an intermediate stage kept a different count (a token near a
    threshold dropped one stage earlier in one layout): the check says so instead of only "identical"."""
    import torch

    from raggedvit.apps.demo import Result, _print_layout_check

    logits = torch.randn(3, 10)
    patches = torch.rand(3, 16) > 0.5
    kept_a = (torch.tensor([9, 7, 8]), torch.tensor([5, 4, 6]))
    kept_b = (torch.tensor([9, 6, 8]), torch.tensor([5, 4, 6]))
    same = Result("evit", "padded", logits, 1.0, kept_a, (3, 6), patches)
    _print_layout_check([same, Result("evit", "packed", logits + 1e-7, 1.0, kept_a, (3, 6), patches.clone())])
    line = [x for x in capsys.readouterr().out.splitlines() if x.strip().startswith("evit")][0]
    assert line.endswith("kept patches identical"), line
    _print_layout_check([same, Result("evit", "packed", logits, 1.0, kept_b, (3, 6), patches.clone())])
    line = [x for x in capsys.readouterr().out.splitlines() if x.strip().startswith("evit")][0]
    assert "kept patches identical; kept counts differ at block(s) 3 in 1 image(s)" in line, line


def test_summary_compares_graph_rows_with_the_compiled_dense_model(capsys):
    """On CUDA the demo's dense reference for graph rows is the compiled dense model (its best mode)."""
    import torch

    from raggedvit.apps.demo import Result, _print_summary

    logits = torch.randn(2, 10)
    rows = [Result("dense", "-", logits, 4.0), Result("dense", "compiled", logits, 1.0),
            Result("evit", "graph", logits, 0.5, (torch.tensor([5, 5]),), (3,), torch.ones(2, 16, dtype=torch.bool))]
    _print_summary(rows, num_patches=16)
    out = capsys.readouterr().out
    line = [x for x in out.splitlines() if x.startswith("evit")][0]
    assert "2.00x" in line, line  # 1.0 s (compiled dense) over 0.5 s, not 4.0 s (eager dense) over 0.5 s
    assert "with the dense model compiled" in out


@pytest.mark.skipif(not __import__("torch").cuda.is_available(), reason="needs a CUDA GPU (the dense model compiled)")
def test_demo_gpu_dense_compiled(capsys):
    rc = main(["demo", "--model", "deit_tiny_patch16_224", "--weights", "random", "--photos", "astronaut",
               "chelsea", "--repeats", "2", "--no-figures", "--methods", "evit"])
    text = capsys.readouterr().out
    assert rc == 0, text
    assert any(line.startswith(f"{'dense':<13}compiled") for line in text.splitlines()), text

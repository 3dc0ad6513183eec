"""Errors a person can act on: ``raggedvit demo|eval`` exit 2 with one clear line naming the problem."""

from __future__ import annotations

import pytest
import torch

from raggedvit.cli import main

TINY = "deit_tiny_patch16_224"


def _error(capsys, argv: list[str]) -> str:
    """Run the CLI, assert exit status 2, return stderr."""
    rc = main(argv)
    err = capsys.readouterr().err
    assert rc == 2, f"expected exit 2, got {rc}; stderr: {err}"
    assert err.count("error:") == 1, err
    return err


def test_eval_missing_folder(capsys, tmp_path):
    err = _error(capsys, ["eval", "--data", str(tmp_path / "nope"), "--model", TINY, "--weights", "random"])
    assert "no such folder" in err and "nope" in err


def test_eval_file_instead_of_folder(capsys, tmp_path):
    f = tmp_path / "x.txt"
    f.write_text("hi")
    assert "not a folder" in _error(capsys, ["eval", "--data", str(f), "--weights", "random"])


def test_eval_empty_folder(capsys, tmp_path):
    (tmp_path / "sub").mkdir()
    (tmp_path / "notes.txt").write_text("no images here")
    err = _error(capsys, ["eval", "--data", str(tmp_path), "--weights", "random"])
    assert "no images found" in err and ".png" in err


def test_unknown_method_lists_valid(capsys, tmp_path):
    err = _error(capsys, ["eval", "--data", str(tmp_path), "--method", "tokenmerge", "--weights", "random"])
    assert "unknown pruning method 'tokenmerge'" in err
    for m in ("threshold_l2", "dynamicvit", "evit", "ats"):
        assert m in err


def test_unknown_model_suggests(capsys):
    err = _error(capsys, ["demo", "--model", "deit_smal_patch16_224", "--weights", "random", "--no-figures"])
    assert "unknown model 'deit_smal_patch16_224'" in err
    assert "deit_small_patch16_224" in err  # close match / supported list


def test_unsupported_timm_model(capsys):
    err = _error(capsys, ["demo", "--model", "resnet18", "--weights", "random", "--no-figures"])
    assert "resnet18" in err and "VisionTransformer" in err


def test_unknown_attention_lists_valid(capsys):
    err = _error(capsys, ["demo", "--attention", "flash9", "--weights", "random", "--no-figures"])
    assert "unknown attention backend 'flash9'" in err and "reference" in err and "triton" in err


def test_unknown_photo(capsys):
    err = _error(capsys, ["demo", "--photos", "lena", "--model", TINY, "--weights", "random", "--no-figures"])
    assert "unknown photo" in err and "astronaut" in err


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on a machine without CUDA")
def test_cuda_on_cpu_machine(capsys):
    err = _error(capsys, ["demo", "--device", "cuda", "--weights", "random", "--no-figures"])
    assert "no CUDA device" in err and "--device cpu" in err


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on a machine without CUDA")
def test_float16_on_cpu(capsys):
    err = _error(capsys, ["demo", "--dtype", "float16", "--weights", "random", "--no-figures"])
    assert "float16" in err and "float32" in err


@pytest.mark.parametrize("argv, needle", [
    (["--batch-size", "0"], "--batch-size 0"),
    (["--workers", "-1"], "--workers -1"),
    (["--limit", "0"], "--limit 0"),
    (["--keep-rate", "1.5"], "--keep-rate 1.5"),
])
def test_eval_bad_numbers(capsys, tmp_path, argv, needle):
    from PIL import Image

    Image.new("RGB", (32, 32)).save(tmp_path / "a.png")
    Image.new("RGB", (32, 32)).save(tmp_path / "b.png")
    err = _error(capsys, ["eval", "--data", str(tmp_path), "--model", TINY, "--weights", "random", "--workers", "0",
                          "--batch-size", "2", *argv])
    assert needle in err


def test_argparse_rejects_bad_choice(capsys):
    with pytest.raises(SystemExit) as e:
        main(["eval", "--data", ".", "--layout", "diagonal"])
    assert e.value.code == 2
    assert "invalid choice" in capsys.readouterr().err

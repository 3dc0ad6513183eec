"""Weights: --checkpoint files (missing/unexpected/mis-shaped keys named), pretrained fallback with a notice."""

from __future__ import annotations

import pytest
import timm
import torch

from raggedvit.runtime import loading
from raggedvit.runtime.errors import UsageError
from raggedvit.runtime.loading import load_model

TINY = "deit_tiny_patch16_224"


@pytest.fixture(scope="module")
def tiny_state():
    return timm.create_model(TINY).state_dict()


def test_checkpoint_roundtrip_with_wrapper_and_prefix(tmp_path, tiny_state):
    path = tmp_path / "ck.pth"
    torch.save({"model": {f"module.{k}": v for k, v in tiny_state.items()}, "epoch": 3}, path)
    loaded = load_model(TINY, checkpoint=str(path))
    assert loaded.weights == f"checkpoint {path}"
    assert loaded.predictor_state is None
    assert torch.equal(loaded.model.state_dict()["head.weight"], tiny_state["head.weight"])


def test_checkpoint_safetensors(tmp_path, tiny_state):
    from safetensors.torch import save_file

    path = tmp_path / "ck.safetensors"
    save_file({k: v.contiguous() for k, v in tiny_state.items()}, str(path))
    assert torch.equal(load_model(TINY, checkpoint=str(path)).model.cls_token, tiny_state["cls_token"])


def test_checkpoint_missing_and_unexpected_keys_named(tmp_path, tiny_state):
    sd = dict(tiny_state)
    del sd["head.bias"]
    sd["extra.weight"] = torch.zeros(1)
    path = tmp_path / "bad.pth"
    torch.save(sd, path)
    with pytest.raises(UsageError) as e:
        load_model(TINY, checkpoint=str(path))
    msg = str(e.value)
    assert "missing key(s): head.bias" in msg and "unexpected key(s): extra.weight" in msg


def test_checkpoint_of_another_model(tmp_path, tiny_state):
    path = tmp_path / "small.pth"
    torch.save(tiny_state | {"cls_token": torch.zeros(1, 1, 384), "head.bias": torch.zeros(10)}, path)
    with pytest.raises(UsageError, match=r"2 shape mismatch.*cls_token \(1, 1, 384\) vs model \(1, 1, 192\).*another"):
        load_model(TINY, checkpoint=str(path))


def test_checkpoint_unreadable_and_missing(tmp_path):
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"definitely not a checkpoint")
    with pytest.raises(UsageError, match="cannot read it as a checkpoint"):
        load_model(TINY, checkpoint=str(junk))
    with pytest.raises(UsageError, match="no such file"):
        load_model(TINY, checkpoint=str(tmp_path / "absent.pth"))


def test_dynamicvit_predictors_from_checkpoint(tmp_path, tiny_state):
    from raggedvit.pruning.dynamicvit import make_predictors
    from raggedvit.runtime.methods import build_pruned

    preds = make_predictors(192, 3)
    sd = dict(tiny_state) | {f"score_predictor.{k}": v for k, v in preds.state_dict().items()}
    path = tmp_path / "dyvit.pth"
    torch.save({"model": sd}, path)
    loaded = load_model(TINY, checkpoint=str(path))
    assert "DynamicViT predictors" in loaded.weights
    pruned, notes = build_pruned(loaded, "dynamicvit", layout="padded", attention="reference")
    assert "from --checkpoint" in notes[0]
    got = pruned.state_dict()["score_predictor.0.in_conv.1.weight"]
    assert torch.equal(got, preds[0].in_conv[1].weight)


def test_pretrained_unreachable_falls_back_with_notice(monkeypatch, capsys):
    monkeypatch.setattr(loading, "_cached_pretrained_file", lambda cfg: None)
    monkeypatch.setattr(loading, "_hub_unreachable_reason", lambda timeout=3.0: "huggingface.co is unreachable (test)")
    loaded = load_model(TINY, weights="auto")
    out = capsys.readouterr().out
    assert "NOTICE" in out and "RANDOM weights" in out and "--checkpoint" in out
    assert "RANDOM" in loaded.weights
    with pytest.raises(UsageError, match="--weights pretrained.*--checkpoint PATH"):
        load_model(TINY, weights="pretrained")

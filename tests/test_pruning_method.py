"""Tests for raggedvit.pruning.method and .registry: method objects, the string API, and a new method added
as one class plus one registry entry (a toy "keep the first k patches") running through ``prune``, both
layouts, graph capture (GPU) and the CLI without any change to ``models/`` or ``bench/``."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from typing import ClassVar

import pytest
import timm
import torch

import raggedvit
from raggedvit.pruning import ATS, METHODS, EViT, Pruner, StageInput, ThresholdL2, make_method
from raggedvit.pruning.ragged import Selection, arange
from raggedvit.pruning.selection import fixed_count

from conftest import DEVICE, requires_gpu


@dataclass(frozen=True, kw_only=True)
class KeepFirst(Pruner):
    """Toy method: keep the prefix and the first ``fixed_keep`` patches of every image (DynamicViT's schedule)."""

    name: ClassVar[str] = "keep_first"

    def select(self, inp: StageInput) -> Selection:
        width, batch, device = inp.plan.width_out, inp.meta.batch, inp.x.device
        index = arange(width, device).expand(batch, width)
        return Selection(index, fixed_count(batch, width, device), width, True)

    def scores(self, inp: StageInput) -> torch.Tensor:
        return -arange(inp.meta.max_seqlen, inp.x.device).float().expand(inp.meta.batch, -1)


@pytest.fixture
def keep_first(monkeypatch):
    monkeypatch.setitem(METHODS, KeepFirst.name, KeepFirst)  # the one registry line
    return KeepFirst


def _tiny():
    torch.manual_seed(0)
    return timm.create_model("deit_tiny_patch16_224", pretrained=False, img_size=64, depth=4).eval().to(DEVICE)


def test_string_and_object_forms_are_the_same():
    assert make_method("evit", keep_rate=0.5) == EViT(keep_rate=0.5)
    assert make_method(EViT(keep_rate=0.5), fuse=False) == EViT(keep_rate=0.5, fuse=False)
    assert make_method("ats").stages == tuple(range(3, 12)) and make_method("ats").keep_rate == 0.92
    assert list(METHODS) == ["none", "threshold_l2", "dynamicvit", "evit", "ats", "tome"]
    model = _tiny()
    images = torch.randn(2, 3, 64, 64, device=DEVICE)
    a = raggedvit.prune(model, EViT(keep_rate=0.5, stages=(1, 2)), attention="reference").eval()
    b = raggedvit.prune(model, "evit", keep_rate=0.5, stages=(1, 2), attention="reference").eval()
    assert a.method == b.method and a.plan == b.plan
    with torch.no_grad():
        torch.testing.assert_close(a(images), b(images), rtol=0, atol=0)


def test_options_are_checked_in_the_signature():
    with pytest.raises(TypeError):
        EViT(0.5)  # keyword-only
    with pytest.raises(ValueError, match="keep_rate must be a number in"):
        EViT(keep_rate=0)
    with pytest.raises(ValueError, match="thresholds must be 3 finite numbers"):
        ThresholdL2(thresholds=(1.0, float("nan"), 2.0))
    with pytest.raises(ValueError, match="num_samples must be an int >= 2"):
        ATS(num_samples=1)
    with pytest.raises(ValueError, match=r"unknown option\(s\) bogus for method 'ats'; valid: variant"):
        make_method("ats", bogus=1)
    with pytest.raises(dataclasses.FrozenInstanceError):
        EViT().keep_rate = 0.3


def test_bind_resolves_model_defaults():
    method, plan = ATS().bind(depth=12, num_prefix=1, num_patches=576)
    assert method.num_samples == 2 * 576 and ATS().num_samples is None
    assert [p.block for p in plan] == list(range(3, 12)) and all(p.site == "mid" for p in plan)
    with pytest.raises(ValueError, match=r"stages must be strictly increasing block indices in \[1, 3\]"):
        EViT().bind(depth=4, num_prefix=1, num_patches=16)


@pytest.mark.parametrize("layout", ["packed", "padded"])
def test_toy_method_through_prune(keep_first, layout):
    model = _tiny()  # 16 patches: keep_rate 0.5 keeps 8, 4 (blocks 1, 2)
    images = torch.randn(2, 3, 64, 64, device=DEVICE)
    pruned = raggedvit.prune(model, "keep_first", keep_rate=0.5, stages=(1, 2), layout=layout,
                             attention="reference").eval()
    assert isinstance(pruned.method, keep_first) and [p.width_out for p in pruned.plan] == [9, 5]
    with torch.no_grad():
        logits = pruned(images)
        st = pruned.last_stats
        assert [k.tolist() for k in st.kept] == [[9, 9], [5, 5]]
        assert st.kept_patch_mask[:, :4].all() and not st.kept_patch_mask[:, 4:].any()
        # the same as timm on the first 4 patches from block 2 on (blocks 1 and 2 see 8 and 4 of them)
        x = model._pos_embed(model.patch_embed(images))
        x = model.blocks[0](x)
        x = model.blocks[2](model.blocks[1](x[:, :9])[:, :5])
        ref = model.forward_head(model.norm(model.blocks[3](x)))
    torch.testing.assert_close(logits, ref, rtol=1e-4, atol=1e-4)


@requires_gpu
def test_toy_method_graph_capture(keep_first):
    from raggedvit.models.graph import capture

    model = _tiny()
    pruned = raggedvit.prune(model, "keep_first", keep_rate=0.5, stages=(1, 2)).eval()
    images = torch.randn(4, 3, 64, 64, device=DEVICE)
    graphed = capture(pruned, 4)
    with torch.no_grad():
        torch.testing.assert_close(graphed(images, clone=True), pruned(images), rtol=1e-3, atol=1e-3)
    assert [k.tolist() for k in graphed.stats.kept] == [[9] * 4, [5] * 4]


def test_toy_method_through_the_cli(keep_first, tmp_path, capsys):
    from raggedvit.cli import main

    out = tmp_path / "res"
    rc = main(["bench", "e2e", "--device", "cpu", "--models", "deit_tiny", "--img-sizes", "224", "--methods",
               "keep_first", "--variants", "fixed", "--batches", "1", "--pipelines", "padded_sdpa,raggedvit_eager",
               "--budget", "0.05", "--out", str(out)])
    assert rc == 0, capsys.readouterr()
    (result,) = out.glob("e2e-*.json")
    rows = json.loads(result.read_text())["rows"]
    assert [(r["method"], r["pipeline"], r["status"]) for r in rows] == [
        ("keep_first", "padded_sdpa", "ok"), ("keep_first", "raggedvit_eager", "ok")]
    assert [s["mean"] for s in rows[1]["kept_stages"]] == [138, 97, 68]  # 1 + int(196 * 0.7 ** s)
    assert rows[1]["max_logit_diff"] < 1e-4

"""Tests for raggedvit.models.inputs (image checks at the model boundary; host-side only)."""

from __future__ import annotations

import pytest
import timm
import torch

from raggedvit.models.inputs import check_images, empty_logits, input_spec

from conftest import DEVICE, ON_GPU


@pytest.fixture(scope="module")
def vit():
    return timm.create_model("vit_tiny_patch16_224", pretrained=False, depth=1, num_classes=7).eval()


def _spec(dtype=torch.float32, device="cpu"):
    return dict(weight=torch.zeros(2, dtype=dtype, device=device), img_size=(224, 224), in_chans=3, where="PrunedViT")


def test_accepts_matching_images_and_an_empty_batch(vit):
    check_images(torch.randn(2, 3, 224, 224), **_spec())
    check_images(torch.randn(0, 3, 224, 224), **_spec())
    check_images(torch.randn(1, 3, 224, 224, dtype=torch.float16), **{**_spec(), "weight": None})  # caller converts
    check_images(torch.randn(1, 3, 224, 224), **input_spec(vit), where="ViT")
    check_images(torch.randn(1, 1, 32, 48), weight=None, img_size=(32, 48), in_chans=1, where="x")


@pytest.mark.parametrize("images,exc,msg", [
    ([1, 2], TypeError, "images must be a torch.Tensor, got list"),
    (torch.randn(3, 224, 224), ValueError, r"expected a \(B, 3, 224, 224\) tensor, got shape \(3, 224, 224\)"),
    (torch.randn(2, 1, 224, 224), ValueError, "images have 1 channels but the model takes 3"),
    (torch.randn(2, 3, 256, 256), ValueError, "images are 256x256 but the model takes 224x224"),
    (torch.randn(2, 3, 224, 200), ValueError, "images are 224x200 but the model takes 224x224"),
    (torch.randn(2, 3, 224, 224, dtype=torch.float16), TypeError,
     "images are float16 but the model's weights are float32"),
    (torch.zeros(2, 3, 224, 224, dtype=torch.uint8), TypeError, "images are uint8 but the model's weights are float32"),
])
def test_errors_name_both_sides(images, exc, msg):
    with pytest.raises(exc, match="PrunedViT: " + msg):
        check_images(images, **_spec())


def test_fp32_images_into_an_fp16_model_and_square_int_size():
    with pytest.raises(TypeError, match="images are float32 but the model's weights are float16"):
        check_images(torch.randn(1, 3, 64, 64), weight=torch.zeros(1, dtype=torch.float16), img_size=64, in_chans=3,
                     where="GraphedViT")


@pytest.mark.skipif(not ON_GPU, reason="needs a second device")
def test_device_mismatch_names_both_devices():
    with pytest.raises(ValueError, match="images are on cpu but the model is on cuda:0"):
        check_images(torch.randn(1, 3, 224, 224), **_spec(device=DEVICE))


def test_empty_logits_match_timm(vit):
    images = torch.zeros(0, 3, 224, 224)
    with torch.no_grad():
        want = vit(images)
    got = empty_logits(vit, images)
    assert got.shape == want.shape == (0, 7) and got.dtype == want.dtype and got.device == images.device
    headless = timm.create_model("vit_tiny_patch16_224", pretrained=False, depth=1, num_classes=0)
    assert empty_logits(headless, images).shape == (0, 192)
    with pytest.raises(ValueError, match="not 0"):
        empty_logits(vit, torch.zeros(1, 3, 224, 224))


@pytest.mark.parametrize("layout", ["packed", "padded"])
def test_pruned_model_checks_at_its_boundary(layout):
    import raggedvit

    model = timm.create_model("deit_tiny_patch16_224", pretrained=False, img_size=64, depth=3).eval()
    pruned = raggedvit.prune(model, "evit", stages=(1,), layout=layout, attention="reference").eval()
    with torch.no_grad():
        empty = pruned(torch.zeros(0, 3, 64, 64))
    assert empty.shape == (0, 1000) and empty.dtype == torch.float32
    with pytest.raises(ValueError, match="PrunedViT: images are 96x96 but the model takes 64x64"):
        pruned(torch.randn(1, 3, 96, 96))
    with pytest.raises(TypeError, match="PrunedViT: images are float16 but the model's weights are float32"):
        pruned(torch.randn(1, 3, 64, 64, dtype=torch.float16))
    with pytest.raises(ValueError, match="PrunedViT: images have 1 channels"):
        pruned.forward_features(torch.randn(1, 1, 64, 64))


def test_debug_validates_every_stage():
    import raggedvit
    from raggedvit.pruning import ThresholdL2
    from raggedvit.pruning.ragged import Selection

    class TooMany(ThresholdL2):  # a buggy method: counts past the stage's bound
        def select(self, inp):
            sel = super().select(inp)
            return Selection(sel.index, sel.count + 100, sel.width, False)

    model = timm.create_model("deit_tiny_patch16_224", pretrained=False, img_size=64, depth=3).eval()
    images = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        raggedvit.prune(model, "ats", stages=(1, 2), attention="reference", debug=True).eval()(images)
        bad = raggedvit.prune(model, TooMany(stages=(1,), alpha=1.0), layout="padded", debug=True).eval()
        with pytest.raises(ValueError, match=r"stage 0 \(block 1\): kept count"):
            bad(images)
    with pytest.raises(ValueError, match="debug must be True or False"):
        raggedvit.prune(model, "ats", stages=(1, 2), debug=1)

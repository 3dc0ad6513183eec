"""``prune(..., live_rows=True)``: Linear layers on the live rows of adaptive buffers equal the plain modules."""

from __future__ import annotations

import pytest
import torch
from timm.models.vision_transformer import VisionTransformer

import raggedvit
from raggedvit.models.forward import fusable_mlp

from conftest import DEVICE, ON_GPU


def _tiny_vit() -> VisionTransformer:
    model = VisionTransformer(img_size=64, patch_size=16, embed_dim=64, depth=4, num_heads=2, num_classes=10)
    model = model.to(DEVICE).eval()
    with torch.no_grad():
        for blk in model.blocks:
            blk.attn.qkv.weight.mul_(4)  # spread attention so adaptive counts differ per image
    return model


@pytest.mark.parametrize("method,opts", [("threshold_l2", {"variant": "adaptive", "alpha": 1.0}),
                                         ("ats", {"stages": (1, 2)})])
def test_live_rows_equal_full_rows(method, opts):
    model = _tiny_vit()
    opts = {"stages": (1, 2), **opts}
    attention = "triton" if ON_GPU else "reference"
    full = raggedvit.prune(model, method, attention=attention, live_rows=False, **opts)
    live = raggedvit.prune(model, method, attention=attention, live_rows=True, **opts)
    x = torch.randn(3, 3, 64, 64, device=DEVICE) * torch.tensor([0.3, 2.0, 6.0], device=DEVICE).view(3, 1, 1, 1)
    with torch.no_grad():
        want, got = full(x), live(x)
    torch.testing.assert_close(got, want, rtol=0, atol=1e-4 if ON_GPU else 1e-5)  # GPU: TF32-free fp32 GEMMs differ
    for a, b in zip(live.last_stats.kept, full.last_stats.kept):
        assert torch.equal(a, b)
    assert not live.last_stats.final_meta.uniform  # an adaptive buffer: the live-row path ran
    assert fusable_mlp(model.blocks[0].mlp)


def test_live_rows_option_is_checked():
    with pytest.raises(ValueError, match="live_rows"):
        raggedvit.prune(_tiny_vit(), "ats", live_rows="yes", stages=(1, 2))

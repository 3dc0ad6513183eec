"""Tests for raggedvit.models.forward helpers: the GEMM patch embedding."""

from __future__ import annotations

import pytest
import timm
import torch

from raggedvit.models.forward import patch_embed

from conftest import DEVICE, ON_GPU


@pytest.mark.parametrize("name,size", [("deit_tiny_patch16_224", 224), ("deit_base_patch16_384", 384)])
def test_patch_embed_equals_timm(name, size):
    model = timm.create_model(name, pretrained=False).to(DEVICE).eval()
    x = torch.randn(3, 3, size, size, device=DEVICE)
    with torch.no_grad():
        want = model.patch_embed(x)
        got = patch_embed(model.patch_embed, x)
        torch.testing.assert_close(got, want, atol=1e-3 if ON_GPU else 1e-5, rtol=0)  # GPU: TF32 convolutions
        odd = x[:, :, :, : size - 16]  # not the model's size: timm's own module (and its error)
        with pytest.raises(AssertionError, match="doesn't match model"):
            patch_embed(model.patch_embed, odd)
        strided = torch.randn(2, 3, size, size * 2, device=DEVICE)[..., ::2]  # non-contiguous images
        torch.testing.assert_close(patch_embed(model.patch_embed, strided), model.patch_embed(strided),
                                   atol=1e-3 if ON_GPU else 1e-5, rtol=0)

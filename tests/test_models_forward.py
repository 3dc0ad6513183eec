"""Tests for raggedvit.models.forward helpers: the GEMM patch embedding, the token and position embedding."""

from __future__ import annotations

import pytest
import timm
import torch

from raggedvit.models.forward import embed_tokens, patch_embed

from conftest import DEVICE, ON_GPU
from helpers import launch_count


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


@pytest.mark.parametrize("kw", [{}, {"reg_tokens": 4}, {"no_embed_class": True},
                                {"no_embed_class": True, "reg_tokens": 2},
                                {"class_token": False, "global_pool": "avg"}, {"pos_embed": "none"}])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_embed_tokens_equals_timm_bit_for_bit(kw, dtype):
    """Prefix tokens and position embedding written into one buffer: timm's ``_pos_embed`` exactly."""
    model = timm.models.vision_transformer.VisionTransformer(img_size=32, patch_size=8, embed_dim=24, depth=1,
                                                             num_heads=2, **kw).to(DEVICE, dtype).eval()
    with torch.no_grad():
        for t in (model.cls_token, model.reg_token, model.pos_embed):
            if t is not None:
                t.normal_()
    x = torch.randn(3, 16, 24, device=DEVICE).to(dtype)
    with torch.no_grad():
        assert torch.equal(embed_tokens(model, model, x), model._pos_embed(x))


def test_embed_tokens_leaves_other_classes_and_training_dropout_to_timm(monkeypatch):
    model = timm.models.vision_transformer.VisionTransformer(img_size=32, patch_size=8, embed_dim=24, depth=1,
                                                             num_heads=2, pos_drop_rate=0.5).to(DEVICE)
    x = torch.randn(2, 16, 24, device=DEVICE)
    calls = []
    monkeypatch.setattr(type(model), "_pos_embed", lambda self, t: calls.append(1) or t)
    embed_tokens(model, model, x)  # another _pos_embed than VisionTransformer's: it runs
    monkeypatch.undo()
    assert calls == [1]
    torch.manual_seed(0)
    got = embed_tokens(model.train(), model, x)  # training-mode dropout: timm's (random) version
    torch.manual_seed(0)
    assert torch.equal(got, model._pos_embed(x))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_uniform_stages_attend_with_sdpa(dtype, monkeypatch):
    """attention="triton": a stage without unused rows runs SDPA on its (B, L) grid (no kernel launch), equal
    to the Triton kernel; ragged stages, a key bias, grids below UNIFORM_SDPA_MIN_ROWS and other backends still
    run as asked."""
    from raggedvit.models import forward
    from raggedvit.ops.attention import launcher
    from raggedvit.ops.backends import get_backend
    from raggedvit.pruning.ragged import meta_from_counts, uniform_meta

    def launches():
        return launch_count(launcher)

    B, L, H, D = 3, 13, 2, 16
    q, k, v = (torch.randn(B * L, H, D, device=DEVICE).to(dtype) for _ in range(3))
    tol = dict(atol=1e-5, rtol=1e-5) if dtype == torch.float32 else dict(atol=2e-3, rtol=2e-3)
    meta = uniform_meta(B, L, DEVICE)
    monkeypatch.setattr(forward, "UNIFORM_SDPA_MIN_ROWS", B * L)
    attend = forward.attend_packed(get_backend("triton"))
    before = launches()
    got = attend(q, k, v, meta, 0.25)
    assert launches() == before  # SDPA, not the kernel
    monkeypatch.setattr(forward, "UNIFORM_SDPA", False)
    want = attend(q, k, v, meta, 0.25)
    assert launches() == before + 1
    torch.testing.assert_close(got, want, **tol)
    monkeypatch.setattr(forward, "UNIFORM_SDPA", True)
    ragged = meta_from_counts(torch.tensor([13, 4, 9], device=DEVICE), L)
    attend(q, k, v, ragged, 0.25)
    attend(q, k, v, meta, 0.25, torch.zeros(B * L, device=DEVICE))  # a key bias (ToMe)
    assert launches() == before + 3
    ref = forward.attend_packed(get_backend("reference"))(q, k, v, meta, 0.25)  # not replaced either
    torch.testing.assert_close(ref, want, **tol)
    monkeypatch.setattr(forward, "UNIFORM_SDPA_MIN_ROWS", B * L + 1)  # below the row bound: the kernel
    torch.testing.assert_close(attend(q, k, v, meta, 0.25), want, **tol)
    assert launches() == before + 4

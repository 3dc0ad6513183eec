"""Tests for raggedvit.ops.patchify (the patch matrix kernel; interpreter on CPU)."""

from __future__ import annotations

import importlib

import pytest
import torch

from raggedvit.ops.patchify import patchify, patchify_reference

from conftest import DEVICE


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16, torch.uint8])
@pytest.mark.parametrize("shape,patch", [((2, 3, 32, 48), (16, 16)),  # two bands, three patches per band
                                         ((1, 1, 8, 12), (8, 4)),  # one channel, non-square patches
                                         ((3, 3, 28, 28), (14, 14)),  # patch width 14: padded to 16, masked
                                         ((2, 4, 64, 64), (16, 16))])  # runs per band (4*16*4) > one block
def test_equals_the_torch_reshape(dtype, shape, patch):
    images = (torch.randn(*shape, device=DEVICE) * 50).to(dtype)
    got = patchify(images, *patch)
    want = patchify_reference(images, *patch)
    assert got.is_contiguous() and got.shape == want.shape
    assert torch.equal(got, want)


@pytest.mark.parametrize("view", ["channels_last", "sliced", "transposed"])
def test_any_image_strides(view):
    base = torch.randn(2, 3, 32, 64, device=DEVICE)
    images = {"channels_last": base.contiguous(memory_format=torch.channels_last),
              "sliced": base[..., ::2],  # W stride 2
              "transposed": base[..., :32].transpose(2, 3)}[view]
    assert torch.equal(patchify(images, 16, 16), patchify_reference(images, 16, 16))


def test_empty_batch_and_registered_op():
    assert patchify(torch.empty(0, 3, 32, 32, device=DEVICE), 16, 16).shape == (0, 768)
    images = torch.randn(2, 3, 32, 32, device=DEVICE)
    assert torch.equal(torch.ops.raggedvit.patchify(images, 16, 16), patchify_reference(images, 16, 16))


@pytest.mark.parametrize("images,patch,msg", [
    (torch.randn(3, 32, 32), (16, 16), "B, C, H, W"),
    (torch.randn(1, 3, 30, 32), (16, 16), "not a multiple"),
    (torch.randn(1, 3, 32, 32), (0, 16), "not a multiple"),
])
def test_bad_input(images, patch, msg):
    with pytest.raises(ValueError, match=msg):
        patchify(images.to(DEVICE), *patch)


@pytest.mark.parametrize("config", [dict(block_r=32, num_warps=2), dict(block_r=512, num_warps=8)])
def test_launch_configs(config, monkeypatch):
    """Every block size gives the same matrix (one block of 512 runs covers more than the band's 192)."""
    op = importlib.import_module("raggedvit.ops.patchify")  # the module (raggedvit.ops.patchify is the function)

    monkeypatch.setattr(op, "CONFIG", config)
    images = torch.randn(2, 4, 64, 48, device=DEVICE)  # 3 patches x 4 channels x 16 rows = 192 runs per band
    assert torch.equal(patchify(images, 16, 16), patchify_reference(images, 16, 16))

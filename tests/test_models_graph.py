"""Tests for raggedvit.models.graph: argument errors (CPU) and, on a GPU, capture + replay == eager, zero syncs."""

from __future__ import annotations

import copy

import pytest
import timm
import torch

import raggedvit
from raggedvit.models.graph import GraphedViT, capture, check_graphable, graph_safe_backends, graphed
from test_models_prune import make_model

from conftest import DEVICE, ON_GPU, requires_gpu


def _tiny(**kw):
    return timm.create_model("deit_tiny_patch16_224", pretrained=False, img_size=64, depth=4, **kw).eval()


def test_graph_safe_backends():
    names = graph_safe_backends()
    assert "triton" in names and "reference" in names
    assert "nested_sdpa" not in names and "fa2_varlen_item" not in names and "varlen_attn" not in names


def test_errors_before_any_cuda_work():
    model = _tiny()
    with pytest.raises(ValueError, match="PrunedViT"):
        check_graphable(model)
    with pytest.raises(ValueError, match="layout='padded'"):
        capture(raggedvit.prune(model, "evit", layout="padded", stages=(1, 2)).eval(), 2)
    with pytest.raises(ValueError, match="nested_sdpa.*synchronizes"):
        capture(raggedvit.prune(model, "evit", attention="nested_sdpa", stages=(1, 2)).eval(), 2)
    with pytest.raises(ValueError, match="varlen_attn.*not CUDA-graph safe"):
        capture(raggedvit.prune(model, "evit", attention="varlen_attn", stages=(1, 2)).eval(), 2)
    with pytest.raises(ValueError, match="training mode"):
        capture(raggedvit.prune(model, "evit", stages=(1, 2)).train(), 2)
    if not ON_GPU:
        with pytest.raises(ValueError, match="CUDA graphs need a CUDA device.*cpu"):
            capture(raggedvit.prune(model, "evit", attention="reference", stages=(1, 2)).eval(), 2)


@requires_gpu
def test_bad_batch_and_shape():
    model = _tiny().to(DEVICE)
    pruned = raggedvit.prune(model, "evit", stages=(1, 2)).eval()
    with pytest.raises(ValueError, match="batch"):
        capture(pruned, 0)
    g = capture(pruned, 2)
    with pytest.raises(ValueError, match="captured for"):
        g(torch.randn(3, 3, 64, 64, device=DEVICE))


CASES = [
    ("threshold_l2", dict(alpha=1.0)),
    ("evit", dict(variant="fixed", keep_rate=0.7)),
    ("evit", dict(variant="adaptive", mass=0.8)),
    ("ats", dict(num_samples=120)),
    ("dynamicvit", dict(variant="adaptive")),
    ("threshold_l2", dict(alpha=1.0, live_rows=True)),  # the LiveRows kernels (TMA tiles forced below)
    ("evit", dict(variant="adaptive", live_rows=True)),
    ("tome", dict(variant="adaptive")),  # the merge kernels on a ragged batch (rows past a length: pool garbage)
]


@pytest.fixture(autouse=True)
def _large_tiles_for_live_rows(monkeypatch):
    """Small test batches would run the small-tile configuration of ragged_linear: force the large one
    (persistent, TMA on sm90+) so that graph and sync tests cover it."""
    from raggedvit.ops import linear as linear_mod

    small = linear_mod._config
    monkeypatch.setattr(linear_mod, "_config", lambda dt, m, n, k, ok: small(dt, 1 << 20, 1 << 20, k, ok))


def _sharp_fp16(method, opts):
    """A pruned fp16 copy of the sharpened test model (the cached original is left untouched)."""
    model, preds = copy.deepcopy(make_model())
    model.to(DEVICE, torch.float16)
    if method == "dynamicvit":
        opts = dict(opts, predictors=preds.to(DEVICE, torch.float16))
    return raggedvit.prune(model, method, **opts).eval()


def _images(n, generator):
    """Images with a per-image scale and low-frequency structure, so kept counts differ between images."""
    base = torch.randn(n, 3, 14, 14, generator=generator)
    big = torch.nn.functional.interpolate(base, size=224, mode="bilinear", align_corners=False)
    scale = torch.rand(n, 1, 1, 1, generator=generator) * 2 + 0.25
    return big * scale + 0.3 * torch.randn(n, 3, 224, 224, generator=generator)


@requires_gpu
@pytest.mark.parametrize("method,opts", CASES,
                         ids=[f"{m}-{o.get('variant', '')}-{o.get('live_rows', 'auto')}" for m, o in CASES])
def test_replay_equals_eager_100_batches(method, opts):
    """One capture, 100 replays on fresh random images: logits and kept counts equal the eager forward."""
    pruned = _sharp_fp16(method, opts)
    batch = 4
    g = torch.Generator().manual_seed(0)
    gv = capture(pruned, batch, example=_images(batch, g).to(DEVICE, torch.float16))
    assert isinstance(gv, GraphedViT) and gv.capture_s > 0
    varied = False
    with torch.no_grad():
        for i in range(100):
            x = _images(batch, g).to(DEVICE, torch.float16)
            out = gv(x, clone=True)
            kept_g = [k.clone() for k in gv.stats.kept]
            ref = pruned(x)
            kept_e = pruned.last_stats.kept
            for a, b in zip(kept_g, kept_e):
                assert torch.equal(a, b), f"batch {i}: kept {a.tolist()} (graph) != {b.tolist()} (eager)"
            torch.testing.assert_close(out, ref, atol=2e-3, rtol=0, msg=lambda m, i=i: f"batch {i}: {m}")
            varied |= any(int(k.max()) != int(k.min()) for k in kept_e)
    if opts.get("variant") != "fixed":
        assert varied, "the test images never produced different kept counts per image"


@requires_gpu
def test_graphed_cache_reuses_capture():
    model = _tiny().to(DEVICE, torch.float16)
    pruned = raggedvit.prune(model, "evit", stages=(1, 2)).eval()
    assert graphed(pruned, 2) is graphed(pruned, 2)
    assert graphed(pruned, 3) is not graphed(pruned, 2)


@requires_gpu
@pytest.mark.parametrize("method,opts", CASES[:4] + CASES[5:], ids=[f"{m}-{o.get('live_rows', 'auto')}"
                                                                    for m, o in CASES[:4] + CASES[5:]])
def test_zero_syncs_eager_and_replay(method, opts):
    """torch.cuda.set_sync_debug_mode('error'): the eager packed forward and the graph replay never sync."""
    pruned = _sharp_fp16(method, opts)
    x = torch.randn(8, 3, 224, 224, device=DEVICE, dtype=torch.float16)
    with torch.no_grad():
        pruned(x)  # compile outside the check
        gv = capture(pruned, 8)
        torch.cuda.synchronize()
        torch.cuda.set_sync_debug_mode("error")
        try:
            for _ in range(3):
                pruned(x)
                gv(x)
        finally:
            torch.cuda.set_sync_debug_mode(0)
    torch.cuda.synchronize()

"""Tests for raggedvit.prune: packed vs padded vs a naive dense per-image reference, timm parity, stats, errors.

Random weights give near-uniform attention, so the models here are "sharpened" (q/k weights scaled up,
DynamicViT predictor logits spread) and the images mix low-frequency structure with noise at per-image
scales: methods then really drop a different number of tokens per image.
"""

from __future__ import annotations

import math

import pytest
import timm
import torch
import torch.nn.functional as F

import raggedvit
from raggedvit.pruning import dynamicvit, make_method
from test_pruning_ragged import ats_reference

TINY = "deit_tiny_patch16_224"
TINY_DIST = "deit_tiny_distilled_patch16_224"
_CACHE: dict = {}


SMALL = 112  # 7 x 7 = 49 patches: the cross-checks keep the spec's stage layout at a quarter of the cost


def make_model(name=TINY, sharpen=2.5, **kwargs):
    """A random-init timm model in eval mode with sharper attention (cached; do not modify)."""
    key = (name, sharpen, tuple(sorted(kwargs.items())))
    if key not in _CACHE:
        with torch.random.fork_rng():
            torch.manual_seed(7)
            model = timm.create_model(name, pretrained=False, **kwargs).eval()
            with torch.no_grad():
                for blk in model.blocks:
                    C = blk.attn.qkv.in_features
                    blk.attn.qkv.weight[: 2 * C].mul_(sharpen)
            preds = dynamicvit.make_predictors(model.embed_dim)
            with torch.no_grad():
                for p in preds:
                    p.out_conv[4].weight.mul_(40.0)
                    p.out_conv[4].bias.zero_()
        _CACHE[key] = (model, preds)
    return _CACHE[key]


def make_images(batch, size=224):
    low = F.interpolate(torch.randn(batch, 3, 4, 4) * 2.0, size=(size, size), mode="bilinear", align_corners=False)
    scale = 0.5 + torch.rand(batch, 1, 1, 1)
    return (low + torch.randn(batch, 3, size, size)) * scale


# ----------------------------------------------------------------------------------------------------------
# Naive reference: one image, dense tensors, full attention matrices, Python-level selection (spec sections 1-4).


@torch.no_grad()
def reference_forward(model, image, method, opts, predictors=None):
    P = model.num_prefix_tokens
    x = model.norm_pre(model._pos_embed(model.patch_embed(image[None])))[0]
    num_patches = x.shape[0] - P
    variant = opts.get("variant", "adaptive" if method in ("ats", "threshold_l2") else "fixed")
    default_stages = tuple(range(3, len(model.blocks))) if method == "ats" else (3, 6, 9)
    stages = {b: s for s, b in enumerate(opts.get("stages", default_stages))}
    defaults = make_method(method, **opts)  # the method's own defaults for what opts leaves out
    rho = getattr(defaults, "keep_rate", 0.7)
    ids = list(range(x.shape[0]))
    kept_counts = []
    for i, blk in enumerate(model.blocks):
        s = stages.get(i)
        if s is not None and method in ("dynamicvit", "threshold_l2"):
            patch = x[P:]
            if method == "dynamicvit":
                pred = predictors[s]
                z = pred.in_conv(patch)
                half = z.shape[1] // 2
                score = pred.out_conv(torch.cat([z[:, :half], z[:, half:].mean(0).expand(len(patch), half)], 1))[:, 0]
                order = torch.sort(score, descending=True, stable=True).indices.tolist()
                if variant == "fixed":
                    k = int(num_patches * rho ** (s + 1))
                else:
                    k = max(opts.get("k_min", 1), int((score.exp() > opts.get("keep_threshold", 0.5)).sum()))
                keep = order[:k]
            else:
                score = patch.norm(dim=-1)
                order = torch.sort(score, descending=True, stable=True).indices.tolist()
                if variant == "fixed":
                    keep = sorted(order[: int(num_patches * rho ** (s + 1))])
                else:
                    t = opts["thresholds"][s] if "thresholds" in opts else opts.get("alpha", 1.0) * score.mean()
                    keep = [j for j in range(len(patch)) if score[j] >= t or j in order[: opts.get("k_min", 1)]]
            x = torch.cat([x[:P], patch[keep]])
            ids = ids[:P] + [ids[P + j] for j in keep]
            kept_counts.append(len(ids))
        n, C = x.shape
        attn_mod = blk.attn
        H, D = attn_mod.num_heads, attn_mod.head_dim
        q, k, v = blk.attn.qkv(blk.norm1(x)).view(n, 3, H, D).permute(1, 2, 0, 3)  # (H, n, D) each
        attn = torch.softmax((q * attn_mod.scale) @ k.transpose(1, 2), dim=-1)  # (H, n, n)
        y = x + blk.ls1(attn_mod.proj((attn @ v).transpose(0, 1).reshape(n, C)))
        if s is not None and method in ("evit", "ats"):
            yp = y[P:]
            if method == "evit":
                a = attn[:, 0, P:].mean(0)
                order = torch.sort(a, descending=True, stable=True).indices.tolist()
                if variant == "fixed":
                    k = math.ceil(rho * (n - P))
                else:
                    csum = torch.cumsum(a[order], 0)
                    k = max(1, int(((csum - a[order]) < defaults.target_mass * a.sum()).sum()))
                keep, dropped = order[:k], order[k:]
                parts, new_ids = [y[:P], yp[keep]], ids[:P] + [ids[P + j] for j in keep]
                if opts.get("fuse", True) and dropped:
                    parts.append((a[dropped, None] * yp[dropped]).sum(0, keepdim=True))
                    new_ids.append(-1)
            else:
                sig = attn[:, 0, P:].sum(0) * v.transpose(0, 1).reshape(n, C)[P:].norm(dim=-1)
                sig = sig / sig.sum()
                if variant == "fixed":
                    keep = torch.sort(sig, descending=True, stable=True).indices[: math.ceil(rho * (n - P))]
                    keep = keep.flip(0).tolist()
                else:
                    keep = ats_reference(sig, defaults.resolve(num_patches).num_samples)
                parts, new_ids = [y[:P], yp[keep]], ids[:P] + [ids[P + j] for j in keep]
            y = torch.cat(parts)
            ids = new_ids
            kept_counts.append(len(ids))
        x = y + blk.ls2(blk.mlp(blk.norm2(y)))
    logits = model.forward_head(model.norm(x)[None])[0]
    return logits, kept_counts, ids


CASES = [
    ("none", {}),
    ("dynamicvit", {}),
    ("dynamicvit", {"variant": "adaptive"}),
    ("evit", {}),
    ("evit", {"fuse": False}),
    ("evit", {"variant": "adaptive"}),
    ("evit", {"variant": "adaptive", "fuse": False, "mass": 0.6}),
    ("ats", {"num_samples": 49}),  # the official count (one per patch at SMALL): ragged on these random weights
    ("ats", {"variant": "fixed"}),
    ("threshold_l2", {"alpha": 1.0}),
    ("threshold_l2", {"variant": "adaptive", "alpha": 1.1, "k_min": 4}),
    ("threshold_l2", {"variant": "fixed", "keep_rate": 0.6}),
]


def _ids(case):
    method, opts = case
    return method + "".join(f"-{k}={v}" for k, v in opts.items())


def _build(model, preds, method, opts, **kw):
    extra = {"predictors": preds} if method == "dynamicvit" else {}
    return raggedvit.prune(model, method, **kw, **extra, **opts).eval()


@pytest.mark.parametrize("case", CASES, ids=_ids)
@pytest.mark.parametrize("name", [TINY, TINY_DIST])
def test_packed_equals_padded_and_reference(case, name):
    method, opts = case
    if name == TINY_DIST and opts.get("variant") == "fixed" and method != "dynamicvit":
        pytest.skip("one fixed case per method family is enough for the distilled model")
    model, preds = make_model(name, img_size=SMALL)
    packed = _build(model, preds, method, opts, attention="reference")
    padded = _build(model, preds, method, opts, layout="padded")
    adaptive = method != "none" and packed.method.variant == "adaptive"
    for _ in range(8):  # fresh images until an adaptive rule keeps different counts per image (a real ragged batch)
        images = make_images(3, SMALL) * torch.tensor([0.5, 1.0, 2.0]).view(3, 1, 1, 1)
        blobs = F.interpolate(torch.randn(3, 3, 3, 3), size=(SMALL, SMALL), mode="bilinear", align_corners=False)
        images = images + blobs * torch.tensor([0.0, 2.0, 5.0]).view(3, 1, 1, 1)  # per-image structure
        with torch.no_grad():
            a = packed(images)
        if not adaptive or any(len(set(k.tolist())) > 1 for k in packed.last_stats.kept):
            break
    static = _build(model, preds, method, opts, layout="padded", padding="static")
    for other in (padded, static):  # padded to the batch maximum, and to each stage's static capacity
        with torch.no_grad():
            b = other(images)
        sa, sb = packed.last_stats, other.last_stats
        assert len(sa.kept) == len(sb.kept) == len(packed.plan)
        for ka, kb in zip(sa.kept, sb.kept):
            assert torch.equal(ka, kb), f"{other.padding}: keep counts differ: {ka.tolist()} vs {kb.tolist()}"
        assert torch.equal(sa.kept_patch_mask, sb.kept_patch_mask)
        torch.testing.assert_close(a, b, atol=1e-4, rtol=0)
    P = model.num_prefix_tokens
    final = sa.token_index[sa.final_meta.dense_rows]  # (B, L)
    assert (final[:, :P] == torch.arange(P, dtype=final.dtype)).all(), "prefix tokens must stay in front"
    for i in range(images.shape[0]):
        ref, ref_counts, ref_ids = reference_forward(model, images[i], method, opts, preds)
        torch.testing.assert_close(a[i], ref, atol=1e-4, rtol=0)
        assert [int(k[i]) for k in sa.kept] == ref_counts
        n = int(sa.final_meta.lengths[i])
        assert sorted(final[i, :n].tolist()) == sorted(ref_ids)
        expected_mask = torch.zeros(model.patch_embed.num_patches, dtype=torch.bool)
        expected_mask[[t - P for t in ref_ids if t >= P]] = True
        assert torch.equal(sa.kept_patch_mask[i], expected_mask)
    if adaptive:
        assert any(len(set(k.tolist())) > 1 for k in sa.kept), "adaptive counts should differ across images"
        assert any(int(k.min()) < packed.plan[i].width_out for i, k in enumerate(sa.kept)), "nothing pruned"


@pytest.mark.parametrize("case", [c for c in CASES if c[0] != "none"], ids=_ids)
def test_batch_independence(case):
    method, opts = case
    model, preds = make_model(img_size=SMALL)
    images = make_images(3, SMALL)
    pruned = _build(model, preds, method, opts, attention="reference")
    with torch.no_grad():
        full = pruned(images)
        kept = [k.clone() for k in pruned.last_stats.kept]
        for i in range(3):
            alone = pruned(images[i:i + 1])
            torch.testing.assert_close(alone[0], full[i], atol=1e-4, rtol=0)
            assert [int(k[0]) for k in pruned.last_stats.kept] == [int(k[i]) for k in kept]

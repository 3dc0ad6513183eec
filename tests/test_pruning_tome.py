"""Tests for ToMe (raggedvit.pruning.tome): both variants, both layouts, against a dense per-image reference of
the published algorithm (facebookresearch/ToMe's timm patch: ToMeBlock, ToMeAttention, bipartite_soft_matching,
merge_wavg, parse_r), written here from that code; ragged inputs; prefix protection; options; trained weights.

The reference differs from ToMe's code in two documented points only: ties (ToMe: ``max`` and an unstable
``argsort``; here the first maximum and a stable sort, as raggedvit), and the prefix generalised from CLS (+ DIST)
to every prefix token (registers), with ToMe's own rule and output order for CLS and DIST.
"""

from __future__ import annotations

import copy
import math

import pytest
import timm
import torch

import raggedvit
from raggedvit import sample_data
from raggedvit.pruning import METHODS, ToMe, make_method
from raggedvit.pruning.tome import bipartite_merge, parse_r
from test_models_prune import SMALL, TINY, TINY_DIST, make_images, make_model

from conftest import DEVICE, requires_gpu

# ------------------------------------------------------------------------------------------------ reference


def tome_parse_r(num_layers, r):
    """ToMe's ``tome.utils.parse_r`` (list: per layer, padded with 0; tuple: (r, inflection); int)."""
    inflect = 0
    if isinstance(r, list):
        if len(r) < num_layers:
            r = r + [0] * (num_layers - len(r))
        return list(r)
    elif isinstance(r, tuple):
        r, inflect = r
    min_val = int(r * (1.0 - inflect))
    max_val = 2 * r - min_val
    step = (max_val - min_val) / (num_layers - 1)
    return [int(min_val + step * i) for i in range(num_layers)]


def bipartite_soft_matching_ref(metric, r, num_prefix, threshold=None, r_min=0):
    """ToMe's ``bipartite_soft_matching`` for one image (``metric (1, t, D)``), every prefix token protected; with
    ``threshold``: the adaptive count (A tokens whose best similarity exceeds it, in ``[r_min, r]``)."""
    t = metric.shape[1]
    r = min(r, (t - num_prefix) // 2)
    if r <= 0:
        return (lambda x, mode=None: x), 0  # ToMe's do_nothing
    metric = metric / metric.norm(dim=-1, keepdim=True)
    a, b = metric[..., ::2, :], metric[..., 1::2, :]
    scores = a @ b.transpose(-1, -2)
    na, nb = (num_prefix + 1) // 2, num_prefix // 2  # prefix tokens in A (positions 0, 2, ..) and B (1, 3, ..)
    scores[..., :na, :] = -math.inf  # ToMe: class_token -> scores[..., 0, :] = -inf
    scores[..., :, :nb] = -math.inf  # ToMe: distill_token -> scores[..., :, 0] = -inf
    node_max, node_idx = scores.max(dim=-1)
    edge_idx = node_max.argsort(dim=-1, descending=True, stable=True)[..., None]
    if threshold is not None:
        r = min(max(int((node_max > threshold).sum()), r_min), r)
    unm_idx = edge_idx[..., r:, :]  # Unmerged Tokens
    src_idx = edge_idx[..., :r, :]  # Merged Tokens
    dst_idx = node_idx[..., None].gather(dim=-2, index=src_idx)
    unm_idx = unm_idx.sort(dim=1)[0]  # ToMe: the class token first

    def merge(x, mode="mean"):
        src, dst = x[..., ::2, :], x[..., 1::2, :]
        n, t1, c = src.shape
        unm = src.gather(dim=-2, index=unm_idx.expand(n, t1 - r, c))
        src = src.gather(dim=-2, index=src_idx.expand(n, r, c))
        if mode is not None:  # None: keep dst as it is (token ids of the representatives)
            dst = dst.scatter_reduce(-2, dst_idx.expand(n, r, c), src, reduce=mode)
        # ToMe: cat([unm, dst]); with DIST cat([unm[:, :1], dst[:, :1], unm[:, 1:], dst[:, 1:]]): the prefix
        # tokens in position order, then the other unmerged A tokens, then the other B tokens
        prefix = [p for i in range(na) for p in (unm[:, i:i + 1], dst[:, i:i + 1] if i < nb else None)
                  if p is not None]
        return torch.cat([*prefix, unm[:, na:], dst[:, nb:]], dim=1)

    return merge, r


def merge_wavg_ref(merge, x, size=None):
    """ToMe's ``merge_wavg``."""
    if size is None:
        size = torch.ones_like(x[..., 0, None])
    x = merge(x * size, mode="sum")
    size = merge(size, mode="sum")
    x = x / size
    return x, size


@torch.no_grad()
def tome_reference(model, image, r, *, prop_attn=True, threshold=None, r_min=0):
    """ToMe's timm forward on one image: ``(logits, tokens after every block, final token ids, final sizes)``.
    ``r`` as ToMe's ``model.r`` (int, (r, inflection) or list)."""
    P = model.num_prefix_tokens
    x = model.norm_pre(model._pos_embed(model.patch_embed(image[None])))
    ids = torch.arange(x.shape[1], dtype=torch.float64)[None, :, None]
    size = None
    lengths = []
    for blk, r_blk in zip(model.blocks, tome_parse_r(len(model.blocks), r), strict=True):
        attn_mod = blk.attn
        B, N, C = x.shape
        H = attn_mod.num_heads
        qkv = attn_mod.qkv(blk.norm1(x)).reshape(B, N, 3, H, C // H).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]
        attn = (q @ k.transpose(-2, -1)) * attn_mod.scale
        if prop_attn and size is not None:
            attn = attn + size.log()[:, None, None, :, 0]
        attn = attn.softmax(dim=-1)
        xa = attn_mod.proj((attn @ v).transpose(1, 2).reshape(B, N, C))
        x = x + blk.ls1(xa)
        metric = k.mean(1)
        if r_blk > 0:
            merge, _ = bipartite_soft_matching_ref(metric, r_blk, P, threshold, min(r_min, r_blk))
            x, size = merge_wavg_ref(merge, x, size)
            ids = merge(ids, None)
        lengths.append(x.shape[1])
        x = x + blk.ls2(blk.mlp(blk.norm2(x)))
    logits = model.forward_head(model.norm(x))[0]
    return logits, lengths, ids[0, :, 0].long().tolist(), (torch.ones(x.shape[1]) if size is None else size[0, :, 0])


def make_reg_model():
    """A random timm ViT with CLS + 4 register tokens (5 prefix tokens), 4 blocks, sharpened attention."""
    with torch.random.fork_rng():
        torch.manual_seed(3)
        model = timm.create_model("vit_tiny_patch16_224", pretrained=False, reg_tokens=4, img_size=SMALL,
                                  depth=4).eval()
        with torch.no_grad():
            for blk in model.blocks:
                blk.attn.qkv.weight[: 2 * blk.attn.qkv.in_features].mul_(2.5)
    return model


def _model(kind):
    if kind == "reg4":
        return make_reg_model()
    model, _ = make_model(TINY if kind == "cls" else TINY_DIST, img_size=SMALL)
    return model


# ------------------------------------------------------------------------------------------------ the method


def test_registered_and_defaults():
    assert METHODS["tome"] is ToMe
    m = make_method("tome", r=8)
    assert m == ToMe(r=8) and m.variant == "fixed" and m.prop_attn and m.proportional_attention
    assert not make_method("evit").proportional_attention
    # r=None: the variant's default (fixed 4, adaptive 16 as a cap with threshold 0.9)
    assert ToMe().r is None and ToMe().bind(depth=12, num_prefix=1, num_patches=196)[0].r == (4,) * 12
    adaptive = ToMe(variant="adaptive").bind(depth=12, num_prefix=1, num_patches=196)[0]
    assert adaptive.r == (16,) * 12 and adaptive.threshold == 0.9 and adaptive.r_min == 0


def test_parse_r_is_tomes():
    for depth in (4, 12, 24):
        for r in (0, 1, 8, 13, 16):
            for inflect in (0.0, -1.0, -0.5, 0.5, 1.0):
                assert list(parse_r(depth, r, inflect)) == tome_parse_r(depth, (r, inflect) if inflect else r)
    assert parse_r(5, (3, 1)) == (3, 1, 0, 0, 0) and tome_parse_r(5, [3, 1]) == [3, 1, 0, 0, 0]


def test_plan_fixed_r8_is_tomes_model_r():
    method, plan = ToMe(r=8).bind(depth=12, num_prefix=1, num_patches=196)
    assert method.r == (8,) * 12 and len(plan) == 12
    assert [p.width_out for p in plan] == [197 - 8 * (i + 1) for i in range(12)]
    assert all(p.exact and p.site == "mid" and p.keep == p.width_out - 1 for p in plan)
    # ToMe clamps a constant r to half of the non-prefix tokens in later blocks: r = 16 at 197 tokens
    method, plan = ToMe(r=16).bind(depth=12, num_prefix=1, num_patches=196)
    assert method.r == (16,) * 11 + (10,) and plan[-1].width_out == 11
    # the (r, inflection) schedule and a per-block tuple (missing blocks merge nothing: no stage there)
    method, plan = ToMe(r=8, inflect=-1.0).bind(depth=12, num_prefix=1, num_patches=196)
    assert method.r == tuple(tome_parse_r(12, (8, -1.0))) and method.inflect == 0.0
    method, plan = ToMe(r=(4, 0, 6)).bind(depth=12, num_prefix=2, num_patches=196)
    assert method.r == (4, 0, 6) + (0,) * 9 and [(p.block, p.width_in, p.width_out) for p in plan] == [
        (0, 198, 194), (2, 194, 188)]
    # adaptive: width shrinks by r_min only, counts per image are not exact
    method, plan = ToMe(variant="adaptive", r=8, r_min=2).bind(depth=4, num_prefix=1, num_patches=49)
    assert [(p.width_in, p.width_out, p.exact) for p in plan] == [(50, 48, False), (48, 46, False), (46, 44, False),
                                                                  (44, 42, False)]


@pytest.mark.parametrize("opts,msg", [
    ({"variant": "bogus"}, "variant must be one of fixed, adaptive"),
    ({"r": -1}, "r must be an int >= 0"),
    ({"r": True}, "r must be an int >= 0"),
    ({"r": 2.5}, "r must be an int >= 0"),
    ({"r": (1, -2)}, "r must be an int >= 0 or a non-empty sequence"),
    ({"r": ()}, "non-empty sequence"),
    ({"inflect": 2.0}, r"inflect must be a number in \[-1, 1\]"),
    ({"r": (1, 2), "inflect": -1.0}, "inflect applies to an int r"),
    ({"threshold": 1.5}, r"threshold must be a cosine similarity in \[-1, 1\]"),
    ({"threshold": float("nan")}, "threshold must be"),
    ({"r_min": -1}, "r_min must be an int >= 0"),
    ({"prop_attn": 1}, "prop_attn must be a bool"),
])
def test_malformed_options(opts, msg):
    with pytest.raises(ValueError, match=msg):
        ToMe(**opts)
    with pytest.raises(ValueError, match=r"unknown option\(s\) keep_rate for method 'tome'"):
        make_method("tome", keep_rate=0.5)


def test_r_larger_than_possible_is_an_error_at_bind():
    model, _ = make_model(TINY, img_size=SMALL)  # 49 patches: at most 24 in block 0
    with pytest.raises(ValueError, match=r"prune: tome: r = 25 is more than block 0 can merge: 50 tokens .* = 24"):
        raggedvit.prune(model, "tome", r=25)
    with pytest.raises(ValueError, match=r"r\[1\] = 20 is more than block 1 can merge: 40 tokens enter it, so at "
                                         r"most \(40 - 1\) // 2 = 19"):
        raggedvit.prune(model, "tome", r=(10, 20))
    with pytest.raises(ValueError, match="r has 13 values for a model of 12 blocks"):
        raggedvit.prune(model, "tome", r=(1,) * 13)
    raggedvit.prune(model, "tome", r=24)  # block 0 merges 24, later blocks as many as ToMe's clamp allows


def test_backend_without_key_bias_is_refused_at_prune():
    model, _ = make_model(TINY, img_size=SMALL)
    with pytest.raises(ValueError, match="tome uses proportional attention .* 'fa2_varlen' does not take"):
        raggedvit.prune(model, "tome", attention="fa2_varlen")
    raggedvit.prune(model, "tome", attention="fa2_varlen", prop_attn=False)  # no bias: any backend


# --------------------------------------------------------------------------------- the forward vs the reference

ADAPTIVE = {"variant": "adaptive", "r": 8, "threshold": 0.6, "r_min": 1}


@pytest.mark.parametrize("kind", ["cls", "dist", "reg4"])
@pytest.mark.parametrize("opts", [{"r": 4}, {"r": 6, "prop_attn": False}, {"r": (5, 0, 7, 3)},
                                  {"r": 6, "inflect": -1.0}, ADAPTIVE], ids=["r4", "r6-noprop", "per-block",
                                                                             "inflect", "adaptive"])
def test_packed_and_padded_equal_tomes_reference(kind, opts):
    model = _model(kind)
    if kind != "cls" and opts.get("r") != 4 and opts is not ADAPTIVE:
        pytest.skip("schedules on the CLS model only")
    depth, P = len(model.blocks), model.num_prefix_tokens
    r = opts.get("r", 8)
    if isinstance(r, tuple):
        r = list(r)[:depth] if len(r) >= depth else list(r)
    elif opts.get("inflect"):
        r = (r, opts["inflect"])
    packed = raggedvit.prune(model, "tome", attention="reference", **opts).eval()
    padded = raggedvit.prune(model, "tome", layout="padded", **opts).eval()
    adaptive = opts.get("variant") == "adaptive"
    for _ in range(8):  # adaptive: fresh images until the counts differ per image (a real ragged batch)
        images = make_images(3, SMALL)
        with torch.no_grad():
            a = packed(images)
        if not adaptive or any(len(set(k.tolist())) > 1 for k in packed.last_stats.kept):
            break
    with torch.no_grad():
        b = padded(images)
    sa, sb = packed.last_stats, padded.last_stats
    for ka, kb in zip(sa.kept, sb.kept, strict=True):
        assert torch.equal(ka, kb), f"kept counts differ: {ka.tolist()} vs {kb.tolist()}"
    assert torch.equal(sa.kept_patch_mask, sb.kept_patch_mask)
    torch.testing.assert_close(a, b, atol=1e-4, rtol=0)
    blocks = [p.block for p in packed.plan]
    final = sa.token_ids[:, :]
    for i in range(images.shape[0]):
        ref, lengths, ref_ids, _ = tome_reference(model, images[i], r, prop_attn=opts.get("prop_attn", True),
                                                  threshold=opts.get("threshold") if adaptive else None,
                                                  r_min=opts.get("r_min", 0))
        torch.testing.assert_close(a[i], ref, atol=1e-4, rtol=0)
        assert [int(k[i]) for k in sa.kept] == [lengths[b_] for b_ in blocks]
        n = int(sa.final_meta.lengths[i])
        assert final[i, :n].tolist() == ref_ids, "token order differs from ToMe's"
        assert final[i, :P].tolist() == list(range(P)), "prefix tokens must stay first"
    if adaptive:
        assert any(len(set(k.tolist())) > 1 for k in sa.kept), "adaptive counts should differ across images"


def test_sizes_travel_with_the_rows():
    """The final token sizes of the forward equal ToMe's, sum to the token count, prefix sizes stay 1."""
    from raggedvit.models import forward as fwd

    model = _model("dist")
    images = make_images(2, SMALL)
    seen = {}
    original = fwd.run_stage

    def spy(*args, **kw):
        out = original(*args, **kw)
        seen["size"], seen["meta"] = out[4], out[2]
        return out

    for opts in ({"r": 5}, ADAPTIVE):
        pruned = raggedvit.prune(model, "tome", attention="reference", **opts).eval()
        fwd.run_stage = spy
        try:
            with torch.no_grad():
                pruned(images)
        finally:
            fwd.run_stage = original
        meta, size = seen["meta"], seen["size"]
        dense = size[meta.dense_rows]
        for i in range(2):
            n = int(meta.lengths[i])
            *_, ref_size = tome_reference(model, images[i], opts["r"], threshold=opts.get("threshold"),
                                          r_min=opts.get("r_min", 0))
            assert torch.equal(dense[i, :n], ref_size)
            assert int(dense[i, :n].sum()) == 2 + 49 and (dense[i, :2] == 1).all()


# ------------------------------------------------------------------------------------------------ ragged merges


@pytest.mark.parametrize("adaptive", [False, True])
@pytest.mark.parametrize("P", [1, 2, 5])
def test_merge_on_a_ragged_batch_matches_each_image_alone(adaptive, P):
    """bipartite_merge on images of different lengths == the reference on each image's own tokens (the A/B
    alternation over its live tokens, padding never matching), with sizes and NaN garbage past the lengths."""
    lengths = [P, P + 1, P + 2, P + 7, P + 12, P + 12 + (P % 2)]
    B, L, C, D, r = len(lengths), max(lengths) + 1, 8, 6, 4
    metric = torch.randn(B, L, D)
    metric[:, :, 0] += 2.0  # similar keys: many pairs above the threshold
    x = torch.randn(B, L, C)
    size = torch.randint(1, 5, (B, L)).float()
    lens = torch.tensor(lengths)
    pad = torch.arange(L)[None, :] >= lens[:, None]
    metric = metric.masked_fill(pad[:, :, None], float("nan"))
    x = x.masked_fill(pad[:, :, None], float("nan"))
    size = size.masked_fill(pad, float("nan"))
    rule = dict(threshold=0.8, r_min=1) if adaptive else {}
    sel = bipartite_merge(metric, x.clone(), size, lens, P, r=r, width=L, fresh=True, **rule)
    for i, n in enumerate(lengths):
        merge, r_i = bipartite_soft_matching_ref(metric[i:i + 1, :n], r, P, rule.get("threshold"), rule.get("r_min", 0))
        want_x, want_size = merge_wavg_ref(merge, x[i:i + 1, :n], size[i:i + 1, :n, None])
        want_pos = merge(torch.arange(n, dtype=torch.float64)[None, :, None], None)[0, :, 0].long()
        count = int(sel.count[i])
        assert count == n - r_i
        idx = sel.index[i, :count]
        assert torch.equal(idx, want_pos)
        torch.testing.assert_close(sel.values[i, idx], want_x[0], atol=1e-6, rtol=1e-6)
        assert torch.equal(sel.size[i, idx], want_size[0, :, 0])
    assert not sel.exact
    assert sel.values.shape == (B, L, C) and sel.size.shape == (B, L)


def test_ties_break_by_token_index():
    """Identical tokens: every A token ties with every B token; the lowest indices merge, into B token 0."""
    B, L, P = 2, 11, 1
    metric = torch.ones(B, L, 4)
    x = torch.arange(L, dtype=torch.float32)[None, :, None].expand(B, L, 3).contiguous()
    sel = bipartite_merge(metric, x, None, None, P, r=3, width=L - 3)
    # A = positions 0 (CLS), 2, 4, 6, 8, 10; B = 1, 3, 5, 7, 9: A 2, 4, 6 merge into B position 1
    assert sel.index[0, :8].tolist() == [0, 8, 10, 1, 3, 5, 7, 9] and sel.exact
    assert sel.values[0, 1].tolist() == [(1 + 2 + 4 + 6) / 4] * 3 and sel.size[0, 1] == 4
    for lengths in (None, torch.tensor([L, L])):
        again = bipartite_merge(metric, x, None, lengths, P, r=3, width=L - 3)
        assert torch.equal(again.index[:, :8], sel.index[:, :8])


# ------------------------------------------------------------------------------------------------ trained weights

PHOTOS = (0, 110, 260, 420)


@pytest.fixture(scope="module")
def trained(sample_data_root):
    model = sample_data.load_model(sample_data_root)
    images, labels = sample_data.load_images(model, PHOTOS, sample_data_root)
    return model, images, labels


@pytest.mark.parametrize("opts", [{"r": 8}, {"variant": "adaptive"}], ids=["r8", "adaptive-default"])
def test_trained_weights(trained, opts):
    model, images, labels = trained
    packed = raggedvit.prune(model, "tome", attention="reference", **opts).eval()
    padded = raggedvit.prune(model, "tome", layout="padded", **opts).eval()
    with torch.no_grad():
        a, b = packed(images), padded(images)
        dense = model(images)
    for ka, kb in zip(packed.last_stats.kept, padded.last_stats.kept, strict=True):
        assert torch.equal(ka, kb)
    torch.testing.assert_close(a, b, atol=1e-4, rtol=0)
    assert int((a.argmax(1) == dense.argmax(1)).sum()) >= 3, "ToMe changed most predictions on these photos"
    adaptive = opts.get("variant") == "adaptive"
    r, threshold = (16, 0.9) if adaptive else (opts["r"], None)
    for i in range(2):
        ref, lengths, _, _ = tome_reference(model, images[i], r, threshold=threshold)
        torch.testing.assert_close(a[i], ref, atol=1e-4, rtol=0)
        assert [int(k[i]) for k in packed.last_stats.kept] == lengths
    last = packed.last_stats.kept[-1]
    if threshold is None:
        assert (last == 197 - 8 * 12).all()
    else:
        assert len(set(last.tolist())) > 1 and int(last.max()) < 197


# ------------------------------------------------------------------------------------------------ GPU


@requires_gpu
@pytest.mark.parametrize("opts", [{"r": 8}, {"variant": "adaptive", "r": 12, "threshold": 0.6, "r_min": 2}],
                         ids=["r8", "adaptive"])
def test_graph_capture(opts):
    from raggedvit.models.graph import capture

    model = copy.deepcopy(make_model(TINY, img_size=SMALL)[0]).to(DEVICE)  # the cached model stays on the CPU
    pruned = raggedvit.prune(model, "tome", **opts).eval()
    graphed = capture(pruned, 4)
    for _ in range(3):  # new images: new per-image counts in the same graph
        images = make_images(4, SMALL).to(DEVICE)
        with torch.no_grad():
            want = pruned(images)
            kept = [k.clone() for k in pruned.last_stats.kept]
        torch.testing.assert_close(graphed(images, clone=True), want, rtol=1e-3, atol=1e-3)
        for a, b in zip(graphed.stats.kept, kept, strict=True):
            assert torch.equal(a, b)
    torch.cuda.set_sync_debug_mode("error")
    try:
        with torch.no_grad():
            pruned(images)  # the packed forward reads nothing back
    finally:
        torch.cuda.set_sync_debug_mode("default")

"""Tests for the raggedvit.prune API: timm parity, Triton path, 384 px, edge cases, errors, weights, graph safety."""

from __future__ import annotations

import copy
import dataclasses

import pytest
import timm
import torch
from torch.utils._python_dispatch import TorchDispatchMode

import raggedvit
from raggedvit.models import PrunedViT, PruneStats, calibrate_thresholds, load_dynamicvit_checkpoint
from raggedvit.pruning import dynamicvit
from test_models_prune import SMALL, TINY, TINY_DIST, make_images, make_model

from conftest import DEVICE


@pytest.mark.parametrize("name", [TINY, TINY_DIST])
@pytest.mark.parametrize("layout", ["packed", "padded"])
def test_none_equals_timm(name, layout):
    model = timm.create_model(name, pretrained=False).eval()
    images = make_images(2)
    pruned = raggedvit.prune(model, "none", layout=layout, attention="reference").eval()
    with torch.no_grad():
        ref = model(images)
        out = pruned(images)
        feats = pruned.forward_features(images)
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=0)
    assert feats.shape == (2, model.num_prefix_tokens, model.embed_dim)
    if name == TINY_DIST:  # timm's distilled convention, eval mode: mean of the two heads
        with torch.no_grad():
            x = model.forward_features(images)
            torch.testing.assert_close(out, (model.head(x[:, 0]) + model.head_dist(x[:, 1])) / 2, atol=1e-5, rtol=0)
    stats = pruned.last_stats
    assert isinstance(stats, PruneStats) and stats.kept == () and stats.stage_blocks == ()
    assert stats.kept_patch_mask.shape == (2, 196) and stats.kept_patch_mask.all()


def test_packed_triton_backend():
    """The packed path through the Triton kernel (interpreter on CPU) equals the padded SDPA baseline."""
    model = timm.create_model(TINY, pretrained=False, img_size=64, depth=3).eval()
    images = make_images(2, size=64).to(DEVICE)
    model.to(DEVICE)
    opts = dict(stages=(1, 2), alpha=1.0)
    tri = raggedvit.prune(model, "threshold_l2", attention="triton", **opts).eval()
    pad = raggedvit.prune(model, "threshold_l2", layout="padded", **opts).eval()
    with torch.no_grad():
        a, b = tri(images), pad(images)
    for ka, kb in zip(tri.last_stats.kept, pad.last_stats.kept):
        assert torch.equal(ka, kb)
    torch.testing.assert_close(a, b, atol=1e-4, rtol=0)
    assert any(int(k.min()) < 17 for k in tri.last_stats.kept)


def test_384_schedule():
    model = timm.create_model(TINY, pretrained=False, img_size=384).eval()
    images = make_images(1, size=384)
    with torch.no_grad():
        dyn = raggedvit.prune(model, "dynamicvit", attention="reference", random_predictors=True).eval()
        dyn(images)
        assert [int(k[0]) for k in dyn.last_stats.kept] == [1 + k for k in dynamicvit.keep_counts(576, 0.7)]
        assert dyn.last_stats.kept_patch_mask.shape == (1, 576)
        ev = raggedvit.prune(model, "evit", keep_rate=0.7, attention="reference").eval()
        ev(images)
        assert [int(k[0]) for k in ev.last_stats.kept] == [1 + 404 + 1, 1 + 284 + 1, 1 + 200 + 1]
        ats = raggedvit.prune(model, "ats", stages=(3,), attention="reference").eval()
        assert ats.method.num_samples == 2 * 576  # ats.SAMPLES_PER_PATCH per patch
        # run with the patch count: under the Triton interpreter (one program per image) the sampling kernel's
        # (L, num_samples) block would exceed Triton's 2**20 elements with 1152 samples (not on a GPU)
        ats = raggedvit.prune(model, "ats", stages=(3,), num_samples=576, attention="reference").eval()
        ats(images)
        assert 2 < int(ats.last_stats.kept[0][0]) <= 577


@pytest.mark.parametrize("method", ["dynamicvit", "evit", "ats", "threshold_l2"])
def test_keep_rate_one_prunes_nothing(method):
    model, preds = make_model(img_size=SMALL)
    images = make_images(2, SMALL)
    extra = {"predictors": preds} if method == "dynamicvit" else {}
    pruned = raggedvit.prune(model, method, variant="fixed", keep_rate=1.0, attention="reference", **extra).eval()
    assert all(p.noop for p in pruned.plan)
    with torch.no_grad():
        torch.testing.assert_close(pruned(images), model(images), atol=1e-5, rtol=0)
    assert all(k.tolist() == [50, 50] for k in pruned.last_stats.kept)


@pytest.mark.parametrize("layout", ["packed", "padded"])
def test_thresholds_that_drop_everything_keep_k_min(layout):
    model, preds = make_model(img_size=SMALL)
    images = make_images(1, SMALL)  # batch 1
    with torch.no_grad():
        for method, opts in [("threshold_l2", {"thresholds": (1e9, 1e9, 1e9), "k_min": 3}),
                             ("dynamicvit", {"variant": "adaptive", "keep_threshold": 0.999999, "k_min": 3,
                                             "predictors": preds})]:
            pruned = raggedvit.prune(model, method, layout=layout, attention="reference", **opts).eval()
            out = pruned(images)
            assert torch.isfinite(out).all()
            assert [k.tolist() for k in pruned.last_stats.kept] == [[4], [4], [4]]
            assert int(pruned.last_stats.kept_patch_mask.sum()) == 3
        # EViT mass: a tiny mass keeps k_min (1) token plus the fused token.
        pruned = raggedvit.prune(model, "evit", layout=layout, variant="adaptive", mass=1e-6,
                                 attention="reference").eval()
        pruned(images)
        assert [k.tolist() for k in pruned.last_stats.kept] == [[3], [3], [3]]


def test_distilled_keeps_both_prefix_tokens():
    model, _ = make_model(TINY_DIST, img_size=SMALL)
    pruned = raggedvit.prune(model, "ats", attention="reference").eval()
    with torch.no_grad():
        pruned(make_images(2, SMALL))
    st = pruned.last_stats
    final = st.token_index[st.final_meta.dense_rows]
    assert (final[:, :2] == torch.tensor([0, 1], dtype=final.dtype)).all()
    assert st.kept_patch_mask.shape == (2, 49)


@pytest.mark.parametrize("method,opts", [("evit", {"variant": "adaptive"}), ("ats", {}),
                                         ("threshold_l2", {"alpha": 1.0})])
def test_register_tokens_are_prefix_tokens(method, opts):
    """CLS + 4 registers: never pruned, first in every image; packed == padded; unpruned == timm."""
    model = timm.create_model("vit_tiny_patch16_224", pretrained=False, reg_tokens=4, img_size=SMALL, depth=6).eval()
    images = make_images(2, SMALL)
    packed = raggedvit.prune(model, method, attention="reference", stages=(1, 3), **opts).eval()
    padded = raggedvit.prune(model, method, layout="padded", stages=(1, 3), **opts).eval()
    with torch.no_grad():
        a, b = packed(images), padded(images)
        dense = raggedvit.prune(model, "none", attention="reference").eval()(images)
        torch.testing.assert_close(dense, model(images), rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)
    st = packed.last_stats
    final = st.token_index[st.final_meta.dense_rows]
    assert (final[:, :5] == torch.arange(5, dtype=final.dtype)).all()
    assert st.kept_patch_mask.shape == (2, 49) and not st.kept_patch_mask.all()


def test_errors_at_prune_time():
    model = timm.create_model(TINY, pretrained=False, depth=12)
    cases = [
        (dict(method="bogus"), "unknown method 'bogus'; valid: none, threshold_l2, dynamicvit, evit, ats"),
        (dict(method="evit", layout="ragged"), "unknown layout 'ragged'; valid: packed, padded"),
        (dict(method="evit", attention="nope"), "unknown attention backend 'nope'; valid:"),
        (dict(method="evit", layout="padded", padding="batch"), "unknown padding 'batch'; valid: max, static"),
        (dict(method="evit", keep_rate=0.0), "keep_rate must be a number in (0, 1]"),
        (dict(method="evit", keep_rate=1.5), "keep_rate must be a number in (0, 1]"),
        (dict(method="dynamicvit", keep_rate=-0.1), "keep_rate must be a number in (0, 1]"),
        (dict(method="evit", variant="sometimes"), "variant must be one of fixed, adaptive"),
        (dict(method="evit", alpha=1.0), "unknown option(s) alpha for method 'evit'; valid:"),
        (dict(method="none", keep_rate=0.5), "unknown option(s) keep_rate for method 'none'"),
        (dict(method="ats", stages=(3, 12)), "stages must be strictly increasing block indices in [1, 11]"),
        (dict(method="threshold_l2", thresholds=(1.0, 2.0)), "thresholds must be 3 finite numbers"),
        (dict(method="threshold_l2", k_min=0), "k_min must be an int >= 1"),
        (dict(method="evit", k_min=5, k_max=2), "k_max (2) must be >= k_min (5)"),
        (dict(method="dynamicvit", predictors=torch.nn.ModuleList()), "predictors must be an nn.ModuleList of 3"),
    ]
    for kwargs, msg in cases:
        with pytest.raises(ValueError) as e:
            raggedvit.prune(model, **kwargs)
        assert msg in str(e.value), (kwargs, str(e.value))
    with pytest.raises(ValueError, match="expected a timm VisionTransformer"):
        raggedvit.prune(torch.nn.Linear(3, 3), "evit")
    bad = timm.create_model("vit_tiny_patch16_224", pretrained=False, global_pool="avg", class_token=False)
    with pytest.raises(ValueError, match="unsupported VisionTransformer"):
        raggedvit.prune(bad, "evit")
    with pytest.raises(ValueError, match="already pruned"):
        raggedvit.prune(raggedvit.prune(model, "evit"), "evit")


def test_weights_are_shared_and_state_dict_is_timms():
    model = timm.create_model(TINY_DIST, pretrained=False).eval()
    pruned = raggedvit.prune(model, "evit", attention="reference")
    assert set(pruned.state_dict()) == set(model.state_dict())
    assert pruned.blocks[0].attn.qkv.weight is model.blocks[0].attn.qkv.weight and pruned.dist_token is model.dist_token
    other = timm.create_model(TINY_DIST, pretrained=False)
    pruned.load_state_dict(other.state_dict())  # timm checkpoints load as they are
    assert torch.equal(model.pos_embed, other.pos_embed)
    images = make_images(1)
    with torch.no_grad():
        before = model(images)
        pruned.eval()(images)
        torch.testing.assert_close(model(images), before, rtol=0, atol=0)  # the timm model is untouched
    assert type(model).forward is timm.models.deit.VisionTransformerDistilled.forward
    pruned.train()
    assert model.training and model.blocks[0].training
    pruned.eval()
    assert not model.training


def test_dynamicvit_official_checkpoint_layout(tmp_path):
    model = timm.create_model(TINY, pretrained=False).eval()
    donor = raggedvit.prune(timm.create_model(TINY, pretrained=False), "dynamicvit", attention="reference",
                            random_predictors=True)
    state = {"model": {("module." + k): v.clone() for k, v in donor.state_dict().items()}, "epoch": 29}
    keys = [k for k in state["model"] if "score_predictor" in k]
    assert "module.score_predictor.2.in_conv.0.weight" in keys and "module.score_predictor.0.out_conv.4.bias" in keys
    assert donor.score_predictor[0].in_conv[0].eps == 1e-5
    path = tmp_path / "dynamicvit.pth"
    torch.save(state, path)
    pruned = raggedvit.prune(model, "dynamicvit", attention="reference", random_predictors=True).eval()
    load_dynamicvit_checkpoint(pruned, path)
    images = make_images(2)
    with torch.no_grad():
        torch.testing.assert_close(pruned(images), donor.eval()(images), atol=1e-5, rtol=0)
    for ka, kb in zip(pruned.last_stats.kept, donor.last_stats.kept):
        assert torch.equal(ka, kb)
    with pytest.raises(ValueError, match="need a model from prune"):
        load_dynamicvit_checkpoint(raggedvit.prune(model, "evit"), path)


def test_calibrated_thresholds_hit_the_keep_rate():
    model, _ = make_model()
    calib = make_images(6)
    thresholds = calibrate_thresholds(model, calib, keep_rate=0.7, batch_size=3)
    assert len(thresholds) == 3 and all(isinstance(t, float) for t in thresholds)
    pruned = raggedvit.prune(model, "threshold_l2", thresholds=thresholds, attention="reference").eval()
    with torch.no_grad():
        pruned(calib)
    kept = [k.float() - 1 for k in pruned.last_stats.kept]
    for s, target in enumerate([0.7 * 196, 0.49 * 196, 0.343 * 196]):
        assert abs(kept[s].mean().item() - target) <= 2.0, (s, kept[s].tolist())
    assert len(set(kept[0].tolist())) > 1


class _Recorder(TorchDispatchMode):
    """Records output shapes of every op; fails on ops that read device values or have data-dependent shapes."""

    FORBIDDEN = ("_local_scalar_dense", "nonzero", "masked_select", "unique", "item")

    def __init__(self):
        super().__init__()
        self.shapes = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = func.__name__
        assert not any(f in name for f in self.FORBIDDEN), f"host sync / data-dependent op in packed forward: {name}"
        out = func(*args, **(kwargs or {}))
        outs = out if isinstance(out, (tuple, list)) else (out,)
        self.shapes.append((name, tuple(tuple(o.shape) for o in outs if isinstance(o, torch.Tensor))))
        return out


@pytest.mark.parametrize("method,opts", [("ats", {"num_samples": 49}), ("evit", {"variant": "adaptive"}),
                                         ("threshold_l2", {"alpha": 1.0}), ("dynamicvit", {"variant": "adaptive"}),
                                         ("evit", {})])
@pytest.mark.parametrize("layout", [dict(attention="reference"), dict(layout="padded", padding="static")],
                         ids=["packed", "padded-static"])
def test_packed_forward_is_static_and_sync_free(method, opts, layout):
    """Shapes depend only on (batch, model, config): two batches with different kept counts run the same ops
    on the same shapes, and nothing reads a device value back (CUDA-graph ready). The padded layout with
    ``padding="static"`` (the fair padded baseline) is static too."""
    model, preds = make_model(img_size=SMALL)
    extra = {"predictors": preds} if method == "dynamicvit" else {}
    pruned = raggedvit.prune(model, method, **layout, **extra, **opts).eval()
    runs = []
    with torch.no_grad():
        for scale in (0.25, 1.0, 4.0, 16.0):  # different image statistics: different kept counts
            images = make_images(2, SMALL) * scale
            rec = _Recorder()
            with rec:
                pruned(images)
            runs.append((rec.shapes, [k.tolist() for k in pruned.last_stats.kept]))
    assert all(r[0] == runs[0][0] for r in runs)
    if opts.get("variant", "adaptive" if method in ("ats", "threshold_l2") else "fixed") == "adaptive":
        assert any(r[1] != runs[0][1] for r in runs), "the batches should keep different counts"


def test_stats_shapes_and_types():
    model, _ = make_model()
    pruned = raggedvit.prune(model, "evit", keep_rate=0.7, attention="reference").eval()
    assert isinstance(pruned, PrunedViT) and pruned.last_stats is None
    with torch.no_grad():
        pruned(make_images(3))
    st = pruned.last_stats
    assert st.stage_blocks == (3, 6, 9) and st.stage_max_seqlen == (140, 100, 72)
    assert all(k.shape == (3,) and k.dtype == torch.int64 for k in st.kept)
    assert st.kept_patch_mask.dtype == torch.bool and st.kept_patch_mask.shape == (3, 196)
    assert st.token_index.dtype == torch.int32 and st.final_meta.cu_seqlens.tolist() == [0, 72, 144, 216]
    final = st.token_index[st.final_meta.dense_rows]  # 72 = CLS + 70 kept (an earlier fused token may be one) + fused
    assert (final[:, -1] == -1).all()
    assert st.kept_patch_mask.sum(1).tolist() == (final >= 1).sum(1).tolist()
    assert all(60 <= n <= 70 for n in st.kept_patch_mask.sum(1).tolist())
    with pytest.raises(dataclasses.FrozenInstanceError):
        st.kept = ()


class OpCounter(TorchDispatchMode):
    """Counts the aten ops that launch work (views, reshapes and other aliasing ops are not counted)."""

    VIEWS = ("view", "_unsafe_view", "alias", "t", "unsqueeze", "slice", "expand", "permute", "select",
             "squeeze", "transpose", "unbind", "split", "lift_fresh", "detach")

    def __init__(self):
        super().__init__()
        self.ops: dict[str, int] = {}

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = func.overloadpacket.__name__
        if not func.is_view and name not in self.VIEWS:
            self.ops[name] = self.ops.get(name, 0) + 1
        return func(*args, **(kwargs or {}))

    @property
    def total(self) -> int:
        return sum(self.ops.values())


def count_ops(pruned, images) -> int:
    """Ops of one steady-state forward (a first call fills the constant caches)."""
    with torch.no_grad():
        pruned(images)
        counter = OpCounter()
        with counter:
            pruned(images)
    return counter.total


# Ops per pruning stage (packed, reference attention), beyond the unpruned forward. The CLS attention row
# (EViT, ATS) is a Triton launch and a mean over heads. DynamicViT includes its predictor MLP.
# Compaction (rows, cu_seqlens, dense view, token ids) is one launch (ops.compact_packed); the selections take
# two or three (ops.select: Threshold-L2 norms + selection; ranks + selection for EViT with its fused token,
# DynamicViT and fixed ATS; ranks/CDF, hits, slots for ATS sampling);
# DynamicViT's remaining ops are its predictor MLP (adaptive: also its row -> image map, whose searchsorted
# runs over the whole cu_seqlens and subtracts 1, since Inductor 2.11 on CUDA cannot search a slice of it);
# ATS adds the value norms.
OP_BUDGETS = [("threshold_l2", {"variant": "fixed"}, 3), ("evit", {}, 5), ("ats", {"variant": "fixed"}, 6),
              ("dynamicvit", {}, 21), ("threshold_l2", {"alpha": 1.0}, 4), ("evit", {"variant": "adaptive"}, 6),
              ("dynamicvit", {"variant": "adaptive"}, 28), ("ats", {}, 8)]


@pytest.mark.parametrize("method,opts,budget", OP_BUDGETS)
def test_ops_per_stage(method, opts, budget, monkeypatch):
    import sys

    from torch.utils._python_dispatch import _disable_current_modes

    from raggedvit.ops import cls_attention, compact, select

    def launches(real, n):  # the Triton interpreter dispatches many torch ops per launch
        def call(*args, **kwargs):
            with _disable_current_modes():
                out = real(*args, **kwargs)
            for _ in range(n):
                torch.empty(0)  # counted as one launch
            return out
        return call

    for op, n in ((cls_attention.cls_attention_mean, 2), (compact.compact_packed, 1), (select.best_first_select, 2),
                  (select.l2_select, 2), (select.ats_select, 3)):
        for mod in [m for name, m in sys.modules.items() if name.startswith("raggedvit.")]:  # every importer
            if getattr(mod, op.__name__, None) is op:
                monkeypatch.setattr(mod, op.__name__, launches(op, n))
    model, preds = copy.deepcopy(make_model(img_size=SMALL))  # on the GPU machine: CUDA, as the kernels need
    model, preds, images = model.to(DEVICE), preds.to(DEVICE), make_images(2, SMALL).to(DEVICE)
    base = count_ops(raggedvit.prune(model, "none", attention="reference").eval(), images)
    extra = {"predictors": preds} if method == "dynamicvit" else {}
    pruned = raggedvit.prune(model, method, attention="reference", **extra, **opts).eval()
    per_stage = (count_ops(pruned, images) - base) / len(pruned.plan)
    assert per_stage <= budget, f"{method} {opts}: {per_stage:.1f} ops per stage (budget {budget})"


def test_per_stage_k_max_and_any_predictor_module():
    model, preds = make_model(img_size=SMALL)
    images = make_images(2, SMALL)
    pruned = raggedvit.prune(model, "threshold_l2", k_max=(30, None, 8), alpha=0.5, attention="reference").eval()
    assert [p.width_out for p in pruned.plan] == [31, 31, 9]
    with torch.no_grad():
        pruned(images)
    assert [int(k.max()) <= p.width_out for k, p in zip(pruned.last_stats.kept, pruned.plan)] == [True] * 3
    assert int(pruned.last_stats.kept[2].max()) == 9
    with pytest.raises(ValueError, match="k_max must be an int, None or 3 values"):
        raggedvit.prune(model, "evit", variant="adaptive", k_max=(3, 4))
    with pytest.raises(ValueError, match=r"k_max \(2\) must be >= k_min \(5\)"):
        raggedvit.prune(model, "evit", variant="adaptive", k_min=5, k_max=(9, 2, 9))

    class Wrapped(torch.nn.Module):  # any module with Predictor's call signature
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, x, seg_ids, dense_rows, cand):
            return self.inner(x, seg_ids, dense_rows, cand)

    wrapped = torch.nn.ModuleList(Wrapped(p) for p in preds)
    a = raggedvit.prune(model, "dynamicvit", predictors=wrapped, attention="reference").eval()
    b = raggedvit.prune(model, "dynamicvit", predictors=preds, attention="reference").eval()
    with torch.no_grad():
        torch.testing.assert_close(a(images), b(images), rtol=0, atol=0)

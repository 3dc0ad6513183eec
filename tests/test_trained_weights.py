"""CI checks with trained weights and real photos (issue 11): the trained timm ViT-Tiny of ``../shared/data``
(or ``$RAGGEDVIT_DATA``) on a fixed subset of its labelled ImageNet sample, fp32 on the CPU.

* dense top-1 of timm's own forward on the subset, with real ImageNet-1k labels;
* every method and variant: packed logits == padded logits (<= 1e-4) and identical decisions (kept counts per
  stage and image, surviving patches), kept counts in a plausible range.

Only the string API ``raggedvit.prune(model, method, layout=..., attention=..., **options)`` is used. The
packed layout selects and compacts with the Triton kernels (under the interpreter on a CPU-only machine), the
padded one with the torch functions, so these tests compare two implementations on real scores. Without the
data the tests skip (fail under ``CI=true``, see ``conftest.sample_data_root``).
"""

from __future__ import annotations

import pytest
import torch

import raggedvit
from raggedvit import sample_data

from conftest import ON_GPU

# 12 photos (positions in sample_data.sample_files(), synset order), fixed: DENSE_CORRECT depends on them.
# Chosen among every 10th photo as those whose keep decisions, for every case below, stay the same when the
# padded layout's attention output is perturbed by 1e-5 relative noise (3 seeds; 10x the rounding difference
# between attention backends): the layouts round differently, and a near tie (ATS: two significances 2 ulp
# apart, or a sample point within 1e-7 of a CDF midpoint) then flips either way, on some CPUs and not on
# others. ATS alone was unstable on 16 of those 50 photos. Disjoint from the calibration photos of THRESHOLDS.
SUBSET = (0, 40, 80, 110, 160, 200, 230, 260, 320, 380, 420, 480)
DENSE_CORRECT = 10  # timm's forward, fp32 CPU: 10/12 correct on SUBSET (404/500 = 80.8% on all 500)
PACKED_BATCH = 12  # images of SUBSET that the packed == padded checks run (the interpreter is slow)
# Threshold-L2 absolute thresholds from raggedvit.calibrate_thresholds(model, images[250::4], keep_rate=0.7)
# (63 sample photos disjoint from SUBSET), rounded
THRESHOLDS = (7.87, 8.15, 14.55)

# The options are the defaults before the trained-model defaults of issue 11 (keep rate 0.7, ATS 0.9 and 196
# samples), stated explicitly: SUBSET was chosen for stable decisions with exactly these.
CASES = [
    ("threshold_l2", {"variant": "adaptive", "alpha": 1.0}),
    ("threshold_l2", {"variant": "adaptive", "thresholds": THRESHOLDS}),
    ("threshold_l2", {"variant": "fixed", "keep_rate": 0.7}),
    ("dynamicvit", {"variant": "fixed"}),
    ("dynamicvit", {"variant": "adaptive", "keep_threshold": 0.46, "k_max": (None, 120, 80)}),
    ("evit", {"variant": "fixed", "keep_rate": 0.7}),
    ("evit", {"variant": "adaptive", "mass": 0.7}),
    # On the GPU machine (CPU model, no Triton interpreter: the packed layout takes the torch path, other CPU
    # kernels) ATS adaptive flipped a near-tie between layouts on this subset (issue 11: the two layouts'
    # attention differs by ~1e-6, and ATS decides at many rank boundaries); CI (interpreter) must pass.
    pytest.param(("ats", {"variant": "adaptive", "num_samples": 196}), marks=pytest.mark.xfail(
        ON_GPU, reason="issue 11: ATS near-ties flip between layouts outside the CPU CI setting", strict=False)),
    ("ats", {"variant": "fixed", "keep_rate": 0.9}),
]


def _ids(case) -> str:
    method, opts = case
    text = method + "".join(f"-{k}={v}" for k, v in opts.items() if k != "thresholds")
    return (text + ("-calibrated" if "thresholds" in opts else "")).replace(" ", "")


@pytest.fixture(scope="module")
def trained(sample_data_root):
    """``(model, images, labels)``: the trained ViT-Tiny (fp32, eval) and SUBSET through its eval transform."""
    model = sample_data.load_model(sample_data_root)
    images, labels = sample_data.load_images(model, SUBSET, sample_data_root)
    return model, images, labels


def test_locate_follows_the_environment_variable(monkeypatch, tmp_path, sample_data_root):
    monkeypatch.setenv(sample_data.ENV_VAR, str(tmp_path))
    assert sample_data.locate() is None
    reason = sample_data.missing_reason()
    assert sample_data.ENV_VAR in reason and str(tmp_path) in reason
    with pytest.raises(FileNotFoundError, match=sample_data.ENV_VAR):
        sample_data.load_model()
    monkeypatch.setenv(sample_data.ENV_VAR, str(sample_data_root))
    assert sample_data.locate() == sample_data_root


def test_labels_are_imagenet_indices(sample_data_root):
    files = sample_data.sample_files(sample_data_root)
    assert len(files) == 500
    labels = [label for _, label in files]
    assert labels == sorted(labels) and len(set(labels)) == 500
    assert files[0][0].parent.name == "n01440764" and files[0][1] == 0  # tench: class 0
    assert files[-1][0].parent.name == "n13133613" and files[-1][1] == 998  # ear (of corn): class 998
    assert max(labels) > 499  # not an ImageFolder enumeration of the 500 folders


def test_dense_top1(trained):
    model, images, labels = trained
    with torch.no_grad():
        logits = model(images)
    correct = int((logits.argmax(1) == labels).sum())
    assert correct == DENSE_CORRECT, f"dense top-1 {correct}/{len(SUBSET)} on the fixed subset, expected " \
                                     f"{DENSE_CORRECT}: weights, labels or the eval transform changed"


def _seeded_predictors(model, method: str, opts: dict) -> dict:
    """DynamicViT: random keep predictors from a fixed seed (built once by ``prune``, shared by both layouts)."""
    if method != "dynamicvit":
        return {}
    with torch.random.fork_rng():
        torch.manual_seed(0)
        donor = raggedvit.prune(model, method, layout="padded", random_predictors=True, **opts)
    return {"predictors": donor.score_predictor}


@pytest.mark.parametrize("case", CASES, ids=_ids)
def test_packed_equals_padded(trained, case):
    method, opts = case
    model, images, _ = trained
    images = images[:PACKED_BATCH]
    opts = {**opts, **_seeded_predictors(model, method, opts)}
    packed = raggedvit.prune(model, method, layout="packed", attention="reference", **opts).eval()
    padded = raggedvit.prune(model, method, layout="padded", **opts).eval()
    with torch.no_grad():
        a = packed(images)
        b = padded(images)
    sa, sb = packed.last_stats, padded.last_stats
    for s, (ka, kb) in enumerate(zip(sa.kept, sb.kept, strict=True)):
        assert torch.equal(ka, kb), f"stage {s}: kept counts differ: packed {ka.tolist()} padded {kb.tolist()}"
    diff = (sa.kept_patch_mask != sb.kept_patch_mask).sum(1)
    assert not diff.any(), f"surviving patches differ per image: {diff.tolist()}"
    err = (a - b).abs().max().item()
    assert err <= 1e-4, f"max |packed - padded| logit {err:.3g} > 1e-4"
    assert torch.equal(a.argmax(1), b.argmax(1))

    # plausible kept counts: more than the prefix, at most the stage bound; fixed stages exactly the bound
    P = model.num_prefix_tokens
    adaptive = packed.method.variant == "adaptive"
    for s, (k, plan) in enumerate(zip(sa.kept, packed.plan, strict=True)):
        assert int(k.min()) > P and int(k.max()) <= plan.width_out, f"stage {s}: kept {k.tolist()}"
        if not adaptive:
            assert (k == plan.width_out).all(), f"stage {s}: fixed rule kept {k.tolist()} != {plan.width_out}"
    if adaptive:  # a real ragged batch: counts differ across images and something was dropped
        assert any(len(set(k.tolist())) > 1 for k in sa.kept), f"equal counts: {[k.tolist() for k in sa.kept]}"
        last = sa.kept[-1]
        assert int(last.max()) < model.patch_embed.num_patches + P, "nothing pruned"

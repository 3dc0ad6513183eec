"""Default options that hold up on a trained model (issue 11), and the two methods without a usable default.

* the defaults chosen with ``benchmarks/defaults_sweep.py`` (trained ViT-Tiny, 500 labelled photos: each
  loses at most 1 point of top-1 there; the table is in ``benchmarks/results/defaults-sweep-*.md``);
* ``prune(model, "threshold_l2")`` (adaptive, no thresholds): ValueError saying how to calibrate;
* ``prune(model, "dynamicvit")`` without predictors: ValueError saying how to pass trained ones, unless
  ``random_predictors=True``;
* on the trained model (when the sample data is there): every default agrees with the dense model on a
  fixed subset of photos.
"""

from __future__ import annotations

import pytest
import timm
import torch

import raggedvit
from raggedvit.models import calibrate_thresholds
from raggedvit.pruning import ATS, DynamicViT, EViT, ThresholdL2, make_method
from raggedvit.pruning.dynamicvit import make_predictors
from raggedvit.pruning.threshold_l2 import CALIBRATION_KEEP_RATE

TINY = "deit_tiny_patch16_224"
ATS_SAMPLES_224 = 392  # ats.SAMPLES_PER_PATCH (2) x 196 patches
ATS_KEEP_RATE = 0.92
TL2_KEEP_RATE = 0.85
TL2_CALIBRATION_KEEP_RATE = 0.85


def _tiny(depth=4, img_size=64):
    torch.manual_seed(0)
    return timm.create_model(TINY, pretrained=False, img_size=img_size, depth=depth).eval()


def test_default_values():
    """The defaults of benchmarks/defaults_sweep.py's table (<= 1 point of top-1 lost on the trained ViT-Tiny)."""
    assert EViT().variant == "fixed" and EViT().keep_rate == 0.78
    assert EViT().mass == 0.92 and EViT(variant="adaptive").target_mass == 0.92
    assert EViT(mass=None, keep_rate=0.6).target_mass == 0.6  # None: the keep rate, as before
    assert ATS().variant == "adaptive" and ATS().stages == tuple(range(3, 12))
    assert ATS().bind(depth=12, num_prefix=1, num_patches=196)[0].num_samples == ATS_SAMPLES_224
    assert ATS().keep_rate == ATS_KEEP_RATE
    assert ThresholdL2().variant == "adaptive" and ThresholdL2().keep_rate == TL2_KEEP_RATE
    assert ThresholdL2().thresholds is None and ThresholdL2().alpha is None
    assert CALIBRATION_KEEP_RATE == TL2_CALIBRATION_KEEP_RATE
    assert DynamicViT().variant == "fixed" and DynamicViT().keep_rate == 0.7 and not DynamicViT().random_predictors
    assert make_method("evit") == EViT() and make_method("ats") == ATS()


def test_threshold_l2_adaptive_needs_calibration():
    model = _tiny()
    with pytest.raises(ValueError, match="adaptive variant needs thresholds calibrated for this model") as e:
        raggedvit.prune(model, "threshold_l2")
    msg = str(e.value)
    assert msg.startswith("prune: threshold_l2:")
    assert "raggedvit.models.calibrate_thresholds(model, images)" in msg and "alpha=" in msg
    assert "variant='fixed'" in msg
    with pytest.raises(ValueError, match="needs thresholds calibrated"):
        raggedvit.prune(model, ThresholdL2(stages=(1, 2)))
    with pytest.raises(ValueError, match="alpha must be a finite number >= 0 or None"):
        ThresholdL2(alpha=-1.0)
    images = torch.randn(2, 3, 64, 64)
    thresholds = calibrate_thresholds(model, images, stages=(1, 2))
    usable = [raggedvit.prune(model, "threshold_l2", stages=(1, 2), thresholds=thresholds, attention="reference"),
              raggedvit.prune(model, "threshold_l2", stages=(1, 2), alpha=1.0, attention="reference"),
              raggedvit.prune(model, "threshold_l2", stages=(1, 2), variant="fixed", attention="reference")]
    with torch.no_grad():
        for pruned in usable:
            assert pruned.eval()(images).shape == (2, 1000)
    # the calibration's own default keep rate is the library's
    kept = usable[0].last_stats.kept if usable[0].last_stats else None
    assert kept is not None and float(kept[0].float().mean()) > 1


def test_dynamicvit_needs_trained_predictors():
    model = _tiny()
    with pytest.raises(ValueError, match="needs trained keep predictors") as e:
        raggedvit.prune(model, "dynamicvit", stages=(1, 2))
    msg = str(e.value)
    assert "predictors=" in msg and "score_predictor" in msg and "random_predictors=True" in msg
    assert "Predictor(192)" in msg
    with pytest.raises(ValueError, match="give predictors= or random_predictors=True, not both"):
        DynamicViT(predictors=make_predictors(192, 3), random_predictors=True)
    with pytest.raises(ValueError, match="random_predictors must be True or False"):
        DynamicViT(random_predictors=1)
    images = torch.randn(2, 3, 64, 64)
    rand = raggedvit.prune(model, "dynamicvit", stages=(1, 2), random_predictors=True, attention="reference").eval()
    trained = raggedvit.prune(model, "dynamicvit", stages=(1, 2), predictors=make_predictors(192, 2),
                              attention="reference").eval()
    with torch.no_grad():
        assert rand(images).shape == trained(images).shape == (2, 1000)


# Photos of the labelled sample (positions in sample_data.sample_files()) and the least agreement with dense
# that each default keeps there: on all 500 photos every default agrees on >= 88% (see the sweep table).
SUBSET = tuple(range(0, 500, 25))


@pytest.mark.timeout(300)
@pytest.mark.parametrize("method", ["evit", "evit-adaptive", "ats", "ats-fixed", "threshold_l2-fixed",
                                    "threshold_l2-calibrated"])
def test_defaults_on_the_trained_model(method, sample_data_root):
    """Each default keeps most decisions of the dense model on 20 labelled photos (padded layout: the torch
    path, no interpreter; the packed layout makes the same decisions, see test_trained_weights.py)."""
    from raggedvit import sample_data

    model = sample_data.load_model(sample_data_root)
    images, labels = sample_data.load_images(model, SUBSET, sample_data_root)
    name, _, variant = method.partition("-")
    opts = {"variant": variant} if variant in ("fixed", "adaptive") else {}
    if variant == "calibrated":
        calib, _ = sample_data.load_images(model, range(1, 500, 25), sample_data_root)  # disjoint from SUBSET
        opts["thresholds"] = calibrate_thresholds(model, calib)
    pruned = raggedvit.prune(model, name, layout="padded", **opts).eval()
    with torch.no_grad():
        dense = model(images).argmax(-1)
        top1 = pruned(images).argmax(-1)
    assert int((top1 == dense).sum()) >= 16, f"{method}: {int((top1 == dense).sum())}/20 agree with dense"
    assert int((top1 == labels).sum()) >= int((dense == labels).sum()) - 2

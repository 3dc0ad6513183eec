"""runtime.graphs: the dense model compiled in its faster memory format, the padded baseline compiled at static
capacity, and BatchGraphs' choice between them."""

from __future__ import annotations

import pytest
import timm
import torch

import raggedvit
from raggedvit.runtime.graphs import MEMORY_FORMATS, BatchGraphs, DenseCompiled, PaddedCompiled


def _model():
    torch.manual_seed(0)
    return timm.create_model("vit_tiny_patch16_224", pretrained=False, depth=1, img_size=32, num_classes=7).eval()


@pytest.mark.timeout(600)
def test_dense_compiled_keeps_the_faster_format_and_timm_logits():
    """BatchGraphs compiles a dense model (DenseCompiled): both memory formats compiled and timed, the kept one
    gives timm's logits for new images in either layout; the caller's model stays contiguous; wrong shapes and
    training mode are refused."""
    model = _model()
    images = torch.randn(2, 3, 32, 32)
    torch._dynamo.reset()
    bg = BatchGraphs(model, device=torch.device("cpu"), dtype=torch.float32)  # dense="compiled" by default
    bg.prepare(images)
    dc = bg.graphs[2]
    assert isinstance(dc, DenseCompiled) and bg.capture_s == dc.capture_s
    assert dc.memory_format in MEMORY_FORMATS and set(dc.trial_images_per_s) == set(MEMORY_FORMATS)
    assert all(v > 0 for v in dc.trial_images_per_s.values()) and dc.capture_s > 0 and dc.stats is None
    assert model.patch_embed.proj.weight.is_contiguous()
    fresh = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        want = model(fresh)
        for fmt in MEMORY_FORMATS.values():
            torch.testing.assert_close(dc(fresh.contiguous(memory_format=fmt)), want, rtol=0, atol=1e-4)
        torch.testing.assert_close(bg(fresh), want, rtol=0, atol=1e-4)
        assert bg.last_stats is None
    with pytest.raises(ValueError, match=r"compiled for \(2, 3, 32, 32\)"):
        dc(torch.randn(3, 3, 32, 32))
    with pytest.raises(ValueError, match="example has shape"):
        DenseCompiled(model, 4, device=torch.device("cpu"), dtype=torch.float32, example=images)
    with pytest.raises(ValueError, match="training mode"):
        DenseCompiled(_model().train(), 2, device=torch.device("cpu"), dtype=torch.float32)


def test_batch_graphs_dense_option_is_checked():
    with pytest.raises(ValueError, match="dense must be 'compiled' or 'graph'"):
        BatchGraphs(_model(), device=torch.device("cpu"), dtype=torch.float32, dense="eager")


@pytest.mark.timeout(600)
def test_padded_compiled_gives_the_padded_models_logits_and_stats():
    """BatchGraphs compiles a padded model at static capacity (PaddedCompiled): for new images its logits and
    kept counts are those of the eager padded model; wrong shapes, training mode, the packed layout and
    batch-maximum padding are refused."""
    torch.manual_seed(0)
    model = timm.create_model("vit_tiny_patch16_224", pretrained=False, depth=4, img_size=64, num_classes=7).eval()
    padded = raggedvit.prune(model, "evit", variant="adaptive", mass=0.6, stages=(1, 3), layout="padded",
                             padding="static").eval()
    torch._dynamo.reset()
    bg = BatchGraphs(padded, device=torch.device("cpu"), dtype=torch.float32)
    bg.prepare(torch.randn(3, 3, 64, 64))
    pc = bg.graphs[3]
    assert isinstance(pc, PaddedCompiled) and bg.capture_s == pc.capture_s > 0
    fresh = torch.randn(3, 3, 64, 64)
    with torch.no_grad():
        got = bg(fresh).clone()
        kept = [k.clone() for k in bg.last_stats.kept]
        want = padded(fresh)
    torch.testing.assert_close(got, want, rtol=0, atol=1e-4)
    assert [k.tolist() for k in kept] == [k.tolist() for k in padded.last_stats.kept]
    assert kept[-1].max() < 17  # mass 0.6 on random weights prunes: the stats are this call's, not the capacity
    with pytest.raises(ValueError, match=r"compiled for \(3, 3, 64, 64\)"):
        pc(torch.randn(2, 3, 64, 64))
    with pytest.raises(ValueError, match="example has shape"):
        PaddedCompiled(padded, 4, device=torch.device("cpu"), dtype=torch.float32, example=fresh)
    for other in (raggedvit.prune(model, "tome"), raggedvit.prune(model, "tome", layout="padded")):
        with pytest.raises(ValueError, match="padding='static'"):
            PaddedCompiled(other.eval(), 3, device=torch.device("cpu"), dtype=torch.float32)
    with pytest.raises(ValueError, match="training mode"):
        PaddedCompiled(padded.train(), 3, device=torch.device("cpu"), dtype=torch.float32)

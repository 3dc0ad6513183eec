"""runtime.graphs: the dense model compiled in its faster memory format, and BatchGraphs' dense choice."""

from __future__ import annotations

import pytest
import timm
import torch

from raggedvit.runtime.graphs import MEMORY_FORMATS, BatchGraphs, DenseCompiled


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

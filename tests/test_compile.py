"""torch.compile(fullgraph=True) of pruned models: every method, variant and layout against eager.

On CPU the Triton kernels run under the interpreter, behind the ``torch.ops.raggedvit.*`` custom ops; the
all-methods matrix uses ``backend="aot_eager"`` (dynamo + AOT autograd, no C++ compile) and one case runs
Inductor. The fake implementations are checked with ``torch.library.opcheck`` in test_ops_library.py.
"""

from __future__ import annotations

import pytest
import timm
import torch

import raggedvit
from raggedvit.ops.library import batch_max, check_compilable
from raggedvit.pruning import pruning_methods

from conftest import DEVICE

_MODEL: dict = {}


def tiny_model(depth=4):
    """ViT-Tiny, ``depth`` blocks, 64 x 64 images (16 patches), sharpened attention so adaptive counts differ."""
    if depth not in _MODEL:
        with torch.random.fork_rng():
            torch.manual_seed(3)
            model = timm.create_model("vit_tiny_patch16_224", pretrained=False, depth=depth, img_size=64).eval()
            with torch.no_grad():
                for blk in model.blocks:
                    C = blk.attn.qkv.in_features
                    blk.attn.qkv.weight[: 2 * C].mul_(3.0)
        _MODEL[depth] = model.to(DEVICE)  # the GPU where there is one (the Triton kernels need it there)
    return _MODEL[depth]


def _images(batch=2):
    return (torch.randn(batch, 3, 64, 64) * (0.5 + torch.rand(batch, 1, 1, 1))).to(DEVICE)


def _compare(pruned, backend="aot_eager", images=None):
    images = _images() if images is None else images
    torch._dynamo.reset()  # every test compiles a new module: stay below dynamo's recompile limit
    with torch.no_grad():
        expected = pruned(images)
        kept = [k.clone() for k in pruned.last_stats.kept]
        pruned.last_stats = None
        got = torch.compile(pruned, fullgraph=True, backend=backend)(images)
    assert (got - expected).abs().max().item() <= 1e-4
    stats = pruned.last_stats
    assert stats is not None, "last_stats is set under torch.compile"
    assert len(stats.kept) == len(kept)
    for a, b in zip(stats.kept, kept):
        assert torch.equal(a, b), (a, b)  # the same keep decisions
    return stats


# packed: every method and variant; padded: the adaptive variants (their stages pad to a data-dependent
# batch maximum; the fixed ones run the same torch selections on static shapes) and no pruning;
# padded_static: the adaptive variants padded to a static capacity (bench e2e's padded_compiled baseline)
CASES = ([(m, v, "packed") for m in pruning_methods() for v in ("fixed", "adaptive")] + [("none", None, "packed")]
         + [(m, "adaptive", "padded") for m in pruning_methods()] + [("none", None, "padded")]
         + [(m, "adaptive", "padded_static") for m in pruning_methods()])


@pytest.mark.parametrize("method,variant,layout", CASES)
def test_compile_fullgraph_matches_eager(method, variant, layout):
    options = {} if variant is None else {"variant": variant, "stages": (1, 2, 3)}
    if method == "tome":  # merges in every block: r tokens (fixed) or up to r (adaptive), no stages
        options = {"variant": variant, "r": 2}
    if method == "threshold_l2" and variant == "adaptive":
        options["alpha"] = 1.0  # a relative threshold (no calibration needed for a compile test)
    if method == "dynamicvit":
        options["random_predictors"] = True
    if layout == "padded_static":
        layout, options["padding"] = "padded", "static"
    _compare(raggedvit.prune(tiny_model(), method, layout=layout, **options))


def test_compile_inductor_live_rows():
    """Inductor (C++ on CPU) with the live-row LayerNorm/GEMM ops and EViT's fused token."""
    pruned = raggedvit.prune(tiny_model(2), "evit", variant="adaptive", stages=(1,), live_rows=True)
    _compare(pruned, backend="inductor")


def test_compile_inductor_live_rows_cublas(monkeypatch):
    """The live-row LayerNorm with cuBLAS GEMMs (``live_rows="auto"`` on small buffers): the LayerNorm also
    writes the residual plus the next layer's bias, which cuBLAS accumulates into in place."""
    from raggedvit.models import live_rows
    from raggedvit.models import pruned as pruned_mod

    monkeypatch.setattr(pruned_mod, "_auto_applies", lambda images: True)
    monkeypatch.setattr(live_rows, "AUTO_MIN_ROWS", 10**9)
    monkeypatch.setattr(live_rows, "AUTO_MIN_ROWS_FULL", 10**9)
    _compare(raggedvit.prune(tiny_model(2), "evit", variant="adaptive", stages=(1,)), backend="inductor")


def test_compile_reference_attention():
    """The packed layout with the pure-torch attention backend (traced, no custom attention op)."""
    _compare(raggedvit.prune(tiny_model(), "ats", stages=(1, 2, 3), attention="reference"))


def test_compile_only_options_are_rejected():
    with pytest.raises(ValueError, match="not supported under torch.compile"):
        check_compilable("op", out=torch.empty(1))
    with pytest.raises(ValueError, match="not supported under torch.compile"):
        check_compilable("op", check_lengths=True)
    check_compilable("op")


def test_batch_max_eager_and_compiled():
    count = torch.tensor([3, 7, 5])
    assert batch_max(count, 2, 6) == 6 and batch_max(count, 2, 9) == 7 and batch_max(torch.tensor([1]), 2, 9) == 2

    def f(c):
        return torch.zeros(batch_max(c, 2, 9))

    torch._dynamo.reset()
    assert torch.compile(f, fullgraph=True, backend="aot_eager")(count).shape == (7,)


@pytest.mark.parametrize("padding", ["static", "max"])
def test_padded_attention_under_compile_keeps_sdpa_for_static_widths(padding):
    """The padded baseline compiled (``padded_compiled``) attends with SDPA in every block when its widths are
    static; with batch-maximum padding, whose widths after a stage are read from the device (SDPA's kernel
    choice cannot guard on them), the attention is plain torch ops in every block."""
    targets: list[str] = []

    def record(gm, example_inputs):
        targets.extend(str(n.target) for n in gm.graph.nodes if n.op == "call_function")
        return gm.forward

    model = tiny_model()
    pruned = raggedvit.prune(model, "evit", variant="adaptive", stages=(1, 2, 3), layout="padded", padding=padding)
    torch._dynamo.reset()
    with torch.no_grad():
        torch.compile(pruned, fullgraph=True, backend=record)(_images())
    sdpa = sum("scaled_dot_product_attention" in t for t in targets)
    assert sdpa == (len(model.blocks) if padding == "static" else 0), (padding, sdpa)

"""``prune(..., live_rows=True)``: the fused token-wise kernels on the live rows equal timm's modules."""

from __future__ import annotations

import pytest
import torch
from timm.models.vision_transformer import VisionTransformer

import raggedvit
from raggedvit.models.live_rows import live_rows_unsupported

from conftest import DEVICE, ON_GPU
from helpers import launch_count


def _tiny_vit(**kw) -> VisionTransformer:
    model = VisionTransformer(img_size=64, patch_size=16, embed_dim=64, depth=4, num_heads=2, num_classes=10, **kw)
    model = model.to(DEVICE).eval()
    with torch.no_grad():
        for blk in model.blocks:
            blk.attn.qkv.weight.mul_(4)  # spread attention so adaptive counts differ per image
    return model


@pytest.mark.parametrize("method,opts", [
    ("none", {}),
    ("threshold_l2", {"variant": "adaptive", "alpha": 1.0}),
    ("ats", {}),
    ("evit", {"variant": "adaptive", "mass": 0.8}),
    ("dynamicvit", {"variant": "fixed", "keep_rate": 0.6, "random_predictors": True}),
])
def test_live_rows_equal_timm_modules(method, opts):
    model = _tiny_vit()
    if method != "none":
        opts = {"stages": (1, 2), **opts}
    attention = "triton" if ON_GPU else "reference"
    full = raggedvit.prune(model, method, attention=attention, live_rows=False, **opts)
    live = raggedvit.prune(model, method, attention=attention, live_rows=True, **opts)
    if method == "dynamicvit":
        live.score_predictor = full.score_predictor
    x = torch.randn(3, 3, 64, 64, device=DEVICE) * torch.tensor([0.3, 2.0, 6.0], device=DEVICE).view(3, 1, 1, 1)
    with torch.no_grad():
        want, got = full(x), live(x)
    torch.testing.assert_close(got, want, rtol=0, atol=1e-4 if ON_GPU else 1e-5)  # GPU: TF32-free fp32 GEMMs differ
    for a, b in zip(live.last_stats.kept, full.last_stats.kept):
        assert torch.equal(a, b)


def test_live_rows_options_are_checked():
    model = _tiny_vit()
    with pytest.raises(ValueError, match="live_rows"):
        raggedvit.prune(model, "ats", live_rows="yes", stages=(1, 2))
    with pytest.raises(ValueError, match="packed"):
        raggedvit.prune(model, "ats", live_rows=True, layout="padded", stages=(1, 2))
    scaled = _tiny_vit(init_values=1e-5)  # layer scale: not a plain pre-norm block
    assert "layer scale" in live_rows_unsupported(scaled.blocks[0])
    with pytest.raises(ValueError, match="block 0: layer scale"):
        raggedvit.prune(scaled, "ats", live_rows=True, stages=(1, 2))
    live = raggedvit.prune(model, "ats", live_rows=True, attention="triton" if ON_GPU else "reference", stages=(1, 2))
    with pytest.raises(RuntimeError, match="no_grad"):
        live(torch.randn(1, 3, 64, 64, device=DEVICE))
    assert raggedvit.prune(scaled, "ats", stages=(1, 2)).live_rows is False  # "auto" where it cannot run
    assert raggedvit.prune(model, "ats", layout="padded", stages=(1, 2)).live_rows is False
    assert raggedvit.prune(model, "ats", stages=(1, 2)).live_rows == "auto"
    with pytest.raises(ValueError, match="live_rows"):
        raggedvit.prune(model, "ats", live_rows=1, stages=(1, 2))


@pytest.mark.parametrize("narrowing,ragged", [(True, True), (False, True), (True, False)])
def test_auto_picks_stages_by_buffer_rows(narrowing, ragged, monkeypatch):
    """``live_rows="auto"`` runs the LayerNorm kernel on every buffer, and the GEMM kernels on buffers of
    >= AUTO_MIN_ROWS rows with unused rows and of >= AUTO_MIN_ROWS_FULL rows without (cuBLAS otherwise), fc2
    on cuBLAS under CUBLAS_NARROWING (on buffers with unused rows only with CUBLAS_NARROWING_RAGGED too); the
    results equal timm's modules either way."""
    from raggedvit.models import live_rows, pruned
    from raggedvit.ops.layernorm import launcher as ln_launcher
    from raggedvit.ops.linear import launcher as gemm_launcher

    monkeypatch.setattr(pruned, "_auto_applies", lambda images: True)  # CPU: the interpreter

    model = _tiny_vit()
    attention = "triton" if ON_GPU else "reference"
    opts = dict(stages=(1, 2), variant="adaptive", alpha=1.0)
    full = raggedvit.prune(model, "threshold_l2", attention=attention, live_rows=False, **opts)
    auto = raggedvit.prune(model, "threshold_l2", attention=attention, **opts)
    x = torch.randn(4, 3, 64, 64, device=DEVICE) * torch.tensor([0.3, 2.0, 6.0, 1.0], device=DEVICE).view(4, 1, 1, 1)
    with torch.no_grad():
        want = full(x)
        monkeypatch.setattr(live_rows, "CUBLAS_NARROWING", narrowing)
        monkeypatch.setattr(live_rows, "CUBLAS_NARROWING_RAGGED", ragged)
        # qkv, proj, fc1 (+ fc2) per block on a Triton-GEMM buffer: block 0 has no unused rows, blocks 1-3 do
        full_block = 3 if narrowing else 4
        ragged_block = 3 if narrowing and ragged else 4
        for min_rows, min_full, gemms in [(10**6, 10**6, 0), (1, 10**6, 3 * ragged_block),
                                          (1, 1, 3 * ragged_block + full_block)]:
            monkeypatch.setattr(live_rows, "AUTO_MIN_ROWS", min_rows)
            monkeypatch.setattr(live_rows, "AUTO_MIN_ROWS_FULL", min_full)
            monkeypatch.setattr(live_rows, "TRITON_GELU", False)  # fc1 on cuBLAS too (see test_triton_gelu)
            before = launch_count(ln_launcher), launch_count(gemm_launcher)
            got = auto(x)
            assert launch_count(ln_launcher) - before[0] == 4 * 2  # 2 LayerNorms per block, always the kernel
            assert launch_count(gemm_launcher) - before[1] == gemms
            torch.testing.assert_close(got, want, rtol=0, atol=1e-4 if ON_GPU else 1e-5)


@pytest.mark.parametrize("gemm", [True, False])
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("in_norm", [True, False])
@pytest.mark.parametrize("narrowing", [True, False])
def test_pre_norm_and_residual_linear(gemm, bias, in_norm, narrowing, monkeypatch):
    """``LiveRows.pre_norm`` + ``residual_linear`` compute ``(LN(x), x + lin(a))`` on the live rows, with
    Triton GEMMs or cuBLAS (where the LayerNorm kernel writes ``x + lin.bias`` and cuBLAS accumulates into it
    in place), without touching ``x``."""
    from raggedvit.models import live_rows
    from raggedvit.models.live_rows import LiveRows

    monkeypatch.setattr(live_rows, "RESIDUAL_IN_NORM", in_norm)
    monkeypatch.setattr(live_rows, "CUBLAS_NARROWING", narrowing)
    ln, lin = torch.nn.LayerNorm(64).to(DEVICE), torch.nn.Linear(96, 64, bias=bias).to(DEVICE)
    with torch.no_grad():
        ln.weight.uniform_(0.5, 1.5), ln.bias.normal_()
    x, a = torch.randn(30, 64, device=DEVICE), torch.randn(30, 96, device=DEVICE)
    x0 = x.clone()
    live = 19
    rows = LiveRows(torch.tensor([live], dtype=torch.int32, device=DEVICE), gemm=gemm)
    with torch.no_grad():
        h, res = rows.pre_norm(ln, x, lin)
        assert rows.triton(lin) == (gemm and not narrowing)  # lin: 96 -> 64, a narrowing layer like fc2
        assert (res is x) == (rows.triton(lin) or not bias or not in_norm)
        y = rows.residual_linear(lin, a, res)
        torch.testing.assert_close(h[:live], ln(x)[:live], rtol=0, atol=1e-5)
        torch.testing.assert_close(y[:live], (x + lin(a))[:live], rtol=0, atol=1e-5)
    assert torch.equal(x, x0)


def test_triton_gelu_on_cublas_buffers(monkeypatch):
    """``TRITON_GELU``: on cuBLAS buffers fc1 + GELU still runs as one Triton kernel per block; same results."""
    from raggedvit.models import live_rows, pruned
    from raggedvit.ops.linear import launcher as gemm_launcher

    monkeypatch.setattr(pruned, "_auto_applies", lambda images: True)
    monkeypatch.setattr(live_rows, "AUTO_MIN_ROWS", 10**6)
    monkeypatch.setattr(live_rows, "AUTO_MIN_ROWS_FULL", 10**6)
    model = _tiny_vit()
    attention = "triton" if ON_GPU else "reference"
    full = raggedvit.prune(model, "evit", attention=attention, live_rows=False, stages=(1, 2))
    auto = raggedvit.prune(model, "evit", attention=attention, stages=(1, 2))
    x = torch.randn(3, 3, 64, 64, device=DEVICE)
    with torch.no_grad():
        want = full(x)
        for on, gemms in ((True, 4), (False, 0)):
            monkeypatch.setattr(live_rows, "TRITON_GELU", on)
            before = gemm_launcher.stats["direct"] + gemm_launcher.stats.get("jit", 0)
            got = auto(x)
            assert gemm_launcher.stats["direct"] + gemm_launcher.stats.get("jit", 0) - before == gemms
            torch.testing.assert_close(got, want, rtol=0, atol=1e-4 if ON_GPU else 1e-5)

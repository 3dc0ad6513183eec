"""Tests for raggedvit.ops.linear (the live-row Linear kernel; interpreter on CPU)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from raggedvit.ops import linear as linear_mod
from raggedvit.ops.linear import Config, launcher, ragged_linear

from conftest import DEVICE, ON_GPU, requires_gpu
from helpers import assert_close_report


def _ref(x, w, b, live, gelu, res=None):
    y = F.linear(x.double(), w.double(), None if b is None else b.double())
    y = F.gelu(y) if gelu else y
    return y if res is None else y + res.double()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("gelu,bias,res", [(False, True, False), (True, True, False), (False, False, False),
                                            (False, True, True)])
@pytest.mark.parametrize("k", [40, 64])
@pytest.mark.parametrize("tma", [False, True])
def test_matches_fp64_on_live_rows_and_leaves_the_rest(dtype, gelu, bias, res, k, tma, monkeypatch):
    if launcher.interpreted:  # small tiles; the TMA path in the interpreter too
        cfg = Config(32, 32, 32, 4, 1, 0, tma and dtype != torch.float32)
        monkeypatch.setattr(linear_mod, "_config", lambda *a: cfg)
    elif tma:  # GPU: force the large-tile configuration (TMA on sm90+)
        monkeypatch.setattr(linear_mod, "_config", lambda dt, m, n, k, ok: Config(128, 128, 64, 8, 4, 1, ok)
                            if dt != torch.float32 else Config(64, 64, 32, 4, 3, 0, False))
    m, n, live = 77, 72, 45  # live rows end inside a tile; N not a multiple of the tile; K = 40 neither
    x = torch.randn(m, k, device=DEVICE).to(dtype)
    x[live:] = float("nan")  # rows past the live count must not be read
    w = (torch.randn(n, k, device=DEVICE) / k**0.5).to(dtype)
    b = torch.randn(n, device=DEVICE).to(dtype) if bias else None
    r = torch.randn(m, n, device=DEVICE).to(dtype) if res else None
    out = torch.full((m, n), 7.0, dtype=dtype, device=DEVICE)
    got = ragged_linear(x, w, b, torch.tensor([live], dtype=torch.int32, device=DEVICE), gelu=gelu, residual=r,
                        out=out)
    want = _ref(x, w, b, live, gelu, r)
    y_torch = F.linear(x, w, b)
    y_torch = F.gelu(y_torch) if gelu else y_torch
    y_torch = y_torch if r is None else y_torch + r
    torch_err = (y_torch.double()[:live] - want[:live]).abs().max()
    if launcher.interpreted and dtype == torch.bfloat16:  # the interpreter truncates fp32 -> bf16
        truncated = (want[:live].float().view(torch.int32) & -65536).view(torch.float32)
        torch_err = max(torch_err, (truncated.double() - want[:live]).abs().max())
    tol = 1e-5 if dtype == torch.float32 else 2 * max(float(torch_err), torch.finfo(dtype).eps)
    assert_close_report(got[:live], want[:live], tol, f"{dtype} gelu={gelu} res={res}")
    assert (got[live:] == 7).all()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_gelu_epilogue_over_the_whole_range(dtype):
    """The epilogue's GELU on chosen values (identity weights): |x| up to 12 (tails: Phi near 0 and 1), signed
    zeros, tiny and huge values. fp32 (PyTorch's formula with libdevice's erff) within 2.5e-7 max(1, |x|) of
    fp64 (not bit for bit ``F.gelu``: on an H200 109 of these 2,048 values differ in the last bits); fp16 (the
    folded A&S form: on CUDA with approximate reciprocal / exp2, in the interpreter the plain one) within one
    rounding. (An infinite input cannot pass the identity product: inf * 0 is NaN in the other columns.)"""
    vals = torch.cat([torch.linspace(-12, 12, 2042), torch.tensor([0.0, -0.0, 1e-30, -1e-30, 3.0e4, -3.0e4])])
    x = vals[torch.randperm(vals.numel())].to(dtype).reshape(-1, 32).to(DEVICE)  # fresh order: any value, any lane
    got = ragged_linear(x, torch.eye(32, dtype=dtype, device=DEVICE), None,
                        torch.tensor([x.shape[0]], dtype=torch.int32, device=DEVICE), gelu=True).cpu().double()
    want = F.gelu(x.cpu().double())
    err = (got - want).abs()
    if dtype == torch.float32:
        assert (err <= 2.5e-7 * x.cpu().double().abs().clamp(min=1.0)).all(), err.max()  # 1 + erf cancels
    else:
        assert (err <= want.abs() * 2 ** -10 + 2 ** -24).all(), err.max()


def test_strided_input_rows_residual_in_place_and_zero_live():
    x = torch.randn(20, 64, device=DEVICE)[:, :48]  # row stride 64, K = 48
    w = torch.randn(32, 48, device=DEVICE)
    out = torch.full((20, 32), 3.0, device=DEVICE)
    got = ragged_linear(x, w, None, torch.zeros(1, dtype=torch.int32, device=DEVICE), out=out)
    assert (got == 3).all()
    got = ragged_linear(x, w, None, torch.tensor([20], dtype=torch.int32, device=DEVICE))
    assert_close_report(got, _ref(x, w, None, 20, False), 1e-4, "strided")
    r = torch.randn(20, 40, device=DEVICE)[:, :32]  # residual with row stride 40, updated in place
    want = _ref(x, w, None, 30, False, r)  # live_rows past M is clamped to M
    got = ragged_linear(x, w, None, torch.tensor([30], dtype=torch.int32, device=DEVICE), residual=r, out=r)
    assert got is r
    assert_close_report(r, want, 1e-4, "residual in place")


@pytest.mark.parametrize("bad,exc,msg", [
    (dict(live=torch.tensor([3])), TypeError, "int32"),
    (dict(w=torch.randn(8, 5)), ValueError, "weight"),
    (dict(b=torch.randn(7)), ValueError, "bias"),
    (dict(x=torch.randn(4, 6, dtype=torch.float64)), TypeError, "dtype"),
    (dict(res=torch.randn(4, 7)), ValueError, "residual"),
    (dict(res=torch.randn(4, 8), gelu=True), ValueError, "combined"),
])
def test_bad_input(bad, exc, msg):
    args = dict(x=torch.randn(4, 6), w=torch.randn(8, 6), b=torch.randn(8), live=torch.tensor([2], dtype=torch.int32),
                res=None, gelu=False)
    args.update(bad)
    args = {k: v.to(DEVICE) if isinstance(v, torch.Tensor) else v for k, v in args.items()}
    with pytest.raises(exc, match=msg):
        ragged_linear(args["x"], args["w"], args["b"], args["live"], residual=args["res"], gelu=args["gelu"])


@pytest.mark.parametrize("tma", [False, True])
def test_live_counts_0_1_and_past_capacity(tma, monkeypatch):
    """Negative, zero, one and more live rows than the buffer holds (clamped to [0, M]), for both the pointer
    and the TMA path."""
    small = linear_mod._config
    monkeypatch.setattr(linear_mod, "_config", lambda dt, m, n, k, ok: (Config(32, 32, 32, 4, 1, 0, tma) if
                                                                           launcher.interpreted else
                                                                           small(dt, 1 << 20, 1 << 20, k, ok and tma)))
    dtype = torch.float16 if ON_GPU else torch.float32
    x = torch.randn(300, 64, device=DEVICE).to(dtype)
    w = (torch.randn(96, 64, device=DEVICE) / 8).to(dtype)
    r = torch.randn(300, 96, device=DEVICE).to(dtype)
    tol = 2e-2 if ON_GPU else 1e-4
    for n in (-5, 0, 1, 1000):
        out = torch.full((300, 96), 7.0, device=DEVICE, dtype=dtype)
        ragged_linear(x, w, None, torch.tensor([n], dtype=torch.int32, device=DEVICE), residual=r, out=out)
        live = min(max(n, 0), 300)
        assert_close_report(out[:live], _ref(x, w, None, live, False, r)[:live], tol, f"live={n}")
        assert (out[live:] == 7).all()


@pytest.mark.parametrize("n", [-1, 5])
def test_check_lengths_rejects_live_rows_outside_the_buffer(n):
    x, w = torch.randn(4, 8, device=DEVICE), torch.randn(8, 8, device=DEVICE)
    live = torch.tensor([n], dtype=torch.int32, device=DEVICE)
    before = dict(launcher.stats)
    with pytest.raises(ValueError, match=rf"ragged_linear: live_rows\[0\] = {n} is outside \[0, 4\]"):
        ragged_linear(x, w, None, live, check_lengths=True)
    assert dict(launcher.stats) == before
    ragged_linear(x, w, None, live.clamp(0, 4), check_lengths=True)


@requires_gpu
def test_graph_replay_follows_the_live_count():
    x = torch.randn(512, 384, device=DEVICE, dtype=torch.float16)
    w = torch.randn(1536, 384, device=DEVICE, dtype=torch.float16) / 20
    b = torch.randn(1536, device=DEVICE, dtype=torch.float16)
    live = torch.tensor([300], dtype=torch.int32, device=DEVICE)
    out = torch.empty(512, 1536, device=DEVICE, dtype=torch.float16)
    ragged_linear(x, w, b, live, gelu=True, out=out)
    out.fill_(5)
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        ragged_linear(x, w, b, live, gelu=True, out=out)
    for n in (0, 1, 127, 128, 129, 512):
        live.fill_(n)
        g.replay()
        torch.cuda.synchronize()
        want = F.gelu(F.linear(x, w, b))
        torch.testing.assert_close(out[:n], want[:n], atol=2e-2, rtol=2e-2)
        assert (out[max(n, 300):] == 5).all()  # rows never live since the fill are untouched
    assert launcher.stats["direct"] >= 1 or not ON_GPU


@requires_gpu
@pytest.mark.parametrize("m,n,k,gelu,res", [
    (197, 576, 192, False, False),  # batch 1: small tiles
    (12608, 192, 768, False, True),  # fc2 at batch 64: narrow, 128 x 64 pointer tiles
    (50432, 192, 192, False, True),  # proj at batch 256: narrow, 256 x 64 TMA tiles
    (12608, 768, 192, True, False),  # fc1 at batch 64: 128 x 128 TMA tiles
])
def test_every_configuration_the_library_picks(m, n, k, gelu, res):
    """ViT-Tiny GEMMs at the buffer sizes that reach each branch of ``_config``, fp16, 85 % live rows (NaN
    past them): fp64 reference on the live rows, nothing written past them."""
    live = int(m * 0.85)
    x = torch.randn(m, k, device=DEVICE, dtype=torch.float16)
    x[live:] = float("nan")
    w = (torch.randn(n, k, device=DEVICE) / k**0.5).half()
    b = torch.randn(n, device=DEVICE).half()
    r = torch.randn(m, n, device=DEVICE).half() if res else None
    out = torch.full((m, n), 7.0, device=DEVICE, dtype=torch.float16)
    ragged_linear(x, w, b, torch.tensor([live], dtype=torch.int32, device=DEVICE), gelu=gelu, residual=r, out=out)
    assert_close_report(out[:live], _ref(x, w, b, live, gelu, r)[:live], 2e-2, f"{(m, n, k)}")
    assert (out[live:] == 7).all()

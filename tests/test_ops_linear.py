"""Tests for raggedvit.ops.linear (the live-row Linear kernel; interpreter on CPU)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from raggedvit.ops.linear import launcher, ragged_linear

from conftest import DEVICE, ON_GPU, requires_gpu
from helpers import assert_close_report


def _ref(x, w, b, live, gelu):
    y = F.linear(x.double(), w.double(), None if b is None else b.double())
    y = F.gelu(y) if gelu else y
    y[live:] = 0
    return y


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("gelu,bias", [(False, True), (True, True), (False, False)])
def test_matches_fp64_on_live_rows_and_zeroes_the_rest(dtype, gelu, bias):
    m, k, n, live = 77, 40, 72, 45  # live rows end inside a tile; K and N not multiples of the tile
    x = torch.randn(m, k, device=DEVICE).to(dtype)
    w = (torch.randn(n, k, device=DEVICE) / k**0.5).to(dtype)
    b = torch.randn(n, device=DEVICE).to(dtype) if bias else None
    out = torch.full((m, n), float("nan"), dtype=dtype, device=DEVICE)
    got = ragged_linear(x, w, b, torch.tensor([live], dtype=torch.int32, device=DEVICE), gelu=gelu, out=out)
    want = _ref(x, w, b, live, gelu)
    y_torch = F.linear(x, w, b)
    y_torch = F.gelu(y_torch) if gelu else y_torch
    torch_err = (y_torch.double()[:live] - want[:live]).abs().max()
    if launcher.interpreted and dtype == torch.bfloat16:  # the interpreter truncates fp32 -> bf16
        truncated = (want[:live].float().view(torch.int32) & -65536).view(torch.float32)
        torch_err = max(torch_err, (truncated.double() - want[:live]).abs().max())
    tol = 1e-5 if dtype == torch.float32 else 2 * max(float(torch_err), torch.finfo(dtype).eps)
    assert_close_report(got, want, tol, f"{dtype} gelu={gelu}")
    assert (got[live:] == 0).all()


def test_strided_input_rows_and_zero_live():
    x = torch.randn(20, 64, device=DEVICE)[:, :48]  # row stride 64, K = 48
    w = torch.randn(32, 48, device=DEVICE)
    got = ragged_linear(x, w, None, torch.zeros(1, dtype=torch.int32, device=DEVICE))
    assert (got == 0).all()
    got = ragged_linear(x, w, None, torch.tensor([20], dtype=torch.int32, device=DEVICE))
    assert_close_report(got, _ref(x, w, None, 20, False), 1e-4, "strided")


@pytest.mark.parametrize("bad,exc,msg", [
    (dict(live=torch.tensor([3])), TypeError, "int32"),
    (dict(w=torch.randn(8, 5)), ValueError, "weight"),
    (dict(b=torch.randn(7)), ValueError, "bias"),
    (dict(x=torch.randn(4, 6, dtype=torch.float64)), TypeError, "dtype"),
])
def test_bad_input(bad, exc, msg):
    args = dict(x=torch.randn(4, 6), w=torch.randn(8, 6), b=torch.randn(8), live=torch.tensor([2], dtype=torch.int32))
    args.update(bad)
    args = {k: v.to(DEVICE) for k, v in args.items()}
    with pytest.raises(exc, match=msg):
        ragged_linear(args["x"], args["w"], args["b"], args["live"])


@requires_gpu
def test_graph_replay_follows_the_live_count():
    x = torch.randn(512, 384, device=DEVICE, dtype=torch.float16)
    w = torch.randn(1536, 384, device=DEVICE, dtype=torch.float16) / 20
    b = torch.randn(1536, device=DEVICE, dtype=torch.float16)
    live = torch.tensor([300], dtype=torch.int32, device=DEVICE)
    out = torch.empty(512, 1536, device=DEVICE, dtype=torch.float16)
    ragged_linear(x, w, b, live, gelu=True, out=out)
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        ragged_linear(x, w, b, live, gelu=True, out=out)
    for n in (0, 1, 127, 128, 129, 512):
        live.fill_(n)
        g.replay()
        torch.cuda.synchronize()
        want = F.gelu(F.linear(x, w, b))
        torch.testing.assert_close(out[:n], want[:n], atol=2e-2, rtol=2e-2)
        assert (out[n:] == 0).all()
    assert launcher.stats["direct"] >= 1 or not ON_GPU

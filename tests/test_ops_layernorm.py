"""Tests for raggedvit.ops.layernorm (LayerNorm on the live rows; interpreter on CPU)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from raggedvit.ops.layernorm import launcher, ragged_layer_norm

from conftest import DEVICE, requires_gpu
from helpers import assert_close_report


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("C,affine", [(384, True), (72, True), (48, False)])
def test_matches_fp64_on_live_rows_and_leaves_the_rest(dtype, C, affine):
    M, live = 45, 29
    x = (torch.randn(M, C, device=DEVICE) * 3 + 1).to(dtype)
    x[live:] = float("nan")  # never read
    w = torch.randn(C, device=DEVICE).to(dtype) if affine else None
    b = torch.randn(C, device=DEVICE).to(dtype) if affine else None
    out = torch.full((M, C), 7.0, dtype=dtype, device=DEVICE)
    got = ragged_layer_norm(x, w, b, torch.tensor([live], dtype=torch.int32, device=DEVICE), eps=1e-6, out=out)
    want = F.layer_norm(x[:live].double(), (C,), None if w is None else w.double(), None if b is None else b.double(),
                        1e-6)
    torch_err = (F.layer_norm(x[:live], (C,), w, b, 1e-6).double() - want).abs().max()
    if launcher.interpreted and dtype == torch.bfloat16:  # the interpreter truncates fp32 -> bf16
        truncated = (want.float().view(torch.int32) & -65536).view(torch.float32)
        torch_err = max(torch_err, (truncated.double() - want).abs().max())
    tol = 1e-5 if dtype == torch.float32 else 2 * max(float(torch_err), torch.finfo(dtype).eps)
    assert_close_report(got[:live], want, tol, f"{dtype} C={C}")
    assert (got[live:] == 7).all()


def test_strided_rows_and_zero_or_negative_live():
    x = torch.randn(10, 80, device=DEVICE)[:, :64]
    out = torch.full((10, 64), 2.0, device=DEVICE)
    for n in (0, -3):  # clamped to [0, M]: nothing read or written
        live = torch.tensor([n], dtype=torch.int32, device=DEVICE)
        assert (ragged_layer_norm(x, None, None, live, out=out) == 2).all()
    for n in (10, 11):  # past the buffer: clamped to M
        got = ragged_layer_norm(x, None, None, torch.tensor([n], dtype=torch.int32, device=DEVICE))
        assert_close_report(got, F.layer_norm(x.double(), (64,)), 1e-5, "strided")
    with pytest.raises(ValueError, match=r"ragged_layer_norm: live_rows\[0\] = 11 is outside \[0, 10\]"):
        ragged_layer_norm(x, None, None, torch.tensor([11], dtype=torch.int32, device=DEVICE), check_lengths=True)


@pytest.mark.parametrize("bad,exc,msg", [
    (dict(live=torch.tensor([3])), TypeError, "int32"),
    (dict(w=torch.randn(5)), ValueError, "weight"),
    (dict(x=torch.randn(4, 6, dtype=torch.float64)), TypeError, "dtype"),
    (dict(x=torch.randn(6, 4).t()), ValueError, "stride"),
])
def test_bad_input(bad, exc, msg):
    args = dict(x=torch.randn(4, 6), w=torch.randn(6), live=torch.tensor([2], dtype=torch.int32))
    args.update(bad)
    args = {k: v.to(DEVICE) for k, v in args.items()}
    with pytest.raises(exc, match=msg):
        ragged_layer_norm(args["x"], args["w"], None, args["live"])


@requires_gpu
def test_graph_replay_follows_the_live_count():
    x = torch.randn(600, 384, device=DEVICE, dtype=torch.float16)
    w, b = torch.randn(384, device=DEVICE, dtype=torch.float16), torch.randn(384, device=DEVICE, dtype=torch.float16)
    live = torch.tensor([300], dtype=torch.int32, device=DEVICE)
    out = torch.full_like(x, 5)
    g = torch.cuda.CUDAGraph()
    ragged_layer_norm(x, w, b, live, out=out)
    out.fill_(5)
    with torch.cuda.graph(g):
        ragged_layer_norm(x, w, b, live, out=out)
    for n in (0, 1, 17, 599):
        live.fill_(n)
        g.replay()
        torch.cuda.synchronize()
        torch.testing.assert_close(out[:n], F.layer_norm(x[:n], (384,), w, b), atol=1e-2, rtol=1e-2)
    assert (out[599:] == 5).all()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("C", [1, 48, 192, 384])
def test_shift_writes_the_norm_and_the_shifted_rows_only_where_live(dtype, C):
    """``ragged_layer_norm_shift``: y = LayerNorm(x) as ragged_layer_norm writes it, s = x + shift against
    fp64; rows past the live count neither read (NaN there) nor written (poisoned outputs)."""
    from raggedvit.ops import layernorm as ln_mod

    M, live = 37, 21
    x = (torch.randn(M, C, device=DEVICE) * 3 + 1).to(dtype)
    x[live:] = float("nan")
    w, b = torch.rand(C, device=DEVICE).to(dtype) + 0.5, torch.randn(C, device=DEVICE).to(dtype)
    shift = torch.randn(C, device=DEVICE).to(dtype)
    lv = torch.tensor([live], dtype=torch.int32, device=DEVICE)
    y, s = torch.full_like(x, 7), torch.full_like(x, 9)
    ln_mod._launch(x, w, b, lv, 1e-6, y, (shift, s))
    assert torch.equal(y[:live], ragged_layer_norm(x, w, b, lv, eps=1e-6)[:live])
    want = x[:live].double() + shift.double()
    tol = 0 if dtype == torch.float32 else torch.finfo(dtype).eps * want.abs().max().item()
    assert_close_report(s[:live], want, max(tol, 1e-6), f"shift {dtype}")
    assert (y[live:] == 7).all() and (s[live:] == 9).all()
    y2, s2 = ln_mod.ragged_layer_norm_shift(x, w, b, lv, shift, eps=1e-6)
    assert torch.equal(y2[:live], y[:live]) and torch.equal(s2[:live], s[:live])


@pytest.mark.parametrize("shift,msg", [(torch.randn(5), "shift must be"), (torch.randn(6, dtype=torch.float64),
                                                                          "shift must be"), ("x", "shift must be")])
def test_shift_bad_input(shift, msg):
    from raggedvit.ops.layernorm import launcher, ragged_layer_norm_shift

    x, live = torch.randn(4, 6, device=DEVICE), torch.tensor([2], dtype=torch.int32, device=DEVICE)
    before = dict(launcher.stats)
    with pytest.raises(ValueError, match=msg):
        ragged_layer_norm_shift(x, None, None, live, shift.to(DEVICE) if isinstance(shift, torch.Tensor) else shift)
    assert dict(launcher.stats) == before

"""Tests for raggedvit.ops.tome (the one-kernel ToMe merge; interpreter on CPU) against the torch reference
:func:`raggedvit.pruning.tome.bipartite_merge`."""

from __future__ import annotations

import pytest
import torch

from raggedvit.ops.tome import launchers, tome_merge
from raggedvit.pruning.tome import bipartite_merge

from conftest import DEVICE
from helpers import assert_close_report


@pytest.fixture(params=["split", "whole"])
def schedule(request, monkeypatch):
    """Both launch schedules: ``split`` (below ``SPLIT_BELOW_BATCH``: one program per chunk of B columns in the
    matching and per chunk of channels in the merge) and ``whole`` (one program walks them all)."""
    from raggedvit.ops import tome as ops_tome

    monkeypatch.setattr(ops_tome, "SPLIT_BELOW_BATCH", 1 << 30 if request.param == "split" else 0)
    return request.param


def _poison_padding(t, lengths):
    """A copy of ``t`` (B, L, ...) with NaN in every row past its image's length (what a CUDA-graph pool or a
    packed buffer's unused rows may hold)."""
    if t is None or lengths is None:
        return t
    past = torch.arange(t.shape[1], device=t.device)[None, :] >= lengths[:, None]
    return t.masked_fill(past.view(*past.shape, *[1] * (t.dim() - 2)), float("nan"))


def _compare(metric, x, size, lengths, P, **rule):
    """Same counts, same kept positions in the same order, same merged values and sizes on them; the kernels
    get NaN in the rows past each image's length (they must not read them into a live row). A per-head metric
    ``(B, L, H, D)``: the reference gets its fp32 head mean."""
    B, L, _ = x.shape
    ref_metric = metric.float().mean(2) if metric.dim() == 4 else metric
    want = bipartite_merge(ref_metric, x, size, lengths, P, width=L, **rule)
    index, count, values, new_size = tome_merge(*(_poison_padding(t, lengths) for t in (metric, x, size)), lengths,
                                                P, **rule)
    assert torch.equal(count, want.count.expand(B).long())
    tol = 1e-5 if x.dtype == torch.float32 else 2 * torch.finfo(x.dtype).eps * x.abs().max().item()
    for b in range(B):
        c = int(count[b])
        assert torch.equal(index[b, :c], want.index[b, :c]), f"image {b}"
        kept = index[b, :c]
        assert_close_report(values[b, kept].float(), want.values[b, kept].float(), tol, f"values {b}")
        assert_close_report(new_size[b, kept], want.size[b, kept], 1e-5, f"size {b}")
        assert sorted(index[b].tolist()) == list(range(L))  # a permutation: the dropped positions follow


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("L,P,r,lengths", [(17, 1, 4, None), (17, 1, 4, [17, 9, 1]), (20, 2, 3, [20, 11, 0]),
                                           (16, 0, 8, None), (2, 0, 1, None)])
@pytest.mark.parametrize("sizes", [False, True])
def test_fixed_matches_the_reference(dtype, L, P, r, lengths, sizes, schedule):
    B = 3 if lengths is not None else 2
    metric = torch.randn(B, L, 16, device=DEVICE)
    x = torch.randn(B, L, 24, device=DEVICE).to(dtype)
    size = torch.rand(B, L, device=DEVICE) * 3 + 1 if sizes else None
    ln = None if lengths is None else torch.tensor(lengths, device=DEVICE)
    _compare(metric, x, size, ln, P, r=r)


@pytest.mark.parametrize("threshold,r_min,lengths", [(0.1, 1, None), (0.0, 2, [17, 12, 5]), (0.99, 0, None),
                                                      (-1.0, 0, [17, 16, 3])])
def test_adaptive_matches_the_reference(threshold, r_min, lengths):
    metric = torch.randn(3, 17, 16, device=DEVICE)
    x = torch.randn(3, 17, 24, device=DEVICE)
    ln = None if lengths is None else torch.tensor(lengths, device=DEVICE)
    _compare(metric, x, torch.rand(3, 17, device=DEVICE) + 1, ln, 1, r=8, threshold=threshold, r_min=r_min)


@pytest.mark.parametrize("rule", [dict(r=8), dict(r=16, threshold=0.5, r_min=1)])
@pytest.mark.parametrize("L", [33, 161])
def test_ties_follow_the_reference(rule, L, schedule):
    """Duplicated, quantised keys: equal similarities everywhere (lowest B column, then lower A position); at
    L = 161 the tied columns lie in different chunks of the split matching (80 B columns: 3 chunks)."""
    gen = torch.Generator().manual_seed(1)
    # four +-1 entries out of 8: norm 2, so the normalised keys and every product are exact in any summation
    # order (cuBLAS and the kernel agree on the ties too)
    signs = torch.randint(0, 2, (3, 4, 8), generator=gen).float() * 2 - 1
    keep = torch.rand(3, 4, 8, generator=gen).argsort(-1) < 4
    base = signs * keep
    metric = base[:, torch.randint(0, 4, (L,), generator=gen)].to(DEVICE)
    _compare(metric, torch.randn(3, L, 16, device=DEVICE), None, torch.tensor([L, 20, 7], device=DEVICE), 1,
             **rule)


@pytest.mark.parametrize("D,C", [(128, 200), (256, 72)])
def test_wide_metric_and_tokens(D, C, schedule):
    """Metric widths past 64 (the narrower column chunks) and token widths that end inside a chunk."""
    metric = torch.randn(3, 50, D, device=DEVICE)
    x = torch.randn(3, 50, C, device=DEVICE, dtype=torch.float16)
    _compare(metric, x, torch.rand(3, 50, device=DEVICE) + 1, torch.tensor([50, 31, 2], device=DEVICE), 1, r=12)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("H", [1, 3, 12])
def test_per_head_metric(H, dtype, schedule):
    """``(B, L, H, D)`` keys added over the heads in the kernel, as a strided view of a qkv-like buffer
    ``(B, L, 3, H, D)`` (the layout the pruning stage hands over): the reference's head mean decides alike."""
    qkv = torch.randn(3, 61, 3, H, 16, device=DEVICE).to(dtype)
    _compare(qkv[:, :, 1], torch.randn(3, 61, 24, device=DEVICE), torch.rand(3, 61, device=DEVICE) + 1,
             torch.tensor([61, 40, 9], device=DEVICE), 1, r=12)


def test_577_tokens(schedule):
    """A 384-pixel ViT's 577 tokens (289 A rows: the wide configuration)."""
    _compare(torch.randn(1, 577, 64, device=DEVICE), torch.randn(1, 577, 16, device=DEVICE), None, None, 1, r=16)


@pytest.mark.parametrize("bad,exc,msg", [
    (dict(metric=torch.randn(2, 5, 8)), ValueError, "need metric"),
    (dict(metric="strided"), ValueError, "last stride 1"),
    (dict(x=torch.randn(2, 4, 6, dtype=torch.float64)), TypeError, "fp16/bf16/fp32"),
    (dict(size=torch.rand(2, 5)), ValueError, "size"),
    (dict(lengths=torch.tensor([4, 4], dtype=torch.int32)), ValueError, "lengths"),
    (dict(r=-1), TypeError, "r must be"),
    (dict(P=1.0), TypeError, "num_prefix"),
    (dict(metric=torch.randn(2, 4, 300)), ValueError, "D <= 256"),
    (dict(metric=torch.randn(2, 4, 17, 8)), ValueError, "H <= 16"),
    (dict(metric=torch.randn(2, 4, 1, 2, 8)), ValueError, "need metric"),
])
def test_bad_input(bad, exc, msg):
    args = dict(metric=torch.randn(2, 4, 8), x=torch.randn(2, 4, 6), size=None, lengths=None, P=1, r=1)
    args.update(bad)
    args = {k: v.to(DEVICE) if isinstance(v, torch.Tensor) else v for k, v in args.items()}
    if isinstance(args["metric"], str):  # a strided view made on the device (.to() would copy it contiguous)
        args["metric"] = torch.randn(2, 4, 16, device=DEVICE)[..., ::2]
    before = [dict(ln.stats) for ln in launchers]
    with pytest.raises(exc, match=msg):
        tome_merge(args["metric"], args["x"], args["size"], args["lengths"], args["P"], r=args["r"])
    assert [dict(ln.stats) for ln in launchers] == before  # nothing launched


def test_token_row_strides():
    """x and metric as views with row strides 24, 27 and 40 in turn, then 24 again (on the GPU the launch cache
    must not reuse a kernel compiled for another stride)."""
    for pad in (0, 3, 16, 0):
        metric = torch.randn(2, 17, 16 + pad, device=DEVICE)[..., :16]
        x = torch.randn(2, 17, 24 + pad, device=DEVICE)[..., :24]
        _compare(metric, x, None, None, 1, r=4)


@pytest.mark.parametrize("lengths", [None, [150, 97, 3]])
def test_big_batch_tiles(lengths, monkeypatch, schedule):
    """The tiles used from batch ``_BIG_BATCH`` on (128 A rows per match tile, 8 x 64 per merge tile), here at
    batch 3 with the bound lowered: same results as the reference, with more A rows than one tile holds."""
    from raggedvit.ops import tome as ops_tome

    monkeypatch.setattr(ops_tome, "_BIG_BATCH", 1)
    ln = None if lengths is None else torch.tensor(lengths, device=DEVICE)
    _compare(torch.randn(3, 300, 32, device=DEVICE), torch.randn(3, 300, 24, device=DEVICE, dtype=torch.float16),
             torch.rand(3, 300, device=DEVICE) + 1, ln, 1, r=40)

"""Tests for raggedvit.ops.compact (Triton kernel under the interpreter on CPU): same rows and metadata as
the pure-torch compaction of raggedvit.pruning.ragged plus the token-id gather."""

from __future__ import annotations

import pytest
import torch

from raggedvit.ops.compact import compact_packed
from raggedvit.pruning.ragged import Selection, compact, meta_from_counts, uniform_meta

from conftest import DEVICE


def _selection(lengths, L, width, prefix, with_extra, gen):
    """A random stable selection: prefix positions, then random kept positions in order, then (maybe) L."""
    B = len(lengths)
    index = torch.randint(0, L, (B, width), generator=gen)  # arbitrary filler past count
    count = torch.zeros(B, dtype=torch.long)
    for b, n in enumerate(lengths):
        room = width - prefix - (1 if with_extra else 0)
        k = int(torch.randint(0, min(n - prefix, room) + 1, (1,), generator=gen)) if n > prefix else 0
        kept = torch.sort(torch.randperm(n - prefix, generator=gen)[:k] + prefix).values
        row = list(range(min(prefix, n))) + kept.tolist() + ([L] if with_extra else [])
        index[b, :len(row)] = torch.tensor(row)
        count[b] = len(row)
    return index, count


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("with_extra", [False, True])
@pytest.mark.parametrize("uniform", [False, True])
def test_matches_torch_compaction(dtype, with_extra, uniform):
    gen = torch.Generator().manual_seed(int(torch.randint(0, 2**31, (1,))))
    prefix, C = 1, 40
    if uniform:
        L, lengths = 23, [23] * 5
        meta = uniform_meta(5, L, DEVICE)
    else:
        L, lengths = 23, [1, 23, 7, 12, 2, 19]
        meta = meta_from_counts(torch.tensor(lengths, device=DEVICE), L)
    B = len(lengths)
    width = 17
    index, count = _selection(lengths, L, width, prefix, with_extra, gen)
    index, count = index.to(DEVICE), count.to(DEVICE)
    x = torch.randn(meta.capacity, C, generator=gen).to(DEVICE, dtype)
    extra = torch.randn(B, C, generator=gen).to(DEVICE, dtype) if with_extra else None
    tok = torch.randint(0, 500, (B, L), generator=gen, dtype=torch.int32).to(DEVICE)

    sel = Selection(index, count, width, False, extra)
    want_meta, (want_x,) = compact(meta, sel, [(x, extra)])
    t = torch.cat([tok, torch.full((B, 1), -1, dtype=tok.dtype, device=DEVICE)], 1) if with_extra else tok
    want_tok = t.gather(1, index)

    got_x, cu, rows, valid, got_tok = compact_packed(x, extra, meta.dense_rows, index, count, tok, width)
    assert torch.equal(cu, want_meta.cu_seqlens)
    assert torch.equal(rows, want_meta.dense_rows) and torch.equal(valid, want_meta.dense_valid)
    assert torch.equal(got_x, want_x), "rows differ (unused rows must be zero)"
    assert torch.equal(got_tok, want_tok)


def _small_inputs():
    """``(x, dense_rows, index, count, tok)`` of a well-formed 2-image, 4-position compaction to width 3."""
    return (torch.randn(8, 4, device=DEVICE), torch.arange(8, device=DEVICE).view(2, 4),
            torch.zeros(2, 3, dtype=torch.long, device=DEVICE), torch.ones(2, dtype=torch.long, device=DEVICE),
            torch.zeros(2, 4, dtype=torch.int32, device=DEVICE))


def test_errors():
    x, rows, idx, cnt, tok = _small_inputs()
    with pytest.raises(TypeError, match="int64"):
        compact_packed(x, None, rows, idx.int(), cnt, tok, 3)
    with pytest.raises(ValueError, match="last stride 1"):
        compact_packed(x.t().contiguous().t(), None, rows, idx, cnt, tok, 3)


def _loop_compaction(x, extra, dense_rows, index, count, tok, width):
    """Obviously-correct compaction of well-formed inputs (a Python loop)."""
    B, L = dense_rows.shape
    out = torch.zeros(B * width, x.shape[1], dtype=x.dtype)
    cu = [0]
    new_tok = torch.zeros(B, width, dtype=torch.int32)
    for b in range(B):
        n = int(count[b])
        for j in range(width):
            i = int(index[b, j])
            new_tok[b, j] = -1 if i == L else int(tok[b, i])
            if j < n:
                out[cu[-1] + j] = extra[b].cpu() if i == L else x[int(dense_rows[b, i])].cpu()
        cu.append(cu[-1] + n)
    return out, torch.tensor(cu, dtype=torch.int32), new_tok


@pytest.mark.parametrize("with_extra", [False, True])
def test_malformed_counts_indices_and_rows_are_clamped(with_extra):
    """count -> [0, width], index -> [0, L] ([0, L - 1] without extra), dense_rows -> [0, rows - 1]: the result
    is the compaction of the clamped metadata, a well-formed buffer."""
    B, L, width, C, rows = 4, 9, 6, 16, 30
    x = torch.randn(rows, C, device=DEVICE)
    extra = torch.randn(B, C, device=DEVICE) if with_extra else None
    dense_rows = torch.randint(0, rows, (B, L), device=DEVICE)
    dense_rows[0, 1], dense_rows[2, 0], dense_rows[3, 3] = -5, rows, 10**9
    index = torch.randint(0, L, (B, width + 2), device=DEVICE)
    index[0, 0], index[1, 2], index[2, 1], index[3, 5] = -3, L + 7, 10**6, L
    count = torch.tensor([-2, 3, width + 5, 6], device=DEVICE)
    tok = torch.randint(0, 500, (B, L), dtype=torch.int32, device=DEVICE)
    got = compact_packed(x, extra, dense_rows, index, count, tok, width)
    hi = L if with_extra else L - 1
    clamped = (dense_rows.clamp(0, rows - 1), index[:, :width].clamp(0, hi), count.clamp(0, width))
    want_x, want_cu, want_tok = _loop_compaction(x, extra, *clamped, tok, width)
    assert torch.equal(got[0].cpu(), want_x) and torch.equal(got[1].cpu(), want_cu)
    assert torch.equal(got[4].cpu(), want_tok)
    n = clamped[2].cpu()
    assert torch.equal(got[3].cpu(), torch.arange(width)[None, :] < n[:, None])
    assert torch.equal(got[2].cpu(), want_cu[:-1, None].long() + torch.arange(width))
    for bad, msg in ((0, r"dense_rows\[0, 1\] = -5 is outside \[0, 29\]"), (1, r"index\[0, 0\] = -3 is outside"),
                     (2, r"count\[0\] = -2 is outside \[0, 6\]")):
        args = [t.clone() for t in clamped]
        args[bad] = (dense_rows, index, count)[bad]
        with pytest.raises(ValueError, match="compact_packed: " + msg):
            compact_packed(x, extra, args[0], args[1], args[2], tok, width, check_lengths=True)
    compact_packed(x, extra, *clamped, tok, width, check_lengths=True)  # well-formed: passes


def test_shapes_checked_before_launch():
    from raggedvit.ops.compact import launcher

    x, rows, idx, cnt, tok = _small_inputs()
    before = dict(launcher.stats)
    with pytest.raises(ValueError, match="index \\(B, >= width\\)"):
        compact_packed(x, None, rows, idx, cnt, tok, 4)  # index narrower than width
    with pytest.raises(ValueError, match="count"):
        compact_packed(x, None, rows, idx, cnt[:1], tok, 3)
    with pytest.raises(ValueError, match="extra must be"):
        compact_packed(x, torch.zeros(2, 5, device=DEVICE), rows, idx, cnt, tok, 3)
    with pytest.raises(ValueError, match="nothing to index"):
        compact_packed(x[:0], None, rows, idx, cnt, tok, 3)
    assert dict(launcher.stats) == before
    out, cu, *_ = compact_packed(x, None, rows[:0], idx[:0], cnt[:0], tok[:0], 3)  # empty batch: nothing launched
    assert out.shape == (0, 4) and cu.tolist() == [0]


def test_row_strides_16_divisible_or_not():
    """The kernel specializes on the row stride of x (vector loads when it is 16-divisible): a buffer with
    such a stride, then views with other strides, then the first again, each equal the torch compaction
    (on the GPU the launch cache must not reuse a kernel compiled for another stride)."""
    gen = torch.Generator().manual_seed(int(torch.randint(0, 2**31, (1,))))
    L, lengths, C, width = 9, [9, 4, 7], 48, 6
    meta = meta_from_counts(torch.tensor(lengths, device=DEVICE), L)
    index, count = _selection(lengths, L, width, 1, True, gen)
    index, count = index.to(DEVICE), count.to(DEVICE)
    tok = torch.zeros(3, L, dtype=torch.int32, device=DEVICE)
    for pad in (0, 3, 16, 0):  # row strides 48, 51, 64, 48
        x = torch.randn(meta.capacity, C + pad, generator=gen).to(DEVICE, torch.float16)[:, :C]
        extra = torch.randn(3, C + pad, generator=gen).to(DEVICE, torch.float16)[:, :C]
        want_meta, (want_x,) = compact(meta, Selection(index, count, width, False, extra), [(x, extra)])
        got_x = compact_packed(x, extra, meta.dense_rows, index, count, tok, width)[0]
        assert torch.equal(got_x, want_x), f"row stride {x.stride(0)}"

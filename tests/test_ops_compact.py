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


def test_errors():
    x = torch.randn(8, 4, device=DEVICE)
    rows = torch.arange(8, device=DEVICE).view(2, 4)
    idx = torch.zeros(2, 3, dtype=torch.long, device=DEVICE)
    cnt = torch.ones(2, dtype=torch.long, device=DEVICE)
    tok = torch.zeros(2, 4, dtype=torch.int32, device=DEVICE)
    with pytest.raises(TypeError, match="int64"):
        compact_packed(x, None, rows, idx.int(), cnt, tok, 3)
    with pytest.raises(ValueError, match="last stride 1"):
        compact_packed(x.t().contiguous().t(), None, rows, idx, cnt, tok, 3)

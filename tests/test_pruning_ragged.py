"""Tests for raggedvit.pruning: metadata, compaction, CLS attention row, selection rules vs loop references."""

from __future__ import annotations

import math

import pytest
import torch

from raggedvit.pruning import ats, dynamicvit, evit, threshold_l2
from raggedvit.pruning.cls_attention import cls_attention, cls_attention_from_lse
from raggedvit.pruning.ragged import Selection, compact, dense_view, packed_meta, padded_meta, uniform_meta
from raggedvit.pruning.selection import candidates

from helpers import make_cu_seqlens


def _packed(lengths, bound, extra_rows=3):
    cu = make_cu_seqlens(lengths, "cpu")
    return packed_meta(cu, bound, sum(lengths) + extra_rows)


def test_packed_meta_rows_and_segments():
    meta = _packed([3, 0, 5, 2], 5)
    assert meta.seg_ids.tolist() == [0, 0, 0, 2, 2, 2, 2, 2, 3, 3, 4, 4, 4]
    assert meta.positions.tolist() == [0, 1, 2, 0, 1, 2, 3, 4, 0, 1, 0, 0, 0]
    assert meta.row_valid.tolist() == [True] * 10 + [False] * 3
    assert meta.dense_valid.sum(1).tolist() == [3, 0, 5, 2]
    assert meta.dense_rows[2].tolist() == [3, 4, 5, 6, 7]
    pad = padded_meta(torch.tensor([2, 3]), 3)
    assert pad.padded and pad.row_valid.tolist() == [True, True, False, True, True, True]
    assert pad.seg_ids.tolist() == [0, 0, 2, 1, 1, 1]


@pytest.mark.parametrize("packed", [True, False])
def test_compact_matches_loop(packed):
    lengths = [5, 7, 1, 6]
    B, L, C = len(lengths), 7, 4
    if packed:
        meta = _packed(lengths, L, extra_rows=0)
        meta = packed_meta(meta.cu_seqlens, L, B * L)
    else:
        meta = padded_meta(torch.tensor(lengths), L)
    x = torch.randn(meta.capacity, C)
    extra = torch.randn(B, C)
    # keep prefix 0, then a random subset of the rest in random order, then the appended token for some images
    index = torch.zeros(B, 5, dtype=torch.long)
    count = torch.zeros(B, dtype=torch.long)
    expected = []
    for b, n in enumerate(lengths):
        perm = (torch.randperm(n - 1) + 1)[: min(n - 1, 3)].tolist() if n > 1 else []
        ids = [0] + perm + ([L] if b % 2 == 0 else [])
        index[b, : len(ids)] = torch.tensor(ids)
        count[b] = len(ids)
        dense = dense_view(x, meta)[b]
        expected.append(torch.stack([extra[b] if i == L else dense[i] for i in ids]))
    sel = Selection(index, count, 5, False, extra)
    new, (y,) = compact(meta, sel, [(x, extra)])
    got = dense_view(y, new, fill=0.0)
    for b in range(B):
        n = int(count[b])
        torch.testing.assert_close(got[b, :n], expected[b], rtol=0, atol=0)
        assert (got[b, n:] == 0).all()
    assert (y[~new.row_valid] == 0).all() and y.shape[0] == new.capacity
    if packed:
        assert new.cu_seqlens.dtype == torch.int32
        assert new.cu_seqlens.tolist() == [0] + torch.cumsum(count, 0).tolist()


@pytest.mark.parametrize("use_lse", [False, True])
def test_cls_attention_row_is_exact(use_lse):
    lengths, H, D = [7, 1, 12], 3, 16
    meta = _packed(lengths, 12)
    q, k = torch.randn(meta.capacity, H, D) * 2, torch.randn(meta.capacity, H, D) * 2
    scale = D**-0.5
    q_cls = q[meta.dense_rows[:, 0]]
    if use_lse:
        lse = torch.stack([torch.logsumexp(scale * (k[s:s + n] * q[s]).sum(-1), dim=0)
                           for s, n in zip(meta.cu_seqlens[:-1].tolist(), lengths)])
        got = cls_attention_from_lse(q_cls, dense_view(k, meta), meta.dense_valid, lse, scale=scale)
    else:
        got = cls_attention(q_cls, dense_view(k, meta), meta.dense_valid, scale=scale)
    start = 0
    for b, n in enumerate(lengths):
        qs, ks = q[start:start + n].double().transpose(0, 1), k[start:start + n].double().transpose(0, 1)
        full = torch.softmax(qs @ ks.transpose(1, 2) * scale, dim=-1)  # (H, n, n)
        torch.testing.assert_close(got[b, :n].double(), full[:, 0, :].T, atol=1e-6, rtol=1e-5)
        assert (got[b, n:] == 0).all()
        start += n


def test_counting_formulas_match_the_spec_tables():
    table = {0.9: (176, 158, 142), 0.8: (156, 125, 100), 0.7: (137, 96, 67), 0.6: (117, 70, 42), 0.5: (98, 49, 24)}
    for rho, counts in table.items():
        assert dynamicvit.keep_counts(196, rho) == counts
    fused = {0.9: (179, 163, 148), 0.8: (159, 129, 105), 0.7: (140, 100, 72), 0.6: (120, 74, 46), 0.5: (100, 52, 28)}
    for rho, totals in fused.items():
        n, got = 196, []
        for _ in range(3):
            k = evit.num_keep(n, rho)
            got.append(1 + k + 1)
            n = k + 1
        assert tuple(got) == totals


def _rand_view(lengths, L, num_prefix=1):
    valid = torch.arange(L)[None, :] < torch.tensor(lengths)[:, None]
    return valid, candidates(valid, num_prefix)


def test_topk_selections_order_and_prefix():
    valid, cand = _rand_view([9, 9], 9, num_prefix=2)
    score = torch.randn(2, 9)
    sel = dynamicvit.select_topk(score, valid, 2, 4)
    for b in range(2):
        best = sorted(range(2, 9), key=lambda j: -score[b, j].item())[:4]
        assert sel.index[b].tolist() == [0, 1] + best
    sel = threshold_l2.select_topk(score, valid, 2, 4)
    for b in range(2):
        best = sorted(sorted(range(2, 9), key=lambda j: -score[b, j].item())[:4])
        assert sel.index[b].tolist() == [0, 1] + best  # original order
    assert sel.exact and sel.count.tolist() == [6, 6]


def test_threshold_guards():
    valid, cand = _rand_view([6, 9, 4], 9)
    score = torch.rand(3, 9) + 1.0
    sel = threshold_l2.select_threshold(score, valid, 1, threshold=100.0, k_min=2)
    assert sel.count.tolist() == [3, 3, 3]
    for b in range(3):
        n = int(valid[b].sum())
        best = sorted(sorted(range(1, n), key=lambda j: -score[b, j].item())[:2])
        assert sel.index[b, :3].tolist() == [0] + best
    sel = threshold_l2.select_threshold(score, valid, 1, threshold=0.0, k_max=4)
    assert sel.count.tolist() == [5, 5, 4] and sel.width == 5
    sel = threshold_l2.select_threshold(score, valid, 1, alpha=1.0)
    for b in range(3):
        n = int(valid[b].sum())
        s = score[b, 1:n]
        assert int(sel.count[b]) == 1 + int((s >= s.mean()).sum())


def test_dynamicvit_threshold_and_predictor_global_mean():
    torch.manual_seed(0)
    pred = dynamicvit.Predictor(32)
    lengths = [5, 9]
    meta = _packed(lengths, 9)
    x = torch.randn(meta.capacity, 32)
    cand = candidates(meta.dense_valid, 1)
    out = pred(x, meta.seg_ids, meta.dense_rows, cand)
    start = 0
    for n in lengths:  # official PredictorLG on one image's patch tokens
        z = pred.in_conv(x[start + 1:start + n])
        h = torch.cat([z[:, :16], z[:, 16:].mean(0, keepdim=True).expand(n - 1, 16)], dim=-1)
        torch.testing.assert_close(out[start + 1:start + n], pred.out_conv(h), atol=1e-6, rtol=1e-5)
        start += n
    score = dense_view(dynamicvit.keep_scores(out), meta)
    sel = dynamicvit.select_threshold(score, meta.dense_valid, 1, threshold=0.5, k_min=1)
    for b, n in enumerate(lengths):
        s = score[b, 1:n]
        assert int(sel.count[b]) == 1 + max(1, int((s.exp() > 0.5).sum()))


def ats_reference(sig: torch.Tensor, num_samples: int) -> list[int]:
    """Official-style ATS on one image's candidate significances (1-D), O(M N) argmin; returns kept indices
    (into ``sig``) in ascending-significance order."""
    s_sorted, perm = torch.sort(sig, stable=True)
    cdf = torch.cumsum(s_sorted, 0)
    norm = (cdf - cdf.min()) / (cdf.max() - cdf.min())
    y0 = torch.min(norm + (norm == 0).float() * 1e8)
    m = num_samples
    lin = torch.linspace(0, 1, m)
    ys = y0 + ((lin * (m - 1)) - y0 * torch.arange(m, dtype=torch.float32)) / (m - 1)
    picks = torch.argmin((ys[:, None] - norm[None, :]).abs(), dim=1)
    return perm[torch.unique(picks)].tolist()


@pytest.mark.parametrize("sigma", [0.05, 1.0, 2.5])
def test_ats_sampling_matches_official_argmin(sigma):
    lengths, L, M = [197, 150, 60, 197], 197, 196
    valid, cand = _rand_view(lengths, L)
    raw = torch.exp(torch.randn(len(lengths), L) * sigma)
    probs = raw[:, :, None].expand(-1, -1, 3) / 3
    sig = ats.significance(probs, torch.ones(len(lengths), L), cand)
    sel = ats.select_sampling(sig, valid, 1, num_samples=M)
    assert sel.width == 197
    counts = []
    for b, n in enumerate(lengths):
        expected = [j + 1 for j in ats_reference(sig[b, 1:n], M)]
        assert sel.index[b, : int(sel.count[b])].tolist() == [0] + expected
        counts.append(len(expected))
    if sigma >= 1.0:
        assert len(set(counts)) > 1 and min(counts) < 180


def test_ats_degenerate_rows():
    valid, cand = _rand_view([1, 2, 3], 3)
    sig = ats.significance(torch.ones(3, 3, 2), torch.ones(3, 3), cand)
    sel = ats.select_sampling(sig, valid, 1, num_samples=196)
    assert sel.count.tolist() == [1, 2, 2]  # CLS only; one candidate kept; the lower of two never kept
    assert sel.index[2, :2].tolist() == [0, 2]


def test_evit_mass_and_fusion():
    L, C = 9, 4
    valid, cand = _rand_view([9, 9, 5], L)
    a = torch.rand(3, L) ** 4 + 0.01  # away from 0: a token below fp32 resolution of the total adds no mass
    a[1, 1:] = 1.0 / 8  # uniform: mass 0.5 keeps half
    y = torch.randn(3, L, C)
    sel = evit.select_mass(a, valid, 1, mass=0.5, fuse=True, y_dense=y)
    assert sel.width == L
    for b in range(3):
        n = int(valid[b].sum())
        s = a[b, 1:n]
        order = sorted(range(n - 1), key=lambda j: -s[j].item())
        k = next(i + 1 for i in range(n - 1) if sum(s[order[t]].item() for t in range(i + 1)) >= 0.5 * s.sum().item())
        kept = [1 + j for j in order[:k]]
        assert sel.index[b, 1:1 + k].tolist() == kept
        dropped = [1 + j for j in order[k:]]
        assert int(sel.count[b]) == 1 + k + (1 if dropped else 0)
        if dropped:
            assert int(sel.index[b, 1 + k]) == L
            torch.testing.assert_close(sel.extra[b], sum(a[b, j] * y[b, j] for j in dropped))
    assert int(sel.count[1]) == 1 + 4 + 1
    everything = evit.select_mass(a, valid, 1, mass=1.0, fuse=True, y_dense=y)
    assert everything.count.tolist() == [9, 9, 5]  # all kept -> no fused token
    assert everything.index[0].tolist()[-1] != L


def test_uniform_meta_layouts_agree():
    p, q = uniform_meta(3, 5, "cpu", packed=True), uniform_meta(3, 5, "cpu", packed=False)
    assert torch.equal(p.dense_rows, q.dense_rows) and torch.equal(p.seg_ids, q.seg_ids)
    assert p.uniform and q.uniform and math.prod(p.dense_rows.shape) == p.capacity


def test_quantile_threshold_is_a_midpoint():
    scores = torch.tensor([5.0, 1.0, 3.0, 2.0, 4.0])
    t = threshold_l2.quantile_threshold(scores, 0.6)  # keep 3 of 5: between 2 and 3
    assert t == 2.5 and int((scores >= t).sum()) == 3
    assert threshold_l2.quantile_threshold(scores, 1.0) < 1.0


def test_quantile_threshold_never_lands_on_a_repeated_score():
    """Duplicate images give repeated scores: the cut falls between distinct values, never on a score."""
    scores = torch.tensor([1.0, 2.0, 3.0, 3.0, 3.0, 5.0, 6.0, 7.0])
    for rate in (0.5, 0.6, 0.7, 0.75, 0.9, 1.0):
        t = threshold_l2.quantile_threshold(scores, rate)
        assert not (scores == t).any(), (rate, t)
    assert threshold_l2.quantile_threshold(scores, 0.5) == 4.0  # k = 4 (a 3 at the cut): between 3 and 5
    assert threshold_l2.quantile_threshold(scores, 0.75) == 2.5  # k = 2 (the first 3): between 2 and 3
    same = torch.full((6,), 2.0)
    assert threshold_l2.quantile_threshold(same, 0.5) < 2.0  # all equal: keep them all rather than split ties


def test_garbage_rows_never_leak():
    """Rows past the live total may be uninitialised (NaN): they must not reach any live output."""
    torch.manual_seed(0)
    pred = dynamicvit.Predictor(32)
    meta = _packed([5, 7], 9, extra_rows=4)  # image 1: positions 7, 8 read unused (NaN) rows
    x = torch.randn(meta.capacity, 32)
    x[~meta.row_valid] = float("nan")
    out = pred(x, meta.seg_ids, meta.dense_rows, candidates(meta.dense_valid, 1))
    assert torch.isfinite(out[meta.row_valid]).all()
    y = torch.randn(2, 6, 4)
    y[1, 4:] = float("nan")
    dropped = torch.tensor([[0, 1, 1, 0, 0, 1], [0, 1, 0, 1, 0, 0]], dtype=torch.bool)
    fused = evit.fused_token(torch.rand(2, 6), dropped, y)
    assert torch.isfinite(fused).all()
    score = torch.rand(2, 9)
    for fuse_sel in (evit.select_mass(score, meta.dense_valid, 1, mass=0.5, fuse=True, y_dense=dense_view(x, meta)),
                     evit.select_topk(score, meta.dense_valid, 1, 3, fuse=True, y_dense=dense_view(x, meta))):
        assert torch.isfinite(fuse_sel.extra).all()

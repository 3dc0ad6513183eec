"""Tests for raggedvit.ops.select (Triton kernel under the interpreter on CPU): the same keep decisions as
the torch Threshold-L2 selection functions."""

from __future__ import annotations

import pytest
import torch

from raggedvit.ops.select import l2_select
from raggedvit.pruning import threshold_l2
from raggedvit.pruning.ragged import dense_view, meta_from_counts, uniform_meta

from conftest import DEVICE


def _kept(index, count):
    return [index[b, : int(count[b])].tolist() for b in range(index.shape[0])]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("rule", ["fixed", "absolute", "relative", "clamped"])
@pytest.mark.parametrize("prefix", [1, 2])
def test_matches_torch_selection(dtype, rule, prefix):
    lengths = [prefix, prefix + 1, 40, 9, 57, 23]
    L, C = 57, 24
    uniform = rule == "fixed"
    meta = uniform_meta(4, L, DEVICE) if uniform else meta_from_counts(torch.tensor(lengths, device=DEVICE), L)
    x = (torch.randn(meta.capacity, C, device=DEVICE) * torch.rand(meta.capacity, 1, device=DEVICE) * 3).to(dtype)
    x[3] = x[5]  # an exact tie between two positions
    score = dense_view(threshold_l2.l2_scores(x), meta)
    valid = None if uniform else meta.dense_valid
    if rule == "fixed":
        want = threshold_l2.select_topk(score, valid, prefix, 20)
        got = l2_select(x, meta.dense_rows, meta.lengths, prefix, prefix + 20, k=20)
    else:
        opts = dict(k_min=1, k_max=None)
        if rule == "absolute":
            live = score[:, prefix:][valid[:, prefix:]]  # a midpoint between two norms: no exact tie with T
            opts["threshold"] = threshold_l2.quantile_threshold(live.float(), 0.5)
        elif rule == "relative":
            opts["alpha"] = 1.0
        else:
            opts.update(alpha=0.8, k_min=5, k_max=12)
        want = threshold_l2.select_threshold(score, valid, prefix, **opts)
        got = l2_select(x, meta.dense_rows, meta.lengths, prefix, want.width, **opts)
    index, count = got
    assert index.shape == (meta.batch, want.width)
    assert torch.equal(count, want.count)
    assert _kept(index, count) == _kept(want.index, want.count)


def test_errors():
    x = torch.randn(8, 4, device=DEVICE)
    rows = torch.arange(8, device=DEVICE).view(2, 4)
    n = torch.full((2,), 4, device=DEVICE)
    with pytest.raises(ValueError, match="exactly one"):
        l2_select(x, rows, n, 1, 3)
    with pytest.raises(ValueError, match="int64"):
        l2_select(x, rows.int(), n, 1, 3, alpha=1.0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("rule", ["fixed", "mass", "mass_clamped"])
@pytest.mark.parametrize("fuse", [True, False])
@pytest.mark.parametrize("prefix", [1, 2])
def test_evit_matches_torch_selection(dtype, rule, fuse, prefix):
    from raggedvit.ops.select import best_first_select
    from raggedvit.pruning import evit

    L, C = 45, 24
    uniform = rule == "fixed"
    lengths = [prefix, prefix + 1, 40, 9, 45, 23]
    meta = uniform_meta(4, L, DEVICE) if uniform else meta_from_counts(torch.tensor(lengths, device=DEVICE), L)
    y = torch.randn(meta.capacity, C, device=DEVICE).to(dtype)
    score = torch.softmax(torch.randn(meta.batch, L, device=DEVICE) * 2, dim=1)
    score[:, 7] = score[:, 9]  # an exact tie
    score = torch.where(meta.dense_valid, score, torch.rand_like(score))  # garbage past the lengths
    valid = None if uniform else meta.dense_valid
    y_dense = dense_view(y, meta)
    if rule == "fixed":
        want = evit.select_topk(score, valid, prefix, 20, fuse=fuse, y_dense=y_dense)
        got = best_first_select(score, y, meta.dense_rows, meta.lengths, prefix, want.width, k=20, fuse=fuse)
    else:
        opts = dict(mass=0.6) if rule == "mass" else dict(mass=0.9, k_min=3, k_max=11)
        want = evit.select_mass(score, valid, prefix, fuse=fuse, y_dense=y_dense, **opts)
        got = best_first_select(score, y, meta.dense_rows, meta.lengths, prefix, want.width, fuse=fuse, **opts)
    index, count, extra = got
    assert torch.equal(count, want.count)
    assert _kept(index, count) == _kept(want.index, want.count)
    if fuse:
        has = index.gather(1, (count - 1).clamp(min=0)[:, None])[:, 0] == L
        tol = 1e-5 if dtype == torch.float32 else 2e-3
        torch.testing.assert_close(extra[has].float(), want.extra[has].float(), atol=tol, rtol=tol)
    else:
        assert extra is None


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("rule", ["fixed", "threshold", "threshold_clamped"])
def test_dynamicvit_matches_torch_selection(dtype, rule):
    """Per-row scores (a strided column of the predictor's log-probabilities), best first."""
    import math

    from raggedvit.ops.select import best_first_select
    from raggedvit.pruning import dynamicvit

    L, prefix = 45, 1
    uniform = rule == "fixed"
    lengths = [1, 2, 40, 9, 45, 23]
    meta = uniform_meta(4, L, DEVICE) if uniform else meta_from_counts(torch.tensor(lengths, device=DEVICE), L)
    logp = torch.log_softmax(torch.randn(meta.capacity, 2, device=DEVICE) * 2, dim=-1).to(dtype)
    logp[9] = logp[11]  # an exact tie
    rows = dynamicvit.keep_scores(logp)  # (rows,), stride 2
    score = dense_view(rows, meta)
    valid = None if uniform else meta.dense_valid
    y = torch.randn(meta.capacity, 8, device=DEVICE)
    if rule == "fixed":
        want = dynamicvit.select_topk(score, valid, prefix, 20)
        got = best_first_select(rows, y, meta.dense_rows, meta.lengths, prefix, want.width, k=20)
    else:
        opts = dict(k_min=1, k_max=None) if rule == "threshold" else dict(k_min=4, k_max=9)
        want = dynamicvit.select_threshold(score, valid, prefix, threshold=0.5, **opts)
        got = best_first_select(rows, y, meta.dense_rows, meta.lengths, prefix, want.width, threshold=math.log(0.5),
                                **opts)
    index, count, extra = got
    assert extra is None and torch.equal(count, want.count)
    assert _kept(index, count) == _kept(want.index, want.count)


@pytest.mark.parametrize("uniform", [True, False])
def test_ats_topk_matches_torch_selection(uniform):
    """Significance = CLS attention x per-row value norm, the k best written in ascending order."""
    from raggedvit.ops.select import best_first_select
    from raggedvit.pruning import ats

    L, prefix, k = 45, 1, 12
    meta = uniform_meta(3, L, DEVICE) if uniform else meta_from_counts(torch.tensor([20, 45, 13], device=DEVICE), L)
    score = torch.softmax(torch.randn(meta.batch, L, device=DEVICE), dim=1)
    v_norm = torch.rand(meta.capacity, device=DEVICE) + 0.5
    v_norm[4] = v_norm[6]
    score[:, 4] = score[:, 6]  # an exact tie
    sig = score * dense_view(v_norm, meta)
    want = ats.select_topk(sig, None if uniform else meta.dense_valid, prefix, k)
    y = torch.randn(meta.capacity, 8, device=DEVICE)
    index, count, _ = best_first_select(score, y, meta.dense_rows, meta.lengths, prefix, want.width, k=k,
                                        row_weight=v_norm, ascending=True)
    assert torch.equal(count, want.count) and torch.equal(index, want.index)


@pytest.mark.parametrize("uniform", [True, False])
@pytest.mark.parametrize("num_samples", [1, 9, 60])
def test_ats_sampling_matches_torch_selection(uniform, num_samples):
    from raggedvit.ops.select import ats_select
    from raggedvit.pruning import ats

    L, prefix = 45, 1
    lengths = [1, 2, 45, 13, 30, 3]
    meta = uniform_meta(4, L, DEVICE) if uniform else meta_from_counts(torch.tensor(lengths, device=DEVICE), L)
    score = torch.softmax(torch.randn(meta.batch, L, device=DEVICE) * 2, dim=1)
    score[:, 5:8] = 0.0  # zero significance: flat CDF steps (first-of-value rule)
    v_norm = torch.rand(meta.capacity, device=DEVICE) + 0.5
    sig = score * dense_view(v_norm, meta)
    want = ats.select_sampling(sig, None if uniform else meta.dense_valid, prefix, num_samples=num_samples)
    index, count = ats_select(score, v_norm, meta.dense_rows, meta.lengths, prefix, want.width, num_samples)
    assert torch.equal(count, want.count)
    assert _kept(index, count) == _kept(want.index, want.count)


# ----------------------------------------------------------------------------------------------- malformed metadata
def _malformed_batch(L=20, C=8, B=4):
    """A packed batch and its metadata with garbage lengths (negative, past L) and row indices (negative,
    past the buffer) at candidate positions; returns (x, score, v_norm, rows, lengths, clamped rows, lengths)."""
    meta = meta_from_counts(torch.tensor([L, 7, 12, L], device=DEVICE), L)
    R = meta.capacity
    x = torch.randn(R, C, device=DEVICE)
    score = torch.softmax(torch.randn(B, L, device=DEVICE), dim=1)
    v_norm = torch.rand(R, device=DEVICE) + 0.5
    rows = meta.dense_rows.clone()
    rows[0, 3], rows[1, 2], rows[3, 5] = -4, R, 10**9
    lengths = torch.tensor([L + 10, 7, -3, L], device=DEVICE)
    return x, score, v_norm, rows, lengths, rows.clamp(0, R - 1), lengths.clamp(0, L)


def _selections(x, score, v_norm, rows, lengths, P, width, **kw):
    from raggedvit.ops.select import ats_select, best_first_select

    return {
        "l2": l2_select(x, rows, lengths, P, width, alpha=0.8, **kw),
        "evit": best_first_select(score, x, rows, lengths, P, width, mass=0.7, fuse=True, **kw),
        "dynamicvit": best_first_select(v_norm, x, rows, lengths, P, width, threshold=1.0, **kw)[:2],
        "ats": ats_select(score, v_norm, rows, lengths, P, width, 9, **kw),
    }


def test_malformed_lengths_and_rows_are_clamped():
    """lengths -> [0, L], dense_rows -> [0, rows - 1]: the same decisions as for the clamped metadata."""
    x, score, v_norm, rows, lengths, rows_c, lengths_c = _malformed_batch()
    got = _selections(x, score, v_norm, rows, lengths, 1, 21)
    want = _selections(x, score, v_norm, rows_c, lengths_c, 1, 21)
    for name in got:
        for g, w in zip(got[name], want[name]):
            assert torch.equal(g, w), name
        index, count = got[name][:2]
        assert ((count >= 1) & (count <= 21)).all() and ((index >= 0) & (index <= 20)).all(), name


def test_width_too_small_for_the_rule_truncates_the_count():
    """More kept tokens than output slots: the best ones that fit are kept, count <= width, no fused token
    without a free slot; every slot is written (filler 0)."""
    from raggedvit.ops.select import best_first_select

    x, score, v_norm, _, _, rows, lengths = _malformed_batch()
    P, width = 1, 4
    got = l2_select(x, rows, lengths, P, width, k=10)  # as k = width - P, the rule the other tests check
    for g, w in zip(got, l2_select(x, rows, lengths, P, width, k=width - P)):
        assert torch.equal(g, w)
    for got in (_selections(x, score, v_norm, rows, lengths, P, width).values()):
        index, count = got[:2]
        assert index.shape == (4, width) and (count <= width).all() and ((index >= 0) & (index <= 20)).all()
    index, count, _ = best_first_select(score, x, rows, lengths, P, width, k=3, fuse=True)  # room for k, not the fused
    assert count.tolist() == [width, width, P, width] and (index[:, -1] != 20).all()  # image 2 has no candidates


@pytest.mark.parametrize("which", ["l2", "evit", "dynamicvit", "ats"])
def test_check_lengths_names_the_bad_value(which):
    x, score, v_norm, rows, lengths, rows_c, lengths_c = _malformed_batch()
    with pytest.raises(ValueError, match=r"lengths\[0\] = 30 is outside \[0, 20\]"):
        _selections(x, score, v_norm, rows_c, lengths, 1, 21, check_lengths=True)
    with pytest.raises(ValueError, match=r"dense_rows\[0, 3\] = -4 is outside \[0, 79\]"):
        _selections(x, score, v_norm, rows, lengths_c, 1, 21, check_lengths=True)
    with pytest.raises(ValueError, match=r"num_prefix 3 > width 2"):
        l2_select(x, rows_c, lengths_c, 3, 2, k=1)

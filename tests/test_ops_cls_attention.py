"""Tests for raggedvit.ops.cls_attention (Triton kernel under the interpreter on CPU)."""

from __future__ import annotations

import pytest
import torch

from raggedvit.ops.cls_attention import cls_attention_mean, cls_attention_mean_reference

from conftest import DEVICE
from helpers import assert_close_report, make_cu_seqlens


def _loop_reference(q, k, lengths, width, scale, v=None):
    out = torch.zeros(len(lengths), width, dtype=torch.float64)
    start = 0
    for b, n in enumerate(lengths):
        if n:
            s = torch.einsum("hd,nhd->nh", q[start].double().cpu(), k[start:start + n].double().cpu()) * scale
            out[b, :n] = torch.softmax(s, dim=0).mean(1)
            if v is not None:
                out[b, :n] *= v[start:start + n].double().cpu().flatten(1).norm(dim=1)
        start += n
    return out


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("heads,head_dim", [(3, 64), (6, 64), (12, 64), (2, 72)])
def test_matches_fp64_loop(dtype, heads, head_dim):
    lengths = [1, 0, 70, 197, 5]
    qkv = torch.randn(sum(lengths) + 3, 3, heads, head_dim, device=DEVICE).to(dtype) * 2
    q, k, _ = qkv.unbind(1)
    cu = make_cu_seqlens(lengths, DEVICE)
    out = torch.full((len(lengths), 200), float("nan"), device=DEVICE)
    got = cls_attention_mean(q, k, cu[:-1], cu[1:], 200, scale=head_dim**-0.5, out=out)
    want = _loop_reference(q, k, lengths, 200, head_dim**-0.5)
    assert_close_report(got, want, 1e-5, f"{dtype}")
    assert_close_report(cls_attention_mean_reference(q, k, cu[:-1], cu[1:], 200, scale=head_dim**-0.5), want, 1e-5,
                        "reference")
    torch.testing.assert_close(got.sum(1).cpu(), torch.tensor([1.0 if n else 0.0 for n in lengths]), rtol=0,
                               atol=1e-5)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("heads,head_dim", [(3, 64), (12, 64), (2, 72), (1, 128), (4, 32)])
def test_value_norms_multiply_each_column(dtype, heads, head_dim):
    """``v``: every column times its key's value norm over all heads (ATS's significance); q, k, v as strided
    views of one fused qkv tensor, lengths 0 / 1 / 577 / ragged; a sequence alone gives the same bits."""
    lengths = [577, 1, 0, 70, 130]
    qkv = torch.randn(sum(lengths) + 2, 3, heads, head_dim, device=DEVICE).to(dtype)
    q, k, v = qkv.unbind(1)
    cu = make_cu_seqlens(lengths, DEVICE)
    width = 580
    out = torch.full((len(lengths), width), float("nan"), device=DEVICE)
    got = cls_attention_mean(q, k, cu[:-1], cu[1:], width, scale=head_dim**-0.5, v=v, out=out)
    want = _loop_reference(q, k, lengths, width, head_dim**-0.5, v)
    tol = 1e-5 * float(want.abs().max())
    assert_close_report(got, want, tol, f"{dtype}")
    ref = cls_attention_mean_reference(q, k, cu[:-1], cu[1:], width, scale=head_dim**-0.5, v=v)
    assert_close_report(ref, want, tol, "reference")
    plain = cls_attention_mean(q, k, cu[:-1], cu[1:], width, scale=head_dim**-0.5)  # the same probabilities
    norms = torch.zeros(len(lengths), width, device=DEVICE)
    for b, n in enumerate(lengths):
        norms[b, :n] = torch.linalg.vector_norm(v[cu[b]:cu[b] + n].float().flatten(1), dim=1)
    torch.testing.assert_close(got, plain * norms, rtol=2e-6, atol=0)
    alone = cls_attention_mean(q, k, cu[:1], cu[1:2], width, scale=head_dim**-0.5, v=v)
    assert torch.equal(alone, got[:1])


def test_value_norms_bad_input():
    q = torch.randn(6, 2, 16, device=DEVICE)
    se = torch.tensor([0], dtype=torch.int32, device=DEVICE), torch.tensor([6], dtype=torch.int32, device=DEVICE)
    with pytest.raises(ValueError, match="cls_attention_mean: q, k \\(and v\\) must be matching"):
        cls_attention_mean(q, q, *se, 6, scale=1.0, v=q[:, :1])
    with pytest.raises(TypeError, match="v must match q's dtype"):
        cls_attention_mean(q, q, *se, 6, scale=1.0, v=q.double())


def test_padded_rows_via_starts_and_ends():
    width, lengths = 8, [3, 8, 1]
    q, k = (torch.randn(len(lengths) * width, 2, 32, device=DEVICE) for _ in range(2))
    starts = torch.arange(0, len(lengths) * width, width, dtype=torch.int32, device=DEVICE)
    ends = starts + torch.tensor(lengths, dtype=torch.int32, device=DEVICE)
    got = cls_attention_mean(q, k, starts, ends, width, scale=0.5)
    want = torch.zeros(len(lengths), width, dtype=torch.float64)
    for b, n in enumerate(lengths):
        want[b] = _loop_reference(q[b * width:], k[b * width:], [n], width, 0.5)[0]
    assert_close_report(got, want, 1e-5, "padded")


def test_bad_input():
    q = torch.randn(4, 2, 32, device=DEVICE)
    with pytest.raises(TypeError, match="int32"):
        cls_attention_mean(q, q, torch.zeros(1, dtype=torch.long), torch.ones(1, dtype=torch.long), 4, scale=1.0)
    with pytest.raises(ValueError, match="matching"):
        cls_attention_mean(q, q[:, :1], torch.zeros(1, dtype=torch.int32), torch.ones(1, dtype=torch.int32), 4,
                           scale=1.0)


MALFORMED = [  # (name, starts, ends, check_lengths message) over 20 rows, out_width 8
    ("negative start", [-3, 5], [4, 9], r"starts\[0\] = -3 is negative"),
    ("end past the rows", [0, 15], [4, 40], r"ends\[1\] = 40 exceeds the 20 rows of q"),
    ("decreasing", [0, 9], [4, 5], r"ends\[1\] = 5 < starts\[1\] = 9"),
    ("start past the rows", [25, 5], [30, 9], r"ends\[0\] = 30 exceeds"),
    ("longer than out_width", [0, 4], [4, 17], r"sequence 1 has 13 rows, more than out_width = 8"),
]


@pytest.mark.parametrize("name,starts,ends,msg", MALFORMED, ids=[m[0] for m in MALFORMED])
def test_malformed_ranges_are_clamped(name, starts, ends, msg):
    """Ranges are read as [s, e), s = clamp(start, 0, rows), e = clamp(end, s, rows); the softmax covers every
    key of the clamped range, the first out_width probabilities are written."""
    rows, width = 20, 8
    q, k = (torch.randn(rows, 2, 32, device=DEVICE) for _ in range(2))
    st, en = (torch.tensor(t, dtype=torch.int32, device=DEVICE) for t in (starts, ends))
    got = cls_attention_mean(q, k, st, en, width, scale=0.3, out=torch.full((2, width), float("nan"), device=DEVICE))
    want = torch.zeros(2, width, dtype=torch.float64)
    for b, (s, e) in enumerate(zip(starts, ends)):
        s = min(max(s, 0), rows)
        n = min(max(e, s), rows) - s
        if n:
            p = _loop_reference(q[s:], k[s:], [n], n, 0.3)[0]
            want[b, :min(n, width)] = p[:width]
    assert_close_report(got, want, 1e-5, name)
    with pytest.raises(ValueError, match="cls_attention_mean: " + msg):
        cls_attention_mean(q, k, st, en, width, scale=0.3, check_lengths=True)


def test_no_rows_at_all():
    """Zero rows (every sequence empty, whatever its range says): the kernel and the reference both give 0
    (a fuzz case: the reference indexed the empty q)."""
    q = k = torch.randn(0, 2, 16, device=DEVICE)
    starts = torch.tensor([0, 3, -2], dtype=torch.int32, device=DEVICE)
    ends = torch.tensor([0, 5, 4], dtype=torch.int32, device=DEVICE)
    out = torch.full((3, 4), float("nan"), device=DEVICE)
    got = cls_attention_mean(q, k, starts, ends, 4, scale=0.25, out=out)
    assert torch.equal(got, torch.zeros(3, 4, device=DEVICE))
    ref = cls_attention_mean_reference(q, k, starts, ends, 4, scale=0.25)
    assert torch.equal(ref, torch.zeros(3, 4, device=DEVICE))

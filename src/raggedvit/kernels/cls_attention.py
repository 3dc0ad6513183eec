"""Triton kernels: the softmax attention row of each sequence's first (CLS) query, per head
(:func:`cls_attention_fwd`), and its head mean, optionally times each key's value norm
(:func:`cls_head_mean_fwd`).

For sequence ``b`` owning rows ``start[b] .. end[b]`` of packed ``q, k`` (``(rows, heads, head_dim)``, last
stride 1), writes ``OUT[b, h, j] = softmax_j(scale * q[start, h] . k[start + j, h])`` for ``j < end - start``
and 0 for the rest of the row; the caller averages over heads. One program per (sequence, head), two passes
over the keys (running max and sum, then the probabilities), scores and probabilities in fp32. This is what
EViT and ATS need from attention, without materialising ``N x N`` probabilities: O(N * C) work per image.

Ranges are clamped to the ``rows`` that exist (``s = clamp(start, 0, rows)``, ``e = clamp(end, s, rows)``),
so malformed ones read nothing out of bounds.
"""

import triton
import triton.language as tl


@triton.jit(do_not_specialize=["out_width", "rows"])
def cls_attention_fwd(
    Q,
    K,
    STARTS,
    ENDS,
    OUT,
    out_width,
    rows,  # rows of Q and K (host int): ranges are clamped to it
    stride_qt,
    stride_qh,
    stride_kt,
    stride_kh,
    stride_ob,
    stride_oh,
    qk_scale,  # softmax scale * log2(e)
    HEAD_DIM: tl.constexpr,
    BLOCK_D: tl.constexpr,
    BLOCK_N: tl.constexpr,
):
    b = tl.program_id(0).to(tl.int64)
    h = tl.program_id(1).to(tl.int64)
    first = tl.minimum(tl.maximum(tl.load(STARTS + b), 0), rows)
    n = tl.minimum(tl.maximum(tl.load(ENDS + b), first), rows) - first
    start = first.to(tl.int64)
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    d_ok = offs_d < HEAD_DIM
    q = tl.load(Q + start * stride_qt + h * stride_qh + offs_d, mask=d_ok & (n > 0), other=0.0).to(tl.float32)
    k_base = K + start * stride_kt + h * stride_kh + offs_d[None, :]
    neg = -1.0e30  # finite "minus infinity": no inf - inf anywhere (the interpreter warns on those)
    m = tl.full([BLOCK_N], neg, dtype=tl.float32)  # per-lane running max and normaliser
    s_sum = tl.zeros([BLOCK_N], dtype=tl.float32)
    for j0 in range(0, n, BLOCK_N):  # pass 1
        js = j0 + offs_n
        kt = tl.load(k_base + js[:, None].to(tl.int64) * stride_kt, mask=(js[:, None] < n) & d_ok[None, :],
                     other=0.0).to(tl.float32)
        s = tl.where(js < n, tl.sum(kt * q[None, :], axis=1) * qk_scale, neg)  # base-2 logits
        m_new = tl.maximum(m, s)
        s_sum = s_sum * tl.exp2(m - m_new) + tl.where(js < n, tl.exp2(s - m_new), 0.0)
        m = m_new
    m_all = tl.max(m, axis=0)
    m_all = tl.where(m_all > 0.5 * neg, m_all, 0.0)  # no keys (n = 0): 0, so that pass 2 overflows nothing
    total = tl.sum(s_sum * tl.exp2(m - m_all), axis=0)
    inv = 1.0 / tl.maximum(total, 1e-30)
    for j0 in range(0, out_width, BLOCK_N):  # pass 2: probabilities; zeros past n
        js = j0 + offs_n
        live = js < n
        kt = tl.load(k_base + js[:, None].to(tl.int64) * stride_kt, mask=live[:, None] & d_ok[None, :],
                     other=0.0).to(tl.float32)
        s = tl.sum(kt * q[None, :], axis=1) * qk_scale
        p = tl.where(live, tl.exp2(s - m_all) * inv, 0.0)
        tl.store(OUT + b * stride_ob + h * stride_oh + js, p, mask=js < out_width)


@triton.jit(do_not_specialize=["out_width", "rows"])
def cls_head_mean_fwd(
    PER_HEAD,  # (B, HEADS, out_width) fp32 from cls_attention_fwd, contiguous
    V,  # with HAS_V: (rows, heads, head_dim) values (else unused)
    STARTS,
    ENDS,
    OUT,
    out_width,
    rows,
    stride_ob,
    stride_vt,
    stride_vh,
    HEADS: tl.constexpr,
    HEAD_DIM: tl.constexpr,
    BLOCK_H: tl.constexpr,
    BLOCK_D: tl.constexpr,
    BLOCK_N: tl.constexpr,
    HAS_V: tl.constexpr,
):
    """``OUT[b, j] = (sum_h PER_HEAD[b, h, j]) / HEADS`` (heads added in order 0, 1, ...), times
    ``||v[start + j]||_2`` over all heads with ``HAS_V`` (0 past the sequence's clamped length). One program per
    (sequence, block of BLOCK_N columns)."""
    b = tl.program_id(0).to(tl.int64)
    js = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    cols = js < out_width
    acc = tl.zeros([BLOCK_N], dtype=tl.float32)
    for h in range(HEADS):
        acc += tl.load(PER_HEAD + (b * HEADS + h) * out_width + js, mask=cols, other=0.0)
    acc = acc * (1.0 / HEADS)
    if HAS_V:
        first = tl.minimum(tl.maximum(tl.load(STARTS + b), 0), rows)
        n = tl.minimum(tl.maximum(tl.load(ENDS + b), first), rows) - first
        live = js < n
        offs_h = tl.arange(0, BLOCK_H)
        offs_d = tl.arange(0, BLOCK_D)
        vt = tl.load(V + (first.to(tl.int64) + js[:, None, None].to(tl.int64)) * stride_vt
                     + offs_h[None, :, None] * stride_vh + offs_d[None, None, :],
                     mask=live[:, None, None] & (offs_h[None, :, None] < HEADS) & (offs_d[None, None, :] < HEAD_DIM),
                     other=0.0).to(tl.float32)
        acc = acc * tl.sqrt(tl.sum(tl.sum(vt * vt, axis=2), axis=1))
    tl.store(OUT + b * stride_ob + js, acc, mask=cols)

"""Triton kernel: the head-mean softmax attention row of each sequence's first (CLS) query.

For sequence ``b`` owning rows ``start[b] .. end[b]`` of packed ``q, k`` (``(rows, heads, head_dim)``, last
stride 1), writes ``out[b, j] = mean_h softmax_j(scale * q[start, h] . k[start + j, h])`` for
``j < end - start`` and 0 for the rest of the ``out`` row. One program per sequence, two passes over its
keys (running max and sum per head, then the probabilities), all heads at once as a
``(BLOCK_N, BLOCK_H, BLOCK_D)`` tile. Scores and probabilities in fp32. This is what EViT and ATS need
from attention, without materialising ``N x N`` probabilities: O(N * C) work per image.
"""

import triton
import triton.language as tl


@triton.jit(do_not_specialize=["out_width"])
def cls_attention_fwd(
    Q,
    K,
    STARTS,
    ENDS,
    OUT,
    out_width,
    stride_qt,
    stride_qh,
    stride_kt,
    stride_kh,
    stride_ob,
    qk_scale,  # softmax scale * log2(e)
    HEADS: tl.constexpr,
    HEAD_DIM: tl.constexpr,
    BLOCK_H: tl.constexpr,
    BLOCK_D: tl.constexpr,
    BLOCK_N: tl.constexpr,
):
    b = tl.program_id(0)
    start = tl.load(STARTS + b).to(tl.int64)
    n = (tl.load(ENDS + b).to(tl.int64) - start).to(tl.int32)
    offs_n = tl.arange(0, BLOCK_N)
    offs_h = tl.arange(0, BLOCK_H)
    offs_d = tl.arange(0, BLOCK_D)
    hd_ok = (offs_h[:, None] < HEADS) & (offs_d[None, :] < HEAD_DIM)
    q = tl.load(Q + start * stride_qt + offs_h[:, None] * stride_qh + offs_d[None, :], mask=hd_ok & (n > 0),
                other=0.0).to(tl.float32)  # (BLOCK_H, BLOCK_D)
    k_base = K + start * stride_kt + offs_h[None, :, None] * stride_kh + offs_d[None, None, :]
    m = tl.full([BLOCK_H], float("-inf"), dtype=tl.float32)
    s_sum = tl.zeros([BLOCK_H], dtype=tl.float32)
    for j0 in range(0, n, BLOCK_N):  # pass 1: per-head running max and normaliser
        rows = j0 + offs_n
        kt = tl.load(k_base + rows[:, None, None].to(tl.int64) * stride_kt,
                     mask=(rows[:, None, None] < n) & hd_ok[None, :, :], other=0.0).to(tl.float32)
        s = tl.sum(kt * q[None, :, :], axis=2) * qk_scale  # (BLOCK_N, BLOCK_H), base-2 logits
        s = tl.where(rows[:, None] < n, s, float("-inf"))
        m_new = tl.maximum(m, tl.max(s, 0))
        s_sum = s_sum * tl.exp2(m - m_new) + tl.sum(tl.exp2(s - m_new[None, :]), 0)
        m = m_new
    inv = tl.where(offs_h < HEADS, 1.0 / tl.maximum(s_sum * HEADS, 1e-30), 0.0)  # 1/(normaliser*heads): mean
    for j0 in range(0, out_width, BLOCK_N):  # pass 2: probabilities, averaged over heads; zeros past n
        rows = j0 + offs_n
        live = rows < n
        kt = tl.load(k_base + rows[:, None, None].to(tl.int64) * stride_kt,
                     mask=live[:, None, None] & hd_ok[None, :, :], other=0.0).to(tl.float32)
        s = tl.sum(kt * q[None, :, :], axis=2) * qk_scale
        p = tl.exp2(s - m[None, :]) * inv[None, :]
        p = tl.sum(tl.where(live[:, None] & (offs_h[None, :] < HEADS), p, 0.0), 1)
        tl.store(OUT + b * stride_ob + rows, p, mask=rows < out_width)

"""The CLS attention op of main (2026-12-01), for whole-forward A/Bs (``benchmarks/live_rows_ab.py``,
mode ``auto-cls-before``): one program per (sequence, head) writing per-head rows, then ``torch.mean`` over
heads (two launches); ATS then took its value norms from a kernel of their own (``_ats_select_norm_apart`` in
``live_rows_ab.py``). The kernel and launcher are copies of ``raggedvit.kernels.cls_attention`` /
``raggedvit.ops.cls_attention`` at commit 5f8a227 (GPU only; no ``torch.library`` registration).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from raggedvit.ops.checks import check_ragged
from raggedvit.ops.launch import DirectLauncher
from raggedvit.pruning.ragged import cached

_LOG2E = 1.4426950408889634


@triton.jit(do_not_specialize=["out_width", "rows"])
def cls_attention_fwd_before(
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


launcher = DirectLauncher(cls_attention_fwd_before, "cls_attention_mean_before")


def cls_attention_mean_before(q: torch.Tensor, k: torch.Tensor, starts: torch.Tensor, ends: torch.Tensor,
                       out_width: int, *, scale: float, out: torch.Tensor | None = None,
                       check_lengths: bool = False) -> torch.Tensor:
    """Head-mean softmax attention of each sequence's first query over that sequence's keys.

    Args:
        q, k: ``(rows, heads, head_dim)``, last stride 1 (views of a fused qkv tensor are fine).
        starts, ends: int32 ``(B,)`` row ranges ``[starts[b], ends[b])`` of each sequence on the device
            (packed: ``cu_seqlens[:-1]`` and ``cu_seqlens[1:]``); the first row is the CLS query. Malformed
            ranges are clamped to the rows of ``q`` (see :mod:`raggedvit.ops.attention`).
        out_width: host int, columns of the output (>= every length, e.g. the stage's ``max_seqlen``; a
            longer sequence's softmax still covers all its keys, only the first ``out_width`` are written).
        scale: softmax scale.
        out: optional float32 ``(B, out_width)`` output.
        check_lengths: validate ``starts``/``ends`` on the device first (0 <= start <= end <= rows, length
            <= ``out_width``) and raise ``ValueError`` naming the problem; one host sync (debugging only).

    Returns:
        float32 ``(B, out_width)``: ``out[b, j] = mean_h softmax_j(scale * q[s, h] . k[s + j, h])``
        (``s = starts[b]``), 0 for ``j >= ends[b] - starts[b]``. No host sync. CPU tensors (without the
        Triton interpreter) are not supported.
    """
    if q.dim() != 3 or k.shape != q.shape or q.stride(2) != 1 or k.stride(2) != 1:
        raise ValueError(f"cls_attention_mean: q, k must be matching (rows, heads, head_dim) with last stride 1, "
                         f"got {tuple(q.shape)} and {tuple(k.shape)}")
    if starts.dtype != torch.int32 or ends.dtype != torch.int32 or starts.shape != ends.shape or starts.dim() != 1:
        raise TypeError("cls_attention_mean: starts and ends must be int32 (B,) tensors")
    if type(out_width) is not int or out_width < 0:
        raise TypeError(f"cls_attention_mean: out_width must be a Python int >= 0, got {out_width!r}")
    batch, (rows, heads, head_dim) = starts.shape[0], q.shape
    if out is not None and (tuple(out.shape) != (batch, out_width) or out.dtype != torch.float32):
        raise ValueError(f"cls_attention_mean: out must be float32 ({batch}, {out_width}), got {out.dtype} "
                         f"{tuple(out.shape)}")
    if check_lengths:
        check_ragged("cls_attention_mean", rows, what="rows of q", starts=starts, ends=ends, max_len=out_width,
                     max_name="out_width")
    if out is None:
        out = torch.empty(batch, out_width, dtype=torch.float32, device=q.device)
    if batch == 0 or out_width == 0:
        return out
    dev = q.get_device()
    if dev < 0 and not launcher.interpreted:
        raise ValueError("cls_attention_mean_before: CUDA or the Triton interpreter only")
    per_head = torch.empty(batch, heads, out_width, dtype=torch.float32, device=q.device)
    block_d = max(16, 1 << (head_dim - 1).bit_length())
    block_n = max(16, min(128, 8192 // block_d))
    constant = (q.stride(0), q.stride(1), k.stride(0), k.stride(1), per_head.stride(0), per_head.stride(1),
                float(scale) * _LOG2E, head_dim, block_d, block_n)
    ptrs = (q.data_ptr(), k.data_ptr(), starts.data_ptr(), ends.data_ptr(), per_head.data_ptr())
    key = (q.dtype, dev, constant) if not (ptrs[0] | ptrs[1] | ptrs[4]) & 15 and not (ptrs[2] | ptrs[3]) & 3 else None
    launcher.launch(key, dev, (batch, heads, 1), ptrs, (out_width, rows),
                    lambda: (q, k, starts, ends, per_head, out_width, rows, *constant), num_warps=4)
    return torch.mean(per_head, dim=1, out=out)


def cls_mean_before(self, values: bool = False) -> torch.Tensor:
    """``StageInput.cls_mean`` through :func:`cls_attention_mean_before` (``values`` is not supported)."""
    if values:
        raise ValueError("cls_mean_before: the value norms were apart before (use _ats_select_norm_apart)")
    q, k, _ = self.qkv
    meta = self.meta
    if meta.padded:
        B, L, device = meta.batch, meta.max_seqlen, meta.lengths.device
        starts = cached(("row_starts", B, L, device),
                        lambda: torch.arange(0, B * L, L, dtype=torch.int32, device=device))
        ends = cached(("row_ends", B, L, device), lambda: starts + L) if meta.uniform else (starts + meta.lengths).int()
    else:
        starts, ends = meta.cu_seqlens[:-1], meta.cu_seqlens[1:]
    return cls_attention_mean_before(q, k, starts, ends, meta.max_seqlen, scale=self.scale)

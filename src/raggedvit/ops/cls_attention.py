"""``cls_attention_mean``: head-mean CLS attention row per sequence, optionally times each key's value norm:
a Triton launch of (sequence, head) programs, then one of (sequence, column block) programs for the head mean
and the norms (reference in torch).

EViT scores tokens by the head-mean softmax attention of the CLS query; ATS by the head-sum times the value
norm (the same up to a positive factor per image). Fused attention kernels do not return probabilities; this
op recomputes the one row each image needs (``O(N * C)`` per image), for packed (``cu_seqlens``) or padded
(``b * L``) rows alike. Also the ``torch.library`` op ``torch.ops.raggedvit.cls_attention_mean`` (used under
``torch.compile``; see :mod:`raggedvit.ops.library`).
"""

from __future__ import annotations

import torch

from ..kernels.cls_attention import cls_attention_fwd, cls_head_mean_fwd
from .checks import check_ragged
from .launch import DirectLauncher
from .library import check_compilable, is_compiling

launcher = DirectLauncher(cls_attention_fwd, "cls_attention_mean")
mean_launcher = DirectLauncher(cls_head_mean_fwd, "cls_attention_mean (head mean)")
_LOG2E = 1.4426950408889634


def cls_attention_mean_reference(q, k, starts, ends, out_width: int, *, scale: float,
                                 v: torch.Tensor | None = None) -> torch.Tensor:
    """Pure-torch :func:`cls_attention_mean` (any device; loops over nothing, gathers a dense view; ranges
    clamped as by the kernel). Sequences longer than ``out_width`` are not supported here."""
    batch, total = starts.shape[0], q.shape[0]
    if total == 0:  # no rows: every clamped range is empty
        return torch.zeros(batch, out_width, dtype=torch.float32, device=q.device)
    pos = torch.arange(out_width, device=q.device)
    first = starts.long().clamp(0, total)
    lens = torch.maximum(ends.long(), first).clamp(max=total) - first
    valid = pos[None, :] < lens[:, None]
    rows = (first[:, None] + pos[None, :]).clamp(0, max(total - 1, 0))
    qc = q[first.clamp(max=max(total - 1, 0))].float()  # (B, H, D)
    logits = torch.einsum("bhd,blhd->blh", qc, k[rows].float()) * scale
    logits = logits.masked_fill(~valid[:, :, None], float("-inf"))
    probs = torch.softmax(logits, dim=1).nan_to_num(0.0).mean(dim=2)
    if v is not None:
        probs = probs * torch.linalg.vector_norm(v[rows].float().flatten(2), dim=2).masked_fill(~valid, 0.0)
    return probs.reshape(batch, out_width)


def cls_attention_mean(q: torch.Tensor, k: torch.Tensor, starts: torch.Tensor, ends: torch.Tensor,
                       out_width: int, *, scale: float, v: torch.Tensor | None = None,
                       out: torch.Tensor | None = None, check_lengths: bool = False) -> torch.Tensor:
    """Head-mean softmax attention of each sequence's first query over that sequence's keys (times the value
    norms with ``v``).

    Args:
        q, k: ``(rows, heads, head_dim)``, last stride 1 (views of a fused qkv tensor are fine).
        starts, ends: int32 ``(B,)`` row ranges ``[starts[b], ends[b])`` of each sequence on the device
            (packed: ``cu_seqlens[:-1]`` and ``cu_seqlens[1:]``); the first row is the CLS query. Malformed
            ranges are clamped to the rows of ``q`` (see :mod:`raggedvit.ops.attention`).
        out_width: host int, columns of the output (>= every length, e.g. the stage's ``max_seqlen``; a
            longer sequence's softmax still covers all its keys, only the first ``out_width`` are written).
        scale: softmax scale.
        v: optional ``(rows, heads, head_dim)`` values (last stride 1): each column is multiplied by the L2
            norm of its key's value vector over all heads (ATS's significance, up to a factor per sequence).
        out: optional float32 ``(B, out_width)`` output.
        check_lengths: validate ``starts``/``ends`` on the device first (0 <= start <= end <= rows, length
            <= ``out_width``) and raise ``ValueError`` naming the problem; one host sync (debugging only).

    Returns:
        float32 ``(B, out_width)``: ``out[b, j] = mean_h softmax_j(scale * q[s, h] . k[s + j, h])``
        (``s = starts[b]``; times ``||v[s + j]||_2`` with ``v``), 0 for ``j >= ends[b] - starts[b]``. No host
        sync. CPU tensors (without the Triton interpreter) are computed by :func:`cls_attention_mean_reference`.
    """
    if q.dim() != 3 or k.shape != q.shape or q.stride(2) != 1 or k.stride(2) != 1 or (
            v is not None and (v.shape != q.shape or v.stride(2) != 1)):
        raise ValueError(f"cls_attention_mean: q, k (and v) must be matching (rows, heads, head_dim) with last "
                         f"stride 1, got {tuple(q.shape)}, {tuple(k.shape)}"
                         + ("" if v is None else f" and {tuple(v.shape)}"))
    if starts.dtype != torch.int32 or ends.dtype != torch.int32 or starts.shape != ends.shape or starts.dim() != 1:
        raise TypeError("cls_attention_mean: starts and ends must be int32 (B,) tensors")
    if type(out_width) is not int or out_width < 0:
        raise TypeError(f"cls_attention_mean: out_width must be a Python int >= 0, got {out_width!r}")
    if v is not None and (v.dtype != q.dtype or v.device != q.device):
        raise TypeError(f"cls_attention_mean: v must match q's dtype and device, got {v.dtype} on {v.device}")
    batch, (rows, heads, head_dim) = starts.shape[0], q.shape
    if out is not None and (tuple(out.shape) != (batch, out_width) or out.dtype != torch.float32):
        raise ValueError(f"cls_attention_mean: out must be float32 ({batch}, {out_width}), got {out.dtype} "
                         f"{tuple(out.shape)}")
    if is_compiling():  # the opaque op (on CPU without the interpreter its impl runs the reference)
        check_compilable("cls_attention_mean", out, check_lengths)
        return torch.ops.raggedvit.cls_attention_mean(q, k, starts, ends, out_width, float(scale), v)
    if check_lengths:
        check_ragged("cls_attention_mean", rows, what="rows of q", starts=starts, ends=ends, max_len=out_width,
                     max_name="out_width")
    if out is None:
        out = torch.empty(batch, out_width, dtype=torch.float32, device=q.device)
    if batch == 0 or out_width == 0:
        return out
    dev = q.get_device()
    if dev < 0 and not launcher.interpreted:
        return out.copy_(cls_attention_mean_reference(q, k, starts, ends, out_width, scale=scale, v=v))
    per_head = torch.empty(batch, heads, out_width, dtype=torch.float32, device=q.device)
    block_d = max(16, 1 << (head_dim - 1).bit_length())
    block_n = max(16, min(128, 8192 // block_d))
    constant = (q.stride(0), q.stride(1), k.stride(0), k.stride(1), per_head.stride(0), per_head.stride(1),
                float(scale) * _LOG2E, head_dim, block_d, block_n)
    ptrs = (q.data_ptr(), k.data_ptr(), starts.data_ptr(), ends.data_ptr(), per_head.data_ptr())
    key = _launch_key(q.dtype, dev, constant, ptrs)
    launcher.launch(key, dev, (batch, heads, 1), ptrs, (out_width, rows),
                    lambda: (q, k, starts, ends, per_head, out_width, rows, *constant), num_warps=4)
    block_h = 1 << (heads - 1).bit_length()
    block_n = max(1, min(128, 4096 // (block_h * block_d)))
    vt = k if v is None else v
    constant = (out.stride(0), vt.stride(0), vt.stride(1), heads, head_dim, block_h, block_d, block_n, v is not None)
    ptrs = (per_head.data_ptr(), vt.data_ptr(), starts.data_ptr(), ends.data_ptr(), out.data_ptr())
    key = _launch_key(q.dtype, dev, constant, ptrs)
    mean_launcher.launch(key, dev, (batch, -(-out_width // block_n), 1), ptrs, (out_width, rows),
                         lambda: (per_head, vt, starts, ends, out, out_width, rows, *constant), num_warps=4)
    return out


def _launch_key(dtype: torch.dtype, dev: int, constant: tuple, ptrs: tuple[int, ...]) -> tuple | None:
    """Both kernels' launch key: ``ptrs`` is (tensor, tensor, starts, ends, out); None (never cached) unless the
    tensors are 16-byte and the int32 ranges 4-byte aligned (what Triton specializes on)."""
    return (dtype, dev, constant) if not (ptrs[0] | ptrs[1] | ptrs[4]) & 15 and not (ptrs[2] | ptrs[3]) & 3 else None


@torch.library.custom_op("raggedvit::cls_attention_mean", mutates_args=())
def _cls_attention_mean_op(q: torch.Tensor, k: torch.Tensor, starts: torch.Tensor, ends: torch.Tensor,
                           out_width: int, scale: float, v: torch.Tensor | None = None) -> torch.Tensor:
    return cls_attention_mean(q, k, starts, ends, out_width, scale=scale, v=v)


@_cls_attention_mean_op.register_fake
def _(q, k, starts, ends, out_width, scale, v=None):
    return q.new_empty((starts.shape[0], out_width), dtype=torch.float32)

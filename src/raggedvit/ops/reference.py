"""Pure-PyTorch reference for ragged attention (any device, no Triton).

Gathers the packed sequences into a ``(batch, max_seqlen, heads, head_dim)`` view with index arithmetic
(no host sync: ``max_seqlen`` is the host-side bound), runs masked softmax attention in fp32 (fp64 for
fp64 inputs) and scatters the rows back. Malformed offsets are clamped by the rule of the Triton kernel
(see :mod:`raggedvit.ops.attention`) and rows outside every sequence are zero, as there. Sequences longer
than ``max_seqlen`` are not supported here (the Triton kernel handles them); pass a true bound.
"""

from __future__ import annotations

import math

import torch


def ragged_attention_reference(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    cu_seqlens: torch.Tensor,
    max_seqlen: int,
    *,
    scale: float | None = None,
    key_bias: torch.Tensor | None = None,
) -> torch.Tensor:
    """Reference bidirectional attention over packed sequences, in plain PyTorch.

    Args:
        q, k, v: ``(total_rows, heads, head_dim)``.
        cu_seqlens: ``(batch + 1,)`` integer offsets, ``cu_seqlens[0] == 0``, non-decreasing (malformed
            ones are clamped as by the kernel: ``c[i] = min(max(0, cu[0], ..., cu[i]), total_rows)``).
        max_seqlen: host-side upper bound on every sequence length (>= 1).
        scale: softmax scale, default ``head_dim ** -0.5``.
        key_bias: optional ``(total_rows,)`` per-key logit bias, added after the scale (natural log units, as
            :func:`raggedvit.ragged_attention`).

    Returns:
        ``(total_rows, heads, head_dim)`` in ``q.dtype``; rows outside every sequence are zero.
    """
    total, heads, head_dim = q.shape
    batch = cu_seqlens.shape[0] - 1
    scale = head_dim**-0.5 if scale is None else scale
    compute = torch.float64 if q.dtype == torch.float64 else torch.float32
    cu = cu_seqlens.long().clamp(0, total).cummax(0).values  # the kernel's clamp rule
    lens = cu[1:] - cu[:-1]
    pos = torch.arange(max_seqlen, device=q.device)
    valid = pos[None, :] < lens[:, None]  # (batch, L)
    rows = (cu[:-1, None] + pos[None, :]).clamp(max=max(total - 1, 0))  # (batch, L)
    if total == 0 or batch == 0:
        return torch.zeros_like(q)
    qb, kb, vb = (t.to(compute)[rows] for t in (q, k, v))  # (batch, L, H, D)
    vb = vb.masked_fill(~valid[:, :, None, None], 0.0)  # rows past a sequence may hold anything, NaN included
    scores = torch.einsum("blhd,bmhd->bhlm", qb, kb) * scale
    if key_bias is not None:
        scores = scores + key_bias.to(compute)[rows][:, None, None, :]
    scores = scores.masked_fill(~valid[:, None, None, :], -math.inf)
    probs = torch.softmax(scores, dim=-1).nan_to_num(0.0)  # fully masked rows (length 0) give NaN
    ob = torch.einsum("bhlm,bmhd->blhd", probs, vb)
    # Scatter valid rows back; invalid ones go to a dummy row that is dropped.
    dest = torch.where(valid, rows, torch.full_like(rows, total)).reshape(-1)
    out = torch.zeros(total + 1, heads, head_dim, dtype=compute, device=q.device)
    out.index_copy_(0, dest, ob.reshape(-1, heads, head_dim))
    return out[:total].to(q.dtype)

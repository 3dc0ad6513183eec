"""The CLS row of the attention probabilities, without materialising ``N x N`` attention.

Fused attention kernels (SDPA, FlashAttention, :func:`raggedvit.ragged_attention`) do not return
probabilities, but EViT and ATS need the CLS query's softmax row. With one query per image it is cheap to
recompute exactly: ``P_h[0, k] = softmax_k(scale * q_{h,0} . k_{h,k})`` over the image's own keys
(``O(N * C)`` per image), or from a log-sum-exp when a kernel returns one. Computed in fp32, autocast off.
"""

from __future__ import annotations

import torch

__all__ = ["cls_attention", "cls_attention_from_lse"]


def cls_attention(q_cls: torch.Tensor, k: torch.Tensor, valid: torch.Tensor, *, scale: float) -> torch.Tensor:
    """Softmax attention probabilities of the CLS query of each image over that image's keys.

    Args:
        q_cls: ``(B, H, D)`` the CLS query of every image (after any q-norm).
        k: ``(B, L, H, D)`` keys in a dense view (see :func:`raggedvit.pruning.ragged.dense_view`).
        valid: ``(B, L)`` bool, live keys.
        scale: softmax scale (``head_dim ** -0.5`` for DeiT).

    Returns:
        ``(B, L, H)`` float32 probabilities, summing to 1 over the valid keys of each image and head;
        0 at invalid positions.
    """
    with torch.autocast(q_cls.device.type, enabled=False):  # scores decide what is kept: stay in fp32
        logits = torch.einsum("bhd,blhd->blh", q_cls.float(), k.float()) * scale
        logits = logits.masked_fill(~valid[:, :, None], float("-inf"))
        return torch.softmax(logits, dim=1).nan_to_num(0.0)


def cls_attention_from_lse(q_cls: torch.Tensor, k: torch.Tensor, valid: torch.Tensor, lse: torch.Tensor, *,
                           scale: float) -> torch.Tensor:
    """Same as :func:`cls_attention` from the CLS rows' log-sum-exp ``lse: (B, H)`` (natural log, as
    FlashAttention varlen returns it): ``P = exp(scale * q.k - lse)``; one pass, no max/sum reductions."""
    with torch.autocast(q_cls.device.type, enabled=False):
        logits = torch.einsum("bhd,blhd->blh", q_cls.float(), k.float()) * scale
        probs = torch.exp(logits - lse.float()[:, None, :])
        return probs.masked_fill(~valid[:, :, None], 0.0)

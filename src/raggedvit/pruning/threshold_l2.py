"""Threshold-L2 (the spec's proposal, section 4): keep patch tokens with a large residual-stream L2 norm.

Score ``s_j = ||x_j||_2`` of the block input (pre-LayerNorm, fp32) before blocks 3, 6, 9 (PRE). Rules on
a dense ``(B, L)`` view, kept tokens in their existing relative order (stable compaction):

* adaptive (primary): keep ``s_j >= T`` with a calibrated absolute ``T`` per stage, or a per-image
  relative ``T = alpha * mean_j s_j``; at least ``k_min`` (top by score), at most ``k_max``
  (:func:`select_threshold`; calibrate with :func:`quantile_threshold`);
* fixed (ablation counterpart): the top ``k`` by score with DynamicViT's schedule (:func:`select_topk`).
"""

from __future__ import annotations

import math

import torch

from .ragged import Selection
from .selection import assemble, candidates, rank_of, sort_desc

__all__ = ["l2_scores", "select_threshold", "select_topk", "quantile_threshold"]


def l2_scores(x: torch.Tensor) -> torch.Tensor:
    """``(R,)`` fp32 L2 norm of each row of ``x: (R, C)``."""
    return torch.linalg.vector_norm(x.float(), dim=-1)


def _in_order(keep: torch.Tensor, num_prefix: int, max_keep: int, exact: bool) -> Selection:
    L = keep.shape[1]
    pos = torch.arange(L, device=keep.device)[None, :]
    order = torch.sort(torch.where(keep, pos, pos + L), dim=1).indices  # kept first, original order
    return assemble(order, keep.sum(1), num_prefix, max_keep, exact=exact)


def select_threshold(score: torch.Tensor, valid: torch.Tensor, num_prefix: int, *, threshold: float | None = None,
                     alpha: float | None = None, k_min: int = 1, k_max: int | None = None) -> Selection:
    """Adaptive count: keep candidates with ``score >= T`` in original order.

    Args:
        score: ``(B, L)`` L2 norms (dense view).
        valid: ``(B, L)`` live positions.
        threshold: absolute ``T`` (exactly one of ``threshold`` and ``alpha``).
        alpha: relative ``T = alpha * mean`` of the image's current candidate scores.
        k_min: keep at least ``min(k_min, available)`` (the best by score) per image.
        k_max: keep at most ``k_max`` (the best by score) per image.

    Output width: the host bound ``num_prefix + min(L - num_prefix, k_max)``.
    """
    if (threshold is None) == (alpha is None):
        raise ValueError("select_threshold: give exactly one of threshold= and alpha=")
    cand = candidates(valid, num_prefix)
    s = score.float()
    if alpha is not None:
        mean = s.masked_fill(~cand, 0.0).sum(1, keepdim=True) / cand.sum(1, keepdim=True).clamp(min=1)
        passing = s >= alpha * mean
    else:
        passing = s >= threshold
    rank = rank_of(sort_desc(s, cand))
    keep = cand & (passing | (rank < k_min))
    bound = score.shape[1] - num_prefix
    if k_max is not None:
        keep &= rank < k_max
        bound = min(bound, k_max)
    return _in_order(keep, num_prefix, bound, exact=False)


def select_topk(score: torch.Tensor, valid: torch.Tensor, num_prefix: int, k: int) -> Selection:
    """Fixed count: the ``k`` highest-norm candidates, in original order."""
    cand = candidates(valid, num_prefix)
    keep = cand & (rank_of(sort_desc(score, cand)) < k)
    return _in_order(keep, num_prefix, k, exact=True)


def quantile_threshold(scores: torch.Tensor, keep_rate: float) -> float:
    """Absolute threshold keeping about ``keep_rate`` of ``scores`` (1-D, pooled over images):
    the empirical ``(1 - keep_rate)`` quantile, so ``mean(scores >= T) ~= keep_rate``. Host float (syncs)."""
    if scores.numel() == 0:
        raise ValueError("quantile_threshold: no scores")
    if not 0.0 < keep_rate <= 1.0:
        raise ValueError(f"quantile_threshold: keep_rate must be in (0, 1], got {keep_rate}")
    v = scores.detach().flatten().float()
    k = min(int(math.floor((1.0 - keep_rate) * v.numel())), v.numel() - 1)
    return float(torch.kthvalue(v.cpu(), k + 1).values)

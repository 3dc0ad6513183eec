"""Threshold-L2 (the spec's proposal, section 4): keep patch tokens with a large residual-stream L2 norm.

Score ``s_j = ||x_j||_2`` of the block input (pre-LayerNorm, fp32) before blocks 3, 6, 9 (PRE). Rules on
a dense ``(B, L)`` view, kept tokens in their existing relative order (stable compaction):

* adaptive (primary): keep ``s_j >= T`` with a calibrated absolute ``T`` per stage, or a per-image
  relative ``T = alpha * mean_j s_j``; at least ``k_min`` (top by score), at most ``k_max``
  (:func:`select_threshold`; calibrate with :func:`quantile_threshold`);
* fixed (ablation counterpart): the top ``k`` by score with DynamicViT's schedule (:func:`select_topk`).

``valid=None`` means every position is live (uniform batch; no masking ops).
"""

from __future__ import annotations

import math

import torch

from .ragged import Selection, arange
from .selection import candidate_scores, clamp_count, fixed_count, num_candidates, prefixed

__all__ = ["l2_scores", "select_threshold", "select_topk", "quantile_threshold"]


def l2_scores(x: torch.Tensor) -> torch.Tensor:
    """``(R,)`` fp32 L2 norm of each row of ``x: (R, C)`` (one op, accumulated in fp32)."""
    return torch.linalg.vector_norm(x, dim=-1, dtype=torch.float32)


def _in_order(order: torch.Tensor, num: torch.Tensor) -> torch.Tensor:
    """Positions ``order[b, :num[b]]`` in ascending order, then filler (``width - 1``)."""
    width = order.shape[1]
    rest = arange(width, order.device)[None, :] >= num[:, None]
    return torch.sort(order.masked_fill(rest, width - 1), dim=1).values


def select_threshold(score: torch.Tensor, valid: torch.Tensor | None, num_prefix: int, *,
                     threshold: float | None = None, alpha: float | None = None, k_min: int = 1,
                     k_max: int | None = None) -> Selection:
    """Adaptive count: keep candidates with ``score >= T`` in original order.

    Args:
        score: ``(B, L)`` L2 norms (dense view).
        valid: ``(B, L)`` live positions (None: all).
        threshold: absolute ``T`` (exactly one of ``threshold`` and ``alpha``).
        alpha: relative ``T = alpha * mean`` of the image's current candidate scores.
        k_min: keep at least ``min(k_min, available)`` (the best by score) per image.
        k_max: keep at most ``k_max`` (the best by score) per image.

    Output width: the host bound ``num_prefix + min(L - num_prefix, k_max)``.
    """
    if (threshold is None) == (alpha is None):
        raise ValueError("select_threshold: give exactly one of threshold= and alpha=")
    width = score.shape[1] - num_prefix
    vals, order = torch.sort(candidate_scores(score, valid, num_prefix, float("-inf")), dim=1, descending=True,
                             stable=True)
    available = num_candidates(valid, num_prefix)
    if alpha is not None:
        total = candidate_scores(score, valid, num_prefix, 0.0).sum(1, keepdim=True)
        n = width if available is None else available.clamp(min=1)[:, None]
        threshold = alpha * (total / n)
    num = clamp_count((vals >= threshold).sum(1), k_min, k_max, available, width)  # passing = a best-first prefix
    bound = width if k_max is None else min(width, k_max)
    index = prefixed(_in_order(order, num)[:, :bound], num_prefix)
    return Selection(index, num + num_prefix, num_prefix + bound, False)


def select_topk(score: torch.Tensor, valid: torch.Tensor | None, num_prefix: int, k: int) -> Selection:
    """Fixed count: the ``k`` highest-norm candidates, in original order (every image holds ``>= k``)."""
    key = candidate_scores(score, valid, num_prefix, float("-inf"))
    best = torch.sort(key, dim=1, descending=True, stable=True).indices[:, :k]
    index = prefixed(torch.sort(best, dim=1).values, num_prefix)
    return Selection(index, fixed_count(score.shape[0], num_prefix + k, score.device), num_prefix + k, True)


def quantile_threshold(scores: torch.Tensor, keep_rate: float) -> float:
    """Absolute threshold keeping about ``keep_rate`` of ``scores`` (1-D, pooled over images).

    The midpoint between the ``k``-th and ``(k + 1)``-th smallest score, ``k = floor((1 - keep_rate) * n)``,
    so ``mean(scores >= T) ~= keep_rate`` and no calibration score lies exactly on ``T`` (a score equal to
    the threshold would flip with ~1e-7 layout-dependent rounding). Host float (syncs).
    """
    if scores.numel() == 0:
        raise ValueError("quantile_threshold: no scores")
    if not 0.0 < keep_rate <= 1.0:
        raise ValueError(f"quantile_threshold: keep_rate must be in (0, 1], got {keep_rate}")
    v = torch.sort(scores.detach().flatten().float().cpu()).values
    k = min(int(math.floor((1.0 - keep_rate) * v.numel())), v.numel() - 1)
    if k == 0:
        return float(v[0]) - max(abs(float(v[0])), 1.0) * 1e-6  # keep everything: just below the minimum
    return 0.5 * (float(v[k - 1]) + float(v[k]))

"""Threshold-L2 (the spec's proposal, section 4): keep patch tokens with a large residual-stream L2 norm.

Score ``s_j = ||x_j||_2`` of the block input (pre-LayerNorm, fp32) before blocks 3, 6, 9 (PRE). Rules on
a dense ``(B, L)`` view, kept tokens in their existing relative order (stable compaction):

* adaptive (primary): keep ``s_j >= T`` with a calibrated absolute ``T`` per stage, or a per-image
  relative ``T = alpha * mean_j s_j``; at least ``k_min`` (top by score), at most ``k_max``
  (:func:`select_threshold`; calibrate with :func:`quantile_threshold`);
* fixed (ablation counterpart): the top ``k`` by score with DynamicViT's schedule (:func:`select_topk`).

``valid=None`` means every position is live (uniform batch; no masking ops). :class:`ThresholdL2` is the
method object (``prune(model, ThresholdL2(...))``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import torch

from ..ops.select import l2_select
from .method import BoundedPruner
from .ragged import Selection, arange, dense_view
from .selection import candidate_scores, clamp_count, fixed_count, num_candidates, prefixed
from .stage import StageInput

__all__ = ["ThresholdL2", "l2_scores", "select_threshold", "select_topk", "quantile_threshold",
           "CALIBRATION_KEEP_RATE"]

# Share of the tokens present at a stage that calibrated thresholds keep unless stated
# (:func:`raggedvit.models.calibrate_thresholds`, ``raggedvit eval/demo``): the sweep of
# benchmarks/defaults_sweep.py on the trained ViT-Tiny (500 labelled photos) loses <= 1 point of top-1 here.
CALIBRATION_KEEP_RATE = 0.85


@dataclass(frozen=True, kw_only=True)
class ThresholdL2(BoundedPruner):
    """Threshold-L2 before blocks ``stages``.

    The adaptive variant (the default) has no model-independent default: token norms differ from model
    to model, so it needs absolute ``thresholds`` calibrated on the model (or an explicit relative
    ``alpha``); :meth:`bind` (i.e. ``prune``) raises ValueError saying how when neither is given. The
    fixed variant works on any model with its default ``keep_rate``.

    Args:
        variant: ``"adaptive"`` (default: keep norms ``>= T``) or ``"fixed"`` (top-k, DynamicViT's schedule).
        stages, k_min, k_max: see :class:`~.method.BoundedPruner`.
        keep_rate: fixed variant: keep fraction per stage (default 0.85: at most 1 point of top-1 lost on the
            trained ViT-Tiny, ``benchmarks/defaults_sweep.py``; 0.7 loses 3).
        thresholds: absolute ``T`` per stage (one number for every stage, or one per stage), e.g.
            ``raggedvit.models.calibrate_thresholds(model, images)``.
        alpha: relative rule ``T = alpha * mean`` of the image's candidate norms (when ``thresholds`` is None;
            no default: on the trained ViT-Tiny ``alpha=1`` keeps 92 > 42 > 4 tokens and top-1 falls from 80.8% to
            16.6%; ``alpha=0.5`` prunes almost nothing).
    """

    name: ClassVar[str] = "threshold_l2"
    variant: str = "adaptive"
    keep_rate: float = 0.85
    thresholds: float | tuple[float, ...] | None = None
    alpha: float | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        t = self.thresholds
        if t is not None:
            t = (t,) * len(self.stages) if isinstance(t, (int, float)) and not isinstance(t, bool) else tuple(t)
            if len(t) != len(self.stages) or not all(
                    isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in t):
                raise ValueError(f"{self.name}: thresholds must be {len(self.stages)} finite numbers (one per "
                                 f"stage), got {self.thresholds!r}")
            object.__setattr__(self, "thresholds", tuple(float(v) for v in t))
        a = self.alpha
        if a is not None and (isinstance(a, bool) or not isinstance(a, (int, float)) or not math.isfinite(a)
                              or not a >= 0):
            raise ValueError(f"{self.name}: alpha must be a finite number >= 0 or None, got {a!r}")

    def bind(self, *, depth: int, num_prefix: int, num_patches: int):
        if not self.fixed and self.thresholds is None and self.alpha is None:
            raise ValueError(
                f"{self.name}: the adaptive variant needs thresholds calibrated for this model (token norms "
                "differ between models, so there is no usable default): pass "
                "thresholds=raggedvit.models.calibrate_thresholds(model, images) with a few hundred of your "
                f"images (keep_rate= sets the share kept per stage), or the relative rule alpha=A (keep norms "
                f">= A * the image's mean), or variant='fixed' (keep_rate {self.keep_rate} per stage). "
                "From the command line (raggedvit eval/demo) thresholds are calibrated on the first batch")
        return super().bind(depth=depth, num_prefix=num_prefix, num_patches=num_patches)

    def select(self, inp: StageInput) -> Selection:
        plan, x, meta, P = inp.plan, inp.x, inp.meta, inp.num_prefix
        t = None if self.thresholds is None else self.thresholds[plan.index]
        alpha = self.alpha if t is None else None
        k_max = self.stage_k_max(plan.index)
        if inp.kernels:
            if self.fixed:
                index, _ = l2_select(x, meta.dense_rows, meta.lengths, P, plan.width_out, k=plan.keep)
                return Selection(index, fixed_count(meta.batch, plan.width_out, x.device), plan.width_out, True)
            index, count = l2_select(x, meta.dense_rows, meta.lengths, P, plan.width_out, threshold=t, alpha=alpha,
                                     k_min=self.k_min, k_max=k_max)
            return Selection(index, count, plan.width_out, False)
        score = self.scores(inp)
        if self.fixed:
            return select_topk(score, inp.valid, P, plan.keep)
        return select_threshold(score, inp.valid, P, threshold=t, alpha=alpha, k_min=self.k_min, k_max=k_max)

    def scores(self, inp: StageInput) -> torch.Tensor:
        """``(B, L)`` L2 norms of the block input's rows."""
        return dense_view(l2_scores(inp.x), inp.meta)


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

    The midpoint between the ``k``-th smallest score ``x``, ``k = floor((1 - keep_rate) * n)``, and the
    nearest distinct score below it, so ``mean(scores >= T) ~= keep_rate`` and no calibration score lies
    exactly on ``T`` (a score equal to the threshold would flip with ~1e-7 layout-dependent rounding). Where
    ``x`` repeats (duplicate images), the cut goes below or above all its copies, whichever keeps a count
    closer to ``n - k``. Host float (syncs).
    """
    if scores.numel() == 0:
        raise ValueError("quantile_threshold: no scores")
    if not 0.0 < keep_rate <= 1.0:
        raise ValueError(f"quantile_threshold: keep_rate must be in (0, 1], got {keep_rate}")
    v = torch.sort(scores.detach().flatten().float().cpu()).values
    n = v.numel()
    k = min(int(math.floor((1.0 - keep_rate) * n)), n - 1)
    x = v[k:k + 1]
    first, last = int(torch.searchsorted(v, x)), int(torch.searchsorted(v, x, right=True))  # v[first:last] == x
    x = float(x)
    if last < n and last - k < k - first:  # cutting above the copies lands closer to n - k kept
        return 0.5 * (x + float(v[last]))  # above every copy of x
    if first == 0:
        return x - max(abs(x), 1.0) * 1e-6  # keep everything from x up
    return 0.5 * (float(v[first - 1]) + x)
